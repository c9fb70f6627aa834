"""Hosted tools: the ``Toolset`` contract and a registry keyed by the request's tool ``type``."""

from opensupervisor.core.contracts import ToolDef, Toolset
from opensupervisor.tools.registry import ToolRegistry, ToolsetFactory

__all__ = ["ToolDef", "ToolRegistry", "Toolset", "ToolsetFactory"]
