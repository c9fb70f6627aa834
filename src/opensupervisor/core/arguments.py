"""Bounded tool arguments: what a model writes is the work the server does, so each piece has a cap.

Every hosted tool's JSON Schema states its bounds (``maxLength``, ``maxItems``, ``maxProperties``),
so a model that reads schemas keeps within them; the tool box checks every call against its schema
and against a cap on the whole arguments text before the tool sees it, so a model that ignores the
schema gets an error output instead of a long stall. Remote tools (MCP servers) bring their own
schemas, often without bounds: the cap on the whole text is what bounds them.
"""

from __future__ import annotations

from typing import Any

from jsonschema import ValidationError

# The whole arguments text of one call, in characters (the workspace's ``max_tool_arguments_chars``).
DEFAULT_ARGUMENTS_CHARS = 64 * 1024
# A question to a Genie space, a knowledge assistant or an app: a few paragraphs at most.
MAX_QUESTION_CHARS = 4000
# A knowledge assistant's ``source`` glob, matched against every document path.
MAX_GLOB_CHARS = 256
# Each string, list and object argument of a function whose parameters the server describes.
MAX_STRING_CHARS = 16 * 1024
MAX_ITEMS = 1000
MAX_PROPERTIES = 100
# How much of a model's value an error message repeats.
SHOWN_CHARS = 80


def text_property(description: str, max_length: int = MAX_QUESTION_CHARS) -> dict[str, Any]:
    return {"type": "string", "description": description, "maxLength": max_length}


def bounded(prop: dict[str, Any]) -> dict[str, Any]:
    """A parameter's schema with the default bounds for its type (a bound it states is kept)."""
    kind = prop.get("type")
    out = dict(prop)
    if kind == "string":
        out.setdefault("maxLength", MAX_STRING_CHARS)
    elif kind == "array":
        out.setdefault("maxItems", MAX_ITEMS)
        if isinstance(out.get("items"), dict):
            out["items"] = bounded(out["items"])
    elif kind == "object":
        out.setdefault("maxProperties", MAX_PROPERTIES)
    return out


def too_long(name: str, size: int, limit: int) -> str:
    return (f"Error: the arguments for '{name}' are {size:,} characters long; at most {limit:,} are accepted. "
            "Send shorter arguments.")


def invalid(name: str, problem: ValidationError) -> str:
    """The error output for arguments that break the tool's schema, without repeating a huge value."""
    where = "/".join(str(p) for p in problem.absolute_path) or "arguments"
    kind, bound, value = problem.validator, problem.validator_value, problem.instance
    size = len(value) if isinstance(value, str | list | dict) else 0
    if kind == "maxLength":
        message = f"longer than {bound:,} characters ({size:,})"
    elif kind == "maxItems":
        message = f"more than {bound:,} items ({size:,})"
    elif kind == "maxProperties":
        message = f"more than {bound:,} properties ({size:,})"
    else:
        message = problem.message if len(problem.message) <= 4 * SHOWN_CHARS else \
            f"{problem.message[:SHOWN_CHARS]}… (does not match the '{kind}' rule of the schema)"
    return f"Error: invalid arguments for '{name}' at {where}: {message}"
