"""What a snapshot of the NATS backend's state costs: ``MemoryBackend.dump`` to JSON and back.

``python bench/snapshot_cost.py [JOBS]`` (default 200,000 ready jobs of a 30-byte body).
"""

from __future__ import annotations

import asyncio
import sys
import time

import orjson

from conveyor.backends.memory import MemoryBackend
from conveyor.ports import Commit, Effects, NewJob

BATCH = 10_000


async def main(jobs: int) -> None:
    store = MemoryBackend()
    for start in range(0, jobs, BATCH):
        batch = [
            NewJob(f"job-{i:07d}", "q", b'{"order_id": "order-%d"}' % i, 1.0, 1.0)
            for i in range(start, min(jobs, start + BATCH))
        ]
        await store.commit([Commit(effects=Effects(jobs=batch))], 1.0)
    started = time.perf_counter()
    data = orjson.dumps(store.dump())
    dumped = time.perf_counter() - started
    started = time.perf_counter()
    MemoryBackend.load(orjson.loads(data))
    loaded = time.perf_counter() - started
    print(f"{jobs:,} jobs: dump {dumped:.2f} s, {len(data) / 1e6:.1f} MB, load {loaded:.2f} s")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000))
