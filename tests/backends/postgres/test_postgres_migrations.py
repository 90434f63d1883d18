"""PostgreSQL schemas made before the migrations had one file per version migrate forward unchanged.

Until the single-loader change, version 1 was three files (``0001_commit_batch.sql``,
``0001_initial.sql``, ``0001_lease.sql``, applied in name order); they are now one
``0001_initial.sql``: the three, in the order tables, lease, commit_batch, each followed by a blank
line. The old files are cut out of it again here and checked byte for byte against their SHA-256
at git ``a205689`` (so version 1 cannot be edited in place either), then applied as the old code
applied them, to prove that such a schema keeps its version 1 and gets only the later versions, and
that it then is the same as a fresh schema.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path

import pytest

from conveyor.ports import Commit, CommitStatus, Effects, NewJob, Outcome, Settlement
from tests.conftest import POSTGRES_URL, drop, fresh_url

psycopg = pytest.importorskip("psycopg")

from conveyor.backends.postgres import PostgresBackend  # noqa: E402
from conveyor.backends.postgres import schema as pg_schema  # noqa: E402

OLD_SHA256 = {
    "0001_commit_batch.sql": "6b2e475bc7071e62b57da7b3db1fac41d9840761fe75993a7ec836e404716a5b",
    "0001_initial.sql": "e1519baa51541b9603bc92e4a4a9628d1a644c02b6401420b47f4819cd946416",
    "0001_lease.sql": "4e8fed4de21725e8564c1d63052d09b1a09832394e7bd77bfce5b3fdcf204543",
}

Catalog = dict[str, list[tuple[object, ...]]]


@pytest.fixture
def urls(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two fresh schemas of the test database (dropped afterwards)."""
    pair = (fresh_url("postgres", tmp_path), fresh_url("postgres", tmp_path))
    yield pair
    for url in pair:
        drop(url)


def schema_of(url: str) -> str:
    return url.rsplit("schema=", 1)[1]


def old_files() -> dict[str, str]:
    """The three version-1 files as they were, cut out of today's ``0001_initial.sql``."""
    initial = files("conveyor.backends.postgres") / "migrations" / "0001_initial.sql"
    tables, rest = initial.read_text(encoding="utf-8").split("\n\n-- lease: ", 1)
    lease, commit_batch = rest.split("\n\n-- commit_batch: ", 1)
    old = {
        "0001_initial.sql": tables + "\n",
        "0001_lease.sql": "-- lease: " + lease + "\n",
        "0001_commit_batch.sql": "-- commit_batch: " + commit_batch,
    }
    for name, text in old.items():
        assert hashlib.sha256(text.encode()).hexdigest() == OLD_SHA256[name], f"{name} changed"
    return old


def create_with_old_files(url: str) -> None:
    """What ``migrate`` did before: every ``0001_*.sql`` in name order, then version 1 recorded."""
    schema = schema_of(url)
    quoted = f'"{schema}"'
    with psycopg.connect(POSTGRES_URL) as conn:
        conn.execute("SET LOCAL check_function_bodies = off")
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quoted}.schema_version ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for _, text in sorted(old_files().items()):
            conn.execute(pg_schema.render(text, schema).encode())
        conn.execute(f"INSERT INTO {quoted}.schema_version (version) VALUES (1)")


def catalog(url: str) -> Catalog:
    """Everything the migrations define in the schema, with the schema's name replaced by SCHEMA."""
    schema = schema_of(url)
    queries = {
        "functions": """
            SELECT p.proname, pg_get_functiondef(p.oid) FROM pg_proc p
            WHERE p.pronamespace = %(schema)s::regnamespace ORDER BY 1, 2""",
        "relations": """
            SELECT relname, relkind, relpersistence, reloptions FROM pg_class
            WHERE relnamespace = %(schema)s::regnamespace ORDER BY 1""",
        "columns": """
            SELECT table_name, column_name, ordinal_position, data_type, is_nullable, column_default,
                   is_identity, is_generated, collation_name
            FROM information_schema.columns WHERE table_schema = %(schema)s ORDER BY 1, 3""",
        "indexes": """
            SELECT tablename, indexname, indexdef FROM pg_indexes
            WHERE schemaname = %(schema)s ORDER BY 1, 2""",
        "constraints": """
            SELECT conrelid::regclass::text, conname, contype, pg_get_constraintdef(oid)
            FROM pg_constraint WHERE connamespace = %(schema)s::regnamespace ORDER BY 1, 2""",
        "sequences": """
            SELECT sequencename, data_type, start_value, increment_by, cycle FROM pg_sequences
            WHERE schemaname = %(schema)s ORDER BY 1""",
        "triggers": """
            SELECT t.tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t
            JOIN pg_class c ON c.oid = t.tgrelid
            WHERE c.relnamespace = %(schema)s::regnamespace AND NOT t.tgisinternal ORDER BY 1""",
    }
    with psycopg.connect(POSTGRES_URL) as conn:
        found = {
            kind: [
                tuple(str(value).replace(schema, "SCHEMA") if value is not None else None for value in row)
                for row in conn.execute(query, {"schema": schema}).fetchall()
            ]
            for kind, query in queries.items()
        }
    assert found["functions"] and found["indexes"], f"nothing found in schema {schema}"
    return found


def row_versions(url: str) -> list[tuple[object, ...]]:
    """The xmin of every catalog row of the schema's objects and of schema_version's rows: a
    migration that ran again (even one that re-created an object identically) changes them."""
    schema = schema_of(url)
    with psycopg.connect(POSTGRES_URL) as conn:
        rows = conn.execute(
            """
            SELECT 'class', relname, xmin::text FROM pg_class
            WHERE relnamespace = %(schema)s::regnamespace
            UNION ALL
            SELECT 'proc', proname, xmin::text FROM pg_proc
            WHERE pronamespace = %(schema)s::regnamespace
            ORDER BY 1, 2""",
            {"schema": schema},
        ).fetchall()
        versions = conn.execute(
            f'SELECT version, applied_at, xmin::text FROM "{schema}".schema_version ORDER BY 1'
        ).fetchall()
    return [*rows, *versions]


async def test_a_schema_made_by_the_old_files_is_not_migrated_again_and_works(
    urls: tuple[str, str],
) -> None:
    url, _ = urls
    create_with_old_files(url)
    before = row_versions(url)
    assert [row[0] for row in before if isinstance(row[0], int)] == [1]

    store = PostgresBackend(url)
    await store.connect()
    try:
        await store.migrate()
        after = row_versions(url)
        # version 1 was left alone (its schema_version row is the same row); only later ones ran
        assert [row for row in after if row[0] == 1] == [row for row in before if row[0] == 1]
        assert [row[0] for row in after if isinstance(row[0], int)] == list(
            range(1, pg_schema.LATEST_VERSION + 1)
        )
        await store.migrate()
        assert row_versions(url) == after, "the new code re-applied a migration"

        now = 1_700_000_000.0
        job = NewJob("a", "q", b'{"n": 1}', now, now, "key-a")
        [enqueued] = await store.commit([Commit(effects=Effects(jobs=[job]))], now)
        assert enqueued.status is CommitStatus.OK
        [leased] = await store.lease({"q": 30.0}, 10, now)
        assert leased.id == "a"
        [acked] = await store.commit([Commit(Settlement(leased.id, leased.token, Outcome.ACK))], now)
        assert acked.status is CommitStatus.OK
        assert await store.lease({"q": 30.0}, 10, now + 60) == []
    finally:
        await store.close()


async def test_a_fresh_schema_is_the_same_as_one_made_by_the_old_files(urls: tuple[str, str]) -> None:
    old_url, new_url = urls
    create_with_old_files(old_url)
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
        assert await pg_schema.migrate(conn, schema_of(old_url)) == 1  # the later versions on top
        assert await pg_schema.migrate(conn, schema_of(new_url)) == 0
    old, new = catalog(old_url), catalog(new_url)
    assert old.keys() == new.keys()
    for kind in old:
        assert new[kind] == old[kind], kind
