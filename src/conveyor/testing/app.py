"""``TestApp``: an app's services on ``memory://`` and a :class:`FakeClock`, worked until idle.

The anchors are FastStream's ``TestBroker`` (the app's own handlers, run in memory, no broker to
start) and Temporal's time-skipping test environment (a workflow that sleeps for days finishes at
once, because the test environment jumps its clock to the next timer when nothing else can run).
``run_until_idle`` does the second on conveyor's delayed jobs: retry backoffs, ``delay=``,
approval timeouts and, when asked, schedule ticks.

>>> # async with TestApp(app) as test:
>>> #     await test.invoke("place_order", {...})
>>> #     await test.run_until_idle()
>>> #     await test.assert_workflow("order-1", path=["(order_placed)", "validate_inventory"])
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from conveyor.app import App
from conveyor.backends.memory import MemoryBackend
from conveyor.definitions.service import Service
from conveyor.model.lifecycle import Seconds, seconds
from conveyor.operations.status import WorkflowStatus
from conveyor.runtime.scheduler import next_tick, previous_tick, state_key
from conveyor.testing.clock import FakeClock

MAX_STEPS = 10_000
"""How many times ``run_until_idle`` moves the clock before it gives up on an app that never rests."""


class TestApp(App):
    """An :class:`~conveyor.App` of the same services (and resources, workflows, external queues and
    worker settings) on ``memory://``, on a :class:`FakeClock` (``test.clock``).

    Give an app (``TestApp(app)``: what it is built from is copied, the app itself is not touched)
    or services (``TestApp([orders], resources={...})``). Keyword arguments replace the app's.
    """

    __test__ = False  # a class named Test* that pytest must not collect

    def __init__(
        self,
        app: App | Iterable[Service],
        *,
        clock: FakeClock | None = None,
        resources: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        if isinstance(app, App):
            services: Iterable[Service] = app.registry.services
            given: dict[str, Any] = {
                "resources": dict(app.runtime.resources),
                "workflows": app.workflows.declared,
                "external_queues": app.registry.external_queues,
                "worker": app.worker_config,
                "history": app.runtime.history_enabled,
            }
        else:
            services, given = app, {}
        if resources is not None:
            given["resources"] = resources
        given.update(options, tracing=options.get("tracing", False), metrics=options.get("metrics", False))
        self.clock: FakeClock = clock or FakeClock()
        super().__init__(services, backend="memory://", clock=self.clock, **given)

    @property
    def memory(self) -> MemoryBackend:
        backend = self.backend
        assert isinstance(backend, MemoryBackend), "a TestApp runs on memory://"
        return backend

    async def run_until_idle(
        self, *, within: Seconds | None = None, timeout: float = 10.0, max_steps: int = MAX_STEPS
    ) -> float:
        """Work every job until nothing is left to run, jumping the clock forward whenever every
        remaining job waits for a later time; returns how far the clock moved, in seconds.

        Delayed jobs (``delay=``, retry backoffs, approval timeouts) are followed however far
        away, unless ``within`` bounds the jump. Schedules never end, so their ticks are reached
        only with ``within`` (``within=3600``: every tick of the next hour fires, in order).
        Workers run for the call unless the app is serving already. Fails with AssertionError
        when a job runs for longer than ``timeout`` (real) seconds, or the app is still busy
        after ``max_steps`` jumps (a job that re-enqueues itself for ever).
        """
        horizon = None if within is None else self.clock.now() + seconds(within)
        started = self.clock.now()
        async with self._served():
            for _ in range(max_steps):
                await self._settled(timeout)
                due = self._next_due(horizon)
                if due is None:
                    return self.clock.now() - started
                self.clock.advance(due - self.clock.now())
        raise AssertionError(f"still busy after {max_steps} jumps of the clock (a job that never ends?)")

    async def assert_workflow(
        self, instance_id: str, *, path: Sequence[str] | None = None, state: str | None = None
    ) -> WorkflowStatus:
        """Assert what workflow ``instance_id`` did: its ``path`` (steps and ``(events)`` in order,
        ``step✗`` for a dead-lettered one, as ``conveyor status`` prints it) and its ``state``;
        returns its status."""
        status = await self.workflows.status(instance_id)
        problems = []
        if state is not None and status.state != state:
            problems.append(f"state {status.state!r}, expected {state!r}")
        if path is not None and status.path != list(path):
            problems.append(f"path {' → '.join(status.path) or '(empty)'}\n    expected {' → '.join(path)}")
        if problems:
            detail = f"\n  last error: {status.last_error}" if status.last_error else ""
            raise AssertionError(f"workflow {instance_id!r}: " + "; ".join(problems) + detail)
        return status

    @contextlib.asynccontextmanager
    async def _served(self) -> AsyncIterator[None]:
        if self._workers:
            yield
            return
        async with self, self.serving():
            yield

    def _next_due(self, horizon: float | None) -> float | None:
        now = self.clock.now()
        times = [self.memory.next_due(now)]
        if horizon is not None:
            times += [next_tick(s.schedule, now) for s in self._schedules()]
        due = [t for t in times if t is not None and (horizon is None or t <= horizon)]
        return min(due, default=None)

    def _schedules(self) -> list[Any]:
        """The schedules the scheduler of this app's serving fires (none when it runs without)."""
        return list(self._scheduler.schedules) if self._scheduler is not None else []

    async def _settled(self, timeout: float) -> None:
        """Wait until no job is due or running and the scheduler has fired every tick up to now."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await self._quiet():
            if loop.time() > deadline:
                busy = [s.queue for s in await self.stats() if s.ready or s.leased]
                raise AssertionError(f"jobs still running or due after {timeout}s: {', '.join(busy)}")
            await asyncio.sleep(0.001)

    async def _quiet(self) -> bool:
        if any((s.ready or s.leased) and not s.paused for s in await self.stats()):
            return False
        now = self.clock.now()
        for definition in self._schedules():
            fired = await self.states.get(state_key(definition.name))
            if fired is None or float(fired["last_tick"]) < previous_tick(definition.schedule, now) - 1e-3:
                return False
        return True


__all__ = ["TestApp"]
