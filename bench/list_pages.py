"""The HTTP API's workflow list pages with 1,000,000 workflow instances in history (issue 17).

    .venv/bin/python bench/list_pages.py --backends sqlite,postgres [--instances 1000000] \\
        [--repeats 15] [--json /tmp/pages.json]

Per backend, on a fresh store (see ``stores.py``; dropped at the end): the seed's order
fulfillment (``conveyor.examples.order_fulfillment``) runs its demo's orders on ``memory://``;
their histories (fulfilled, backordered and compensated paths, 4-12 entries each) are the
templates that ``--instances`` instances copy, each under its own correlation id, one starting
every 50 ms of the last 14 hours, written through the port in batches. Then each page below is
fetched ``--repeats`` times from ``conveyor.server.create_app`` over httpx's ASGI transport, in
this process (so the time is the server's: routing, the queries, the folding of each instance's
status, the JSON), and the median and the worst are printed. The target is ≤ 200 ms a page.

* ``newest``: ``GET /workflows`` (50 newest);
* ``state=compensated``: one in five of the templates is compensated, so a page scans ~250;
* ``prefix``: the ids starting ``order-05000`` (100 of them), and ``order-05`` (100,000: the
  page sorts them all by start time, so its cost grows with the matches);
* ``time range``: those started in one hour, eight hours ago;
* ``deep page``: the page after a cursor half a million instances back;
* ``instance``: ``GET /workflows/{id}`` of one in the middle.

Every wait is bounded; all traffic goes to the URLs given (defaults: ``stores.DEFAULT_URLS``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stores import DEFAULT_URLS, driver_url, fresh_store

from conveyor.demo import demo_orders
from conveyor.examples.order_fulfillment import TERMINAL, make_app
from conveyor.ports import Commit, Effects, HistoryEntry
from conveyor.server import create_app
from conveyor.testing import wait_until

BATCH = 5000
"""Instances written per commit."""
EVERY = 0.05
"""Seconds between two instances' starts."""


async def templates() -> list[list[HistoryEntry]]:
    """The demo's orders worked to their end on memory://: each one's history, times from 0."""
    app = make_app("memory://")
    orders = demo_orders(30)
    async with app, app.serving():
        for order in orders:
            await app.invoke("place_order", order)

        async def finished() -> bool:
            states = [(await app.workflows.status(str(o["order_id"]))).state for o in orders]
            return all(state in TERMINAL for state in states)

        await wait_until(finished, timeout=60)
        histories = [await app.backend.history(str(o["order_id"])) for o in orders]
    return [[dataclasses.replace(e, at=e.at - h[0].at) for e in h] for h in histories]


async def fill(url: str, instances: int, say: Any) -> float:
    """``instances`` copies of the templates; returns the newest start time."""
    shapes = await templates()
    app = make_app(url)
    end = time.time()
    start = end - instances * EVERY
    t0 = time.perf_counter()
    async with app:
        for first in range(0, instances, BATCH):
            entries = []
            for n in range(first, min(first + BATCH, instances)):
                at, cid = start + n * EVERY, f"order-{n:07d}"
                for entry in shapes[n % len(shapes)]:
                    entries.append(dataclasses.replace(entry, correlation_id=cid, at=at + entry.at))
            await app.backend.commit([Commit(effects=Effects(history=entries))], time.time())
            if first and first % 100_000 == 0:
                rate = first / (time.perf_counter() - t0)
                say(f"  {first:>9,} instances written ({rate:,.0f}/s)")
    say(f"  {instances:,} instances in {time.perf_counter() - t0:.0f}s")
    if url.startswith("postgres"):
        analyze(url)
    return start + (instances - 1) * EVERY


def analyze(url: str) -> None:
    """ANALYZE the history: on a live system autovacuum does it as the table grows (by 10 %); a
    table filled in two minutes has no statistics yet, and then even one instance's history is
    planned as a parallel scan of ~0.5 % of the table."""
    import psycopg

    schema = dict(parse_qsl(urlsplit(url).query))["schema"]
    with psycopg.connect(driver_url(url), autocommit=True) as conn:
        conn.execute(f'ANALYZE "{schema}".history')


def cursor(at: float, key: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([at, key])).decode()


async def measure(url: str, instances: int, newest: float, repeats: int) -> dict[str, dict[str, float]]:
    app = make_app(url)
    api = create_app(app)
    middle = instances // 2
    pages: dict[str, tuple[str, dict[str, Any]]] = {
        "newest": ("/workflows", {}),
        "state=compensated": ("/workflows", {"state": "compensated"}),
        "prefix (100 match)": ("/workflows", {"prefix": "order-05000"}),
        "prefix (100k match)": ("/workflows", {"prefix": "order-05"}),
        "time range (1 h)": ("/workflows", {"since": newest - 9 * 3600, "until": newest - 8 * 3600}),
        "deep page": ("/workflows", {"before": cursor(newest - middle * EVERY, f"order-{middle:07d}")}),
        "instance": (f"/workflows/order-{middle:07d}", {}),
    }
    results: dict[str, dict[str, float]] = {}
    transport = httpx.ASGITransport(app=api)
    async with app, httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for name, (path, params) in pages.items():
            times, shown = [], 0
            for _ in range(repeats):
                t0 = time.perf_counter()
                answer = await client.get(path, params=params)
                times.append((time.perf_counter() - t0) * 1000)
                answer.raise_for_status()
                body = answer.json()
                shown = len(body["items"]) if "items" in body else 1
            results[name] = {"median_ms": statistics.median(times), "max_ms": max(times), "items": shown}
    return results


async def run_backend(kind: str, url: str, instances: int, repeats: int, say: Any) -> dict[str, Any]:
    store = fresh_store(url, "list_pages")
    try:
        say(f"{kind}: writing {instances:,} workflow instances")
        newest = await fill(store.url, instances, say)
        results = await measure(store.url, instances, newest, repeats)
    finally:
        store.drop()
    for name, figure in results.items():
        say(
            f"  {name:<20} median {figure['median_ms']:7.1f} ms   worst {figure['max_ms']:7.1f} ms"
            f"   ({figure['items']:.0f} items)"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="sqlite,postgres")
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.disable(logging.ERROR)  # the demo's declined cards, dead-lettered on purpose
    everything: dict[str, Any] = {"instances": args.instances, "repeats": args.repeats}
    for kind in args.backends.split(","):
        url = DEFAULT_URLS.get(kind, kind)
        everything[kind] = asyncio.run(run_backend(kind, url, args.instances, args.repeats, print))
    if args.json is not None:
        args.json.write_text(json.dumps(everything, indent=2))


if __name__ == "__main__":
    main()
