"""What the SQLite backend must do beyond the store contract: many instances and processes on one
file, schema versions, lock contention, cross-instance wake-ups and its URL."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from conveyor.backends import open_backend
from conveyor.backends.sqlite import SQLiteBackend, wakeup
from conveyor.backends.sqlite.backend import database_path
from conveyor.model.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    SchemaVersionError,
)
from conveyor.ports import (
    Backend,
    Commit,
    CommitStatus,
    Effects,
    NewJob,
    Outcome,
    Settlement,
    StateOp,
    StateWrite,
)
from conveyor.testing.store_contract import StoreContract
from tests.helpers import T0, new_jobs

LEASE = {"q": 300.0}  # far longer than any test: every lease stays valid


WORKER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from conveyor.backends.sqlite import SQLiteBackend, wakeup
    from conveyor.ports import Commit, Outcome, Settlement

    async def main(url, limit):
        backend = SQLiteBackend(url)
        await backend.connect()
        print("ready", flush=True)
        sys.stdin.readline()  # the start gate: both workers lease at the same time
        leased_ids = []
        try:
            for batch in range(10_000):
                leased = await backend.lease({"q": 300.0}, limit, 1_700_000_000.0)
                if not leased:
                    break
                leased_ids.extend(job.id for job in leased)
                if batch % 2:
                    acks = [Commit(Settlement(j.id, j.token, Outcome.ACK)) for j in leased]
                    await backend.commit(acks, 1_700_000_000.0)
        finally:
            await backend.close()
        print(json.dumps(leased_ids))

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


@pytest.mark.slow
async def test_two_processes_on_one_file_never_lease_the_same_job(url: str) -> None:
    setup = SQLiteBackend(url)
    await setup.connect()
    await setup.commit([Commit(effects=Effects(jobs=new_jobs(2_000)))], T0)
    await setup.close()
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            WORKER_SCRIPT,
            url,
            str(limit),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for limit in (10, 17)
    ]
    for worker in workers:
        assert worker.stdout is not None
        ready = await asyncio.wait_for(worker.stdout.readline(), 60)
        assert ready == b"ready\n", ready
    outputs = await asyncio.wait_for(asyncio.gather(*(w.communicate(b"go\n") for w in workers)), 100)
    for worker, (_, stderr) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, stderr.decode()
    per_worker = [json.loads(stdout) for stdout, _ in outputs]
    assert all(per_worker), "both processes took part"
    counts = Counter(job_id for ids in per_worker for job_id in ids)
    assert len(counts) == 2_000
    assert set(counts.values()) == {1}, [job for job, n in counts.items() if n > 1][:10]


async def test_schema_is_created_once_by_concurrent_openers(url: str) -> None:
    openers = [SQLiteBackend(url) for _ in range(4)]
    await asyncio.gather(*(b.connect() for b in openers))
    await asyncio.gather(*(b.close() for b in openers))
    with closing(sqlite3.connect(database_path(url))) as db:
        assert db.execute("SELECT version FROM conveyor_schema").fetchall() == [(1,), (2,)]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


async def test_newer_schema_version_is_refused_and_left_untouched(url: str) -> None:
    first = SQLiteBackend(url)
    await first.connect()
    await first.commit([Commit(effects=Effects(jobs=new_jobs(3)))], T0)
    await first.close()
    path = database_path(url)
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("INSERT INTO conveyor_schema (version) VALUES (99)")

    newer = SQLiteBackend(url)
    with pytest.raises(SchemaVersionError, match=r"schema version 99.*versions up to 2"):
        await newer.connect()

    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT version FROM conveyor_schema ORDER BY 1").fetchall() == [
            (1,),
            (2,),
            (99,),
        ]
        assert db.execute("SELECT count(*) FROM jobs").fetchone() == (3,)


def hold_write_lock(path: str) -> sqlite3.Connection:
    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN IMMEDIATE")
    return locker


async def test_lock_held_past_busy_timeout_fails_saying_how_long_it_waited(url: str) -> None:
    backend = SQLiteBackend(url, busy_timeout=0.3)
    await backend.connect()
    locker = hold_write_lock(backend.path)
    try:
        with pytest.raises(BackendError, match=r"stayed locked for \d+\.\d+s.*busy_timeout=0.3s"):
            await backend.commit([Commit(effects=Effects(jobs=new_jobs(1)))], T0)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    # The backend is still usable once the lock is gone.
    [result] = await backend.commit([Commit(effects=Effects(jobs=new_jobs(1)))], T0)
    assert result.status is CommitStatus.OK
    await backend.close()


async def test_lock_released_within_busy_timeout_is_waited_for(url: str) -> None:
    backend = SQLiteBackend(url, busy_timeout=30)
    await backend.connect()
    locker = hold_write_lock(backend.path)
    commit = asyncio.create_task(backend.commit([Commit(effects=Effects(jobs=new_jobs(5)))], T0))

    def release_lock() -> None:
        locker.execute("ROLLBACK")
        locker.close()

    release = threading.Timer(0.2, release_lock)
    release.start()
    try:
        [result] = await asyncio.wait_for(commit, 20)
        assert result.status is CommitStatus.OK and len(result.job_ids) == 5
    finally:
        release.join()
        await backend.close()


async def test_waiting_instance_wakes_after_another_instance_commits(url: str) -> None:
    waiter, producer = SQLiteBackend(url), SQLiteBackend(url)
    await asyncio.gather(waiter.connect(), producer.connect())
    waiting = asyncio.Event()

    async def consume() -> str:
        for _ in range(1_000):
            leased = await waiter.lease(LEASE, 10, T0)
            if leased:
                return leased[0].id
            waiting.set()
            await waiter.wait_for_jobs(["q"], timeout=60)  # far beyond the bound below
        raise AssertionError("no job arrived")

    try:
        consumer = asyncio.create_task(consume())
        await asyncio.wait_for(waiting.wait(), 10)
        await producer.commit([Commit(effects=Effects(jobs=new_jobs(1)))], T0)
        assert await asyncio.wait_for(consumer, 10) == "job-00000"
    finally:
        await asyncio.gather(waiter.close(), producer.close())


def test_polling_slows_down_after_a_quiet_second() -> None:
    assert wakeup.poll_interval(0.0, 0.001, 0.05) == 0.001
    assert wakeup.poll_interval(wakeup.QUIET_AFTER - 0.01, 0.001, 0.05) == 0.001
    assert wakeup.poll_interval(wakeup.QUIET_AFTER, 0.001, 0.05) == 0.05
    assert wakeup.poll_interval(60.0, 0.1, 0.05) == 0.1  # never faster than asked for


async def test_a_quiet_waiter_polls_at_the_idle_pace_and_still_wakes(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wakeup, "QUIET_AFTER", 0.0)  # quiet from the start
    waiter = SQLiteBackend(url, wakeup_interval=0.001, wakeup_idle_interval=0.1)
    producer = SQLiteBackend(url)
    await asyncio.gather(waiter.connect(), producer.connect())
    try:
        assert await waiter.lease(LEASE, 10, T0) == []
        watcher = waiter._watcher
        assert watcher is not None
        before = watcher.polls
        await waiter.wait_for_jobs(["q"], timeout=0.5)  # nothing comes: it times out
        assert watcher.polls - before <= 10, "0.5 s at 0.1 s a poll (1 ms would be ~500)"
        waiting = asyncio.create_task(waiter.wait_for_jobs(["q"], timeout=60))
        await producer.commit([Commit(effects=Effects(jobs=new_jobs(1)))], T0)
        await asyncio.wait_for(waiting, 10)
        assert [j.id for j in await waiter.lease(LEASE, 10, T0)] == ["job-00000"]
    finally:
        await asyncio.gather(waiter.close(), producer.close())


async def test_wait_returns_at_once_when_jobs_arrived_since_the_last_lease(
    backend: SQLiteBackend,
) -> None:
    assert await backend.lease(LEASE, 10, T0) == []
    await backend.commit([Commit(effects=Effects(jobs=new_jobs(1)))], T0)
    await asyncio.wait_for(backend.wait_for_jobs(["q"], timeout=60), 10)


async def test_wait_without_news_times_out(backend: SQLiteBackend) -> None:
    await asyncio.wait_for(backend.wait_for_jobs(["q"], timeout=0.05), 10)


async def test_lease_across_hundreds_of_queues_takes_the_oldest_first(backend: SQLiteBackend) -> None:
    # Past 200 queues the lease is one statement over json_each instead of one sub-select per queue.
    queues = {f"q{i:03d}": 30.0 + i for i in range(250)}
    jobs = [NewJob(f"j{i:03d}", f"q{i:03d}", b"{}", T0 - i, T0) for i in range(250)]
    await backend.commit([Commit(effects=Effects(jobs=jobs))], T0)
    leased = await backend.lease(queues, 5, T0)
    assert [j.id for j in leased] == ["j249", "j248", "j247", "j246", "j245"]
    assert leased[0].lease_deadline == pytest.approx(T0 + 30.0 + 249)
    assert len(await backend.lease(queues, 1_000, T0)) == 245


class TestContractWithoutReturning(StoreContract):
    """The lease and ack paths SQLite < 3.35 takes (no RETURNING), on this SQLite."""

    durable = True

    @pytest.fixture
    def backend_url(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/conveyor.db"

    @pytest.fixture
    async def backend(self, backend_url: str) -> AsyncIterator[Backend]:
        store = SQLiteBackend(backend_url)
        await store.connect()
        assert store._store is not None
        store._store.returning = False
        try:
            yield store
        finally:
            await store.close()


def test_url_paths_relative_and_absolute() -> None:
    assert database_path("sqlite:///conveyor.db") == "conveyor.db"
    assert database_path("sqlite:///data/conveyor.db?busy_timeout=3") == "data/conveyor.db"
    assert database_path("sqlite:////var/lib/conveyor.db") == "/var/lib/conveyor.db"
    for bad in ("sqlite://", "sqlite:///", "sqlite://host/x.db", "sqlite:///:memory:"):
        with pytest.raises(ConfigurationError):
            database_path(bad)


def test_options_come_from_the_url_and_keywords_win() -> None:
    backend = open_backend("sqlite:///x.db?idempotency_retention=60&busy_timeout=2.5")
    assert isinstance(backend, SQLiteBackend)
    assert (backend.idempotency_retention, backend.busy_timeout) == (60.0, 2.5)
    override = SQLiteBackend("sqlite:///x.db?idempotency_retention=60", idempotency_retention=5)
    assert override.idempotency_retention == 5.0
    assert SQLiteBackend("sqlite:///x.db").idempotency_retention == 24 * 3600.0
    with pytest.raises(ConfigurationError, match="busy_timeout"):
        SQLiteBackend("sqlite:///x.db?busy_timeout=soon")


async def test_a_missing_directory_is_refused_unless_create_dirs_is_given(tmp_path: Path) -> None:
    refused = SQLiteBackend(f"sqlite:///{tmp_path}/a/b/c/conveyor.db")
    with pytest.raises(ConfigurationError, match=r"does not exist.*\?create_dirs=1"):
        await refused.connect()
    assert not (tmp_path / "a").exists()
    for backend in (
        SQLiteBackend(f"sqlite:///{tmp_path}/a/b/c/conveyor.db?create_dirs=1"),
        SQLiteBackend(f"sqlite:///{tmp_path}/d/conveyor.db", create_dirs=True),
    ):
        await backend.connect()
        await backend.close()
    assert (tmp_path / "a/b/c/conveyor.db").is_file()
    assert (tmp_path / "d/conveyor.db").is_file()
    with pytest.raises(ConfigurationError, match="not 0 or 1"):
        SQLiteBackend(f"sqlite:///{tmp_path}/x.db?create_dirs=maybe")


async def test_a_path_that_cannot_be_created_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    backend = SQLiteBackend(f"sqlite:///{tmp_path}/file/conveyor.db?create_dirs=1")
    with pytest.raises(BackendUnavailableError, match="cannot"):
        await backend.connect()


async def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "notes.db").write_bytes(b"these are not the pages you are looking for" * 100)
    with pytest.raises(BackendError, match="not a database"):
        await SQLiteBackend(f"sqlite:///{tmp_path}/notes.db").connect()


async def test_a_driver_error_rolls_back_the_whole_batch(backend: SQLiteBackend) -> None:
    broken = StateWrite("k", StateOp.SET, None)  # NOT NULL violation inside the transaction
    with pytest.raises(BackendError, match="NOT NULL"):
        await backend.commit(
            [Commit(effects=Effects(jobs=new_jobs(1))), Commit(effects=Effects(states=[broken]))], T0
        )
    assert await backend.lease(LEASE, 10, T0) == []


async def test_redrive_leaves_a_dead_letter_whose_id_is_taken_by_a_live_job(
    backend: SQLiteBackend,
) -> None:
    await backend.commit([Commit(effects=Effects(jobs=new_jobs(2)))], T0)
    leased = await backend.lease(LEASE, 10, T0)
    dead = [Commit(Settlement(j.id, j.token, Outcome.DEAD)) for j in leased]
    await backend.commit(dead, T0)
    await backend.commit([Commit(effects=Effects(jobs=new_jobs(1)))], T0)  # job-00000 again
    assert await backend.redrive(["job-00000", "job-00001"], T0) == 1
    assert [d.id for d in await backend.dead_letters("q")] == ["job-00000"]
    assert sorted(j.id for j in await backend.lease(LEASE, 10, T0)) == ["job-00000", "job-00001"]


async def test_use_before_connect_is_a_clear_error(url: str) -> None:
    with pytest.raises(BackendError, match="not connected"):
        await SQLiteBackend(url).lease(LEASE, 1, T0)
