"""A durable run's steps as recorded in the store: each kind of output comes back exactly as it was
made, a resumed run replays what finished and does the rest, and its outputs are data, never code."""

from __future__ import annotations

import asyncio
import pickle
import uuid

import orjson
import pytest

from opensupervisor.core.contracts import Finish, Served, TextDelta, ToolCallDelta, ToolCallStart, ToolDef, Usage
from opensupervisor.runs.checkpoints import ITEMS, OUTCOME, TEXT, TOOLS, Outcome, StoredSteps
from opensupervisor.store import Store
from opensupervisor.store.ownership import Ownership, StepRow
from tests.test_store import stored_background


def test_every_kind_of_output_comes_back_as_it_was() -> None:
    events = [Served("m"), TextDelta("héllo \u2028 \"x\""), ToolCallStart("call_1", "add"), ToolCallDelta('{"a": 1}'),
              Usage(3, 4, cached_tokens=1, reasoning_tokens=2), Finish("tool_calls")]
    outcome = Outcome(events, ("rate_limited", "slow down", True))
    assert OUTCOME.decode(OUTCOME.encode(outcome)) == outcome
    assert OUTCOME.decode(OUTCOME.encode(Outcome([]))) == Outcome([])
    tools = [ToolDef("add", None, {"type": "object"}),
             ToolDef("q", "d", {}, hosted=False, kind="mcp", server_label="s", approval=True, items="mcp",
                     annotations={"readOnlyHint": True}, max_output_chars=10)]
    assert TOOLS.decode(TOOLS.encode(tools)) == tools
    assert TEXT.decode(TEXT.encode("Error: \x00 ✓")) == "Error: \x00 ✓"
    items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}]
    assert ITEMS.decode(ITEMS.encode(items)) == items


@pytest.mark.parametrize("stored", [
    pickle.dumps(Outcome([TextDelta("x")])).decode("latin-1"),  # a pickle is refused, not loaded
    orjson.dumps({"events": [["os.system", "true"]], "error": None}).decode(),  # only the event classes
])
def test_an_output_that_is_not_ours_is_refused_not_run(stored: str) -> None:
    with pytest.raises((KeyError, TypeError, orjson.JSONDecodeError)):
        OUTCOME.decode(stored)


def test_a_resumed_run_replays_what_finished_and_does_the_rest(store_url: str) -> None:
    async def scenario() -> None:
        store = Store(store_url)
        await store.migrate()
        rid = (await stored_background(store, "queued"))[0]
        ownership = Ownership(store, "exec-" + uuid.uuid4().hex)
        done: list[str] = []

        async def work(name: str) -> str:
            done.append(name)
            return f"output of {name}"

        async def next_write(steps: StoredSteps) -> None:
            await store.append(rid, output={}, new_events=[], guard=True, epoch=steps.epoch, also=steps.unwritten())

        async def run(names: list[str]) -> list[str]:
            claim = await ownership.claim(rid)
            assert claim is not None
            steps = StoredSteps(ownership, rid, claim.epoch, claim.steps)
            outputs = []
            for name in names:
                outputs.append(await steps(name, lambda name=name: work(name), TEXT, effect=True))  # type: ignore[misc]
                await next_write(steps)  # the call's output item
            return outputs

        assert await run(["tool:a", "tool:b"]) == ["output of tool:a", "output of tool:b"]
        # Resumed: both replayed; the third is new. Then the run changed: step 2 is done again.
        assert await run(["tool:a", "tool:b", "tool:c"]) == ["output of tool:a", "output of tool:b", "output of tool:c"]
        assert done == ["tool:a", "tool:b", "tool:c"]
        assert await run(["tool:a", "tool:x"]) == ["output of tool:a", "output of tool:x"]
        assert done[-1] == "tool:x"
        claim = await ownership.claim(rid)
        assert claim is not None and claim.steps[2] == StepRow("tool:x", '"output of tool:x"')

        # A step with no effect waits for the run's next write: lost with the process before it, it
        # is done again; written with it (here a call's claim), it is replayed.
        steps = StoredSteps(ownership, rid, claim.epoch, {})
        assert await steps("model", lambda: work("model"), TEXT) == "output of model"
        claim = await ownership.claim(rid)
        assert claim is not None and claim.steps[1] == StepRow("tool:a", '"output of tool:a"')  # not written
        steps = StoredSteps(ownership, rid, claim.epoch, {})
        await steps("model", lambda: work("model"), TEXT)
        await steps("tool:a", steps.claim, TEXT, effect=True)
        claim = await ownership.claim(rid)
        assert claim is not None and claim.steps[1] == StepRow("model", '"output of model"')
        assert done.count("model") == 2
        await store.close()

    asyncio.run(scenario())


def test_a_call_output_is_recorded_at_once_unless_the_next_write_follows(store_url: str) -> None:
    """The last call of a turn to end leaves its output to the run's next write (its output item,
    written at once); a call that ends while another of its turn runs is recorded as it returns,
    since its output item waits for the other."""
    async def scenario() -> None:
        store = Store(store_url)
        await store.migrate()
        rid = (await stored_background(store, "queued"))[0]
        ownership = Ownership(store, "exec-" + uuid.uuid4().hex)
        claim = await ownership.claim(rid)
        assert claim is not None
        steps = StoredSteps(ownership, rid, claim.epoch, {})
        slow_may_end = asyncio.Event()

        async def quick() -> str:
            return "quick"

        async def slow() -> str:
            await slow_may_end.wait()
            return "slow"

        slow_call = asyncio.ensure_future(steps("tool:slow", slow, TEXT, effect=True))
        await asyncio.sleep(0)
        assert await steps("tool:quick", quick, TEXT, effect=True) == "quick"
        recorded = (await ownership.claim(rid))
        assert recorded is not None and recorded.steps == {2: StepRow("tool:quick", '"quick"')}
        slow_may_end.set()
        assert await slow_call == "slow"
        again = await ownership.claim(rid)
        assert again is not None and 1 not in again.steps  # not written yet: the next write takes it
        writer = steps.unwritten()
        assert writer is not None
        await store.append(rid, output={}, new_events=[], guard=True, epoch=again.epoch, also=writer)
        last = await ownership.claim(rid)
        assert last is not None and last.steps[1] == StepRow("tool:slow", '"slow"')
        await store.close()

    asyncio.run(scenario())
