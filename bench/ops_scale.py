"""The operator's calls at scale (issue 16): a queue holding 1,000,000 jobs and 100,000 dead letters.

    .venv/bin/python bench/ops_scale.py --backends sqlite,postgres,redis [--jobs 1000000] \\
        [--dead 100000] [--repeats 15] [--json /tmp/ops.json]

Per backend, on a fresh store (see ``stores.py``; dropped at the end): 100,000 jobs of queue
``work`` are leased and dead-lettered with three kinds of error (their failures spread over an
hour), then 1,000,000 jobs are enqueued on ``work`` (one in twenty delayed, one in a hundred with
an idempotency key, a few with a priority). Then each call below is timed ``--repeats`` times
through the operator's API (what the CLI calls), and the median and the worst are printed:

* ``stats``: ``app.stats(["work"])``; ``metrics``: ``app.queues.metrics(["work"])`` (stats,
  pauses and per-minute counts);
* ``dlq page``: the first page (50) of ``error_type=KeyError`` dead letters; ``dlq text page``:
  the first page of those whose message holds a word that one in three holds; ``dlq deep page``:
  a page 90,000 dead letters deep, keyset-paged; ``dlq count``: the count of one error type;
* ``job by id`` (a job in the middle of the backlog), ``job by key``, ``dead letter by id``;
* ``pause effective``: with a worker serving ``work`` (concurrency 50), the time from
  ``app.queues.pause("work")`` returning to the last job start the worker makes after it (its
  in-flight leases excluded: it is the time until no new job starts). Targets: stats/metrics
  ≤ 50 ms, a filtered DLQ page ≤ 100 ms, job lookup ≤ 10 ms, pause ≤ 1 s.

Every wait is bounded; all traffic goes to the URLs given (defaults: ``stores.DEFAULT_URLS``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stores import DEFAULT_URLS, fresh_store

from conveyor import App, Context, Lifecycle, Service, WorkerConfig
from conveyor.ports import Commit, Effects, ErrorInfo, NewJob, Outcome, Settlement
from conveyor.testing import wait_until

BATCH = 5000
ERRORS = [
    ErrorInfo("KeyError", "order {n} is missing from the catalogue", "Traceback ...\nKeyError"),
    ErrorInfo("shop.errors.PaymentDeclined", "card of order {n} DECLINED by the bank", "Traceback ..."),
    ErrorInfo("TimeoutError", "carrier API timed out after 30s (order {n})", "Traceback ..."),
]


def build_app(url: str, started: list[float]) -> App:
    svc = Service("scale")

    @svc.queue_worker("work", lifecycle=Lifecycle(visibility_timeout=300))
    async def work(ctx: Context, job: dict[str, Any]) -> None:
        started.append(time.perf_counter())
        await asyncio.sleep(0.01)

    return App([svc], backend=url, history=False, worker=WorkerConfig(concurrency=50, poll_interval=0.5))


async def fill(app: App, jobs: int, dead: int, say: Callable[[str], None]) -> dict[str, str]:
    """The dead letters, then the backlog; returns ids and keys to look up."""
    backend, now = app.backend, time.time()
    body = b'{"v":1,"id":"x","kind":"job","name":"work","payload":{},"correlation_id":"x","created_at":0}'
    t0 = time.perf_counter()
    for start in range(0, dead, BATCH):
        count = min(BATCH, dead - start)
        new = [NewJob(f"d{start + i:08d}", "work", body, now, now) for i in range(count)]
        await backend.commit([Commit(effects=Effects(jobs=new))], now)
        leased = await backend.lease({"work": 600.0}, count, now)
        commits = []
        for job in leased:
            n = int(job.id[1:])
            error = ERRORS[n % 3]
            error = ErrorInfo(error.type, error.message.format(n=n), error.traceback)
            commits.append(Commit(Settlement(job.id, job.token, Outcome.DEAD, None, error)))
        # failures spread over the last hour: every dead letter's own failed_at
        for i in range(0, len(commits), 500):
            at = now - 3600 + (start + i) * 3600 / max(1, dead)
            await backend.commit(commits[i : i + 500], max(at, now - 3600))
    say(f"  {dead:,} dead letters in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    for start in range(0, jobs, BATCH):
        new = []
        for i in range(start, min(jobs, start + BATCH)):
            delayed = i % 20 == 0
            new.append(
                NewJob(
                    f"j{i:08d}",
                    "work",
                    body,
                    now + 86400 if delayed else now - 1,
                    now,
                    f"key-{i}" if i % 100 == 0 else None,
                    5 if i % 1000 == 7 else 0,
                )
            )
        await backend.commit([Commit(effects=Effects(jobs=new))], now)
        if start % 200_000 == 0:
            say(f"  {start + len(new):,} jobs")
    say(f"  {jobs:,} jobs in {time.perf_counter() - t0:.1f}s")
    return {"job": f"j{jobs // 2 + 1:08d}", "key": f"key-{(jobs // 200) * 100}", "dead": f"d{dead // 2:08d}"}


async def timed(call: Callable[[], Awaitable[Any]], repeats: int) -> dict[str, float]:
    await call()  # warm: caches, prepared statements, scripts loaded
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        await call()
        times.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": statistics.median(times), "max_ms": max(times)}


async def pause_effective(app: App, started: list[float], repeats: int) -> dict[str, float]:
    """Serve ``work``, pause it, and time until the last job start after the pause."""
    results = []
    for _ in range(repeats):
        await app.queues.resume("work")
        started.clear()
        async with app.serving(queues=["work"]):
            await wait_until(lambda: len(started) >= 200, timeout=30, message="200 jobs started")
            await app.queues.pause("work")
            paused_at = time.perf_counter()
            await asyncio.sleep(2.0)  # a measurement window, not a wait on a condition: see the docstring
            after = [t for t in started if t > paused_at]
            results.append((max(after) - paused_at) * 1000 if after else 0.0)
    await app.queues.resume("work")
    return {"median_ms": statistics.median(results), "max_ms": max(results)}


async def measure(url: str, jobs: int, dead: int, repeats: int, say: Callable[[str], None]) -> dict[str, Any]:
    started: list[float] = []
    app = build_app(url, started)
    async with app:
        ids = await fill(app, jobs, dead, say)
        by_type = app.dead_letters("work", error_type="KeyError")
        by_text = app.dead_letters("work", text="declined")
        deep = (await app.dead_letters("work").page(1, before=None))[0]
        deep_key = (deep.failed_at - 3600 * 0.9, "~")
        results = {
            "stats": await timed(lambda: app.stats(["work"]), repeats),
            "metrics": await timed(lambda: app.queues.metrics(["work"]), repeats),
            "dlq page": await timed(lambda: by_type.page(50), repeats),
            "dlq text page": await timed(lambda: by_text.page(50), repeats),
            "dlq deep page": await timed(lambda: app.dead_letters("work").page(50, before=deep_key), repeats),
            "dlq count": await timed(by_type.count, repeats),
            "job by id": await timed(lambda: app.jobs.get(ids["job"]), repeats),
            "job by key": await timed(lambda: app.jobs.by_key("work", ids["key"]), repeats),
            "dead letter by id": await timed(lambda: app.jobs.get(ids["dead"]), repeats),
        }
        [stats] = await app.stats(["work"])
        say(f"  stats: ready {stats.ready:,}, scheduled {stats.scheduled:,}, dead {stats.dead:,}")
        results["pause effective"] = await pause_effective(app, started, max(3, repeats // 5))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backends", default="sqlite,postgres,redis")
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--dead", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    random.seed(1)
    report: dict[str, Any] = {"jobs": args.jobs, "dead": args.dead, "repeats": args.repeats, "backends": {}}
    for kind in args.backends.split(","):
        store = fresh_store(DEFAULT_URLS[kind], "ops_scale")
        print(f"{kind}: filling {store.url}", flush=True)
        try:
            report["backends"][kind] = asyncio.run(
                measure(store.url, args.jobs, args.dead, args.repeats, lambda line: print(line, flush=True))
            )
        finally:
            store.drop()
        for name, figures in report["backends"][kind].items():
            print(f"  {name:<18} median {figures['median_ms']:8.2f} ms   max {figures['max_ms']:8.2f} ms")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
