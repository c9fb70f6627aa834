"""Knowledge assistants: their state, and ingestion on demand.

The assistants themselves are the workspace file's; what an admin does is ingest their sources
again (all of them, or some files and folders inside them). The CLI ingests in its own process,
with a progress bar, the assistants ``selection`` accepts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from opensupervisor.errors import ConfigError, InvalidRequest, NotFound
from opensupervisor.knowledge.ingest import OutsideSources
from opensupervisor.tools.knowledge_assistant import KnowledgeAssistants


class KnowledgeAdmin:
    def __init__(self, assistants: KnowledgeAssistants) -> None:
        self.assistants = assistants

    async def listing(self) -> list[dict[str, Any]]:
        kas = self.assistants
        return [{"id": ka, "description": entry.description, "sources": entry.sources,
                 "version": await kas.index.version(ka), "ingesting": ka in kas.ingesting}
                for ka, entry in kas.entries.items()]

    def selection(self, names: Sequence[str]) -> list[str]:
        """The assistants ``names`` (none: every one) to ingest from the command line."""
        unknown = [a for a in names if a not in self.assistants.entries]
        if unknown:
            raise ConfigError(f"no knowledge assistant {', '.join(unknown)} in the workspace")
        return list(names or self.assistants.entries)

    def check(self, ka: str) -> None:
        """``NotFound`` unless the workspace has assistant ``ka``."""
        if ka not in self.assistants.entries:
            raise NotFound(f"Knowledge assistant '{ka}' does not exist.", param="id")

    async def ingest(self, ka: str, fields: Mapping[str, object]) -> dict[str, Any]:
        """Ingest ``ka`` now; ``fields["paths"]`` limits it to files or folders inside its sources."""
        self.check(ka)
        try:
            report = await self.assistants.ingest(ka, only=_paths(fields.get("paths")))
        except OutsideSources as exc:
            raise InvalidRequest(str(exc), param="paths", code="invalid_value") from exc
        return {"id": ka, **report.as_dict()}


def _paths(value: object) -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise InvalidRequest("'paths' must be a list of strings.", param="paths", code="invalid_type")
    return [str(p) for p in value]
