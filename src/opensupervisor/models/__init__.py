"""Language models: the ``Model`` contract and one adapter module per provider."""

from opensupervisor.core.contracts import Model, ModelEvent, ModelRequest, ModelResponse

__all__ = ["Model", "ModelEvent", "ModelRequest", "ModelResponse"]
