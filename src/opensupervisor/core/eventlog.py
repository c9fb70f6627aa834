"""A run's event log, compact: each text is held once, however many events show it.

A streamed message shows its text in its deltas, then whole in ``output_text.done``,
``content_part.done``, ``output_item.done`` and the terminal event (a call shows its arguments
twice). In memory (``EventLog``) the consecutive deltas of one item fold into a ``DeltaRun``, which
keeps their lengths, and for followers of a live run their text until the item is done. In the
store (``rows``) a run is one row of lengths and a finished event names the stored output item it
shows instead of repeating it; ``LogSlice`` rebuilds the events, byte for byte, from the stored
items as the log is read back.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import orjson

from opensupervisor.core.events import TERMINAL_EVENTS, Event
from opensupervisor.wire.items import Item

DELTAS = frozenset({"response.output_text.delta", "response.function_call_arguments.delta",
                    "response.mcp_call_arguments.delta"})
# Finished events, and the field in which each repeats (part of) the output item it names.
SHOWS = {"response.output_text.done": "text", "response.content_part.done": "part",
         "response.output_item.done": "item", "response.function_call_arguments.done": "arguments",
         "response.mcp_call_arguments.done": "arguments"}
# Deltas per block of a run: a block's text is joined once, and skipped whole by a follower past it.
BLOCK = 256
# How a compact row starts (a plain one starts with its "type").
_COMPACT = b'{"os_'


class Row(NamedTuple):
    """One row of the stored log; a run of deltas is stored under its last sequence number."""

    sequence_number: int
    type: str
    event: str


def source(item: Item, content_index: int = 0) -> str:
    """The text an item's deltas add up to: a message part's text, a call's arguments."""
    if item.get("type") == "message":
        return str(item["content"][content_index].get("text", ""))
    return str(item.get("arguments") or "")


class DeltaRun:
    """Consecutive deltas of one item, in ``BLOCK``-sized blocks of (text or "", lengths, characters)."""

    __slots__ = (
        "_blocks",
        "_chars",
        "_keep",
        "_lengths",
        "_pieces",
        "_source",
        "content_index",
        "count",
        "first",
        "output_index",
        "start",
        "template",
    )

    def __init__(self, event: Event, start: int, keep_text: bool) -> None:
        data = event.data
        self.template = dict(data, delta="")
        self.first = event.sequence_number
        self.count = 0
        # Where the run begins in the item's whole text.
        self.start = start
        self.output_index = int(data["output_index"])
        self.content_index = int(data.get("content_index", 0))
        self._blocks: list[tuple[str, bytes, int]] = []
        self._lengths = bytearray()
        self._pieces: list[str] = []
        self._chars = 0
        self._keep = keep_text
        self._source: Item | None = None
        self.add(data["delta"])

    @property
    def type(self) -> str:
        return str(self.template["type"])

    @property
    def sequence_number(self) -> int:
        return self.first + self.count - 1

    def takes(self, event: Event) -> bool:
        """Whether ``event`` is this run's next delta (same item, nothing else different)."""
        data = event.data
        if event.sequence_number != self.first + self.count or len(data) != len(self.template):
            return False
        template = self.template
        return all(k == "sequence_number" or k == "delta" or template.get(k) == v for k, v in data.items())

    def add(self, delta: str) -> None:
        _varint(len(delta), self._lengths)
        self._chars += len(delta)
        if self._keep:
            self._pieces.append(delta)
        self.count += 1
        if self.count % BLOCK == 0:
            self._blocks.append(("".join(self._pieces), bytes(self._lengths), self._chars))
            self._lengths, self._pieces, self._chars = bytearray(), [], 0

    def release(self, item: Item) -> None:
        """The item is done: its deltas are cut from its text from now on, and the copy is dropped."""
        self._source = item
        self._keep = False
        self._blocks = [("", lengths, chars) for _, lengths, chars in self._blocks]
        self._pieces = []

    def events(self, after: int = -1, text: str | None = None) -> Iterator[Event]:
        """The deltas after sequence number ``after``, cut from ``text`` (the item's whole text) when
        given, else from the done item, else from the text kept."""
        if text is None and self._source is not None:
            text = source(self._source, self.content_index)
        full = self._blocks
        blocks = [*full, ("".join(self._pieces), bytes(self._lengths), self._chars)]
        sizes = [BLOCK] * len(full) + [self.count - BLOCK * len(full)]
        seq, offset = self.first, self.start
        for (block_text, lengths, chars), size in zip(blocks, sizes, strict=True):
            if seq + size - 1 > after:  # else the reader has seen the whole block
                cut = (text, offset) if text is not None else (block_text, 0)
                yield from _cut(self.template, seq, cut, _lengths(lengths), after)
            seq, offset = seq + size, offset + chars

    def lengths(self) -> bytes:
        return b"".join(lengths for _, lengths, _ in self._blocks) + bytes(self._lengths)

    def row(self) -> Row:
        body = {"os_deltas": {"start": self.start, "lengths": base64.b64encode(self.lengths()).decode()},
                "event": self.template}
        return Row(self.sequence_number, self.type, orjson.dumps(body).decode())


Entry = Event | DeltaRun


class EventLog:
    """A run's events in order, with each item's deltas folded into runs."""

    def __init__(self, *, keep_text: bool) -> None:
        self.entries: list[Entry] = []
        # Output items by index, as the run streams them (live: they change until they are done).
        self.items: dict[int, Item] = {}
        self.last_sequence = -1
        self._keep = keep_text
        self._streamed: dict[tuple[int, int], int] = {}

    def append(self, event: Event) -> None:
        data, kind = event.data, event.type
        if kind in DELTAS:
            key = (int(data["output_index"]), int(data.get("content_index", 0)))
            last = self.entries[-1] if self.entries else None
            if isinstance(last, DeltaRun) and last.takes(event):
                last.add(data["delta"])
            else:
                self.entries.append(DeltaRun(event, self._streamed.get(key, 0), self._keep))
            self._streamed[key] = self._streamed.get(key, 0) + len(data["delta"])
        else:
            if kind == "response.output_item.added":
                self.items[data["output_index"]] = data["item"]
            elif kind == "response.output_item.done" and self._keep:
                for entry in self.entries:
                    if isinstance(entry, DeltaRun) and entry.output_index == data["output_index"]:
                        entry.release(data["item"])
            self.entries.append(event)
        self.last_sequence = event.sequence_number

    def take(self) -> list[Entry]:
        entries, self.entries = self.entries, []
        return entries


def plain(event: Event) -> Row:
    return Row(event.sequence_number, event.type, event.json.decode())


def rows(entries: Iterable[Entry], stored: set[int], items: dict[int, Item]) -> list[Row]:
    """The stored form of ``entries``: compact where the output items they show are ``stored``
    (by output index, in this write or before)."""
    out: list[Row] = []
    for entry in entries:
        if isinstance(entry, Event):
            out.append(compact(entry, stored))
        elif entry.output_index in stored:
            out.append(entry.row())
        else:  # its item is still running (an mcp_call waits for its output): the deltas in full
            item = items.get(entry.output_index)
            text = source(item, entry.content_index) if item is not None else ""
            out += [plain(e) for e in entry.events(text=text)]
    return out


def compact(event: Event, stored: set[int]) -> Row:
    data = event.data
    field = SHOWS.get(event.type)
    body: dict[str, Any]
    if field is not None and data.get("output_index") in stored:
        body = {"os_shows": field, "event": dict(data, **{field: None})}
    elif event.type in TERMINAL_EVENTS and (count := len(data["response"]["output"])) > 0 and all(
            i in stored for i in range(count)):
        body = {"os_shows": "output", "count": count,
                "event": dict(data, response=dict(data["response"], output=None))}
    else:
        return plain(event)
    return Row(event.sequence_number, event.type, orjson.dumps(body).decode())


class LogSlice:
    """Stored rows after sequence number ``after``, rebuilt into events as they are read."""

    def __init__(self, entries: list[bytes | dict[str, Any]], items: dict[int, Item], after: int) -> None:
        self.entries = entries
        self.items = items
        self.after = after

    def __bool__(self) -> bool:
        return bool(self.entries)

    def __iter__(self) -> Iterator[Event]:
        for entry in self.entries:
            if isinstance(entry, bytes):
                yield Event.from_json(entry)
            elif "os_deltas" in entry:
                yield from self._deltas(entry)
            else:
                yield self._shown(entry)

    def _deltas(self, body: dict[str, Any]) -> Iterator[Event]:
        spec, template = body["os_deltas"], body["event"]
        item = self.items.get(template["output_index"])
        text = source(item, template.get("content_index", 0)) if item is not None else ""
        lengths = _lengths(base64.b64decode(spec["lengths"]))
        yield from _cut(template, template["sequence_number"], (text, spec["start"]), lengths, self.after)

    def _shown(self, body: dict[str, Any]) -> Event:
        data, field = body["event"], body["os_shows"]
        if field == "output":
            data["response"]["output"] = [self.items.get(i) for i in range(body["count"])]
            return Event.final(data)
        item = self.items.get(data["output_index"]) or {}
        index = data.get("content_index", 0)
        if field == "item":
            data[field] = item
        elif field == "part":
            data[field] = (item.get("content") or [{}])[index]
        elif field == "text":
            data[field] = source(item, index)
        else:
            data[field] = item.get("arguments", "")
        return Event.final(data)


def parse(raw_rows: Iterable[str]) -> tuple[list[bytes | dict[str, Any]], set[int]]:
    """Stored rows as ``LogSlice`` takes them, and the output indexes of the items they need."""
    entries: list[bytes | dict[str, Any]] = []
    needed: set[int] = set()
    for text in raw_rows:
        raw = text.encode()
        if not raw.startswith(_COMPACT):
            entries.append(raw)
            continue
        body = orjson.loads(raw)
        if body.get("os_shows") == "output":
            needed.update(range(body["count"]))
        else:
            needed.add(body["event"]["output_index"])
        entries.append(body)
    return entries, needed


def _cut(template: dict[str, Any], seq: int, text: tuple[str, int], lengths: Iterable[int],
         after: int) -> Iterator[Event]:
    """Delta events from ``template``, numbered from ``seq``, cut from ``text`` at its offset."""
    whole, offset = text
    for length in lengths:
        if seq > after:
            data = dict(template)
            data["sequence_number"] = seq
            data["delta"] = whole[offset:offset + length]
            yield Event(data)
        seq += 1
        offset += length


def _varint(n: int, out: bytearray) -> None:
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)


def _lengths(data: bytes) -> Iterator[int]:
    n = shift = 0
    for byte in data:
        n |= (byte & 0x7F) << shift
        if byte < 0x80:
            yield n
            n = shift = 0
        else:
            shift += 7
