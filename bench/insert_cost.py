"""What storing one enqueued job costs the PostgreSQL server, statement by statement.

    .venv/bin/python bench/insert_cost.py [URL] [--rounds 8] [--batches 40] [--batch 250]
    .venv/bin/python bench/insert_cost.py [URL] --indexes

On a fresh schema (dropped after), one connection stores batches of ``--batch`` jobs, each batch
in its own autocommit statement (or transaction), the way ``enqueue_many`` does. The measure is
the server process's CPU time (``/proc/<pid>/schedstat``, so the server must run on this
machine), divided by the jobs stored. The variants take turns batch by batch, so a machine whose
speed drifts (this one's does, by ±30% over minutes) charges them alike; the table gives the
median and the range over ``--rounds`` rounds of ``--batches`` batches each.

Statements (default): ``commit_batch()`` as every commit used before session 3, the
``insert_jobs`` query a plain enqueue uses now, its two INSERTs alone, with and without
``ON CONFLICT``, and both tables by binary COPY. ``--indexes``: plain INSERTs into copies of the
``jobs`` and ``history`` tables with fewer indexes, to price each index.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg
from stores import fresh_store

from conveyor.backends.postgres import PostgresBackend
from conveyor.backends.postgres.arrays import register
from conveyor.backends.postgres.batch import Arrays, flatten
from conveyor.model.envelope import new_ids
from conveyor.ports import Commit, Effects, HistoryEntry, NewJob

BODY = (
    b'{"v":1,"id":"01a21cae3bc3b9f91ca1e94a25b3","kind":"job","name":"noop","payload":{},'
    b'"correlation_id":"01a21cae3bc3b9f91ca1e94a25b3","causation_id":null,'
    b'"idempotency_key":null,"trace":null,"created_at":1795777510.3378837,"service":null,'
    b'"service_version":null}'
)  # a no-op job's envelope as enqueue_many writes it (257 bytes)

Variant = Callable[[psycopg.Connection[Any], Arrays], None]


def server_cpu_ms(pid: int) -> float:
    with open(f"/proc/{pid}/schedstat") as stat:
        return int(stat.read().split()[0]) / 1e6


def batch(size: int) -> Arrays:
    """One enqueue_many batch: unkeyed no-op jobs, each with its "enqueued" history entry."""
    now = time.time()
    ids = new_ids(size)
    effects = Effects(
        jobs=[NewJob(i, "noop", BODY, now, now) for i in ids],
        history=[HistoryEntry(i, now, "enqueued", "noop", i) for i in ids],
    )
    return flatten([Commit(effects=effects)], [0])


def statements(backend: PostgresBackend, schema: str) -> dict[str, Variant]:
    queries = backend._queries
    jobs = (
        f'INSERT INTO "{schema}".jobs (id, queue, body, available_at, enqueued_at) '
        "SELECT * FROM unnest(%b::text[], %b::text[], %b::bytea[], %b::float8[], %b::float8[])"
    )
    history = (
        f'INSERT INTO "{schema}".history (correlation_id, at, kind, name, message_id, attempt, detail) '
        "SELECT * FROM unnest(%b::text[], %b::float8[], %b::text[], %b::text[], %b::text[], "
        "%b::int4[], %b::text[])"
    )

    def job_params(a: Arrays) -> tuple[Any, ...]:
        return (a.j_id, a.j_queue, a.j_body, a.j_available_at, a.j_enqueued_at)

    def history_params(a: Arrays) -> tuple[Any, ...]:
        return (a.h_correlation_id, a.h_at, a.h_kind, a.h_name, a.h_message_id, a.h_attempt, a.h_detail)

    def copy(conn: psycopg.Connection[Any], a: Arrays) -> None:
        with conn.transaction():
            columns = "id, queue, body, available_at, enqueued_at"
            with conn.cursor().copy(f'COPY "{schema}".jobs ({columns}) FROM STDIN (FORMAT BINARY)') as cp:
                cp.set_types(["text", "text", "bytea", "float8", "float8"])
                for row in zip(*job_params(a), strict=True):
                    cp.write_row(row)
            columns = "correlation_id, at, kind, name, message_id, attempt, detail"
            with conn.cursor().copy(f'COPY "{schema}".history ({columns}) FROM STDIN (FORMAT BINARY)') as cp:
                cp.set_types(["text", "float8", "text", "text", "text", "int4", "text"])
                for row in zip(*history_params(a), strict=True):
                    cp.write_row(row)

    return {
        "commit_batch()": lambda c, a: c.execute(
            queries["commit"], a.params(time.time(), 86400.0, 0, backend.channel), binary=True
        ).fetchall(),
        "insert_jobs (now)": lambda c, a: c.execute(
            queries["insert_jobs"], a.insert_params(backend.channel, "noop"), binary=True
        ).fetchall(),
        "jobs ON CONFLICT": lambda c, a: c.execute(
            jobs + " ON CONFLICT (id) DO NOTHING", job_params(a), binary=True
        ),
        "jobs plain": lambda c, a: c.execute(jobs, job_params(a), binary=True),
        "history": lambda c, a: c.execute(history, history_params(a), binary=True),
        "COPY both, binary": copy,
    }


INDEX_TABLES = {
    "history, 3 indexes": ("history", "PRIMARY KEY", ["(correlation_id, seq)", "USING brin (at)"]),
    "history, no primary key": ("history", "", ["(correlation_id, seq)", "USING brin (at)"]),
    "history, no BRIN": ("history", "PRIMARY KEY", ["(correlation_id, seq)"]),
    "history, correlation only": ("history", "", ["(correlation_id, seq)"]),
    "history, no index": ("history", "", []),
    "jobs, 2 indexes": ("jobs", "PRIMARY KEY", ["(queue, available_at)"]),
    "jobs, primary key only": ("jobs", "PRIMARY KEY", []),
    "jobs, no index": ("jobs", "", []),
}
COLUMNS = {
    "history": "seq bigint GENERATED ALWAYS AS IDENTITY {key}, correlation_id text NOT NULL, "
    "at float8 NOT NULL, kind text NOT NULL, name text NOT NULL, message_id text, attempt int, "
    "detail text",
    "jobs": "id text {key}, queue text NOT NULL, available_at float8 NOT NULL, "
    "attempts int NOT NULL DEFAULT 0, token bigint, enqueued_at float8 NOT NULL, "
    "idempotency_key text, last_error text, body bytea NOT NULL",
}


def indexes(conn: psycopg.Connection[Any], schema: str) -> dict[str, Variant]:
    variants: dict[str, Variant] = {}
    for n, (label, (kind, key, extra)) in enumerate(INDEX_TABLES.items()):
        table = f'"{schema}".t{n}'
        conn.execute(f"CREATE TABLE {table} ({COLUMNS[kind].format(key=key)})")
        for index in extra:
            conn.execute(f"CREATE INDEX ON {table} {index}")
        if kind == "history":
            sql = (
                f"INSERT INTO {table} (correlation_id, at, kind, name, message_id, attempt, detail) "
                "SELECT * FROM unnest(%b::text[], %b::float8[], %b::text[], %b::text[], %b::text[], "
                "%b::int4[], %b::text[])"
            )
            variants[label] = lambda c, a, sql=sql: c.execute(
                sql, (a.h_correlation_id, a.h_at, a.h_kind, a.h_name, a.h_message_id, a.h_attempt, a.h_detail)
            )
        else:
            sql = (
                f"INSERT INTO {table} (id, queue, body, available_at, enqueued_at) "
                "SELECT * FROM unnest(%b::text[], %b::text[], %b::bytea[], %b::float8[], %b::float8[])"
            )
            variants[label] = lambda c, a, sql=sql: c.execute(
                sql, (a.j_id, a.j_queue, a.j_body, a.j_available_at, a.j_enqueued_at)
            )
    return variants


def measure(url: str, schema: str, args: argparse.Namespace) -> dict[str, list[float]]:
    """Per variant, its server CPU per job in each round (µs)."""
    backend = PostgresBackend(url)  # for its queries only: never connected
    with psycopg.connect(url.split("?", 1)[0], autocommit=True) as conn:
        register(conn)
        pid = conn.info.backend_pid
        if args.indexes:
            conn.execute(f'CREATE SCHEMA "{schema}"')
            variants = indexes(conn, schema)
            tables = [f'"{schema}".t{n}' for n in range(len(INDEX_TABLES))]
        else:
            variants = statements(backend, schema)
            tables = [f'"{schema}".jobs', f'"{schema}".history']
        costs: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            conn.execute(f"TRUNCATE {', '.join(tables)}")
            spent = dict.fromkeys(variants, 0.0)
            for _ in range(args.batches):
                for name, run in variants.items():
                    arrays = batch(args.batch)
                    before = server_cpu_ms(pid)
                    run(conn, arrays)
                    spent[name] += server_cpu_ms(pid) - before
            for name, ms in spent.items():
                costs[name].append(ms * 1000 / (args.batches * args.batch))
    return costs


async def migrated(url: str) -> None:
    backend = PostgresBackend(url)
    await backend.migrate()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url", nargs="?", default="postgresql://root@127.0.0.1:5432/conveyor_bench")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--batches", type=int, default=40, help="batches per variant and round")
    parser.add_argument("--batch", type=int, default=250, help="jobs per batch (enqueue_many's)")
    parser.add_argument("--indexes", action="store_true", help="price each index instead")
    args = parser.parse_args()
    store = fresh_store(args.url, "insert_cost")
    try:
        if not args.indexes:
            asyncio.run(migrated(store.url))
        costs = measure(store.url, store.name, args)
    finally:
        store.drop()
    print(f"{'variant':28s} {'µs/job':>8s} {'min':>7s} {'max':>7s}")
    for name, values in costs.items():
        print(f"{name:28s} {statistics.median(values):8.1f} {min(values):7.1f} {max(values):7.1f}")
    print(
        f"(server CPU per job stored; median of {args.rounds} rounds, "
        f"{args.batches} batches of {args.batch} each)"
    )


if __name__ == "__main__":
    main()
