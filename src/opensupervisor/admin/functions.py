"""Catalog functions registered at run time, beside the workspace file's.

A registered function carries its code inline (``source_code``), never a path on the server, and is
checked exactly like a workspace file's function.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from opensupervisor.admin.common import log, parse
from opensupervisor.errors import ConfigError, InvalidRequest, NotFound
from opensupervisor.store.functions import RegisteredFunctions
from opensupervisor.tools.uc_functions import Function, FunctionCatalog, FunctionEntry
from opensupervisor.wire.validation import check_timeout


class FunctionAdmin:
    def __init__(self, catalog: FunctionCatalog, registered: RegisteredFunctions) -> None:
        self.catalog = catalog
        self.registered = registered

    def listing(self) -> list[dict[str, Any]]:
        """The workspace file's functions, then the registered ones."""
        data = [_describe(f, "workspace") for f in self.catalog.functions.values()]
        return data + [_describe(f, "registered") for f in self.catalog.registered.values()]

    def get(self, name: str) -> dict[str, Any]:
        function = self.catalog.lookup(name)
        if function is None:
            raise NotFound(f"Function '{name}' does not exist.", param="name")
        return _describe(function, "workspace" if name in self.catalog.functions else "registered")

    async def put(self, name: str, fields: Mapping[str, object]) -> dict[str, Any]:
        """Register (or replace) ``name``: the tool as the model will see it."""
        body = dict(fields)
        source_code = body.pop("source_code", None)
        if source_code is not None and not isinstance(source_code, str):
            raise InvalidRequest("Invalid type for 'source_code': expected a string.", param="source_code",
                                 code="invalid_type")
        if "source" in body:
            raise InvalidRequest("A registered function sends its code as 'source_code', not a 'source' path.",
                                 param="source", code="invalid_value")
        entry = parse(FunctionEntry, body)
        check_timeout(entry.timeout_s)
        try:
            function = self.catalog.build(name, entry, source_code)
        except ConfigError as exc:
            message = str(exc).removeprefix(f"functions.{name}: ").removeprefix(f"functions.{name} ")
            raise InvalidRequest(message, param=exc.param, code=exc.code or "invalid_value") from exc
        await self.registered.put(name, entry.model_dump(exclude_defaults=True), source_code)
        await self.reload()
        log.info("function %s registered (%s)", name, entry.language)
        return _describe(function, "registered")

    async def remove(self, name: str) -> None:
        if name in self.catalog.functions:
            raise InvalidRequest(f"Function '{name}' is declared in the workspace file; remove it there.",
                                 param="name", code="invalid_value")
        if not await self.registered.remove(name):
            raise NotFound(f"Function '{name}' does not exist.", param="name")
        await self.reload()
        log.info("function %s removed", name)

    async def reload(self) -> None:
        self.catalog.load(await self.registered.all())


def _describe(function: Function, origin: str) -> dict[str, Any]:
    return {"name": function.full_name, "tool_name": function.tool.name, "language": function.entry.language,
            "description": function.tool.description, "parameters": function.tool.parameters, "origin": origin}
