"""The worker's path on PostgreSQL: lease, commit, and what keeps them fast.

One lease batch is one statement (``UPDATE ... FOR UPDATE SKIP LOCKED``); one commit batch is one
call of the ``commit_batch`` function, so one round trip and one transaction whatever its size;
``commit_and_lease`` is both in one statement. Pooled connections are warmed up before the first
lease, and the tables every job churns are vacuumed on this process's own clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow, tuple_row

from conveyor.backends.postgres import arrays
from conveyor.backends.postgres.batch import (
    Arrays,
    GroupResult,
    flatten,
    parse_row,
    plan_groups,
    results,
)
from conveyor.backends.postgres.connections import Connection, Connections
from conveyor.backends.postgres.errors import UNSENDABLE, rejected_content, translate
from conveyor.backends.postgres.listener import notification
from conveyor.model.errors import BackendError, CommitRejectedError
from conveyor.ports import (
    Commit,
    CommitResult,
    Effects,
    HistoryEntry,
    LeasedJob,
    NewEvent,
    NewJob,
    Outcome,
    Settlement,
    StateOp,
    StateWrite,
)

logger = logging.getLogger("conveyor.backends.postgres")

PURGE_INTERVAL = 60.0
"""Seconds of the caller's clock between purges of expired idempotency keys riding on a commit."""
PURGE_BATCH = 1000
COMMIT_RETRIES = 3
"""Attempts of a commit batch that the server aborted for a deadlock or serialization failure."""
DEFAULT_VACUUM_INTERVAL = 10.0
"""Seconds between the backend's own ``VACUUM`` of the tables every job churns (see
:meth:`WorkerPath._vacuum`)."""
VACUUMED_TABLES = ("jobs", "idempotency", "states")


def _lease_params(queues: Mapping[str, float], limit: int, now: float, worker: str = "") -> dict[str, Any]:
    names = list(queues)
    return {
        "queues": names,
        "seconds": [float(queues[name]) for name in names],
        "now": now,
        "limit": limit,
        "worker": worker,
    }


def _leased(rows: Sequence[TupleRow]) -> list[LeasedJob]:
    """The jobs of the ``lease`` query's rows."""
    return [
        LeasedJob(
            id=row[0],
            queue=row[1],
            body=row[2],
            attempt=row[3],
            token=row[4],
            lease_deadline=row[5],
            enqueued_at=row[6],
        )
        for row in rows
    ]


class WorkerPath(Connections):
    """Lease and commit, the calls a worker makes for every job (see :class:`Connections` for
    how the attributes are set)."""

    channel: str
    idempotency_retention: float
    vacuum_interval: float
    vacuums: int
    _next_purge: float | None
    _next_vacuum: float
    _dirty: bool
    _vacuuming: asyncio.Task[None] | None
    _serving: asyncio.Future[None] | None
    _warmed: set[int]

    async def _configure(self, conn: Connection) -> None:
        """Set up a new pooled connection, warmed up too once workers lease here."""
        await super()._configure(conn)
        if self._serving is not None:
            await self._warm_up(conn)

    async def _serve(self) -> None:
        """Workers lease here: warm up the pooled connections (see :meth:`_warm_up`) before the
        first lease, and every connection the pool makes from now on as it is made."""
        pool = self._pool
        if pool is None:
            return

        async def warm_one() -> None:
            async with pool.connection() as conn:
                if conn.info.backend_pid not in self._warmed:
                    await self._warm_up(conn)

        try:
            # checked out at once, so these are distinct connections: the pool's minimum
            await asyncio.gather(*(warm_one() for _ in range(self._pool_min_size)))
        except Exception as exc:  # only saves time: a lease that cannot connect says so itself
            logger.warning("warming up the PostgreSQL connections failed (%s); they work unwarmed", exc)

    async def _warm_up(self, conn: Connection) -> None:
        """Run lease() and commit_batch() once on a pooled connection, writing nothing.

        The first call of a plpgsql function in a session compiles it and plans every statement it
        reaches: tens of milliseconds that would otherwise land on a worker's first commits (and,
        with a fast clock, could make them arrive after their lease ended). Only a process whose
        workers lease pays for it (see :meth:`_serve`): a producer's plain enqueue
        (``insert_jobs``) calls neither function. The dummy commit is stale, so every statement
        runs but matches no row; the transaction is rolled back anyway.
        """
        self._warmed.add(conn.info.backend_pid)
        tag = f"conveyor-warm-up:{conn.info.backend_pid}"
        warm_up = Commit(
            Settlement(tag, 0, Outcome.ACK),
            Effects(
                jobs=[NewJob(tag, tag, b"", 0.0, 0.0, tag)],
                events=[NewEvent(tag, tag, b"", 0.0)],
                states=[StateWrite(tag, StateOp.SET, b"")],
                cancels=[(tag, tag)],
                history=[HistoryEntry(tag, 0.0, "warm-up", tag)],
            ),
        )
        try:
            async with conn.transaction(force_rollback=True):
                await conn.execute(self._queries["lease"], _lease_params({tag: 1.0}, 1, 0.0))
                await self._apply(conn, [flatten([warm_up], [0])], 0.0, 0)
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                raise  # the pool discards the connection and makes another
            logger.warning("warming up a PostgreSQL connection failed (%s); it works unwarmed", exc)

    async def close(self) -> None:
        if self._vacuuming is not None:
            self._vacuuming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._vacuuming
        if self._serving is not None:
            self._serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._serving
            self._serving = None
        self._warmed.clear()
        await super().close()

    # lease

    async def lease(
        self, queues: Mapping[str, float], limit: int, now: float, worker: str = ""
    ) -> list[LeasedJob]:
        if not queues or limit <= 0:
            return []
        if self._serving is None:
            self._serving = asyncio.ensure_future(self._serve())
        if not self._serving.done():
            await asyncio.shield(self._serving)  # several workers may be starting at once
        jobs = _leased(await self._fetch("lease", _lease_params(queues, limit, now, worker), binary=True))
        self._vacuum_if_due(dirtied=bool(jobs))
        return jobs

    # commit

    async def commit(self, commits: Sequence[Commit], now: float) -> list[CommitResult]:
        if not commits:
            return []
        results, _ = await self._commit(commits, now, None)
        return results

    async def commit_and_lease(
        self,
        commits: Sequence[Commit],
        now: float,
        queues: Mapping[str, float],
        limit: int,
        worker: str = "",
    ) -> tuple[list[CommitResult], list[LeasedJob]]:
        """The commit and the lease in one transaction (one statement, see :meth:`_apply`): one
        round trip and one WAL flush for both."""
        if not commits or not queues or limit <= 0:
            return await self.commit(commits, now), await self.lease(queues, limit, now, worker)
        return await self._commit(commits, now, (queues, limit, worker))

    async def _commit(
        self, commits: Sequence[Commit], now: float, lease: tuple[Mapping[str, float], int, str] | None
    ) -> tuple[list[CommitResult], list[LeasedJob]]:
        groups = plan_groups(commits)
        batches = [flatten(commits, group) for group in groups]
        purge = self._purge_due(now)
        lease_params = None if lease is None else _lease_params(lease[0], lease[1], now, lease[2])
        for attempt in range(1, COMMIT_RETRIES + 1):
            try:
                async with self._connection() as conn:
                    answers, rows = await self._apply(conn, batches, now, purge, lease_params)
                break
            except BackendError as exc:
                # A deadlock or serialization failure rolled the whole batch back: try again.
                transient = pg_errors.DeadlockDetected | pg_errors.SerializationFailure
                if attempt == COMMIT_RETRIES or not isinstance(exc.__cause__, transient):
                    rejected = rejected_content(exc.__cause__) if exc.__cause__ else None
                    if rejected is not None:
                        raise rejected from exc.__cause__
                    raise
            except UNSENDABLE as exc:
                raise CommitRejectedError(
                    f"PostgreSQL cannot be sent a value of this commit batch: {exc}"
                ) from exc
        # Dead rows come from settlements, state writes and cancels (and the lease): a producer
        # that only enqueues leaves none, and does not vacuum.
        self._vacuum_if_due(
            dirtied=lease is not None
            or any(c.settlement is not None or c.effects.states or c.effects.cancels for c in commits)
        )
        jobs = _leased(rows)
        woken = {queue for answer in answers for queue in answer.woken}
        if lease is not None and len(jobs) < lease[1]:
            woken.difference_update(lease[0])  # every due job of those queues is leased already
        if woken:
            self._listener.wake(woken)
        return results(commits, groups, answers), jobs

    async def commit_in(
        self, conn: psycopg.AsyncConnection[Any], commits: Sequence[Commit], now: float
    ) -> list[CommitResult]:
        """Apply ``commits`` inside the caller's own transaction on ``conn`` (the outbox pattern).

        The jobs, events and state writes become visible when, and only if, the caller's
        transaction commits; a rollback leaves no trace. Workers are notified at that commit::

            async with await psycopg.AsyncConnection.connect(dsn) as conn:
                async with conn.transaction():
                    await conn.execute("INSERT INTO orders ...")
                    await backend.commit_in(conn, [Commit(effects=Effects(jobs=[...]))], now)

        ``conn`` must reach the same database; its transaction is not retried here: on a
        :class:`BackendError` the caller's transaction is broken and must be rolled back.
        """
        if not commits:
            return []
        groups = plan_groups(commits)
        batches = [flatten(commits, group) for group in groups]
        arrays.register(conn)  # only adds dumpers for conveyor's own marker types
        try:
            answers, _ = await self._apply(conn, batches, now, 0)
        except (psycopg.Error, *UNSENDABLE) as exc:
            raise (rejected_content(exc) or translate(exc)) from exc
        return results(commits, groups, answers)

    async def _apply(
        self,
        conn: psycopg.AsyncConnection[Any],
        batches: Sequence[Arrays],
        now: float,
        purge: int,
        lease: Mapping[str, Any] | None = None,
    ) -> tuple[list[GroupResult], list[TupleRow]]:
        """Run the commit groups, then the lease if asked, and read the answers.

        A commit of new jobs only (no settlement, state, cancel, event or idempotency key: what
        ``enqueue`` and ``enqueue_many`` make) is one plain INSERT (``insert_jobs``) on an
        autocommit connection outside a transaction: in a caller's transaction a failed statement
        would break it.

        Otherwise one group is one statement, atomic by itself; several need a transaction around them (a
        savepoint if the caller already has one open). One group with a lease is one statement
        too (``commit_and_lease`` in ``queries.sql``). Several groups with a lease go as one
        pipeline on a pooled (autocommit) connection: the statements up to the pipeline's sync
        form one implicit transaction, so the commits and the lease apply together or not at
        all, in one round trip and one WAL flush. (An explicit BEGIN/COMMIT inside a pipeline
        makes psycopg sync around each: 1.4 ms instead of 0.65 ms here, per commit e721970; the
        command was not recorded, not re-measured. ``bench/anatomy.py`` and ``bench/commit_cost.py``
        time ``commit_and_lease`` today: docs/BENCHMARKS.md "Where PostgreSQL's step latency goes".)
        """
        if (
            lease is None
            and purge == 0
            and len(batches) == 1
            and batches[0].inserts_only()
            # not in a transaction, nor starting one (a caller's non-autocommit connection)
            and conn.autocommit
            and conn.info.transaction_status is TransactionStatus.IDLE
        ):
            # A plain enqueue: one plain INSERT. A job id that exists already fails it whole (as
            # if not run), and commit_batch() below, which skips such a job, does the commit.
            due = batches[0].due_queues(now)
            try:
                await conn.execute(
                    self._queries["insert_jobs"],
                    batches[0].insert_params(self.channel, notification(due)),
                    binary=True,
                )
                return [GroupResult({}, [], [], due)], []
            except pg_errors.UniqueViolation:
                pass
        if lease is not None and len(batches) == 1:  # the usual case: one statement
            params = batches[0].params(now, self.idempotency_retention, purge, self.channel)
            lease_params = (lease["queues"], lease["seconds"], lease["now"], lease["limit"], lease["worker"])
            cursor = conn.cursor(binary=True)
            await cursor.execute(self._queries["commit_and_lease"], (*params, *lease_params))
            rows = await cursor.fetchall()
            return [parse_row(rows[0][:5])], [row[5:] for row in rows if row[5] is not None]
        query = self._queries["commit"]
        cursors: list[psycopg.AsyncCursor[TupleRow]] = []
        lease_cursor = conn.cursor(binary=True)
        pipeline = conn.pipeline() if lease is not None else contextlib.nullcontext()
        block = conn.transaction() if len(batches) > 1 and lease is None else contextlib.nullcontext()
        async with pipeline:
            async with block:
                for index, group in enumerate(batches):
                    params = group.params(
                        now, self.idempotency_retention, purge if index == 0 else 0, self.channel
                    )
                    cursor = conn.cursor(row_factory=tuple_row)
                    await cursor.execute(query, params)
                    cursors.append(cursor)
                if lease is not None:
                    await lease_cursor.execute(self._queries["lease_with_commit"], lease)
            answers = []
            for cursor in cursors:
                row = await cursor.fetchone()
                assert row is not None
                answers.append(parse_row(row))
            rows = await lease_cursor.fetchall() if lease is not None else []
        return answers, rows

    def _vacuum_if_due(self, *, dirtied: bool) -> None:
        """Start a vacuum if one is due and this process left dead rows since the last one.

        Called after every commit and every lease (``dirtied`` says whether the call changed
        rows), so the rows of the last busy interval are vacuumed by an idle worker's next lease
        instead of waiting for the next commit.
        """
        self._dirty = self._dirty or dirtied
        if not self.vacuum_interval or not self._dirty or time.monotonic() < self._next_vacuum:
            return
        if self._vacuuming is None or self._vacuuming.done():
            self._dirty = False
            self._next_vacuum = time.monotonic() + self.vacuum_interval
            self._vacuuming = asyncio.create_task(self._vacuum(), name=f"conveyor vacuum of {self.schema}")

    async def _vacuum(self) -> None:
        """``VACUUM`` the tables every job inserts into, updates and deletes from.

        A job leaves two dead row versions behind (its lease and its ack). Only a vacuum makes their
        space reusable; without it the jobs table and its indexes grow with every job ever run and
        each lease scans more dead entries. Autovacuum may be off, or wake up only once a minute,
        so the committing processes vacuum on their own clock: a plain VACUUM does not block
        reads or writes, and ``SKIP_LOCKED`` skips a table another process is vacuuming already.
        """
        tables = ", ".join(f'"{self.schema}".{table}' for table in VACUUMED_TABLES)
        try:
            async with self._connection() as conn:
                await conn.execute(f"VACUUM (SKIP_LOCKED) {tables}")
            self.vacuums += 1
        except BackendError as exc:
            logger.warning("vacuum of PostgreSQL schema %r failed: %s", self.schema, exc)

    def _purge_due(self, now: float) -> int:
        if self._next_purge is not None and now < self._next_purge:
            return 0
        self._next_purge = now + PURGE_INTERVAL
        return PURGE_BATCH
