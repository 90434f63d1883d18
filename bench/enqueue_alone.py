"""``enqueue_many`` and ``enqueue`` alone: microseconds a job for ``Noop``-model payloads.

    .venv/bin/python bench/enqueue_alone.py head
    PYTHONPATH=/tmp/base-src/src .venv/bin/python bench/enqueue_alone.py base   # another commit's src/
    .venv/bin/python bench/enqueue_alone.py head redis://127.0.0.1:6394/0      # another backend

``enqueue_many``: best of 5 rounds of ten 1,000-payload calls; ``enqueue``: best of 5 rounds of
1,000 one-job calls; both after connecting (the peers' *W1 enq/s* includes the process start and
the connect). Without a URL, a new SQLite file in a temporary folder; a URL's store should be
empty (a private server). Alternate the commits a few times: one run says little here.
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


async def main(label: str, url: str | None) -> None:
    app = App([svc], backend=url or f"sqlite:///{tempfile.mkdtemp()}/bench.db")
    started = time.perf_counter()
    async with app:
        connected = time.perf_counter()
        many = one = float("inf")
        for _ in range(5):
            round_start = time.perf_counter()
            for _ in range(10):
                await app.enqueue_many("noop", [{}] * 1000)
            many = min(many, time.perf_counter() - round_start)
            round_start = time.perf_counter()
            for _ in range(1000):
                await app.enqueue("noop", {})
            one = min(one, time.perf_counter() - round_start)
    print(
        f"{label}: connect {1e3 * (connected - started):.1f} ms, "
        f"enqueue_many {many / 10_000 * 1e6:.2f} µs a job, enqueue {one / 1000 * 1e6:.1f} µs a call"
    )


if __name__ == "__main__":
    asyncio.run(
        main(
            sys.argv[1] if len(sys.argv) > 1 else "this checkout", sys.argv[2] if len(sys.argv) > 2 else None
        )
    )
