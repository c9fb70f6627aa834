"""Fenced ownership of background runs, and the claims on their hosted calls.

A process taken for dead (a long pause, a stall) may still be running a run that recovery handed to
another process. Each process that starts or resumes a run claims it: the run's epoch goes up by one
and names the process. The run's writes carry the epoch they were claimed with (``Store.append``),
and so do the steps it records (``runs.checkpoints``) and each claim on a hosted call before it
runs: with a newer owner, the older one is refused and stops without recording anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import orjson
from sqlalchemy import Connection, and_, bindparam, delete, or_, select, update

from opensupervisor.core.events import TERMINAL_EVENTS, Event
from opensupervisor.errors import RunSuperseded
from opensupervisor.store.response_rows import (
    dumps,
    ending_rows,
    last_sequence,
    one_of,
    still_there,
    to_event_rows,
    without_output,
)
from opensupervisor.store.schema import events, executors, responses, run_steps
from opensupervisor.store.store import RUNNING, Store, now_ms

# What a hosted call's claim found: the call is this run's to make; another live process claimed it
# (it may be running it); the run stopped running (cancelled or deleted), so the call must not run.
CallClaim = Literal["claimed", "elsewhere", "stopped"]


class StepRow(NamedTuple):
    name: str
    output: str | None


class Claim(NamedTuple):
    """A run as its new owner took it over."""

    epoch: int
    # The last event in its log, and its recorded steps: read after the claim, when no earlier
    # owner can add to them any more.
    last_sequence: int
    steps: dict[int, StepRow]


# The run's fence: a write goes on only while the run is still the writer's (built once: it runs
# with every step).
_FENCE = update(responses).where(responses.c.id == bindparam("rid"), responses.c.owner_epoch == bindparam("epoch")
                                 ).values(heartbeat_at=bindparam("beat"))
# The same, while the run still runs (not cancelled): what a hosted call's claim needs.
_FENCE_RUNNING = _FENCE.where(one_of(responses.c.status, RUNNING))


# A run's claim: its epoch up by one, and this process named, while it still runs.
_CLAIM = update(responses).where(responses.c.id == bindparam("rid"), one_of(responses.c.status, RUNNING)).values(
    owner_epoch=responses.c.owner_epoch + 1, owner_executor=bindparam("executor"), heartbeat_at=bindparam("beat"),
).returning(responses.c.owner_epoch)
_CLAIM_PICKED_UP = _CLAIM.values(status=bindparam("new_status"), response=bindparam("body"))


class Ownership:
    def __init__(self, store: Store, executor_id: str) -> None:
        self.store = store
        self.executor_id = executor_id
        insert = store.dialect_insert(run_steps)
        # A claim already there is taken over only when this very copy of the run made it (a retried
        # write) or its claimer died (the one case where a call may run again); else no row comes
        # back. Another copy in this same process (of an older epoch) may be running the call.
        self._claim_call = insert.on_conflict_do_update(
            index_elements=[run_steps.c.response_id, run_steps.c.step],
            set_={"name": insert.excluded.name, "executor": insert.excluded.executor,
                  "claimed_at": insert.excluded.claimed_at, "epoch": insert.excluded.epoch},
            where=or_(and_(run_steps.c.executor == executor_id, run_steps.c.epoch == insert.excluded.epoch),
                      run_steps.c.executor.not_in(select(executors.c.id)))).returning(run_steps.c.step)
        self._record = insert.on_conflict_do_update(
            index_elements=[run_steps.c.response_id, run_steps.c.step],
            set_={"name": insert.excluded.name, "executor": insert.excluded.executor,
                  "output": insert.excluded.output})

    async def claim(self, response_id: str, *, picked_up: Event | None = None) -> Claim | None:
        """Take the run over; None when it is not running any more.

        ``picked_up``, the ``in_progress`` event of a run starting for the first time, is written
        with the claim, and its response becomes the stored one: pollers see the pickup at once.
        A run that ran before is read back with the claim: its log's end and its steps.
        """
        values: dict[str, Any] = {"rid": response_id, "executor": self.executor_id, "beat": now_ms()}
        rows: list[dict[str, Any]] = []
        if picked_up is not None:
            response = picked_up.data["response"]
            values.update(new_status=response["status"], body=dumps(without_output(response)))
            rows = to_event_rows(response_id, [picked_up])

        def write() -> Claim | None:
            with self.store.transaction() as conn:
                epoch = conn.execute(_CLAIM_PICKED_UP if picked_up is not None else _CLAIM, values).scalar()
                if epoch is None:
                    return None
                if picked_up is not None:
                    self.store.insert_rows(conn, [], rows)
                    return Claim(int(epoch), picked_up.sequence_number, {})
                return Claim(int(epoch), *_progress(conn, response_id))

        return await self.store.write(write)

    async def end_cancelled(self, response_id: str) -> bool:
        """Write the ending of a run cancelled before it ever ran (accepted to start in a process and
        cancelled before its task began: nothing else would write it). The run is claimed in the same
        transaction, so a copy still running somewhere cannot add a second. True when written."""
        def write() -> bool:
            with self.store.transaction() as conn:
                row = conn.execute(update(responses).where(
                    responses.c.id == response_id, responses.c.status == "cancelled").values(
                        owner_epoch=responses.c.owner_epoch + 1, owner_executor=self.executor_id).returning(
                            responses.c.response)).first()
                if row is None:
                    return False
                last = conn.execute(select(events.c.event).where(events.c.response_id == response_id).order_by(
                    events.c.sequence_number.desc()).limit(1)).scalar()
                if last is not None and _event_type(last) in TERMINAL_EVENTS:
                    return False
                self.store.insert_rows(conn, [], ending_rows(conn, response_id, orjson.loads(row.response)))
                return True

        return await self.store.write(write)

    async def claim_call(self, response_id: str, epoch: int, step: int, name: str,
                         also: Callable[[Connection], None] | None = None) -> CallClaim:
        """Claim a hosted call (its run's step ``step``) before running it, writing ``also`` with the
        claim (also when the run was cancelled, as a refused write of the run still writes its items).
        Raises ``RunSuperseded`` when the run is no longer this process's."""
        row = {"response_id": response_id, "step": step, "name": name, "executor": self.executor_id,
               "claimed_at": now_ms(), "epoch": epoch}
        values = {"rid": response_id, "epoch": epoch, "beat": now_ms()}

        def write() -> CallClaim:
            with self.store.transaction() as conn:
                running = bool(conn.execute(_FENCE_RUNNING, values).rowcount)
                if not running and not still_there(conn, response_id, epoch):
                    return "stopped"
                if also is not None:
                    also(conn)
                if not running:
                    return "stopped"
                return "claimed" if conn.execute(self._claim_call, row).first() is not None else "elsewhere"

        return await self.store.write(write)

    async def record_step(self, response_id: str, epoch: int, step: int, name: str, output: str) -> None:
        """Record a finished step's output. Raises ``RunSuperseded`` when the run is no longer this process's."""
        write_steps = self.steps_writer([self.step_row(response_id, step, name, output)])

        def write() -> None:
            with self.store.transaction() as conn:
                self.fence(conn, response_id, epoch)
                write_steps(conn)

        await self.store.write(write)

    def step_row(self, response_id: str, step: int, name: str, output: str) -> dict[str, Any]:
        return {"response_id": response_id, "step": step, "name": name, "executor": self.executor_id,
                "claimed_at": now_ms(), "output": output}

    def steps_writer(self, rows: list[dict[str, Any]]) -> Callable[[Connection], None]:
        """Records finished steps (``step_row``) in a fenced transaction of the run (``Store.append``)."""
        def write(conn: Connection) -> None:
            conn.execute(self._record, rows)

        return write

    @staticmethod
    def fence(conn: Connection, response_id: str, epoch: int) -> None:
        # The UPDATE locks the row: a claim of the run is wholly before this check or wholly after it.
        if not conn.execute(_FENCE, {"rid": response_id, "epoch": epoch, "beat": now_ms()}).rowcount:
            raise RunSuperseded(response_id)


async def forget_steps(store: Store, *, limit: int = 5000) -> int:
    """Delete the recorded steps of runs that ended (nothing resumes them); how many went."""
    ended = select(run_steps.c.response_id).join(responses, responses.c.id == run_steps.c.response_id).where(
        responses.c.status.not_in(RUNNING)).distinct().limit(limit)

    def write() -> int:
        with store.transaction() as conn:
            ids = list(conn.execute(ended).scalars())
            if ids:
                conn.execute(delete(run_steps).where(run_steps.c.response_id.in_(ids)))
            return len(ids)

    return await store.write(write)


def _progress(conn: Connection, response_id: str) -> tuple[int, dict[int, StepRow]]:
    steps = conn.execute(select(run_steps.c.step, run_steps.c.name, run_steps.c.output).where(
        run_steps.c.response_id == response_id))
    return last_sequence(conn, response_id), {row.step: StepRow(row.name, row.output) for row in steps}


def _event_type(stored: str) -> str:
    body = orjson.loads(stored)  # an event as sent, or its compact form (``core.eventlog``)
    return str(body.get("type") or body["event"]["type"])
