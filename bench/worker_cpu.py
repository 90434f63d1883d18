"""The worker's own CPU per job, in process on ``memory://`` (no server, no second process).

    .venv/bin/python bench/worker_cpu.py [--n 20000] [--repeats 5] [--concurrency 50]

Each repeat enqueues N no-op jobs into a fresh in-memory backend with the worker stopped, then
drains them with ``app.serving()`` (defaults otherwise: history on, a heartbeat and a watch task
as ``App.serve`` runs them); the figure is the process's CPU time (``time.process_time``) from the
start of serving to the last handler's end, divided by N. The store costs almost nothing here, so
what is measured is the runtime's path: lease, attempt, commit. Prints each repeat and the median.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from conveyor import App, Context, Service

WAIT_BOUND = 300.0
"""Seconds a drain may take before the run gives up (a bound, not a wait)."""


async def drain(n: int, concurrency: int) -> float:
    """CPU seconds of one drain of ``n`` no-op jobs."""
    svc = Service("bench")
    done = 0
    finished = asyncio.Event()

    @svc.queue_worker("noop")
    async def noop(ctx: Context, job: Any) -> None:
        nonlocal done
        done += 1
        if done == n:
            finished.set()

    app = App([svc], backend="memory://", tracing=False, metrics=False)
    async with app:
        for start in range(0, n, 1000):
            await app.enqueue_many("noop", [{}] * min(1000, n - start))
        began = time.process_time()
        async with app.serving(concurrency=concurrency):
            await asyncio.wait_for(finished.wait(), WAIT_BOUND)
            spent = time.process_time() - began
    return spent


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--concurrency", type=int, default=50)
    a = ap.parse_args(argv)
    figures = []
    for repeat in range(a.repeats):
        spent = asyncio.run(drain(a.n, a.concurrency))
        figures.append(spent / a.n * 1e6)
        print(f"repeat {repeat}: {figures[-1]:.1f} µs/job")
    print(f"median {statistics.median(figures):.1f} µs/job over {a.repeats} drains of {a.n}")


if __name__ == "__main__":
    main()
