"""Schedules: every replica enqueues each due tick with a shared idempotency key, so it runs once.

The last tick each schedule fired is kept in the state store (``conveyor:schedule:<name>``) and
advanced with compare-and-set in the same commit as the tick's job, so after downtime the missed
ticks are known and follow the schedule's ``catch_up`` policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from croniter import croniter

from conveyor.definitions.handlers import ScheduleTick
from conveyor.definitions.service import QueueWorker, Schedule
from conveyor.model.envelope import Envelope
from conveyor.model.errors import BackendError
from conveyor.ports import Commit, CommitStatus, Effects, StateOp, StateWrite
from conveyor.runtime.messages import Origin
from conveyor.runtime.runtime import Runtime

logger = logging.getLogger("conveyor.scheduler")

MAX_CATCH_UP = 1000
"""``catch_up="all"`` fires at most this many missed ticks at once (the oldest are dropped)."""


def state_key(name: str) -> str:
    return f"conveyor:schedule:{name}"


def tick_key(name: str, tick: float) -> str:
    """A tick's idempotency key, which is also the id of its workflow instance."""
    return f"schedule:{name}:{datetime.fromtimestamp(tick, UTC).isoformat()}"


SCHEDULE_INSTANCE_PREFIX = "schedule:"
"""Every schedule tick's workflow instance id starts so (lists leave them out unless asked)."""


def schedule_tick(name: str, envelope: Envelope | None) -> ScheduleTick:
    """The tick a schedule's job runs for, read from its payload (``{"tick": iso}``); a job
    enqueued by hand without one runs for the time it was enqueued."""
    payload = envelope.payload if envelope is not None else None
    text = payload.get("tick") if isinstance(payload, dict) else None
    try:
        at = datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        at = None
    if at is None:
        at = datetime.fromtimestamp(envelope.created_at if envelope is not None else 0.0, UTC)
    elif at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    key = (envelope.idempotency_key if envelope is not None else None) or tick_key(name, at.timestamp())
    return ScheduleTick(name, at, key)


def ticks_between(schedule: Schedule, after: float, until: float, limit: int) -> list[float]:
    """Ticks ``t`` with ``after < t <= until``, at most the last ``limit`` of them."""
    ticks: list[float] = []
    if schedule.every is not None:
        first = (after // schedule.every + 1) * schedule.every
        last = until // schedule.every * schedule.every
        count = round((last - first) / schedule.every) + 1 if last >= first else 0
        start = max(0, count - limit)
        return [first + i * schedule.every for i in range(start, count)]
    assert schedule.cron is not None
    tz = ZoneInfo(schedule.tz)
    iterator = croniter(schedule.cron, datetime.fromtimestamp(after, tz))
    while True:
        tick = iterator.get_next(float)
        if tick > until:
            return ticks
        ticks.append(tick)
        if len(ticks) > limit:
            ticks.pop(0)


def previous_tick(schedule: Schedule, at: float) -> float:
    """The most recent tick at or before ``at``."""
    if schedule.every is not None:
        return at // schedule.every * schedule.every
    assert schedule.cron is not None
    iterator = croniter(schedule.cron, datetime.fromtimestamp(at, ZoneInfo(schedule.tz)))
    if croniter.match(schedule.cron, datetime.fromtimestamp(at, ZoneInfo(schedule.tz))) and at % 60 == 0:
        return at
    return float(iterator.get_prev(float))


def next_tick(schedule: Schedule, after: float) -> float:
    if schedule.every is not None:
        return (after // schedule.every + 1) * schedule.every
    assert schedule.cron is not None
    return float(
        croniter(schedule.cron, datetime.fromtimestamp(after, ZoneInfo(schedule.tz))).get_next(float)
    )


class Scheduler:
    """Fires the app's schedules; run one in every replica, duplicates collapse."""

    def __init__(
        self, runtime: Runtime, schedules: list[QueueWorker[Any]], *, max_wait: float = 30.0
    ) -> None:
        self.runtime = runtime
        self.schedules = schedules
        self.max_wait = max_wait
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        if not self.schedules:
            return
        clock = self.runtime.clock
        while not self._stop.is_set():
            try:
                await self.fire_due()
            except BackendError as exc:
                logger.warning("scheduler could not reach the backend: %s", exc)
            now = clock.now()
            wake = min(next_tick(s.schedule, now) for s in self.schedules if s.schedule is not None)
            sleeper = asyncio.ensure_future(clock.sleep(min(self.max_wait, max(0.0, wake - now))))
            stopper = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (sleeper, stopper):
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task

    async def fire_due(self) -> int:
        """Enqueue every due tick of every schedule; returns how many ticks this replica enqueued."""
        fired = 0
        for definition in self.schedules:
            fired += await self._fire(definition)
        return fired

    async def _fire(self, definition: QueueWorker[Any]) -> int:
        schedule = definition.schedule
        assert schedule is not None
        runtime = self.runtime
        now = runtime.clock.now()
        key = state_key(definition.name)
        record = (await runtime.backend.get_states([key])).get(key)
        version = record.version if record is not None else 0
        if record is None:
            last = previous_tick(schedule, now)
            if last == now:  # started exactly on a tick: that tick is due
                last = now - 1e-3
        else:
            last = float(orjson.loads(record.value)["last_tick"])
        due = ticks_between(schedule, last, now, MAX_CATCH_UP)
        if not due:
            if record is None:
                await self._advance(definition.name, Effects(), last, version)
            return 0
        if schedule.catch_up == "latest":
            fire = due[-1:]
        elif schedule.catch_up == "none":
            fire = [t for t in due[-1:] if now - t <= schedule.misfire_grace]
        else:
            fire = due
        skipped = len(due) - len(fire)
        if skipped:
            logger.warning(
                "schedule %r: skipped %d missed tick(s) (catch_up=%r)",
                definition.name,
                skipped,
                schedule.catch_up,
            )
        effects = Effects()
        origin = Origin(None, definition.service.name, definition.service.version)
        for tick in fire:
            key_text = tick_key(definition.name, tick)
            runtime.messages.add_job(
                effects,
                definition.name,
                {"tick": datetime.fromtimestamp(tick, UTC).isoformat()},
                message_id=None,
                origin=origin,
                now=now,
                idempotency_key=key_text,
                correlation_id=key_text,
            )
        if await self._advance(definition.name, effects, due[-1], version):
            return len(fire)
        return 0

    async def _advance(self, name: str, effects: Effects, last_tick: float, version: int) -> bool:
        effects.states.append(
            StateWrite(
                state_key(name),
                StateOp.SET,
                orjson.dumps({"last_tick": last_tick}),
                expected_version=version,
            )
        )
        [result] = await self.runtime.backend.commit([Commit(effects=effects)], self.runtime.clock.now())
        return result.status is CommitStatus.OK
