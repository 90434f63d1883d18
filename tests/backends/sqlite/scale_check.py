"""The SQLite operations port at issue 16's scale: a diagnostic, not a test (pytest does not collect it).

    .venv/bin/python tests/backends/sqlite/scale_check.py [--jobs 1000000] [--dead 100000] [--analyze]

Fills a fresh file in a temporary directory with ``--jobs`` jobs in one queue (half due, half
later, one in 10,000 at priority 5, one in 5,000 leased) and ``--dead`` dead letters over five
queues (one message in 100 says "declined"), written straight into the tables, then prints the
best of five timings of each operator call through ``SQLiteBackend``. Targets: stats <= 50 ms, a
filtered dead-letter page <= 100 ms, a job lookup <= 10 ms. ``--analyze`` runs ANALYZE first, so
the plans are also seen with the statistics a user's maintenance could add.
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from pathlib import Path

from conveyor.backends.sqlite import SQLiteBackend
from conveyor.ports import DeadLetterFilter

T0 = 1_700_000_000.0
TYPES = ("shop.errors.PaymentDeclined", "ValueError", "KeyError", "TimeoutError")


def fill(path: str, jobs: int, dead: int, analyze: bool) -> None:
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("BEGIN")
        db.executemany(
            "INSERT INTO jobs (id, queue, body, available_at, enqueued_at, priority, leased)"
            " VALUES (?, 'big', x'7b7d', ?, ?, ?, ?)",
            (
                (f"j{i:07d}", T0 + i - jobs // 2, T0, 5 if i % 10_000 == 0 else 0, int(i % 5_000 == 1))
                for i in range(jobs)
            ),
        )
        db.execute("INSERT INTO queue_lanes VALUES ('big', 5)")
        db.executemany(
            "INSERT INTO dead_letters VALUES (?, ?, x'7b7d', ?, ?, 'tb', 3, ?, ?)",
            (
                (
                    f"d{i:06d}",
                    f"q{i % 5}",
                    TYPES[i % 4],
                    f"message {i}, card DECLINED" if i % 100 == 0 else f"message {i}",
                    T0,
                    T0 + i,
                )
                for i in range(dead)
            ),
        )
        db.execute("COMMIT")
        if analyze:
            db.execute("ANALYZE")


async def best_of(name: str, call: Callable[[], Awaitable[object]], runs: int = 5) -> None:
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        best = min(best, time.perf_counter() - started)
    print(f"{name:<48} {best * 1000:8.1f} ms")


async def main(jobs: int, dead: int, analyze: bool) -> None:
    with tempfile.TemporaryDirectory() as directory:
        url = f"sqlite:///{Path(directory) / 'scale.db'}"
        backend = SQLiteBackend(url)
        await backend.connect()
        try:
            fill(backend.path, jobs, dead, analyze)
            print(await backend.stats(["big"], T0))
            await best_of("stats(big)", lambda: backend.stats(["big"], T0))
            await best_of("job(id)", lambda: backend.job(f"j{jobs // 2:07d}", T0))
            await best_of("dead_letter(id)", lambda: backend.dead_letter(f"d{dead // 2:06d}"))
            await best_of("leases(big)", lambda: backend.leases("big"))
            await best_of("leases(None)", lambda: backend.leases(None))
            pages = {
                "no filter": DeadLetterFilter(),
                "error_type=PaymentDeclined": DeadLetterFilter(error_type="PaymentDeclined"),
                "queue=q1, text=declined": DeadLetterFilter(queue="q1", text="declined"),
                "text matching nothing (walks them all)": DeadLetterFilter(text="zzz"),
                "error_type matching nothing": DeadLetterFilter(error_type="Nope"),
            }
            for label, where in pages.items():
                await best_of(f"DLQ page, {label}", lambda where=where: backend.find_dead_letters(where))
            middle = (T0 + dead // 2, f"d{dead // 2:06d}")
            await best_of(
                "DLQ page after the middle",
                lambda: backend.find_dead_letters(DeadLetterFilter(), 100, middle),
            )
            await best_of(
                "count, error_type=PaymentDeclined",
                lambda: backend.count_dead_letters(DeadLetterFilter(error_type="PaymentDeclined")),
            )
            await best_of("count, queue=q1", lambda: backend.count_dead_letters(DeadLetterFilter(queue="q1")))
        finally:
            await backend.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--dead", type=int, default=100_000)
    parser.add_argument("--analyze", action="store_true")
    args = parser.parse_args()
    asyncio.run(main(args.jobs, args.dead, args.analyze))
