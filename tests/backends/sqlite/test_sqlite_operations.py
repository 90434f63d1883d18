"""What the SQLite backend's operations port must do beyond the store contract: the upgrade of a
version-1 file, priority lanes past the compound-select limit, a pause that lands between the
lease's read-only probe and its write, and statements that walk indexes rather than tables."""

from __future__ import annotations

import dataclasses
import sqlite3
from contextlib import closing

import pytest

from conveyor.backends.sqlite import SQLiteBackend
from conveyor.backends.sqlite.backend import database_path
from conveyor.backends.sqlite.connection import script_statements
from conveyor.backends.sqlite.sql import (
    MIGRATIONS,
    QUERIES,
    dead_letters_statement,
    lease_statement,
    leases_statement,
)
from conveyor.ports import Commit, DeadLetterFilter, ErrorInfo, NewJob, Outcome, Settlement
from tests.helpers import T0, connected, enqueue, new_jobs


def ranked(job_id: str, queue: str, priority: int, at: float = T0) -> NewJob:
    return NewJob(job_id, queue, b"{}", at, at, priority=priority)


async def test_a_version_1_database_is_upgraded_keeping_its_jobs_and_dead_letters(url: str) -> None:
    path = database_path(url)
    with closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute(QUERIES["create_schema_version_table"])
        for statement in script_statements(MIGRATIONS[0].text):
            db.execute(statement)
        db.execute(QUERIES["record_schema_version"], {"version": 1})
        db.execute(
            "INSERT INTO jobs (id, queue, body, available_at, enqueued_at, idempotency_key)"
            " VALUES ('old', 'q', x'7b7d', ?, ?, 'k')",
            (T0 - 10, T0 - 10),
        )
        db.execute(
            "INSERT INTO dead_letters VALUES ('gone', 'q', x'7b7d', 'ValueError', 'boom', NULL, 3, ?, ?)",
            (T0 - 20, T0 - 5),
        )

    async with connected(SQLiteBackend(url)) as backend:
        await backend.commit(enqueue(ranked("urgent", "q", 3)), T0)
        [stats] = await backend.stats(["q"], T0)
        assert (stats.ready, stats.dead, stats.paused) == (2, 1, False)
        record = await backend.job("old", T0)
        assert record is not None and (record.priority, record.idempotency_key) == (0, "k")
        assert [j.id for j in await backend.lease({"q": 30.0}, 10, T0, "w")] == ["urgent", "old"]
        [dead] = await backend.find_dead_letters(DeadLetterFilter(text="BOOM"))
        assert dead.id == "gone"

    with closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT version FROM conveyor_schema ORDER BY 1").fetchall() == [(1,), (2,)]
        indexes = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert "jobs_by_queue_available" not in indexes  # replaced by the lanes' index
        assert {"jobs_waiting", "jobs_leased"} <= indexes


async def test_lease_across_hundreds_of_lanes_keeps_priority_then_age(backend: SQLiteBackend) -> None:
    # 150 queues with two lanes each: past 200 lanes the lease is one statement over json_each.
    queues = {f"q{i:03d}": 30.0 for i in range(150)}
    jobs = [ranked(f"low{i:03d}", f"q{i:03d}", 0, T0 - 1000 - i) for i in range(150)]
    jobs += [ranked(f"high{i:03d}", f"q{i:03d}", 2, T0 - i) for i in range(150)]
    await backend.commit(enqueue(*jobs), T0)
    leased = await backend.lease(queues, 152, T0)
    assert [j.id for j in leased[:2]] == ["high149", "high148"]
    assert [j.id for j in leased[149:]] == ["high000", "low149", "low148"]


async def test_a_queue_paused_after_the_probe_is_not_leased(backend: SQLiteBackend) -> None:
    # The lease reads which lanes hold due jobs without the write lock, then leases under it: a
    # pause committed in between must still hold.
    await backend.commit(enqueue(*new_jobs(3)), T0)
    store = backend._store
    assert store is not None
    probe = {"queues": '["q"]', "now": T0}
    lanes = store.connection.read(lambda db: db.execute(QUERIES["due_lanes"], probe).fetchall())
    assert lanes == [("q", 0)]
    await backend.pause("q", T0)
    params = {"now": T0, "limit": 10, "worker": "", "queue0": "q", "priority0": 0, "lease0": 30.0}
    for returning in (True, False):
        sql = lease_statement((False,), returning=returning)
        store.returning = returning
        assert store.connection.write(lambda db: store._lease(db, sql, params)) == []  # noqa: B023
    await backend.resume("q")
    assert len(await backend.lease({"q": 30.0}, 10, T0)) == 3


async def test_dead_letter_text_is_matched_literally(backend: SQLiteBackend) -> None:
    for dead_id, message in (("a", "100%_done!"), ("b", "100 percent done"), ("c", "1000_done!x")):
        await backend.commit(enqueue(NewJob(dead_id, "q", b"{}", T0, T0)), T0)
        [leased] = await backend.lease({"q": 30.0}, 1, T0)
        error = ErrorInfo("ValueError", message)
        await backend.commit([Commit(Settlement(leased.id, leased.token, Outcome.DEAD, error=error))], T0)
    for text, found in (("%_DONE!", ["a"]), ("0_d", ["c"]), ("!", ["c", "a"]), ("0%", ["a"])):
        assert [d.id for d in await backend.find_dead_letters(DeadLetterFilter(text=text))] == found
        assert await backend.count_dead_letters(DeadLetterFilter(text=text)) == len(found)


async def test_a_job_keeps_its_lease_seconds_and_priority_when_retried(backend: SQLiteBackend) -> None:
    own = dataclasses.replace(ranked("a", "q", -3), lease_seconds=600.0)
    await backend.commit(enqueue(own), T0)
    [first] = await backend.lease({"q": 30.0}, 1, T0)
    retry = Settlement(first.id, first.token, Outcome.RETRY, available_at=T0 + 1)
    await backend.commit([Commit(retry)], T0)
    [again] = await backend.lease({"q": 30.0}, 1, T0 + 1)
    assert again.lease_deadline == pytest.approx(T0 + 601)
    record = await backend.job("a", T0 + 2)
    assert record is not None and record.priority == -3 and record.lease is not None


def plan(db: sqlite3.Connection, sql: str, params: object) -> str:
    return "\n".join(row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, params))  # type: ignore[arg-type]


async def test_operator_queries_walk_indexes_not_tables(backend: SQLiteBackend) -> None:
    store = backend._store
    assert store is not None
    db = store.connection.db
    lease = plan(
        db,
        lease_statement((False, True), returning=True),
        {"queue0": "q", "priority0": 0, "lease0": 30.0, "queue1": "q", "lease1": 30.0, "now": T0, "limit": 5}
        | {"base": 0, "worker": ""},
    )
    assert "COVERING INDEX jobs_waiting (queue=? AND priority=? AND leased=? AND available_at<?)" in lease
    assert "INDEX jobs_leased (queue=? AND leased=? AND available_at<?)" in lease
    # the only sorts: of the lane heads and of the expired leases, at most limit rows each
    assert lease.count("TEMP B-TREE") == 3 and "SCAN jobs" not in lease
    stats = plan(db, QUERIES["queue_stats"], {"queue": "q", "now": T0})
    assert stats.count("COVERING INDEX jobs_waiting") == 3
    assert "COVERING INDEX jobs_leased (queue=? AND leased=?)" in stats
    assert "SCAN jobs" not in stats
    for of_queue in (True, False):
        leases_sql = leases_statement(of_queue=of_queue, after=True)
        leases = plan(db, leases_sql, {"queue": "q", "after": "a", "limit": 5})
        assert "INDEX jobs_leased" in leases
    assert "USING INDEX sqlite_autoindex_jobs_1 (id=?)" in plan(db, QUERIES["job"], ("a",))
    assert "history_by_message (message_id=?)" in plan(db, QUERIES["job_history"], ("a",))
    params = {"queue": "q", "text": "%x%", "error_type": "E", "before_at": T0, "before_id": "a", "limit": 5}
    overall = plan(db, dead_letters_statement("find_dead_letters", frozenset({"text", "before"})), params)
    per_queue = plan(db, dead_letters_statement("find_dead_letters", frozenset({"queue", "before"})), params)
    assert "INDEX dead_letters_by_time ((failed_at,id)<(?,?))" in overall
    assert "INDEX dead_letters_by_queue (queue=? AND (failed_at,id)<(?,?))" in per_queue
    assert "TEMP B-TREE" not in overall + per_queue


@pytest.mark.parametrize("queue_count", [1, 250])  # 250: past the compound limit, one statement
async def test_an_expired_lease_is_leased_again_in_priority_order(
    backend: SQLiteBackend, queue_count: int
) -> None:
    # Leased jobs live in their own index: an expired one must come back in its priority's place.
    queues = {f"q{i:03d}": 30.0 for i in range(queue_count)}
    await backend.commit(enqueue(ranked("vip", "q000", 5), ranked("plain", "q000", 0, T0 - 100)), T0)
    await backend.lease({"q000": 30.0}, 2, T0)
    await backend.commit(enqueue(ranked("later", "q000", 0, T0 + 10), ranked("mid", "q000", 2, T0 + 10)), T0)
    again = await backend.lease(queues, 10, T0 + 31)
    assert [j.id for j in again] == ["vip", "mid", "later", "plain"]  # an expired one: due at its deadline
    assert [j.attempt for j in again] == [2, 1, 1, 2]
    [stats] = await backend.stats(["q000"], T0 + 31)
    assert (stats.ready, stats.scheduled, stats.leased) == (0, 0, 4)
