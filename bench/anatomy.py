"""Where a worker's time goes, seen from its backend calls (a diagnostic beside ``run.py``).

    .venv/bin/python bench/anatomy.py drain URL [--n 10000] [--concurrency N]
    .venv/bin/python bench/anatomy.py hops URL [--count 150] [--rate 30]

Runs the benchmark's app (``workload.py``) in this process with ``app.backend``'s ``lease``,
``commit`` and ``wait_for_jobs`` wrapped by timers, on a fresh store (``stores.py``, dropped after):

* ``drain``: enqueue N no-op jobs, then drain them with ``app.serve()``; prints each call's count,
  calls per job, batch sizes and durations. With conveyor's defaults a worker leases up to
  ``concurrency`` jobs, runs them, commits them as one batch, then leases again.
* ``hops``: a warm worker; ``workload.py chains COUNT RATE`` in a subprocess starts paced chains;
  each hop (step k+1 started after step k enqueued it) is split into: enqueue -> end of the commit
  that stored it, -> start of the lease that took it, the lease itself, -> handler start.

The wrappers cost a few microseconds per call (one call per batch), so the figures are those of an
unwrapped worker. Every wait is bounded; the store is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from stats import RecordFile, pct
from stores import fresh_store

HERE = os.path.dirname(os.path.abspath(__file__))
WAIT_ROUNDS = 6_000
"""Upper bound on 50 ms looks at the record file (5 minutes)."""


@dataclass(frozen=True)
class Call:
    """One backend call: method, start and end (wall clock), and batch size (jobs)."""

    name: str
    start: float
    end: float
    size: int


def instrument(backend: Any, calls: list[Call]) -> None:
    """Wrap the backend's lease/commit/wait_for_jobs so each call is appended to ``calls``."""
    sizes: dict[str, Callable[[tuple[Any, ...], Any], int]] = {
        "lease": lambda args, result: len(result),
        "commit": lambda args, result: len(args[0]),
        "wait_for_jobs": lambda args, result: 0,
        # the jobs it leased (the commits it carried are args[0])
        "commit_and_lease": lambda args, result: len(result[1]),
    }
    for name, size in sizes.items():
        original: Callable[..., Awaitable[Any]] | None = getattr(backend, name, None)
        if original is None:
            continue

        def wrapper(
            *args: Any,
            _name: str = name,
            _original: Callable[..., Awaitable[Any]] = original,
            _size: Callable[[tuple[Any, ...], Any], int] = size,
        ) -> Awaitable[Any]:
            async def timed() -> Any:
                start = time.time()
                result = await _original(*args)
                calls.append(Call(_name, start, time.time(), _size(args, result)))
                return result

            return timed()

        setattr(backend, name, wrapper)


def ms(values: list[float], q: float) -> str:
    """A percentile of seconds, printed in ms."""
    value = pct(values, q)
    return "-" if value is None else f"{value * 1000:.2f}"


def report_calls(calls: list[Call], jobs: int) -> None:
    """Per method: count, per job, mean/max batch, p50/p99 duration, total seconds."""
    for name in ("lease", "commit", "commit_and_lease", "wait_for_jobs"):
        mine = [c for c in calls if c.name == name]
        if not mine:
            continue
        durations = [c.end - c.start for c in mine]
        sizes = [c.size for c in mine]
        print(
            f"{name:<14} calls {len(mine):6d}  per job {len(mine) / max(jobs, 1):.3f}  "
            f"batch mean {sum(sizes) / len(mine):6.1f} max {max(sizes):4d}  "
            f"p50 {ms(durations, 0.5)} ms  p99 {ms(durations, 0.99)} ms  total {sum(durations):.2f} s"
        )


async def wait_records(records: RecordFile, done: Callable[[], bool]) -> bool:
    """Poll the record file every 50 ms until ``done`` (bounded by :data:`WAIT_ROUNDS`)."""
    for _ in range(WAIT_ROUNDS):
        records.poll()
        if done():
            return True
        await asyncio.sleep(0.05)
    return False


async def drain(n: int, concurrency: int | None) -> None:
    """Enqueue ``n`` no-ops, then drain them with one in-process worker."""
    import workload

    calls: list[Call] = []
    await workload.enqueue_noops(n)
    instrument(workload.app.backend, calls)
    records = RecordFile(os.environ["BENCH_REC"])
    started = time.time()
    serving = asyncio.create_task(workload.app.serve(concurrency=concurrency))
    complete = await wait_records(records, lambda: len(records.records) >= n)
    workload.app.stop()
    await serving
    recs = records.records
    span = max(r.t_end for r in recs) - min(r.t_start for r in recs) if recs else 0.0
    print(f"drained {len(recs)}/{n} jobs (complete: {complete}) in {span:.2f} s: {len(recs) / span:.0f}/s")
    print(f"(worker up {time.time() - started:.1f} s)")
    report_calls(calls, len(recs))


async def hops(count: int, rate: float) -> None:
    """Paced chains on a warm in-process worker; the hop split described in the docstring."""
    import workload

    calls: list[Call] = []
    instrument(workload.app.backend, calls)
    records = RecordFile(os.environ["BENCH_REC"])
    serving = asyncio.create_task(workload.app.serve())
    await asyncio.sleep(1.0)  # warm: connected, first idle lease done
    calls.clear()
    starter = await asyncio.create_subprocess_exec(
        sys.executable, os.path.join(HERE, "workload.py"), "chains", str(count), str(rate), "0"
    )
    try:
        await asyncio.wait_for(starter.wait(), timeout=count / rate + 120)
    finally:
        if starter.returncode is None:
            starter.kill()
    await wait_records(records, lambda: sum(1 for r in records.records if r.step == 3) >= count)
    workload.app.stop()
    await serving
    report_calls(calls, len(records.records))
    # a commit_and_lease is both: the commit of one step and the lease of the next
    commit_ends = sorted(c.end for c in calls if c.name in ("commit", "commit_and_lease"))
    leases = sorted((c.end, c.start) for c in calls if c.name in ("lease", "commit_and_lease") and c.size)
    lease_ends = [end for end, _ in leases]
    parts: dict[str, list[float]] = {
        "enqueue->commit end": [],
        "->lease start": [],
        "lease": [],
        "->start": [],
    }
    for r in records.records:
        i = bisect.bisect_left(commit_ends, r.t_enq)  # the first commit to end after the enqueue
        j = bisect.bisect_right(lease_ends, r.t_start) - 1  # the last lease to end before the start
        if r.step < 2 or i == len(commit_ends) or j < 0:
            continue
        lease_end, lease_start = leases[j]
        parts["enqueue->commit end"].append(commit_ends[i] - r.t_enq)
        parts["->lease start"].append(lease_start - commit_ends[i])  # < 0: the lease was under way
        parts["lease"].append(lease_end - lease_start)
        parts["->start"].append(r.t_start - lease_end)
    latency = [r.t_start - r.t_enq for r in records.records if r.step >= 2]
    print(f"hops {len(latency)}: latency p50 {ms(latency, 0.5)} ms  p99 {ms(latency, 0.99)} ms")
    for name, values in parts.items():
        quantiles = "  ".join(f"p{q * 100:.0f} {ms(values, q):>6} ms" for q in (0.5, 0.9, 0.99))
        print(f"  {name:<20} {quantiles}")


def main(argv: list[str] | None = None) -> None:
    """Parse, set up a fresh store, run one mode, drop the store."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["drain", "hops"])
    ap.add_argument("url")
    ap.add_argument("--n", type=int, default=10_000, help="drain: jobs")
    ap.add_argument("--concurrency", type=int, help="drain: app.serve(concurrency=N)")
    ap.add_argument("--count", type=int, default=150, help="hops: chains")
    ap.add_argument("--rate", type=float, default=30.0, help="hops: chains started per second")
    a = ap.parse_args(argv)
    store = fresh_store(a.url, f"anatomy_{a.mode}_{os.getpid()}")
    rec = os.path.join(tempfile.gettempdir(), f"conveyor-anatomy-{os.getpid()}.rec")
    # workload.py reads both at import time, as the worker subprocesses of run.py do
    os.environ.update(CONVEYOR_URL=store.url, BENCH_REC=rec)
    try:
        asyncio.run(drain(a.n, a.concurrency) if a.mode == "drain" else hops(a.count, a.rate))
    finally:
        store.drop()
        if os.path.exists(rec):
            os.remove(rec)


if __name__ == "__main__":
    main()
