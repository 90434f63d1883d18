"""Wake-ups for idle workers: LISTEN on a dedicated connection, plus this process's own commits.

Every commit that makes jobs available sends ``pg_notify(channel, queues)`` in its transaction, so
the notification arrives when the jobs become visible. One background task per backend instance
holds the LISTEN connection and reconnects (with backoff) when it is lost; while it is down,
waits are cut short so workers fall back to polling instead of sleeping through new jobs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

logger = logging.getLogger("conveyor.backends.postgres")

ALL_QUEUES = "*"
"""Payload meaning "any queue may have jobs" (too many queues for one notification)."""
SEPARATOR = "\n"
MAX_PAYLOAD = 7000
"""Bytes of queue names one notification carries (PostgreSQL allows 8000); more become ``*``."""
DOWN_WAIT = 0.5
"""Longest wait while the LISTEN connection is down: notifications may be missed meanwhile."""
RECONNECT_DELAYS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
OWN_PID_MEMORY = 3600.0 + 300.0
"""Seconds a pooled connection's server pid is remembered: the pool's ``max_lifetime`` (psycopg's
default, one hour) and some slack. A pid can only be reused after its connection closed."""


def notification(queues: Iterable[str]) -> str:
    """The payload that wakes the waiters of ``queues`` ('' for none)."""
    payload = SEPARATOR.join(sorted(queues))
    return payload if len(payload.encode()) <= MAX_PAYLOAD else ALL_QUEUES


@dataclass(eq=False, slots=True)
class _Waiter:
    queues: frozenset[str]
    woken: asyncio.Event = field(default_factory=asyncio.Event)


class Listener:
    """Tracks which queues were notified and wakes the waiters that care."""

    def __init__(self, conninfo: str, channel: str, connect_options: dict[str, Any]) -> None:
        self._conninfo = conninfo
        self._channel = channel
        self._connect_options = connect_options
        self._waiters: set[_Waiter] = set()
        # Every wake bumps a counter per queue; a wait that finds the counters moved since the
        # previous wait for the same queues returns at once, so a notification that arrived while
        # the worker was busy leasing is not slept through.
        self._generation: dict[str, int] = {}
        self._all_generation = 0
        self._seen: dict[frozenset[str], tuple[int, ...]] = {}
        self._own: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        """Set while the LISTEN connection is up."""

    def _marker(self, queues: frozenset[str]) -> tuple[int, ...]:
        return (self._all_generation, *(self._generation.get(q, 0) for q in sorted(queues)))

    def own(self, pid: int) -> None:
        """Ignore notifications from the server process ``pid``: one of this backend's pooled
        connections, whose commits wake this process's waiters directly (or, when their own lease
        took every due job, need not wake them). Without this, each commit that enqueues would wake
        the lease loop a second time, for a lease that finds nothing.

        Should a forgotten connection's pid be reused by another client's connection within
        :data:`OWN_PID_MEMORY`, that client's notifications are missed here: a worker then finds
        its jobs at its next poll instead, nothing is lost.
        """
        now = time.monotonic()
        for stale in [p for p, since in self._own.items() if now - since > OWN_PID_MEMORY]:
            del self._own[stale]
        self._own[pid] = now

    def wake(self, queues: Iterable[str] | None) -> None:
        """Jobs may have arrived in ``queues`` (all queues if None)."""
        if queues is None:
            self._all_generation += 1
            for waiter in self._waiters:
                waiter.woken.set()
            return
        names = set(queues)
        for name in names:
            self._generation[name] = self._generation.get(name, 0) + 1
        for waiter in self._waiters:
            if not waiter.queues.isdisjoint(names):
                waiter.woken.set()

    async def wait(self, queues: Sequence[str], timeout: float) -> None:
        """Until jobs may have arrived in ``queues``, or ``timeout`` seconds."""
        self.start()
        key = frozenset(queues)
        marker = self._marker(key)
        seen = self._seen.get(key)
        if seen is not None and seen != marker:
            self._seen[key] = marker
            return
        waiter = _Waiter(key)
        self._waiters.add(waiter)
        try:
            limit = timeout if self.listening.is_set() else min(timeout, DOWN_WAIT)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiter.woken.wait(), max(limit, 0.0))
        finally:
            self._waiters.discard(waiter)
            self._seen[key] = self._marker(key)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._listen(), name="conveyor-postgres-listener")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.listening.clear()

    async def _listen(self) -> None:
        failures = 0
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, **self._connect_options
                )
            except (psycopg.Error, OSError) as exc:
                failures += 1
                if failures == 1:
                    logger.warning("LISTEN connection failed (%s); reconnecting", exc)
                await asyncio.sleep(_backoff(failures))
                continue
            try:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
                if failures:
                    logger.info("LISTEN connection restored")
                failures = 0
                self.listening.set()
                # Anything committed while nobody listened went unnoticed: let every waiter look.
                self.wake(None)
                async for notify in conn.notifies():
                    if notify.pid in self._own:
                        continue
                    payload = notify.payload
                    self.wake(None if payload == ALL_QUEUES else payload.split(SEPARATOR))
            except (psycopg.Error, OSError) as exc:
                failures += 1
                logger.warning("LISTEN connection lost (%s); reconnecting", exc)
            finally:
                self.listening.clear()
                with contextlib.suppress(psycopg.Error, OSError):
                    await conn.close()
            await asyncio.sleep(_backoff(failures))


def _backoff(failures: int) -> float:
    return RECONNECT_DELAYS[min(max(failures, 1), len(RECONNECT_DELAYS)) - 1]
