"""``app.serving()``: serve in the background for a block, the way demo.py and tests do."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from conveyor import App, Context, Service, UnknownQueueError, WorkerConfig
from conveyor.testing import wait_until

svc = Service("svc")
done: list[Any] = []


@svc.queue_worker("work")
async def work(ctx: Context, job: Any) -> None:
    done.append(job)


async def test_serving_runs_the_workers_in_the_block_and_stops_them_on_exit(backend_url: str) -> None:
    done.clear()
    app = App([svc], backend=backend_url, worker=WorkerConfig(poll_interval=0.05))
    async with app:
        async with app.serving():
            await app.enqueue("work", {"n": 1})
            await wait_until(lambda: done == [{"n": 1}], message="the job ran")
        await app.enqueue("work", {"n": 2})  # serving has ended: this job stays queued
        [stats] = await app.backend.stats(["work"], app.clock.now())
        assert stats.ready == 1
    assert done == [{"n": 1}]


async def test_serving_raises_at_entry_what_stops_serve_from_starting() -> None:
    app = App([svc], backend="memory://")
    with pytest.raises(UnknownQueueError, match="did you mean 'work'"):
        async with app.serving(queues=["wrok"]):
            raise AssertionError("the block must not run")


def test_the_demo_does_not_import_conveyor_testing() -> None:
    probe = "import sys, conveyor.demo; print('conveyor.testing' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
