"""Identifiers of responses and items.

Ids stay well under 64 characters: databricks-openai cuts longer ids to 64, which would break
``previous_response_id`` and ``item_reference`` lookups.
"""

from __future__ import annotations

import hashlib
import os

PREFIXES = {
    "response": "resp_",
    "message": "msg_",
    "function_call": "fc_",
    "function_call_output": "fco_",
    "call": "call_",
    "reasoning": "rs_",
    "mcp_approval_response": "mcpa_",
    "mcp_approval_request": "mcpr_",
    "mcp_call": "mcp_",
    "mcp_list_tools": "mcpl_",
    "item": "item_",
    "conversation": "conv_",
    "compaction": "cmp_",
}


def new_id(kind: str) -> str:
    """A fresh random id with the OpenAI-style prefix of ``kind`` (24 random bytes, hex)."""
    return PREFIXES.get(kind, "item_") + os.urandom(24).hex()


def derived_id(kind: str, parent: str, position: int) -> str:
    """The id of the item at ``position`` of ``parent``'s output: the same every time it is made.

    A durable run that resumes after a crash rebuilds its items; deriving their ids keeps them equal
    to the ones already stored and streamed. Unique because response ids are.
    """
    digest = hashlib.blake2b(f"{parent}:{position}".encode(), digest_size=24).hexdigest()
    return PREFIXES.get(kind, "item_") + digest
