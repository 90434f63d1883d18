"""What every runtime-level contract shares: the fixtures (a fake clock, backends, apps on them) and
the helpers its tests wait and inspect with."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from pydantic import BaseModel

from conveyor import App, RetryStrategy, Service, WorkerConfig
from conveyor.backends import open_backend
from conveyor.ports import Backend, Commit, Effects, NewJob
from conveyor.testing import FakeClock, wait_until

NO_JITTER = RetryStrategy(initial_delay=10, max_delay=100, multiplier=2, jitter=0)


class Item(BaseModel):
    n: int


class Recorder:
    """What handlers saw, for assertions."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, int]] = []
        self.release = asyncio.Event()

    def seen(self, queue: str) -> list[Any]:
        return [payload for name, payload, _ in self.calls if name == queue]

    def attempts(self, queue: str) -> list[int]:
        return [attempt for name, _, attempt in self.calls if name == queue]


class AppFixtures:
    """The fixtures every runtime-level contract uses: a fake clock, backends, apps on them."""

    @pytest.fixture
    def clock(self) -> FakeClock:
        return FakeClock()

    @pytest.fixture
    async def backends(self, backend_url: str) -> AsyncIterator[Callable[[], Backend]]:
        """New backend objects on the same store (the same object for ``memory://``); each is
        connected and closed by the app it is given to."""
        shared = open_backend(backend_url) if backend_url.startswith("memory") else None

        def make() -> Backend:
            return shared if shared is not None else open_backend(backend_url)

        yield make

    @pytest.fixture
    def make_app(self, backends: Callable[[], Backend], clock: FakeClock) -> Callable[..., App]:
        def make(*services: Service, **kwargs: Any) -> App:
            kwargs.setdefault("worker", WorkerConfig(concurrency=8, poll_interval=0.05, shutdown_grace=5))
            return App(list(services), backend=backends(), clock=clock, **kwargs)

        return make


async def _polled(*apps: App) -> None:
    """Until each app's worker has looked for jobs twice more: what it could run by now, it ran."""
    targets = [(worker, worker.lease_rounds + 2) for app in apps for worker in app._workers]
    await wait_until(lambda: all(worker.lease_rounds >= target for worker, target in targets))


async def _stats(app: App, queue: str, check: Callable[[Any], bool]) -> bool:
    [stats] = await app.stats([queue])
    return check(stats)


async def _status_with_steps(app: App, instance: str, done: int) -> Any:
    status = await app.workflows.status(instance)
    return status if sum(step.state == "succeeded" for step in status.steps) >= done else None


async def _at_least(listing: Any, count: int) -> Any:
    items = await listing
    return items if len(items) >= count else None


async def _state_is(app: App, key: str, value: Any) -> bool:
    return bool(await app.states.get(key) == value)


async def _store_raw(app: App, queue: str, body: bytes, job_id: str | None = None) -> None:
    """Store a message as if a foreign or broken producer had written it (its job named after the
    time unless ``job_id`` is given)."""
    now = app.clock.now()
    job = NewJob(job_id or f"raw-{now}", queue, body, now, now)
    await app.backend.commit([Commit(effects=Effects(jobs=[job]))], now)
