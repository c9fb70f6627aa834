"""Fenced ownership of background runs, and the claims on their hosted calls.

A process taken for dead (a long pause, a stall) may still be running a run that recovery handed to
another process. Each process that starts or resumes a run claims it: the run's epoch goes up by one
and names the process. The run's writes carry the epoch they were claimed with (``Store.append``),
and so does each claim on a hosted call before it runs: with a newer owner, the older one is refused
and stops without recording anything.
"""

from __future__ import annotations

from sqlalchemy import Connection, delete, insert, select, update

from opensupervisor.errors import RunSuperseded
from opensupervisor.store.schema import call_claims, executors, responses
from opensupervisor.store.store import RUNNING, Store, now_ms


class Ownership:
    def __init__(self, store: Store, executor_id: str) -> None:
        self.store = store
        self.executor_id = executor_id

    async def claim(self, response_id: str) -> int | None:
        """Take the run over; its new epoch, or None when it is not running any more."""
        def write() -> int | None:
            with self.store.engine.begin() as conn:
                changed = conn.execute(update(responses).where(
                    responses.c.id == response_id, responses.c.status.in_(RUNNING)).values(
                        owner_epoch=responses.c.owner_epoch + 1, owner_executor=self.executor_id)).rowcount
                if not changed:
                    return None
                return int(conn.execute(select(responses.c.owner_epoch).where(
                    responses.c.id == response_id)).scalar_one())

        return await self.store.write(write)

    async def claim_call(self, response_id: str, epoch: int, call: str) -> bool:
        """Claim a hosted call before running it. Raises ``RunSuperseded`` when the run is no longer
        this process's; False when another live process claimed the call (it may be running it)."""
        def write() -> bool:
            with self.store.engine.begin() as conn:
                self._check(conn, response_id, epoch)
                claimer = conn.execute(select(call_claims.c.executor).where(
                    call_claims.c.response_id == response_id, call_claims.c.call == call)).scalar()
                if claimer is not None and claimer != self.executor_id and _registered(conn, claimer):
                    return False
                # Nobody's, or its claimer died while running it: the one case where a call may run again.
                conn.execute(delete(call_claims).where(call_claims.c.response_id == response_id,
                                                       call_claims.c.call == call))
                conn.execute(insert(call_claims), [{"response_id": response_id, "call": call,
                                                    "executor": self.executor_id, "claimed_at": now_ms()}])
                return True

        return await self.store.write(write)

    def _check(self, conn: Connection, response_id: str, epoch: int) -> None:
        # The UPDATE locks the row: a claim of the run is wholly before this check or wholly after it.
        fenced = conn.execute(update(responses).where(
            responses.c.id == response_id, responses.c.owner_epoch == epoch).values(
                heartbeat_at=now_ms())).rowcount
        if not fenced:
            raise RunSuperseded(response_id)


def _registered(conn: Connection, executor_id: str) -> bool:
    return conn.execute(select(executors.c.id).where(executors.c.id == executor_id)).first() is not None
