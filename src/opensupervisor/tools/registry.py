"""Hosted tool kinds by ``type``: each kind is a factory that turns one ``tools[i]`` entry into a Toolset.

Adding a tool kind means adding a module that registers a factory; the loop never changes.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Container

from opensupervisor.core.contracts import Toolset
from opensupervisor.core.toolbox import BoundToolset
from opensupervisor.errors import ConfigError, InvalidRequest
from opensupervisor.tools import targets
from opensupervisor.tools.functions import ClientFunctions
from opensupervisor.wire.request import ToolSpec
from opensupervisor.workspace import Workspace

# Raise InvalidRequest with ``param`` under ``spec.param`` for a bad or unknown configuration.
ToolsetFactory = Callable[[ToolSpec, Workspace], Toolset]


class ToolRegistry:
    def __init__(self, workspace: Workspace) -> None:
        self.workspace = workspace
        self._factories: dict[str, ToolsetFactory] = {}

    def register(self, tool_type: str, factory: ToolsetFactory) -> None:
        self._factories[tool_type] = factory

    def factory(self, tool_type: str) -> ToolsetFactory | None:
        return self._factories.get(tool_type)

    def types(self) -> list[str]:
        return ["function", *self._factories]

    def bind(self, specs: list[ToolSpec]) -> list[BoundToolset]:
        """Toolsets for a request's tools: client functions share one toolset, hosted entries one each."""
        functions = [s.config for s in specs if s.type == "function"]
        bound: list[BoundToolset] = []
        if functions:
            first = next(s.index for s in specs if s.type == "function")
            bound.append(BoundToolset(first, "function", ClientFunctions(functions)))
        for spec in specs:
            if spec.type == "function":
                continue
            factory = self._factories.get(spec.type)
            if factory is None:
                known = ", ".join(sorted(self.types()))
                raise InvalidRequest(
                    f"Invalid value for '{spec.param}.type': tool type '{spec.type}' is not supported by this "
                    f"server (supported: {known}).", param=f"{spec.param}.type", code="unsupported_tool_type")
            bound.append(BoundToolset(spec.index, spec.type, factory(spec, self.workspace)))
        return bound


def config_name(spec: ToolSpec, known: Container[str] | None, what: str) -> str:
    """The name (or id) a hosted tool entry selects, as ``targets.target`` resolves it for the grant
    check too; missing or unknown is a 400 naming ``tools[i].<type>.<key>``. ``known`` None: any
    name (a remote service says whether it exists)."""
    found = targets.require(spec)
    if known is not None and found.name not in known:
        raise InvalidRequest(f"{what} '{found.name}' does not exist in this workspace.", param=found.param,
                             code="invalid_value")
    return found.name


def config_description(spec: ToolSpec) -> str | None:
    """The entry's own ``description``, which the model sees instead of the configured one."""
    description = spec.config.get("description")
    return description if isinstance(description, str) else None


def prefixed_tool_name(prefix: str, name: str) -> str:
    """``<prefix><name>`` with characters outside ``[a-zA-Z0-9_-]`` replaced, at most 64 characters."""
    return (prefix + re.sub(r"[^a-zA-Z0-9_-]", "_", name))[:64]


def load_plugins(registry: ToolRegistry, modules: list[str]) -> None:
    """Import each plugin module and let its ``register(registry)`` add hosted tool kinds."""
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(f"plugins: cannot import {name!r}: {exc}", param="plugins") from exc
        register = getattr(module, "register", None)
        if not callable(register):
            raise ConfigError(f"plugins: {name!r} has no register(registry) function", param="plugins")
        register(registry)
