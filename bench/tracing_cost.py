"""The cost of tracing per job: W1 (no-op jobs) on one backend, tracing off or on (OpenTelemetry SDK,
no exporter), in one process. Prints CPU microseconds per job, which load moves less than rates.

    python bench/tracing_cost.py off memory:// 20000
    python bench/tracing_cost.py on memory:// 20000
"""

import asyncio
import sys
import time
from typing import Any

from pydantic import BaseModel

from conveyor import App, Service
from conveyor.testing import running, wait_until

MODE, URL, N = sys.argv[1], sys.argv[2], int(sys.argv[3])
svc = Service("bench")


class Noop(BaseModel):
    pass


count = 0


@svc.queue_worker("noop", payload=Noop)
async def noop(ctx: Any, job: Noop) -> None:
    global count
    count += 1


kwargs: dict[str, Any] = {}
if MODE == "on":
    from opentelemetry.sdk.trace import TracerProvider

    kwargs["tracing"] = TracerProvider()


async def main() -> None:
    app = App([svc], backend=URL, **kwargs)
    async with app:
        for _ in range(0, N, 1000):
            await app.enqueue_many("noop", [{}] * 1000)
        c0 = time.process_time()
        t0 = time.perf_counter()
        async with running(app):
            await wait_until(lambda: count >= N, timeout=300, interval=0.01)
        c1 = time.process_time()
        t1 = time.perf_counter()
        print(f"{MODE}: {1e6 * (c1 - c0) / N:.1f} us CPU per job, {N / (t1 - t0):.0f} jobs/s wall")


asyncio.run(main())
