"""Fenced ownership of background runs, and the claims on their hosted calls.

A process taken for dead (a long pause, a stall) may still be running a run that recovery handed to
another process. Each process that starts or resumes a run claims it: the run's epoch goes up by one
and names the process. The run's writes carry the epoch they were claimed with (``Store.append``),
and so does each claim on a hosted call before it runs: with a newer owner, the older one is refused
and stops without recording anything.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Connection, or_, select, update

from opensupervisor.core.events import TERMINAL_EVENTS, Event
from opensupervisor.errors import RunSuperseded
from opensupervisor.store.response_rows import dumps, ending_rows, to_event_rows, without_output
from opensupervisor.store.schema import call_claims, events, executors, responses
from opensupervisor.store.store import RUNNING, Store, now_ms


class Ownership:
    def __init__(self, store: Store, executor_id: str) -> None:
        self.store = store
        self.executor_id = executor_id

    async def claim(self, response_id: str, *, picked_up: Event | None = None) -> int | None:
        """Take the run over; its new epoch, or None when it is not running any more.

        ``picked_up``, the ``in_progress`` event of a run starting for the first time, is written
        with the claim, and its response becomes the stored one: pollers see the pickup at once.
        """
        values: dict[str, Any] = {"owner_epoch": responses.c.owner_epoch + 1, "owner_executor": self.executor_id,
                                  "heartbeat_at": now_ms()}
        rows: list[dict[str, Any]] = []
        if picked_up is not None:
            response = picked_up.data["response"]
            values.update(status=response["status"], response=dumps(without_output(response)))
            rows = to_event_rows(response_id, [picked_up])

        def write() -> int | None:
            with self.store.engine.begin() as conn:
                epoch = conn.execute(update(responses).where(
                    responses.c.id == response_id, responses.c.status.in_(RUNNING)).values(values).returning(
                        responses.c.owner_epoch)).scalar()
                if epoch is None:
                    return None
                self.store.insert_rows(conn, [], rows)
                return int(epoch)

        return await self.store.write(write)

    async def end_cancelled(self, response_id: str) -> bool:
        """Write the ending of a run cancelled before it ever ran (accepted to start in a process and
        cancelled before its task began: nothing else would write it). The run is claimed in the same
        transaction, so a copy still running somewhere cannot add a second. True when written."""
        def write() -> bool:
            with self.store.engine.begin() as conn:
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

    async def claim_call(self, response_id: str, epoch: int, call: str) -> bool:
        """Claim a hosted call before running it. Raises ``RunSuperseded`` when the run is no longer
        this process's; False when another live process claimed the call (it may be running it)."""
        insert = self.store.dialect_insert(call_claims).values(
            response_id=response_id, call=call, executor=self.executor_id, claimed_at=now_ms())
        # A claim already there is taken over only when it is this process's or its claimer died
        # (the one case where a call may run again); else no row comes back.
        claimed = insert.on_conflict_do_update(
            index_elements=[call_claims.c.response_id, call_claims.c.call],
            set_={"executor": insert.excluded.executor, "claimed_at": insert.excluded.claimed_at},
            where=or_(call_claims.c.executor == self.executor_id,
                      call_claims.c.executor.not_in(select(executors.c.id)))).returning(call_claims.c.call)

        def write() -> bool:
            with self.store.engine.begin() as conn:
                self._check(conn, response_id, epoch)
                return conn.execute(claimed).first() is not None

        return await self.store.write(write)

    def _check(self, conn: Connection, response_id: str, epoch: int) -> None:
        # The UPDATE locks the row: a claim of the run is wholly before this check or wholly after it.
        fenced = conn.execute(update(responses).where(
            responses.c.id == response_id, responses.c.owner_epoch == epoch).values(
                heartbeat_at=now_ms())).rowcount
        if not fenced:
            raise RunSuperseded(response_id)


def _event_type(stored: str) -> str:
    body = orjson.loads(stored)  # an event as sent, or its compact form (``core.eventlog``)
    return str(body.get("type") or body["event"]["type"])
