"""``enqueue_many`` alone, on SQLite: microseconds a job for 10,000 ``Noop``-model payloads.

    .venv/bin/python bench/enqueue_alone.py head
    PYTHONPATH=/tmp/base-src/src .venv/bin/python bench/enqueue_alone.py base   # another commit's src/

Best of 5 rounds of ten 1,000-payload calls, after connecting (the peers' *W1 enq/s* includes the
process start and the connect). Alternate the commits a few times: one run says little here.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time

from pydantic import BaseModel

from conveyor import App, Context, Service


class Noop(BaseModel):
    pass


svc = Service("bench")


@svc.queue_worker("noop", payload=Noop)
async def noop(ctx: Context, job: Noop) -> None:
    pass


async def main(label: str) -> None:
    folder = tempfile.mkdtemp()
    app = App([svc], backend=f"sqlite:///{folder}/bench.db")
    started = time.perf_counter()
    async with app:
        connected = time.perf_counter()
        best = float("inf")
        for _ in range(5):
            round_start = time.perf_counter()
            for _ in range(10):
                await app.enqueue_many("noop", [{}] * 1000)
            best = min(best, time.perf_counter() - round_start)
    print(
        f"{label}: connect {1e3 * (connected - started):.1f} ms, enqueue {best / 10_000 * 1e6:.2f} µs a job"
    )


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "this checkout"))
