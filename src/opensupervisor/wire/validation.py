"""Translation of pydantic validation errors into ``InvalidRequest`` errors that name the field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import NoReturn, TypeVar

from pydantic import BaseModel, ValidationError

from opensupervisor.errors import InvalidRequest

M = TypeVar("M", bound=BaseModel)
# The largest count a client may send anywhere: every integer field and query parameter is bounded
# by at most this, so no value can overflow the narrowest column it may reach (PostgreSQL INTEGER).
INT32_MAX = 2**31 - 1
# The longest a timeout sent through the API may be (a day): longer ones overflow event-loop timers.
MAX_TIMEOUT_S = 86400.0
# ASCII digits only: int() would also take "1_000", " 5" and other scripts' digits.
_INTEGER = re.compile(r"-?[0-9]+", re.ASCII)


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
_UNION_SEGMENTS = frozenset({"str", "int", "float", "bool", "list", "dict", "function", "allowed_tools", "none",
                             "ConversationRef"})


def _is_field(segment: int | str) -> bool:
    if isinstance(segment, int):
        return True
    return segment not in _UNION_SEGMENTS and not any(c in segment for c in "[-,")


def raise_validation(exc: ValidationError, prefix: str = "") -> NoReturn:
    """Turn the first pydantic error into an ``InvalidRequest`` naming its field. Of the errors of that
    field, the deepest is told: for a union it comes from the member the value was meant for (an
    object sent for ``str | Model`` is told about the object's field, not that it is no string)."""
    errors = exc.errors(include_url=False)
    field = errors[0]["loc"][:1]
    err = max((e for e in errors if e["loc"][:1] == field),
              key=lambda e: sum(1 for p in e["loc"] if _is_field(p)))
    loc = tuple(p for p in err["loc"] if _is_field(p))
    path = param_path(loc)
    if prefix:
        path = f"{prefix}.{path}" if path and not path.startswith("[") else prefix + path
    if err["type"] == "extra_forbidden":
        raise InvalidRequest(f"Unknown parameter: '{path}'.", param=path, code="unknown_parameter")
    if err["type"] == "missing":
        raise InvalidRequest(f"Missing required parameter: '{path}'.", param=path, code="missing_required_parameter")
    raise InvalidRequest(f"Invalid value for '{path}': {err['msg']}.", param=path or None, code="invalid_value")


def validated(model: type[M], data: object, prefix: str = "") -> M:
    """``data`` as ``model``, or an ``InvalidRequest`` naming the first wrong field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise_validation(exc, prefix)


def query_int(query: Mapping[str, str], name: str, *, default: int, low: int, high: int) -> int:
    """An integer query parameter within ``[low, high]``; anything else is a 400 naming it."""
    value = query.get(name)
    if value is None:
        return default
    if not _INTEGER.fullmatch(value):
        raise InvalidRequest(f"Invalid value for '{name}': expected an integer.", param=name, code="invalid_value")
    # A bound fits in 19 digits: longer values are out of range without converting thousands of digits.
    if len(value) > 20 or not low <= int(value) <= high:
        raise InvalidRequest(f"Invalid value for '{name}': must be between {low} and {high}.", param=name,
                             code="invalid_value")
    return int(value)


def page_query(query: Mapping[str, str]) -> tuple[int, str, str | None]:
    """A list route's ``limit`` (1 to 100, default 20), ``order`` (``asc`` or ``desc``, default
    ``desc``) and ``after`` (an item id), as OpenAI's list routes take them."""
    limit = query_int(query, "limit", default=20, low=1, high=100)
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("Invalid value for 'order': must be 'asc' or 'desc'.", param="order",
                             code="invalid_value")
    return limit, order, query.get("after")


def check_timeout(value: float, name: str = "timeout_s") -> None:
    """A timeout sent through the API (the models that hold it also serve the workspace file)."""
    if value > MAX_TIMEOUT_S:
        raise InvalidRequest(f"Invalid value for '{name}': must be at most {MAX_TIMEOUT_S:g} seconds.", param=name,
                             code="invalid_value")
