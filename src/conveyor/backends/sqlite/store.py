"""The blocking half of the SQLite backend: every port operation as one short transaction.

A :class:`Store` is created, used and closed on the backend's single thread. Writes run in
``BEGIN IMMEDIATE`` transactions (see :class:`~conveyor.backends.sqlite.connection.Connection`);
per-row Python work is kept to building tuples for ``executemany``.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any

import orjson

from conveyor.backends.sqlite.connection import Connection
from conveyor.backends.sqlite.sql import (
    MAX_LANES_PER_COMPOUND,
    QUERIES,
    dead_letters_statement,
    lease_statement,
    leases_statement,
)
from conveyor.model.errors import CommitRejectedError
from conveyor.ports import (
    Commit,
    CommitResult,
    CommitStatus,
    DeadLetter,
    DeadLetterFilter,
    Effects,
    ErrorInfo,
    HistoryEntry,
    InstanceSummary,
    JobRecord,
    LeasedJob,
    LeaseInfo,
    MinuteCounts,
    NewJob,
    Outcome,
    QueueStats,
    Settlement,
    StateOp,
    StateRecord,
    WorkerInfo,
)
from conveyor.ports.operations import bucket, live_state, prefix_end

Q = QUERIES
RETURNING_SUPPORTED = sqlite3.sqlite_version_info >= (3, 35, 0)
"""``UPDATE ... RETURNING`` arrived in SQLite 3.35; older libraries lease with SELECT + UPDATE."""

# Expired idempotency keys are ignored on lookup; deleting them is housekeeping done this often
# (seconds of the caller's clock).
KEY_SWEEP_INTERVAL = 60.0

_OK_EMPTY = CommitResult(CommitStatus.OK)
_STALE = CommitResult(CommitStatus.STALE)
_CONFLICT = CommitResult(CommitStatus.CONFLICT)
_by_token = itemgetter(4)
_LIKE_METACHARACTERS = re.compile("[!%_]")
"""What ``dead_where_text`` escapes (with ``!``: a backslash would need escaping in Python and SQL)."""
_COUNTED = {Outcome.ACK: 0, Outcome.RETRY: 1, Outcome.DEAD: 2}
"""The column of ``queue_counts`` (completed, retried, dead) each outcome counts in."""


class Store:
    """One database file, opened with the conveyor schema (created or checked on open)."""

    def __init__(self, path: str, *, busy_timeout: float, idempotency_retention: float) -> None:
        self.connection = Connection(path, busy_timeout=busy_timeout)
        try:
            self.connection.setup()
        except BaseException:
            self.connection.close()
            raise
        self.idempotency_retention = idempotency_retention
        self.returning = RETURNING_SUPPORTED
        self._next_key_sweep = float("-inf")

    def close(self) -> None:
        self.connection.close()

    # queue store

    def lease(self, queues: Mapping[str, float], limit: int, now: float, worker: str) -> list[LeasedJob]:
        if not queues or limit <= 0:
            return []
        probe = {"queues": json.dumps(list(queues)), "now": now}
        lanes = self.connection.read(lambda db: db.execute(Q["due_lanes"], probe).fetchall())
        if not lanes:
            return []
        params: dict[str, Any] = {"now": now, "limit": limit, "worker": worker}
        terms = tuple(priority is None for _, priority in lanes)
        if len(terms) > MAX_LANES_PER_COMPOUND:
            params["lanes"] = json.dumps([[q, p, float(queues[q])] for q, p in lanes if p is not None])
            params["expired"] = json.dumps({q: float(queues[q]) for q, p in lanes if p is None})
        else:
            for i, (queue, priority) in enumerate(lanes):
                params[f"queue{i}"] = queue
                params[f"priority{i}"] = priority
                params[f"lease{i}"] = float(queues[queue])
        sql = lease_statement(terms, returning=self.returning)
        return self.connection.write(lambda db: self._lease(db, sql, params))

    def _lease(self, db: sqlite3.Connection, sql: str, params: dict[str, Any]) -> list[LeasedJob]:
        base: int = db.execute(Q["token_counter"]).fetchone()[0]
        if self.returning:
            rows = db.execute(sql, {**params, "base": base}).fetchall()
            rows.sort(key=_by_token)  # token = base + rank restores the lease order
            leased = [LeasedJob(*row) for row in rows]
        else:
            leased, updates = [], []
            worker, now = params["worker"], params["now"]
            selected = db.execute(sql, params).fetchall()
            for rank, (seq, job_id, queue, body, attempt, deadline, enqueued_at) in enumerate(selected, 1):
                token = base + rank
                updates.append((token, deadline, worker, now, seq))
                leased.append(LeasedJob(job_id, queue, body, attempt, token, deadline, enqueued_at))
            db.executemany(Q["update_leased"], updates)
        if leased:
            db.execute(Q["advance_token_counter"], {"count": len(leased)})
        return leased

    def extend(self, job_id: str, token: int, until: float, now: float) -> bool:
        params = {"id": job_id, "token": token, "until": until, "now": now}
        return bool(self.connection.write(lambda db: db.execute(Q["extend"], params).rowcount))

    def dead_letters(self, queue: str | None, limit: int, offset: int) -> list[DeadLetter]:
        params = {"queue": queue, "limit": limit, "offset": offset}
        rows = self.connection.read(lambda db: db.execute(Q["dead_letters"], params).fetchall())
        return [DeadLetter.from_row(row) for row in rows]

    def redrive(self, ids: Sequence[str], now: float, available_at: float | None) -> int:
        if not ids:
            return 0
        at = now if available_at is None else available_at
        params = {"ids": json.dumps(list(ids)), "available_at": at}

        def move(db: sqlite3.Connection) -> int:
            movable = [row[0] for row in db.execute(Q["redrive_movable"], params)]
            if not movable:
                return 0
            chosen = {"ids": json.dumps(movable), "available_at": at}
            db.execute(Q["redrive_insert"], chosen)
            return int(db.execute(Q["redrive_delete"], chosen).rowcount)

        return self.connection.write(move)

    def purge(self, ids: Sequence[str] | None, queue: str | None) -> int:
        if ids is None:
            sql, params = Q["purge_queue"], {"queue": queue}
        else:
            sql, params = Q["purge_ids"], {"ids": json.dumps(list(ids))}
        return int(self.connection.write(lambda db: db.execute(sql, params).rowcount))

    def stats(self, queues: Sequence[str], now: float) -> list[QueueStats]:
        def count(db: sqlite3.Connection) -> list[QueueStats]:
            result = []
            for queue in queues:
                row = db.execute(Q["queue_stats"], {"queue": queue, "now": now}).fetchone()
                ready, scheduled, leased, oldest, dead, paused = row
                result.append(QueueStats(queue, ready, scheduled, leased, dead, oldest, bool(paused)))
            return result

        return self.connection.read(count)

    def queue_names(self) -> list[str]:
        rows = self.connection.read(lambda db: db.execute(Q["queue_names"]).fetchall())
        return [name for (name,) in rows]

    # topic store

    def register_subscriptions(self, routes: Sequence[tuple[str, str]]) -> None:
        rows = [(event, queue) for event, queue in routes]
        if rows:
            self.connection.write(lambda db: db.executemany(Q["register_subscription"], rows))

    def subscriptions(self) -> list[tuple[str, str]]:
        rows = self.connection.read(lambda db: db.execute(Q["subscriptions"]).fetchall())
        return [(event, queue) for event, queue in rows]

    # state store

    def get_states(self, keys: Sequence[str]) -> dict[str, StateRecord]:
        if not keys:
            return {}
        param = (json.dumps(list(keys)),)
        rows = self.connection.read(lambda db: db.execute(Q["get_states"], param).fetchall())
        found = {key: StateRecord(value, version) for key, value, version in rows}
        return {key: found[key] for key in keys if key in found}

    # history store

    def history(self, correlation_id: str) -> list[HistoryEntry]:
        rows = self.connection.read(lambda db: db.execute(Q["history"], (correlation_id,)).fetchall())
        return [HistoryEntry(*row) for row in rows]

    def prune_history(self, before: float) -> int:
        return int(self.connection.write(lambda db: db.execute(Q["prune_history"], (before,)).rowcount))

    def instances(
        self,
        started_after: float | None,
        limit: int,
        before: tuple[float, str] | None,
        prefix: str | None,
    ) -> list[InstanceSummary]:
        after = -math.inf if started_after is None else started_after
        at, below = before if before is not None else (math.inf, "")
        if prefix:
            params: tuple[object, ...] = (after, at, below, prefix, prefix_end(prefix), limit)
            query = Q["instances_by_prefix"]
        else:
            params, query = (after, at, below, limit), Q["instances"]
        rows = self.connection.read(lambda db: db.execute(query, params).fetchall())
        return [InstanceSummary(*row) for row in rows]

    # operations

    def pause(self, queue: str, now: float) -> bool:
        return bool(self.connection.write(lambda db: db.execute(Q["pause"], (queue, now)).rowcount))

    def resume(self, queue: str) -> bool:
        return bool(self.connection.write(lambda db: db.execute(Q["resume"], (queue,)).rowcount))

    def paused_queues(self) -> dict[str, float]:
        rows = self.connection.read(lambda db: db.execute(Q["paused_queues"]).fetchall())
        return dict(rows)

    def leases(self, queue: str | None, limit: int, after: str | None) -> list[LeaseInfo]:
        sql = leases_statement(of_queue=queue is not None, after=after is not None)
        params = {"queue": queue, "after": after, "limit": limit}
        rows = self.connection.read(lambda db: db.execute(sql, params).fetchall())
        return [LeaseInfo(*row) for row in rows]

    def queue_counts(self, queues: Sequence[str], since: float) -> list[MinuteCounts]:
        params = {"queues": json.dumps(list(queues)), "since": bucket(since)}
        rows = self.connection.read(lambda db: db.execute(Q["queue_counts"], params).fetchall())
        return [MinuteCounts(*row) for row in rows]

    def prune_counts(self, before: float) -> int:
        return int(self.connection.write(lambda db: db.execute(Q["prune_counts"], (before,)).rowcount))

    def job(self, job_id: str, now: float) -> JobRecord | None:
        def look(db: sqlite3.Connection) -> tuple[Any, Any]:
            row = db.execute(Q["job"], (job_id,)).fetchone()
            return row, None if row is not None else db.execute(Q["dead_letter"], (job_id,)).fetchone()

        row, dead_row = self.connection.read(look)
        if row is not None:
            return _job_record(row, now)
        if dead_row is None:
            return None
        dead = DeadLetter.from_row(dead_row)
        return JobRecord.from_dead_letter(dead)

    def job_for_key(self, queue: str, key: str, now: float) -> str | None:
        row = self.connection.read(lambda db: db.execute(Q["key_holder"], (queue, key)).fetchone())
        if row is None or (row[1] is not None and row[1] <= now):
            return None
        holder: str = row[0]
        return holder

    def job_history(self, job_id: str) -> list[HistoryEntry]:
        rows = self.connection.read(lambda db: db.execute(Q["job_history"], (job_id,)).fetchall())
        return [HistoryEntry(*row) for row in rows]

    def cancel_jobs(self, ids: Sequence[str], now: float, history: Sequence[HistoryEntry]) -> list[str]:
        def cancel(db: sqlite3.Connection) -> list[str]:
            cancelled: list[str] = []
            for job_id in dict.fromkeys(ids):
                row = db.execute(Q["cancellable_job"], (job_id, now)).fetchone()
                if row is None:
                    continue
                rowid, queue, key = row
                db.execute(Q["delete_job"], (rowid,))
                if key is not None:
                    db.execute(Q["free_job_key"], (queue, key, job_id))
                cancelled.append(job_id)
            done = set(cancelled)
            entries = [
                (e.correlation_id, e.at, e.kind, e.name, e.message_id, e.attempt, e.detail)
                for e in history
                if e.message_id in done
            ]
            if entries:
                db.executemany(Q["insert_history"], entries)
            return cancelled

        return self.connection.write(cancel)

    def request_cancel(self, job_id: str) -> bool:
        return bool(self.connection.write(lambda db: db.execute(Q["request_cancel"], (job_id,)).rowcount))

    def cancel_requests(self, job_ids: Sequence[str]) -> list[str]:
        if not job_ids:
            return []
        param = (json.dumps(list(job_ids)),)
        rows = self.connection.read(lambda db: db.execute(Q["cancel_requests"], param).fetchall())
        requested = {job_id for (job_id,) in rows}
        return [job_id for job_id in job_ids if job_id in requested]

    def register_worker(self, worker: WorkerInfo) -> None:
        row = (
            worker.id,
            worker.host,
            worker.pid,
            json.dumps(list(worker.queues)),
            worker.concurrency,
            worker.started_at,
            worker.last_seen,
            worker.settled,
        )
        self.connection.write(lambda db: db.execute(Q["register_worker"], row))

    def unregister_worker(self, worker_id: str) -> None:
        self.connection.write(lambda db: db.execute(Q["unregister_worker"], (worker_id,)))

    def workers(self, alive_since: float) -> list[WorkerInfo]:
        def forget_and_list(db: sqlite3.Connection) -> list[Any]:
            db.execute(Q["forget_workers"], (alive_since,))
            return db.execute(Q["workers"]).fetchall()

        rows = self.connection.write(forget_and_list)
        return [
            WorkerInfo(worker_id, host, pid, tuple(json.loads(queues)), concurrency, started, seen, settled)
            for worker_id, host, pid, queues, concurrency, started, seen, settled in rows
        ]

    def find_dead_letters(
        self, where: DeadLetterFilter, limit: int, before: tuple[float, str] | None
    ) -> list[DeadLetter]:
        conditions, params = _dead_letter_conditions(where)
        if before is not None:
            conditions.add("before")
            params["before_at"], params["before_id"] = before
        params["limit"] = limit
        sql = dead_letters_statement("find_dead_letters", frozenset(conditions))
        rows = self.connection.read(lambda db: db.execute(sql, params).fetchall())
        return [DeadLetter.from_row(row) for row in rows]

    def count_dead_letters(self, where: DeadLetterFilter) -> int:
        conditions, params = _dead_letter_conditions(where)
        sql = dead_letters_statement("count_dead_letters", frozenset(conditions))
        count: int = self.connection.read(lambda db: db.execute(sql, params).fetchone())[0]
        return count

    def dead_letter(self, dead_id: str) -> DeadLetter | None:
        row = self.connection.read(lambda db: db.execute(Q["dead_letter"], (dead_id,)).fetchone())
        return None if row is None else DeadLetter.from_row(row)

    # commit

    def commit(self, commits: Sequence[Commit], now: float) -> tuple[list[CommitResult], bool]:
        """Apply ``commits`` in one transaction. Also returns whether jobs became available.

        A value sqlite3 cannot bind (a lone surrogate, an integer past 64 bits) rolls back the
        whole transaction and raises :class:`CommitRejectedError` (see :mod:`conveyor.ports`)."""

        def apply(db: sqlite3.Connection) -> tuple[list[CommitResult], bool]:
            batch = _Batch(db, now, self.idempotency_retention, returning=self.returning)
            results = [batch.apply(commit) for commit in commits]
            batch.flush()
            batch.write_counts()
            if now >= self._next_key_sweep:
                db.execute(Q["sweep_expired_keys"], (now,))
            return results, batch.made_available

        try:
            results, made_available = self.connection.write(apply)
        except (UnicodeEncodeError, OverflowError) as exc:  # raised by sqlite3 binding a value
            raise CommitRejectedError(f"SQLite cannot store a value of this commit batch: {exc}") from exc
        if now >= self._next_key_sweep:
            self._next_key_sweep = now + KEY_SWEEP_INTERVAL
        return results, made_available


def _job_record(row: Sequence[Any], now: float) -> JobRecord:
    """A ``job`` query's row as the operations port's record, its state told as of ``now``."""
    (
        job_id,
        queue,
        body,
        attempts,
        enqueued_at,
        available_at,
        priority,
        key,
        last_error,
        cancel_requested,
        leased,
        token,
        worker,
        leased_at,
        extensions,
    ) = row
    state = live_state(bool(leased), available_at, now)
    error = None
    if last_error is not None:
        stored = orjson.loads(last_error)
        error = ErrorInfo(stored["type"], stored["message"], stored.get("traceback"))
    lease = None
    if leased:
        lease = LeaseInfo(job_id, queue, attempts, token, worker, leased_at, available_at, extensions)
    return JobRecord(
        job_id,
        queue,
        state,
        bytes(body),
        attempts,
        enqueued_at,
        available_at,
        priority,
        key,
        error,
        lease,
        bool(cancel_requested),
    )


def _dead_letter_conditions(where: DeadLetterFilter) -> tuple[set[str], dict[str, Any]]:
    """The ``dead_where_*`` conditions of ``where`` and their parameters."""
    given = {
        "queue": where.queue,
        "error_type": where.error_type,
        "since": where.since,
        "until": where.until,
        "text": where.text,
    }
    params: dict[str, Any] = {name: value for name, value in given.items() if value is not None}
    if where.text is not None:
        params["text"] = "%" + _LIKE_METACHARACTERS.sub(r"!\g<0>", where.text) + "%"
    return set(params), params


class _Batch:
    """One commit batch inside its transaction.

    Rows that no later commit of the batch can observe (new jobs, history) are collected and
    written with ``executemany`` at the end; a cancel flushes the jobs first, since it may target
    a job enqueued earlier in the same batch. So does deleting a job whose id a pending row
    repeats: applied in order, that enqueue met the existing job and was a no-op, and inserted
    after the delete it would bring the job back.
    """

    def __init__(self, db: sqlite3.Connection, now: float, retention: float, *, returning: bool) -> None:
        self.db = db
        self.returning = returning
        self.now = now
        self.retention = retention
        self.jobs: list[tuple[str, str, bytes, float, float, str | None, int, float | None]] = []
        self.lanes: set[tuple[str, int]] = set()
        self.pending_ids: set[str] = set()
        self.counts: dict[str, list[int]] = {}
        """queue -> [completed, retried, dead] of this batch, all in the bucket of ``now``"""
        self.history: list[tuple[Any, ...]] = []
        self.routes: dict[str, list[str]] | None = None
        self.made_available = False

    def apply(self, commit: Commit) -> CommitResult:
        db, settlement, effects = self.db, commit.settlement, commit.effects
        versioned = any(write.expected_version is not None for write in effects.states)
        if settlement is not None:
            if settlement.job_id in self.pending_ids:
                self.flush()
            if settlement.outcome is Outcome.ACK and not versioned and self.returning:
                # The hot path: nothing after the lease check can fail this commit, so the
                # check can be the delete itself (one statement per acked job).
                row = db.execute(
                    Q["ack_live_lease"], (settlement.job_id, settlement.token, self.now)
                ).fetchone()
                if row is None:
                    return _STALE
                self._retire_key(row[0], row[1], settlement.job_id)
                self._count(row[0], 0)
                settlement = None
            else:
                live = db.execute(Q["live_lease"], (settlement.job_id, settlement.token, self.now)).fetchone()
                if live is None:
                    return _STALE
        if versioned:
            for write in effects.states:
                if write.expected_version is not None:
                    row = db.execute(Q["state_version"], (write.key,)).fetchone()
                    if (row[0] if row else 0) != write.expected_version:
                        return _CONFLICT
        # From here on nothing can fail: apply everything.
        if settlement is not None:
            self._settle(settlement, live)
        for write in effects.states:
            if write.op is StateOp.DELETE:
                db.execute(Q["delete_state"], (write.key,))
            else:
                db.execute(Q["set_state"], (write.key, write.value))
        if effects.cancels:
            self._cancel(effects.cancels)
        job_ids = tuple([self._enqueue(new) for new in effects.jobs]) if effects.jobs else ()
        deliveries = self._fan_out(effects) if effects.events else 0
        if effects.history:
            self.history.extend(
                [
                    (e.correlation_id, e.at, e.kind, e.name, e.message_id, e.attempt, e.detail)
                    for e in effects.history
                ]
            )
        if not job_ids and not deliveries:
            return _OK_EMPTY
        return CommitResult(CommitStatus.OK, job_ids, deliveries)

    def _retire_key(self, queue: str, key: str | None, job_id: str) -> None:
        # The key stays taken for the retention window after the job is gone.
        if key is not None:
            self.db.execute(Q["retire_key"], (self.now + self.retention, queue, key, job_id))

    def _settle(self, settlement: Settlement, live: tuple[int, str, str | None]) -> None:
        db, now = self.db, self.now
        rowid, queue, key = live
        outcome = settlement.outcome
        if outcome is not Outcome.RELEASE:
            self._count(queue, _COUNTED[outcome])
        if outcome is Outcome.ACK or outcome is Outcome.DEAD:
            if outcome is Outcome.DEAD:
                error = settlement.error or ErrorInfo("Unknown", "dead-lettered without an error")
                db.execute(
                    Q["dead_letter_job"],
                    (error.type, error.message, error.traceback, now, rowid),
                )
            db.execute(Q["delete_job"], (rowid,))
            self._retire_key(queue, key, settlement.job_id)
            return
        self.made_available = True
        if outcome is Outcome.RELEASE:
            db.execute(Q["release_job"], (now, rowid))
        else:
            available_at = now if settlement.available_at is None else settlement.available_at
            error_text = None
            if settlement.error is not None:
                error = settlement.error
                error_text = orjson.dumps(
                    {"type": error.type, "message": error.message, "traceback": error.traceback}
                ).decode()
            db.execute(Q["retry_job"], (available_at, error_text, rowid))

    def _count(self, queue: str, column: int) -> None:
        counts = self.counts.get(queue)
        if counts is None:
            counts = self.counts[queue] = [0, 0, 0]
        counts[column] += 1

    def write_counts(self) -> None:
        """One upsert per queue settled in this batch (see ``QueueAdmin.queue_counts``)."""
        if self.counts:
            minute = bucket(self.now)
            self.db.executemany(
                Q["count_settlements"], [(queue, minute, *c) for queue, c in self.counts.items()]
            )

    def _holder(self, queue: str, key: str) -> str | None:
        row = self.db.execute(Q["key_holder"], (queue, key)).fetchone()
        if row is None or (row[1] is not None and row[1] <= self.now):
            return None
        holder: str = row[0]
        return holder

    def _enqueue(self, new: NewJob) -> str:
        if new.idempotency_key is not None:
            holder = self._holder(new.queue, new.idempotency_key)
            if holder is not None:
                return holder
            self.db.execute(Q["hold_key"], (new.queue, new.idempotency_key, new.id))
        self.jobs.append(
            (
                new.id,
                new.queue,
                new.body,
                new.available_at,
                new.enqueued_at,
                new.idempotency_key,
                new.priority,
                new.lease_seconds,
            )
        )
        if new.priority:
            self.lanes.add((new.queue, new.priority))
        self.pending_ids.add(new.id)
        return new.id

    def _cancel(self, cancels: list[tuple[str, str]]) -> None:
        self.flush()
        db = self.db
        for queue, key in cancels:
            holder = self._holder(queue, key)
            if holder is not None and db.execute(Q["cancel_pending_job"], (holder,)).rowcount:
                db.execute(Q["free_key"], (queue, key))

    def _fan_out(self, effects: Effects) -> int:
        if self.routes is None:
            self.routes = {}
            for event_name, queue in self.db.execute(Q["routes"]):
                self.routes.setdefault(event_name, []).append(queue)
        deliveries = 0
        for event in effects.events:
            for queue in self.routes.get(event.event, ()):
                job_id = f"{event.id}:{queue}"
                self.pending_ids.add(job_id)
                self.jobs.append(
                    (
                        job_id,
                        queue,
                        event.body,
                        event.emitted_at,
                        event.emitted_at,
                        None,
                        0,
                        None,
                    )
                )
                deliveries += 1
        return deliveries

    def flush(self) -> None:
        if self.lanes:
            self.db.executemany(Q["add_lane"], self.lanes)
            self.lanes = set()
        if self.jobs:
            self.db.executemany(Q["insert_job"], self.jobs)
            self.jobs = []
            self.pending_ids.clear()
            self.made_available = True
        if self.history:
            self.db.executemany(Q["insert_history"], self.history)
            self.history = []
