"""Translation of pydantic validation errors into ``InvalidRequest`` errors that name the field."""

from __future__ import annotations

from typing import NoReturn

from pydantic import ValidationError

from opensupervisor.errors import InvalidRequest


def param_path(loc: tuple[int | str, ...]) -> str:
    """Render a pydantic location as the dotted/indexed path OpenAI uses (``tools[0].name``)."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


# Segments pydantic adds to a location for union members and tagged-union tags; they are not fields.
_UNION_SEGMENTS = frozenset({"str", "int", "float", "bool", "list", "dict", "function", "allowed_tools", "none"})


def _is_field(segment: int | str) -> bool:
    if isinstance(segment, int):
        return True
    return segment not in _UNION_SEGMENTS and not any(c in segment for c in "[-,")


def raise_validation(exc: ValidationError, prefix: str = "") -> NoReturn:
    """Turn the first pydantic error into an ``InvalidRequest`` naming its field."""
    err = exc.errors(include_url=False)[0]
    loc = tuple(p for p in err["loc"] if _is_field(p))
    path = param_path(loc)
    if prefix:
        path = f"{prefix}.{path}" if path and not path.startswith("[") else prefix + path
    if err["type"] == "extra_forbidden":
        raise InvalidRequest(f"Unknown parameter: '{path}'.", param=path, code="unknown_parameter")
    if err["type"] == "missing":
        raise InvalidRequest(f"Missing required parameter: '{path}'.", param=path, code="missing_required_parameter")
    raise InvalidRequest(f"Invalid value for '{path}': {err['msg']}.", param=path or None, code="invalid_value")
