"""PostgreSQL-specific behaviour: concurrency, migrations, wake-ups, the outbox, reconnecting.

Each test gets its own schema in the test database (dropped afterwards); the port-level contract
runs on PostgreSQL from ``tests/contract/test_store_contract.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from conveyor.model.errors import (
    BackendUnavailableError,
    ConfigurationError,
    SchemaVersionError,
)
from conveyor.ports import (
    Commit,
    CommitStatus,
    Effects,
    HistoryEntry,
    NewJob,
    Outcome,
    Settlement,
)
from conveyor.testing import wait_until
from tests.conftest import fresh_url, require_server
from tests.helpers import T0
from tests.helpers import connected as connected_backend

psycopg = pytest.importorskip("psycopg")

from conveyor.backends.postgres import PostgresBackend  # noqa: E402
from conveyor.backends.postgres import backend as postgres_backend  # noqa: E402
from conveyor.backends.postgres.schema import LATEST_VERSION  # noqa: E402


def job(job_id: str, queue: str = "q", at: float = T0, key: str | None = None) -> NewJob:
    return NewJob(job_id, queue, b'{"n": "%s"}' % job_id.encode(), at, at, key)


def admin_url(url: str) -> str:
    return url.split("?", 1)[0]


@pytest.fixture
def pg_url(tmp_path: Path) -> Iterator[str]:
    """A fresh schema, with an application_name of its own so a test can kill its connections."""
    url = fresh_url("postgres", tmp_path)
    schema = url.rsplit("schema=", 1)[1]
    yield f"{url}&application_name=conveyor-{schema}"
    with psycopg.connect(admin_url(url), autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
async def backend(pg_url: str) -> AsyncIterator[PostgresBackend]:
    async with connected(pg_url) as store:
        yield store


def connected(pg_url: str, **options: Any) -> contextlib.AbstractAsyncContextManager[PostgresBackend]:
    """A backend of ``pg_url`` with keyword ``options``, connected for the block."""
    return connected_backend(PostgresBackend(pg_url, **options))


async def test_schema_of_a_newer_version_is_refused_and_left_untouched(
    backend: PostgresBackend, pg_url: str
) -> None:
    await backend.commit([Commit(effects=Effects(jobs=[job("a")]))], T0)
    schema = backend.schema
    async with await psycopg.AsyncConnection.connect(admin_url(pg_url), autocommit=True) as conn:
        await conn.execute(
            f'INSERT INTO "{schema}".schema_version (version) VALUES (%s)', (LATEST_VERSION + 1,)
        )
    newer = PostgresBackend(pg_url)
    with pytest.raises(SchemaVersionError, match=f"version {LATEST_VERSION + 1}"):
        await newer.connect()
    await newer.close()
    [leased] = await backend.lease({"q": 30.0}, 10, T0)
    assert leased.id == "a"


async def test_migrations_are_idempotent_and_safe_to_run_at_once(pg_url: str) -> None:
    stores = [PostgresBackend(pg_url) for _ in range(3)]
    await asyncio.gather(*(store.connect() for store in stores))
    try:
        await stores[0].migrate()
        async with await psycopg.AsyncConnection.connect(admin_url(pg_url)) as conn:
            cursor = await conn.execute(f'SELECT array_agg(version) FROM "{stores[0].schema}".schema_version')
            assert await cursor.fetchone() == (list(range(1, LATEST_VERSION + 1)),)
    finally:
        for store in stores:
            await store.close()


def test_schema_name_must_be_a_plain_identifier() -> None:
    with pytest.raises(ConfigurationError, match="schema"):
        PostgresBackend("postgresql://127.0.0.1/db?schema=x;drop")
    assert PostgresBackend("postgresql://127.0.0.1/db").schema == "conveyor"


def test_options_come_from_the_url_and_keywords_win() -> None:
    store = PostgresBackend("postgresql://127.0.0.1/db?schema=s1&idempotency_retention=60")
    assert (store.schema, store.idempotency_retention) == ("s1", 60.0)
    assert (
        PostgresBackend(
            "postgresql://127.0.0.1/db?idempotency_retention=60", idempotency_retention=5
        ).idempotency_retention
        == 5.0
    )


async def test_unreachable_server_raises_backend_unavailable() -> None:
    store = PostgresBackend("postgresql://root@127.0.0.1:1/nothing", pool_timeout=2)
    with pytest.raises(BackendUnavailableError):
        await store.connect()


@pytest.mark.parametrize(
    ("path", "refused"),
    [
        (
            "root@127.0.0.1:5432/conveyor_no_such_database",
            'database "conveyor_no_such_database" does not exist',
        ),
        ("conveyor_no_such_role@127.0.0.1:5432/conveyor_test", 'role "conveyor_no_such_role" does not exist'),
    ],
)
async def test_a_missing_database_or_role_is_a_configuration_error_not_unavailable(
    path: str, refused: str
) -> None:
    require_server("PostgreSQL", "127.0.0.1", 5432)
    store = PostgresBackend(f"postgresql://{path}", pool_timeout=2)
    with pytest.raises(ConfigurationError, match=refused) as caught:
        await store.connect()
    assert not isinstance(caught.value, BackendUnavailableError)
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)


@pytest.mark.parametrize(
    "url",
    ["postgresql://root@127.0.0.1:99999/db", "postgresql://root:secret@127.0.0.1/db?no_such_option=1"],
)
def test_a_url_libpq_cannot_use_is_refused_when_the_backend_is_made(url: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid PostgreSQL URL") as caught:
        PostgresBackend(url)
    assert "secret" not in str(caught.value)


def test_a_url_naming_several_hosts_is_accepted() -> None:
    assert PostgresBackend("postgresql://root@127.0.0.1:5432,127.0.0.2:5433/db").schema == "conveyor"


async def _listening(store: PostgresBackend) -> None:
    """Start the LISTEN connection and wait (bounded) until it is up."""
    await store.wait_for_jobs(["q"], 0)
    await asyncio.wait_for(store._listener.listening.wait(), 10)


async def test_idle_worker_is_woken_promptly_by_another_instances_commit(
    backend: PostgresBackend, pg_url: str
) -> None:
    await _listening(backend)
    await backend.wait_for_jobs(["q"], 0)  # consume the wake-up of the LISTEN start
    producer = PostgresBackend(pg_url)
    await producer.connect()
    try:
        started = time.monotonic()
        waiting = asyncio.create_task(backend.wait_for_jobs(["q"], 60.0))
        await asyncio.sleep(0)
        await producer.commit([Commit(effects=Effects(jobs=[job("a")]))], T0)
        await asyncio.wait_for(waiting, 10)
        assert time.monotonic() - started < 5.0, "woken by NOTIFY, not by the 60 s timeout"
    finally:
        await producer.close()


async def test_own_commit_wakes_a_waiter_of_the_same_instance(backend: PostgresBackend) -> None:
    waiting = asyncio.create_task(backend.wait_for_jobs(["q"], 60.0))
    await asyncio.sleep(0)
    started = time.monotonic()
    await backend.commit([Commit(effects=Effects(jobs=[job("a")]))], T0)
    await asyncio.wait_for(waiting, 10)
    assert time.monotonic() - started < 5.0


async def test_own_notifications_are_not_heard_twice(backend: PostgresBackend, pg_url: str) -> None:
    # A commit whose lease took every due job wakes nobody here, and its NOTIFY, from one of this
    # instance's own connections, is ignored; another instance's NOTIFY still wakes.
    await _listening(backend)
    await backend.wait_for_jobs(["q"], 0)
    _, jobs = await backend.commit_and_lease([Commit(effects=Effects(jobs=[job("a")]))], T0, {"q": 30.0}, 5)
    assert [j.id for j in jobs] == ["a"]
    producer = PostgresBackend(pg_url)
    await producer.connect()
    try:
        await producer.commit([Commit(effects=Effects(jobs=[job("b", "marker")]))], T0)
        async with asyncio.timeout(10):
            while backend._listener._generation.get("marker", 0) == 0:  # noqa: ASYNC110 (private state)
                await asyncio.sleep(0.01)
        # notifications arrive in commit order: the own one came first and left no trace
        assert backend._listener._generation.get("q", 0) == 0
    finally:
        await producer.close()


async def test_notification_during_lease_is_not_slept_through(backend: PostgresBackend, pg_url: str) -> None:
    await _listening(backend)
    await backend.wait_for_jobs(["q"], 0)
    producer = PostgresBackend(pg_url)
    await producer.connect()
    try:
        await producer.commit([Commit(effects=Effects(jobs=[job("a")]))], T0)
        # The notification arrives while this worker is not waiting (it is "leasing").
        async with asyncio.timeout(10):
            while backend._listener._generation.get("q", 0) == 0:  # noqa: ASYNC110 (private state)
                await asyncio.sleep(0.01)
        started = time.monotonic()
        await backend.wait_for_jobs(["q"], 60.0)
        assert time.monotonic() - started < 5.0
    finally:
        await producer.close()


async def test_outbox_commits_jobs_with_the_callers_transaction(
    backend: PostgresBackend, pg_url: str
) -> None:
    schema = backend.schema
    async with await psycopg.AsyncConnection.connect(admin_url(pg_url)) as conn:
        await conn.execute(f'CREATE TABLE "{schema}".orders (id text PRIMARY KEY)')
        await conn.commit()

        async with conn.transaction(force_rollback=True):
            await conn.execute(f'INSERT INTO "{schema}".orders VALUES (%s)', ("o1",))
            [result] = await backend.commit_in(
                conn, [Commit(effects=Effects(jobs=[job("ship-o1", key="o1")]))], T0
            )
            assert result.job_ids == ("ship-o1",)
        assert await backend.lease({"q": 30.0}, 10, T0) == []

        async with conn.transaction():
            await conn.execute(f'INSERT INTO "{schema}".orders VALUES (%s)', ("o2",))
            await backend.commit_in(conn, [Commit(effects=Effects(jobs=[job("ship-o2")]))], T0)
            assert await backend.lease({"q": 30.0}, 10, T0) == [], "invisible until commit"
        [leased] = await backend.lease({"q": 30.0}, 10, T0)
        assert leased.id == "ship-o2"
        cursor = await conn.execute(f'SELECT id FROM "{schema}".orders')
        assert await cursor.fetchall() == [("o2",)]
        await conn.rollback()
    # The rolled-back key left nothing behind: it is free for a new job.
    [again] = await backend.commit([Commit(effects=Effects(jobs=[job("ship-o1b", key="o1")]))], T0)
    assert again.job_ids == ("ship-o1b",)


async def test_outbox_enqueue_meeting_an_existing_id_keeps_the_callers_transaction(
    backend: PostgresBackend, pg_url: str
) -> None:
    # The caller's connection is not in autocommit mode and commit_in is its transaction's first
    # statement: the plain-INSERT path must not be tried (a failed statement would break it).
    await backend.commit([Commit(effects=Effects(jobs=[job("a")]))], T0)
    async with await psycopg.AsyncConnection.connect(admin_url(pg_url)) as conn:
        [result] = await backend.commit_in(conn, [Commit(effects=Effects(jobs=[job("a"), job("b")]))], T0)
        assert result.status is CommitStatus.OK
        await conn.commit()
    assert sorted(j.id for j in await backend.lease({"q": 30.0}, 10, T0)) == ["a", "b"]


async def _terminate_connections(pg_url: str) -> int:
    application = pg_url.rsplit("application_name=", 1)[1]
    async with await psycopg.AsyncConnection.connect(admin_url(pg_url), autocommit=True) as admin:
        cursor = await admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
            (application,),
        )
        row = await cursor.fetchone()
        assert row is not None
        return int(row[0])


async def test_instance_recovers_after_its_connections_are_terminated(
    backend: PostgresBackend, pg_url: str
) -> None:
    await backend.commit([Commit(effects=Effects(jobs=[job("a"), job("b")]))], T0)
    await _listening(backend)
    assert await _terminate_connections(pg_url) >= 2, "the pool's and the listener's connections"

    # A read or a lease that meets a dead connection has the pool replace its dead idle ones and
    # runs once more: the same instance works again at once.
    leased = await backend.lease({"q": 30.0}, 1, T0)
    [ok] = await backend.commit([Commit(Settlement(leased[0].id, leased[0].token, Outcome.ACK))], T0)
    assert ok.status is CommitStatus.OK

    # The LISTEN connection comes back by itself, and wakes a waiter again.
    await asyncio.wait_for(backend._listener.listening.wait(), 10)
    await backend.wait_for_jobs(["q"], 0)
    producer = PostgresBackend(pg_url)
    await producer.connect()
    try:
        waiting = asyncio.create_task(backend.wait_for_jobs(["q"], 60.0))
        await asyncio.sleep(0)
        started = time.monotonic()
        await producer.commit([Commit(effects=Effects(jobs=[job("c")]))], T0)
        await asyncio.wait_for(waiting, 10)
        assert time.monotonic() - started < 5.0
    finally:
        await producer.close()

    # A commit is not retried by the backend (it cannot know whether a lost one applied): it fails
    # once with BackendUnavailableError, which the runtime retries, and the next one goes through.
    await _terminate_connections(pg_url)
    failures = 0
    for _ in range(3):
        try:
            [ok] = await backend.commit([Commit(effects=Effects(jobs=[job("d")]))], T0)
            break
        except BackendUnavailableError:
            failures += 1
    assert ok.status is CommitStatus.OK and failures <= 1


async def test_maintenance_purges_expired_idempotency_keys(backend: PostgresBackend) -> None:
    jobs = [job(f"k{i}", key=f"key-{i}") for i in range(30)]
    await backend.commit([Commit(effects=Effects(jobs=jobs))], T0)
    leased = await backend.lease({"q": 30.0}, 100, T0)
    await backend.commit([Commit(Settlement(j.id, j.token, Outcome.ACK)) for j in leased], T0)
    assert await backend.maintenance(T0 + 10) == 0, "still within the retention"
    assert await backend.maintenance(T0 + backend.idempotency_retention + 1) == 30


async def test_history_is_pruned_in_batches(
    backend: PostgresBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_backend, "PRUNE_BATCH", 7)
    entries = [HistoryEntry("wf", T0 + i, "enqueued", "q") for i in range(20)]
    await backend.commit([Commit(effects=Effects(history=entries))], T0)
    assert await backend.prune_history(T0 + 15) == 15
    assert [e.at for e in await backend.history("wf")] == [T0 + i for i in range(15, 20)]


async def test_array_encoding_round_trips_nulls_unicode_and_empty(pg_url: str) -> None:
    from conveyor.backends.postgres import arrays

    cases = [
        (arrays.TextArray(["a", None, 'é"{},\\']), "text[]"),
        (arrays.BytesArray([b"\x00\xff", None, b""]), "bytea[]"),
        (arrays.FloatArray([1.5, -0.0, 1e300]), "double precision[]"),
        (arrays.FloatArray([1.5, None]), "double precision[]"),
        (arrays.IntArray([0, -2, 2**31 - 1]), "integer[]"),
        (arrays.BigIntArray([2**62, None]), "bigint[]"),
        (arrays.BoolArray([True, False, None]), "boolean[]"),
        (arrays.TextArray([]), "text[]"),
        # one value throughout (a batch's queue name, timestamps, NULLs) has a path of its own
        (arrays.TextArray(["q"] * 3), "text[]"),
        (arrays.TextArray([None] * 3), "text[]"),
        (arrays.BytesArray([b"x"] * 2), "bytea[]"),
        (arrays.FloatArray([2.5] * 4), "double precision[]"),
        (arrays.FloatArray([2.5, 3.5, 2.5]), "double precision[]"),
        (arrays.FloatArray([0.0, -0.0]), "double precision[]"),
        (arrays.IntArray([0, 0]), "integer[]"),
        (arrays.IntArray([None] * 2), "integer[]"),
        (arrays.BigIntArray([7] * 3), "bigint[]"),
        (arrays.BoolArray([False] * 2), "boolean[]"),
    ]
    async with await psycopg.AsyncConnection.connect(admin_url(pg_url), autocommit=True) as conn:
        arrays.register(conn)
        for values, sql_type in cases:
            cursor = await conn.execute(f"SELECT %b::{sql_type}", [values])
            assert await cursor.fetchone() == (list(values),), sql_type
        cursor = await conn.execute("SELECT %b::float8[]", [arrays.FloatArray([0.0, -0.0])])
        row = await cursor.fetchone()
        assert row is not None and [repr(x) for x in row[0]] == ["0.0", "-0.0"]  # 0.0 == -0.0


async def test_connections_are_warmed_up_once_workers_lease(pg_url: str) -> None:
    # Compiling lease() and commit_batch() costs a new connection ~15 ms of server time: paid
    # before the first lease (so never inside a worker's lease), not by a producer that only
    # enqueues and so calls neither.
    async with connected(pg_url, pool_min_size=2) as store:
        [result] = await store.commit([Commit(effects=Effects(jobs=[job("a")]))], T0)
        assert result.status is CommitStatus.OK
        assert store._warmed == set()
        await asyncio.gather(store.lease({"q": 30.0}, 10, T0), store.lease({"q": 30.0}, 10, T0))
        assert len(store._warmed) >= 2
        async with store._connection() as c1, store._connection() as c2, store._connection() as c3:
            # at least one of them is new, made after the first lease: warmed up as it was made
            assert {c.info.backend_pid for c in (c1, c2, c3)} <= store._warmed


async def test_committing_instances_vacuum_the_hot_tables_themselves(pg_url: str) -> None:
    # The CI server runs with autovacuum off: without the backend's own vacuum, the dead row
    # versions every job leaves behind would pile up for as long as the app runs.
    store = PostgresBackend(pg_url, vacuum_interval=0.05)
    schema = pg_url.split("schema=", 1)[1].split("&", 1)[0]
    await store.connect()
    rounds = 0

    async def churned_and_vacuumed_twice() -> bool:
        nonlocal rounds
        rounds += 1
        jobs = [job(f"r{rounds}-{i}") for i in range(200)]
        await store.commit([Commit(effects=Effects(jobs=jobs))], T0)
        leased = await store.lease({"q": 30.0}, 1000, T0)
        await store.commit([Commit(Settlement(j.id, j.token, Outcome.ACK)) for j in leased], T0)
        return store.vacuums >= 2

    def vacuum_count() -> int:
        with psycopg.connect(admin_url(pg_url), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT vacuum_count FROM pg_stat_user_tables WHERE schemaname = %s AND relname = 'jobs'",
                (schema,),
            ).fetchall()
        return int(rows[0][0]) if rows else 0

    try:
        await wait_until(churned_and_vacuumed_twice, timeout=10)
        await wait_until(lambda: vacuum_count() >= 1, timeout=10)  # the server's statistics lag a little
    finally:
        await store.close()


async def test_an_idle_workers_lease_vacuums_what_the_last_busy_interval_left(pg_url: str) -> None:
    # Traffic stops right after the first vacuum: the dead rows of the last interval are not left
    # for the next commit (which may never come) but vacuumed by the next lease once it is due.
    async with connected(pg_url, vacuum_interval=1.0) as store:
        await store.commit([Commit(effects=Effects(jobs=[job("a"), job("b")]))], T0)
        leased = await store.lease({"q": 30.0}, 10, T0)  # vacuum 1 (the enqueue left no dead rows)
        await store.commit([Commit(Settlement(j.id, j.token, Outcome.ACK)) for j in leased], T0)
        await wait_until(lambda: store.vacuums == 1, timeout=10)

        async def vacuumed_while_idle() -> bool:
            assert await store.lease({"q": 30.0}, 10, T0) == []
            return store.vacuums == 2

        await wait_until(vacuumed_while_idle, timeout=10)
        assert not store._dirty  # nothing changed since: idle leases vacuum no more


async def test_a_producer_that_only_enqueues_does_not_vacuum(pg_url: str) -> None:
    # A first vacuum is due at once (a worker's first ack starts one), so any commit that
    # counted as leaving dead rows would start one here.
    async with connected(pg_url, vacuum_interval=0.01) as store:
        for n in range(5):
            await store.commit([Commit(effects=Effects(jobs=[job(f"p{n}")]))], T0)
        assert store._vacuuming is None and store.vacuums == 0


async def test_vacuum_interval_zero_leaves_vacuuming_to_autovacuum(pg_url: str) -> None:
    store = PostgresBackend(pg_url + "&vacuum_interval=0")
    await store.connect()
    try:
        await store.commit([Commit(effects=Effects(jobs=[job("a")]))], T0)
        assert store.vacuum_interval == 0 and store.vacuums == 0
    finally:
        await store.close()
