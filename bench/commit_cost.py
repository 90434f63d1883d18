"""What one PostgreSQL commit costs, part by part (a diagnostic beside ``anatomy.py``).

    .venv/bin/python bench/commit_cost.py [URL] [--calls 150]

On a fresh schema (dropped after), times single ``PostgresBackend`` calls, p50 over ``--calls``
each, first with ``synchronous_commit=on`` (the default) and then with every session at ``off``
(libpq's ``options`` in the URL), so the difference is the WAL flush. One plain round trip on
this machine: ``bench/floor.py``.

* ``ack``: a commit settling one leased job;
* ``ack+job``: the same with one new job among its effects;
* ``ack+job+history``: the same with three history entries (a W2 hop's commit);
* ``commit_and_lease``: that commit and a lease of up to 50 jobs in one round trip (the new job
  is leased back), as a worker does it.

Each sample first enqueues and leases the job it settles, and acks what it leased after (untimed).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from stores import fresh_store

from conveyor.backends.postgres import PostgresBackend
from conveyor.ports import Commit, Effects, HistoryEntry, NewJob, Outcome, Settlement

BODY = b'{"payload": "' + b"x" * 300 + b'"}'
KINDS = ("ack", "ack+job", "ack+job+history", "commit_and_lease")


async def one(backend: PostgresBackend, kind: str) -> float:
    """One timed call of ``kind``, in ms."""
    now = time.time()
    first = f"a{now!r}"
    await backend.commit([Commit(effects=Effects(jobs=[NewJob(first, "q", BODY, now, now)]))], now)
    [leased] = await backend.lease({"q": 30.0}, 1, now)
    effects = Effects()
    if kind != "ack":
        effects.jobs.append(NewJob(f"b{now!r}", "q", BODY, now, now))
    if kind in ("ack+job+history", "commit_and_lease"):
        effects.history.extend(
            HistoryEntry(first, now, step, "q", first) for step in ("started", "succeeded", "enqueued")
        )
    commit = Commit(Settlement(leased.id, leased.token, Outcome.ACK), effects)
    started = time.perf_counter()
    if kind == "commit_and_lease":
        _, jobs = await backend.commit_and_lease([commit], now, {"q": 30.0, "other": 30.0}, 50)
    else:
        await backend.commit([commit], now)
        jobs = []
    elapsed = time.perf_counter() - started
    for job in jobs + await backend.lease({"q": 30.0}, 50, now):
        await backend.commit([Commit(Settlement(job.id, job.token, Outcome.ACK))], now)
    return elapsed * 1000


async def run(url: str, calls: int) -> None:
    for sync in ("on", "off"):
        options = "" if sync == "on" else "&options=-csynchronous_commit%3Doff"
        backend = PostgresBackend(url + options, vacuum_interval=0)
        await backend.connect()
        try:
            for _ in range(20):  # warm: plans cached, pool filled
                await one(backend, "commit_and_lease")
            for kind in KINDS:
                times = [await one(backend, kind) for _ in range(calls)]
                print(f"synchronous_commit={sync:<3} {kind:<18} p50 {statistics.median(times):6.2f} ms")
        finally:
            await backend.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url", nargs="?", default="postgresql://root@127.0.0.1:5432/conveyor_bench")
    ap.add_argument("--calls", type=int, default=150)
    a = ap.parse_args()
    store = fresh_store(a.url, "commit_cost")
    try:
        asyncio.run(run(store.url, a.calls))
    finally:
        store.drop()


if __name__ == "__main__":
    main()
