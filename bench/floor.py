"""The machine's floor for latency: raw round trips to Redis and PostgreSQL, no conveyor involved.

    .venv/bin/python bench/floor.py [--redis redis://127.0.0.1:6379/0]
        [--postgres postgresql://root@127.0.0.1:5432/conveyor_bench] [--n 300]

Paced like a quiet worker (a few ms between calls, so the process sleeps and is woken as in the
paced W2 run), it prints p50/p90/p99 of: Redis ``PING`` and a trivial ``EVAL``; PostgreSQL
``SELECT 1`` and a one-row INSERT committed with ``synchronous_commit`` on (waits for the WAL
flush) and off. A W2 hop needs at least two such writes in sequence (the step's commit, the next
lease), so on a loaded machine these numbers bound what any queue's step latency can be.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

PAUSE = 0.003
"""Seconds between calls: 300 calls take about a second, and each call starts from idle."""


async def timed(call: Callable[[], Awaitable[object]], n: int) -> str:
    """p50/p90/p99 of ``n`` paced calls, in ms."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        await call()
        times.append(time.perf_counter() - t)
        await asyncio.sleep(PAUSE)
    times.sort()
    p50, p90, p99 = (times[min(n - 1, int(q * n))] * 1000 for q in (0.5, 0.9, 0.99))
    return f"p50 {p50:6.2f} ms  p90 {p90:6.2f} ms  p99 {p99:6.2f} ms"


async def redis_floor(url: str, n: int) -> None:
    """PING and EVAL round trips."""
    import redis.asyncio as redis

    client = redis.Redis.from_url(url)
    try:
        await client.ping()
        print(f"redis PING                   {await timed(client.ping, n)}")
        print(f"redis EVAL 'return 1'        {await timed(lambda: client.eval('return 1', 0), n)}")
    finally:
        await client.aclose()


async def postgres_floor(url: str, n: int) -> None:
    """SELECT 1, and a one-row insert with synchronous_commit on and off (in a temporary schema)."""
    import psycopg

    schema = f"bench_floor_{int(time.time() * 1000) % 10**9}"
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(f"CREATE SCHEMA {schema}")
        try:
            await conn.execute(f"CREATE TABLE {schema}.t (x int)")
            print(f"postgres SELECT 1            {await timed(lambda: conn.execute('SELECT 1'), n)}")
            insert = f"INSERT INTO {schema}.t VALUES (1)"
            for mode in ("on", "off"):
                await conn.execute(f"SET synchronous_commit = {mode}")
                figures = await timed(lambda: conn.execute(insert), n)
                print(f"postgres INSERT sync={mode:<3}     {figures}")
        finally:
            await conn.execute(f"DROP SCHEMA {schema} CASCADE")


def main(argv: list[str] | None = None) -> None:
    """Measure each server given (both by default)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--postgres", default="postgresql://root@127.0.0.1:5432/conveyor_bench")
    ap.add_argument("--n", type=int, default=300)
    a = ap.parse_args(argv)
    if a.redis:
        asyncio.run(redis_floor(a.redis, a.n))
    if a.postgres:
        asyncio.run(postgres_floor(a.postgres, a.n))


if __name__ == "__main__":
    main()
