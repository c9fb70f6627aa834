"""`/v1/conversations` request bodies: parsing and validation with errors that name the field."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from opensupervisor.wire.items import Item, normalize_item
from opensupervisor.wire.request import check_metadata
from opensupervisor.wire.validation import validated

# At most this many items are added by one request (OpenAI's bound).
MAX_ITEMS = 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class CreateConversation(_Strict):
    items: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_ITEMS)
    metadata: dict[str, str] | None = None


class UpdateConversation(_Strict):
    metadata: dict[str, str] | None  # required; null clears it


class CreateItems(_Strict):
    items: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_ITEMS)


def parse_create(data: dict[str, Any]) -> tuple[dict[str, str], list[Item]]:
    body = validated(CreateConversation, data)
    check_metadata(body.metadata or {})
    return body.metadata or {}, _items(body.items or [])


def parse_update(data: dict[str, Any]) -> dict[str, str]:
    body = validated(UpdateConversation, data)
    check_metadata(body.metadata or {})
    return body.metadata or {}


def parse_items(data: dict[str, Any]) -> list[Item]:
    return _items(validated(CreateItems, data).items)


def _items(raw: list[dict[str, Any]]) -> list[Item]:
    return [normalize_item(item, f"items[{i}]") for i, item in enumerate(raw)]
