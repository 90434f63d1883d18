"""PostgreSQL soak: does the hot jobs table stay small over a long, steady run?

    .venv/bin/python bench/soak.py --jobs 1000000 --json /tmp/soak.json
    .venv/bin/python bench/soak.py --url postgresql://root@127.0.0.1:5432/conveyor_bench \\
        --jobs 100000 --batch 1000 --backlog 50000 --sample 5 --settle 70 --timeout 2400

ONE worker process (``bench/workload.py worker``: ``app.run()`` with conveyor's defaults) runs
while this process enqueues ``--jobs`` no-op jobs (``app.enqueue_many``, ``--batch`` a call),
waiting whenever more than ``--backlog`` of them are not processed yet, so the run is a steady
state rather than one giant backlog. Every ``--sample`` seconds it records, for every table of
the run's schema, PostgreSQL's view of it (``pg_stat_user_tables``: live and dead tuples,
autovacuum runs and other VACUUMs; ``pg_total_relation_size``: table + indexes + TOAST), the jobs
processed so far (the handlers' own records) and the jobs pending (``app.stats()``). After the
last job it keeps sampling ``--settle`` seconds with the worker idle (the default is just over the
default ``autovacuum_naptime`` of one minute) to show what vacuuming leaves behind.

The store is a fresh schema (``stores.fresh_store``, ``?schema=``), dropped at the end; the worker
is always stopped (SIGTERM, SIGKILL after 15 s) and every wait is bounded by ``--timeout``.
Each job leaves two dead row versions in the jobs table (lease, ack). Only a VACUUM removes them:
autovacuum, or the backend's own (``vacuum_interval``, since 9bcdabb). The script records the
server's autovacuum settings and says when autovacuum is off, as it is on the shared CI server
here (``conf.d/90-ci.conf``); there, the backend's VACUUMs alone keep the table small.
``--no-history`` runs the variant ``App(history=False)``. The
history table grows by design (one or more entries per job) until its retention (7 days by
default) prunes it; the claim under test is about the jobs table, and both are reported.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import psycopg
from run import REC_DIR, Worker, conveyor_source
from stats import new_lines
from stores import DEFAULT_URLS, backend_kind, driver_url, fresh_store

REPORTED = ("jobs", "history", "idempotency")
"""Tables the progress line and the summary show (the JSON has every table of the schema)."""
POLL = 0.05
"""Seconds the producer sleeps while the backlog is full (and between looks while draining)."""

TABLES_SQL = """
SELECT c.relname, s.n_live_tup, s.n_dead_tup, pg_total_relation_size(c.oid),
       pg_relation_size(c.oid), pg_indexes_size(c.oid), s.autovacuum_count, s.vacuum_count,
       extract(epoch FROM s.last_autovacuum)::float8, s.autoanalyze_count, s.n_tup_ins, s.n_tup_upd,
       s.n_tup_hot_upd, s.n_tup_del
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables AS s ON s.relid = c.oid
WHERE n.nspname = %s AND c.relkind = 'r'
ORDER BY c.relname
"""
TABLE_FIELDS = (
    "live",
    "dead",
    "total_bytes",
    "heap_bytes",
    "index_bytes",
    "autovacuum_count",
    "vacuum_count",
    "last_autovacuum",
    "autoanalyze_count",
    "ins",
    "upd",
    "hot_upd",
    "del",
)
SETTINGS = (
    "server_version",
    "autovacuum",
    "autovacuum_naptime",
    "autovacuum_max_workers",
    "autovacuum_vacuum_cost_limit",
    "autovacuum_vacuum_cost_delay",
    "synchronous_commit",
    "shared_buffers",
)


@dataclass
class Progress:
    """What the worker did so far, read from its record file (only counts and end points are kept:
    a million ``Record`` objects would cost the sampler more than the worker's records do)."""

    path: str
    processed: int = 0
    first_start: float | None = None
    last_end: float | None = None
    first_cpu: float | None = None
    last_cpu: float | None = None
    _offset: int = field(default=0, repr=False)

    def poll(self) -> int:
        """Read what was appended since the last call; the number of jobs processed so far."""
        lines, self._offset = new_lines(self.path, self._offset)
        if not lines:
            return self.processed
        self.processed += len(lines)
        # a record line: kind wf step t_enq t_start t_end cpu
        if self.first_start is None:
            first = lines[0].split()
            self.first_start, self.first_cpu = float(first[4]), float(first[6])
        last = lines[-1].split()
        self.last_end, self.last_cpu = float(last[5]), float(last[6])
        return self.processed


@dataclass
class Run:
    """The state the producer, the sampler and the summary share."""

    progress: Progress
    started: float = field(default_factory=time.time)
    enqueued: int = 0
    samples: list[dict[str, Any]] = field(default_factory=list)


def mb(n: int | None) -> str:
    """Bytes as megabytes, one decimal."""
    return "-" if n is None else f"{n / 1e6:.1f} MB"


def thousands(n: float | None) -> str:
    """``12,345`` (``-`` for None)."""
    return "-" if n is None else f"{n:,.0f}"


def loads(loadavg: tuple[float, ...] | list[float]) -> str:
    """The 1, 5 and 15 minute load averages, two decimals."""
    return " ".join(f"{x:.2f}" for x in loadavg)


async def take_sample(pg: psycopg.AsyncConnection[Any], app: Any, schema: str, run: Run) -> dict[str, Any]:
    """One sample: every table of ``schema``, jobs processed and pending, the machine's load."""
    processed = run.progress.poll()
    rows = await (await pg.execute(TABLES_SQL, [schema])).fetchall()
    stats = await app.stats()
    return {
        "t": round(time.time() - run.started, 2),
        "enqueued": run.enqueued,
        "processed": processed,
        "pending": sum(s.ready + s.scheduled + s.leased for s in stats),
        "dead_letters": sum(s.dead for s in stats),
        "loadavg": os.getloadavg(),
        "tables": {name: dict(zip(TABLE_FIELDS, values, strict=True)) for name, *values in rows},
    }


def progress_line(sample: dict[str, Any], previous: dict[str, Any] | None) -> str:
    """One compact line per sample."""
    rate = None
    if previous is not None and sample["t"] > previous["t"]:
        rate = (sample["processed"] - previous["processed"]) / (sample["t"] - previous["t"])
    parts = [
        f"t={sample['t']:6.0f}s done={thousands(sample['processed']):>9} ({thousands(rate):>5}/s)"
        f" pending={thousands(sample['pending']):>6}"
    ]
    for name in REPORTED:
        table = sample["tables"].get(name)
        if table is not None:
            parts.append(
                f"{name} live={thousands(table['live'])} dead={thousands(table['dead'])} "
                f"{mb(table['total_bytes'])} av={table['autovacuum_count']} vac={table['vacuum_count']}"
            )
    parts.append(f"load={loads(sample['loadavg'])}")
    return " | ".join(parts)


async def sample_forever(
    pg: psycopg.AsyncConnection[Any], app: Any, schema: str, run: Run, every: float
) -> None:
    """Sample every ``every`` seconds (on a fixed grid, so a slow sample does not shift the rest)."""
    t0 = time.monotonic()
    for tick in range(1, 1 << 31):
        sample = await take_sample(pg, app, schema, run)
        print(progress_line(sample, run.samples[-1] if run.samples else None), flush=True)
        run.samples.append(sample)
        await asyncio.sleep(max(0.0, t0 + tick * every - time.monotonic()))


async def produce(
    app: Any, run: Run, jobs: int, batch: int, backlog: int, deadline: float, worker: Worker
) -> None:
    """Enqueue ``jobs`` no-ops in ``enqueue_many`` calls, never more than ``backlog`` unprocessed."""
    while run.enqueued < jobs and time.monotonic() < deadline and worker.alive():
        if run.enqueued - run.progress.poll() >= backlog:
            await asyncio.sleep(POLL)
            continue
        n = min(batch, jobs - run.enqueued)
        await app.enqueue_many("noop", [{}] * n)
        run.enqueued += n


async def wait_until(done: Any, deadline: float, worker: Worker) -> bool:
    """Poll ``done()`` until it holds; False at the deadline or if the worker died."""
    while time.monotonic() < deadline:
        if done():
            return True
        if not worker.alive():
            return bool(done())
        await asyncio.sleep(POLL)
    return bool(done())


async def soak(
    a: argparse.Namespace, url: str, schema: str, env: dict[str, str], log: IO[str]
) -> dict[str, Any]:
    """Start the worker, produce, drain, settle; the samples and the outcome."""
    # workload.py builds its app from these at import time (the same app the worker runs)
    os.environ.update(CONVEYOR_URL=env["CONVEYOR_URL"], BENCH_HISTORY=env["BENCH_HISTORY"])
    import workload

    app = workload.app
    run = Run(Progress(env["BENCH_REC"]))
    deadline = time.monotonic() + a.timeout
    outcome: dict[str, Any] = {"history": workload.HISTORY, "history_retention_s": app.history_retention}
    async with await psycopg.AsyncConnection.connect(driver_url(url), autocommit=True) as pg, app:
        # autocommit: the sampler must hold no snapshot, which would keep vacuum from removing rows
        settings = await (
            await pg.execute(
                "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s)", [list(SETTINGS)]
            )
        ).fetchall()
        outcome["pg_settings"] = dict(settings)
        if outcome["pg_settings"].get("autovacuum") != "on":
            print(
                "NOTE: autovacuum is off on this server: only the backend's own VACUUMs "
                "(vacuum_interval; the 'vac' column) remove dead tuples",
                flush=True,
            )
        reloptions = await (
            await pg.execute(
                "SELECT c.relname, c.reloptions FROM pg_class AS c JOIN pg_namespace AS n "
                "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'",
                [schema],
            )
        ).fetchall()
        outcome["reloptions"] = {name: options for name, options in reloptions if options}
        worker = Worker(env, log, None)
        sampler = asyncio.create_task(sample_forever(pg, app, schema, run, a.sample))
        try:
            await produce(app, run, a.jobs, a.batch, a.backlog, deadline, worker)
            outcome["produced_s"] = time.time() - run.started
            outcome["complete"] = await wait_until(
                lambda: run.progress.poll() >= run.enqueued >= a.jobs, deadline, worker
            )
            outcome["drained_s"] = time.time() - run.started
            if outcome["complete"]:
                print(f"all {a.jobs:,} jobs processed; settling {a.settle:g} s", flush=True)
                await wait_until(lambda: False, min(deadline, time.monotonic() + a.settle), worker)
            outcome["worker_alive_at_end"] = worker.alive()
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
            worker.stop()
        final = await take_sample(pg, app, schema, run)
        print(progress_line(final, run.samples[-1] if run.samples else None), flush=True)
        run.samples.append(final)
    p = run.progress
    span = p.last_end - p.first_start if p.first_start is not None and p.last_end is not None else None
    cpu = p.last_cpu - p.first_cpu if p.first_cpu is not None and p.last_cpu is not None else None
    outcome.update(
        enqueued=run.enqueued,
        processed=p.processed,
        process_s=span,
        jobs_per_s=p.processed / span if span else None,
        cpu_us_per_job=cpu / (p.processed - 1) * 1e6 if cpu is not None and p.processed > 1 else None,
        samples=run.samples,
    )
    return outcome


def table_summary(samples: list[dict[str, Any]], name: str, jobs: int) -> dict[str, Any] | None:
    """Maxima, start/end and halves for one table; None if the schema has no such table."""
    rows = [(s, s["tables"][name]) for s in samples if name in s["tables"]]
    if not rows:
        return None

    def at_most(key: str, lo: float, hi: float) -> int | None:
        values = [t[key] for s, t in rows if lo <= s["processed"] < hi and t[key] is not None]
        return max(values) if values else None

    peak_dead = max(rows, key=lambda r: r[1]["dead"] or 0)
    warm = next((t for s, t in rows if s["processed"] >= jobs // 10), rows[-1][1])
    return {
        "max_dead": peak_dead[1]["dead"],
        "max_dead_at_processed": peak_dead[0]["processed"],
        "max_live": max(t["live"] or 0 for _, t in rows),
        "max_total_bytes": max(t["total_bytes"] for _, t in rows),
        "start_total_bytes": rows[0][1]["total_bytes"],
        "at_10pct_total_bytes": warm["total_bytes"],
        "end_total_bytes": rows[-1][1]["total_bytes"],
        "end_heap_bytes": rows[-1][1]["heap_bytes"],
        "end_index_bytes": rows[-1][1]["index_bytes"],
        "end_live": rows[-1][1]["live"],
        "end_dead": rows[-1][1]["dead"],
        "autovacuum_count": rows[-1][1]["autovacuum_count"],
        "vacuum_count": rows[-1][1]["vacuum_count"],
        # bounded means the second half of the run peaks no higher than the first half did
        "max_dead_first_half": at_most("dead", 0, jobs / 2),
        "max_dead_second_half": at_most("dead", jobs / 2, jobs + 1),
        "max_total_bytes_first_half": at_most("total_bytes", 0, jobs / 2),
        "max_total_bytes_second_half": at_most("total_bytes", jobs / 2, jobs + 1),
    }


def print_summary(report: dict[str, Any]) -> None:
    """The end-of-run summary."""
    o = report["outcome"]
    print()
    print(
        f"conveyor {report['conveyor']}; {report['started']}; {o['processed']:,} of "
        f"{report['args']['jobs']:,} jobs processed (complete: {o.get('complete')}); "
        f"{thousands(o['jobs_per_s'])} jobs/s over "
        f"{o['process_s'] or 0:.0f} s (first job start to last job end); worker CPU "
        f"{o['cpu_us_per_job'] or 0:.0f} us/job; wall {report['wall_s']:.0f} s; load average "
        f"before {loads(report['loadavg_before'])}, after {loads(report['loadavg_after'])}; "
        f"history {'on' if o['history'] else 'off'} (retention {o['history_retention_s']} s); "
        f"server autovacuum {o['pg_settings'].get('autovacuum')}, naptime "
        f"{o['pg_settings'].get('autovacuum_naptime')}"
    )
    for name, t in report["summary"].items():
        if t is None:
            continue
        print(
            f"{name:12} max dead {thousands(t['max_dead'])} (at {thousands(t['max_dead_at_processed'])} "
            f"done; 1st half {thousands(t['max_dead_first_half'])}, 2nd half "
            f"{thousands(t['max_dead_second_half'])}), "
            f"max live {thousands(t['max_live'])}, size start {mb(t['start_total_bytes'])} / at 10% "
            f"{mb(t['at_10pct_total_bytes'])} / max {mb(t['max_total_bytes'])} (2nd half "
            f"{mb(t['max_total_bytes_second_half'])}) / end {mb(t['end_total_bytes'])} "
            f"(heap {mb(t['end_heap_bytes'])}, indexes {mb(t['end_index_bytes'])}), end live "
            f"{thousands(t['end_live'])} dead {thousands(t['end_dead'])}, "
            f"autovacuum runs {t['autovacuum_count']}, other VACUUMs {t['vacuum_count']}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--url", default=DEFAULT_URLS["postgres"], help="PostgreSQL URL (database made if missing)"
    )
    ap.add_argument("--jobs", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=1_000, help="jobs per enqueue_many call")
    ap.add_argument(
        "--backlog", type=int, default=50_000, help="the producer waits above this many unprocessed"
    )
    ap.add_argument("--sample", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--settle", type=float, default=70.0, help="seconds of sampling after the last job")
    ap.add_argument("--timeout", type=float, default=2400.0, help="seconds for the whole run")
    ap.add_argument("--no-history", action="store_true", help="variant: App(history=False)")
    ap.add_argument("--commit", help="measure this commit's src/ (git archive) instead of the working tree")
    ap.add_argument("--json", help="write the settings, every sample and the summary here")
    ap.add_argument("--logdir", default=os.path.join(tempfile.gettempdir(), "conveyor-bench-logs"))
    a = ap.parse_args(argv)
    if backend_kind(a.url) != "postgres":
        ap.error("the soak measures PostgreSQL tables: give a postgresql:// URL")
    return a


def main(argv: list[str] | None = None) -> None:
    """Run the soak on a fresh schema, print the summary, write the JSON, drop the schema."""
    a = parse_args(argv)
    os.makedirs(a.logdir, exist_ok=True)
    started, t0, load_before = datetime.now(UTC).isoformat(timespec="seconds"), time.time(), os.getloadavg()
    store = fresh_store(a.url, f"soak_{os.getpid()}")
    rec_path = os.path.join(REC_DIR, f"conveyor-soak-{os.getpid()}.rec")
    try:
        with conveyor_source(a.commit) as (pythonpath, measured):
            env = dict(
                os.environ,
                CONVEYOR_URL=store.url,
                BENCH_REC=rec_path,
                BENCH_HISTORY="0" if a.no_history else "1",
                PYTHONPATH=pythonpath,
            )
            print(f"soak: {a.jobs:,} jobs on {store.url} (conveyor {measured})", flush=True)
            # the producer imports conveyor from the same source as the worker
            sys.path[:0] = pythonpath.split(os.pathsep)
            with open(os.path.join(a.logdir, f"soak-{os.getpid()}.log"), "w") as log:
                outcome = asyncio.run(soak(a, a.url, store.name, env, log))
    finally:
        store.drop()
        if os.path.exists(rec_path):
            os.remove(rec_path)
    report = {
        "args": vars(a),
        "url": store.url,
        "conveyor": measured,
        "started": started,
        "cpus": os.cpu_count(),
        "wall_s": time.time() - t0,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "summary": {name: table_summary(outcome["samples"], name, a.jobs) for name in REPORTED},
        "outcome": outcome,
    }
    print_summary(report)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1, default=str)
    if not outcome.get("complete"):
        sys.exit(1)


if __name__ == "__main__":
    main()
