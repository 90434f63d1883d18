"""The benchmark's conveyor app and the processes that drive it (same workloads as the peers).

One script, three roles, chosen by the first argument; the backend is ``$CONVEYOR_URL`` and
every handler appends one record line to ``$BENCH_REC``::

    python bench/workload.py worker             # app.run() with conveyor's defaults
    python bench/workload.py noop N             # W1: enqueue N no-op jobs (enqueue_many, 1,000 a call)
    python bench/workload.py chains W RATE OFF  # W2: start W three-step chains, ids OFF..OFF+W-1;
                                                #     RATE=0 is a burst, else RATE chains/s open-loop

Two knobs, off by default, make variants for experiments (``run.py --no-history --concurrency N``):
``BENCH_HISTORY=0`` builds the app with ``App(history=False)``, ``BENCH_CONCURRENCY=N`` runs the
worker with ``app.run(concurrency=N)``.

The enqueueing roles print ``ENQUEUE_SECONDS <seconds>`` when done, timed like the peers' clients
(connecting included); ``noop`` also prints ``CALLS_SECONDS <seconds>``, the ``enqueue_many`` calls
alone. Only conveyor's public API is
used (``App``, ``Service``, ``app.enqueue_many``, ``app.enqueue``, ``ctx.enqueue``, ``app.run``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

from pydantic import BaseModel

from conveyor import App, Context, Service

W1_BATCH = 1_000
"""Jobs per ``enqueue_many`` call in W1 (the peers' bulk enqueue uses the same size)."""

URL = os.environ.get("CONVEYOR_URL", "sqlite:////tmp/conveyor-bench/bench.db")
HISTORY = os.environ.get("BENCH_HISTORY", "1") != "0"
CONCURRENCY = int(os.environ["BENCH_CONCURRENCY"]) if os.environ.get("BENCH_CONCURRENCY") else None
bench = Service("bench", version="1", description="benchmark workloads")


class Noop(BaseModel):
    """W1's payload: nothing."""


class Step(BaseModel):
    """One step of a W2 chain: workflow id, step number (1-3) and when it was enqueued."""

    wf: int
    k: int
    t_enq: float


class Recorder:
    """Appends ``kind wf step t_enq t_start t_end cpu`` per job to one file.

    One O_APPEND ``write`` per job (about a microsecond), so recording adds no broker traffic and
    lines from concurrent tasks never interleave. kind 1 = W1 job, kind 2 = W2 step. The first six
    fields are the peers' record; ``cpu`` is the worker process's CPU time (all threads) at the
    job's end, from which the harness derives CPU per job, a figure the machine's load moves less
    than throughput.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def __call__(self, kind: int, wf: int, step: int, t_enq: float, t_start: float) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        now, cpu = time.time(), time.process_time()
        line = b"%d %d %d %.6f %.6f %.6f %.6f\n" % (kind, wf, step, t_enq, t_start, now, cpu)
        os.write(self._fd, line)


record = Recorder(os.environ.get("BENCH_REC", "/dev/null"))


@bench.queue_worker("noop", "no-op job", payload=Noop)
async def noop(ctx: Context, job: Noop) -> None:
    record(1, 0, 0, 0.0, time.time())


@bench.queue_worker("step", "one step of a three-step chain", payload=Step, enqueues=["step"])
async def step(ctx: Context, job: Step) -> None:
    record(2, job.wf, job.k, job.t_enq, time.time())
    if job.k < 3:
        # commits atomically with this step's ack; t_enq is taken at the call, like the peers
        await ctx.enqueue("step", {"wf": job.wf, "k": job.k + 1, "t_enq": time.time()})


app = App([bench], backend=URL, history=HISTORY)


async def enqueue_noops(n: int) -> float:
    """W1: ``n`` no-op jobs in ``enqueue_many`` calls of :data:`W1_BATCH`; seconds in the calls."""
    async with app:
        t = time.perf_counter()
        for start in range(0, n, W1_BATCH):
            await app.enqueue_many("noop", [{}] * min(W1_BATCH, n - start))
        return time.perf_counter() - t


async def start_chains(count: int, rate: float, offset: int) -> None:
    """W2: start ``count`` chains, all at once (``rate`` 0) or open-loop at ``rate`` per second."""
    async with app:
        t0 = time.time()
        for i in range(count):
            if rate:
                delay = t0 + i / rate - time.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await app.enqueue("step", {"wf": offset + i, "k": 1, "t_enq": time.time()})


def main(argv: list[str]) -> None:
    """Dispatch ``worker | noop N | chains W RATE OFFSET``."""
    role, args = argv[0], argv[1:]
    if role == "worker":
        app.run(concurrency=CONCURRENCY)
        return
    t = time.time()
    if role == "noop":
        calls = asyncio.run(enqueue_noops(int(args[0])))
        print(f"CALLS_SECONDS {calls:.6f}", flush=True)
    elif role == "chains":
        asyncio.run(start_chains(int(args[0]), float(args[1]), int(args[2])))
    else:
        raise SystemExit(f"unknown role {role!r}: worker | noop N | chains W RATE OFFSET")
    print(f"ENQUEUE_SECONDS {time.time() - t:.6f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
