"""Workflow history older than the retention is pruned by running workers."""

from __future__ import annotations

from typing import Any

from conveyor import App, Context, Service, WorkerConfig
from conveyor.testing import FakeClock, running, wait_until


async def test_history_older_than_the_retention_is_pruned(backend_url: str) -> None:
    svc = Service("svc")

    @svc.queue_worker("step")
    async def step(ctx: Context, job: dict[str, Any]) -> None:
        pass

    clock = FakeClock()
    app = App(
        [svc],
        backend=backend_url,
        clock=clock,
        history_retention=3600,
        worker=WorkerConfig(poll_interval=0.05),
    )
    async with app, running(app):
        await app.enqueue("step", {}, correlation_id="old")
        await wait_until(lambda: _state(app, "old", "completed"))
        clock.advance(1800)
        await app.enqueue("step", {}, correlation_id="recent")
        await wait_until(lambda: _state(app, "recent", "completed"))
        clock.advance(2000)  # "old" is now 3800 s old, "recent" 2000 s
        await wait_until(lambda: _state(app, "old", "unknown"))
        assert (await app.workflows.status("recent")).state == "completed"


async def _state(app: App, instance: str, state: str) -> bool:
    return (await app.workflows.status(instance)).state == state
