"""Retries start at their due times on the real clock, so jitter spreads them as it promises.

Sixty jobs that failed together with ``initial_delay=1, jitter=0.5`` used to run again in two or
three waves a poll interval apart (issue 14). The robustness contract proves the schedule exactly
on a fake clock; this test checks the same on the real one, briefly.
"""

from __future__ import annotations

import random
import time

from conveyor import App, Context, Lifecycle, Retry, Service, WorkerConfig
from conveyor.testing import running, wait_until

JOBS = 30
LATE = 0.05
"""The lateness allowed on a busy 2-core machine; a wave a poll later would be ~0.5 s late."""


async def test_retries_due_at_spread_times_start_at_those_times(backend_url: str) -> None:
    rng = random.Random(14)
    delays = [rng.uniform(0.1, 0.3) for _ in range(JOBS)]  # initial_delay=0.2 with jitter=0.5
    due: dict[int, float] = {}
    started: dict[int, float] = {}
    svc = Service("svc")

    @svc.queue_worker("spread", lifecycle=Lifecycle(max_attempts=2))
    async def spread(ctx: Context, job: dict[str, int]) -> None:
        n = job["n"]
        if ctx.job is not None and ctx.job.attempt == 1:
            due[n] = time.time() + delays[n]
            raise Retry(delay=delays[n])
        started[n] = time.time()

    app = App([svc], backend=backend_url, worker=WorkerConfig(concurrency=JOBS, poll_interval=0.5))
    async with running(app):
        await app.enqueue_many("spread", [{"n": n} for n in range(JOBS)])
        await wait_until(lambda: len(started) == JOBS, timeout=30, message="every retry to start")
    lateness = {n: round(started[n] - due[n], 4) for n in range(JOBS)}
    assert all(late < LATE for late in lateness.values()), lateness
    slots = {int(at * 100) for at in started.values()}  # distinct 10 ms slots
    assert len(slots) >= 10, sorted(lateness.values())
    print(f"lateness: max {max(lateness.values()):.4f}s, {len(slots)} slots")
