"""``postgresql://user@host:port/db?schema=conveyor``: jobs, events and state in PostgreSQL.

One lease batch is one statement (``UPDATE ... FOR UPDATE SKIP LOCKED``); one commit batch is one
call of the ``commit_batch`` function, so one round trip and one transaction whatever its size.
Idle workers are woken by LISTEN/NOTIFY. Finished jobs are deleted, keeping the jobs table small.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow, tuple_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from conveyor.backends import DEFAULT_IDEMPOTENCY_RETENTION, url_options
from conveyor.backends.postgres import arrays
from conveyor.backends.postgres import schema as pg_schema
from conveyor.backends.postgres.batch import (
    Arrays,
    GroupResult,
    flatten,
    parse_row,
    plan_groups,
    results,
)
from conveyor.backends.postgres.listener import Listener, notification
from conveyor.model.errors import (
    BackendError,
    BackendUnavailableError,
    CommitRejectedError,
    ConfigurationError,
    ConveyorError,
)
from conveyor.ports import (
    Commit,
    CommitResult,
    DeadLetter,
    Effects,
    HistoryEntry,
    InstanceSummary,
    LeasedJob,
    NewEvent,
    NewJob,
    Outcome,
    QueueStats,
    Settlement,
    StateOp,
    StateRecord,
    StateWrite,
)

logger = logging.getLogger("conveyor.backends.postgres")

DEFAULT_SCHEMA = "conveyor"
DEFAULT_POOL_MIN_SIZE = 2
DEFAULT_POOL_MAX_SIZE = 10
DEFAULT_POOL_TIMEOUT = 10.0
PURGE_INTERVAL = 60.0
"""Seconds of the caller's clock between purges of expired idempotency keys riding on a commit."""
PURGE_BATCH = 1000
PRUNE_BATCH = 5000
COMMIT_RETRIES = 3
DEFAULT_VACUUM_INTERVAL = 10.0
"""Seconds between the backend's own ``VACUUM`` of the tables every job churns (see
:meth:`PostgresBackend._vacuum`)."""
VACUUMED_TABLES = ("jobs", "idempotency", "states")
"""Attempts of a commit batch that the server aborted for a deadlock or serialization failure."""

# URL query keys that configure the backend itself; every other key goes to libpq untouched.
_OWN_OPTIONS = frozenset(
    {"schema", "idempotency_retention", "pool_min_size", "pool_max_size", "pool_timeout", "vacuum_interval"}
)
# SQLSTATEs meaning "the server is not there for us": connection exceptions (08), operator
# intervention such as a shutdown or pg_terminate_backend (57P) or a cancelled or timed-out
# statement (57014), insufficient resources (53: too many connections, disk full, out of memory),
# a lock wait timed out (55P03). A commit failing so is retried whole, not split to find a culprit.
_UNAVAILABLE_STATES = ("08", "57P", "57014", "53", "55P03")
# SQLSTATEs meaning "this content cannot be stored": data exceptions (22: a NUL in text, a value
# out of range) and program limits (54: a key too long for its index).
_REJECTED_STATES = ("22", "54")

Connection = psycopg.AsyncConnection[TupleRow]
T = TypeVar("T")


def _libpq_url(url: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in _OWN_OPTIONS]
    return urlunsplit(parts._replace(scheme="postgresql", query=urlencode(query)))


# The server's refusals of a login. libpq gives no SQLSTATE for an error while connecting (3D000
# invalid_catalog_name, 28000 invalid_authorization_specification, 28P01 invalid_password), only
# the server's message, in English unless the server's lc_messages says otherwise.
_MISSING = re.compile(r'\b(database|role) "([^"]*)" does not exist')
_LOGIN_REFUSED = re.compile(
    r'password authentication failed for user "([^"]*)"|no pg_hba\.conf entry|'
    r"password authentication failed|(?:Peer|Ident) authentication failed"
)
_CONFIGURATION_STATES = ("3D000", "28000", "28P01")


def _refused_login(exc: psycopg.OperationalError) -> ConfigurationError | None:
    """The configuration error for a login the server refused: retrying cannot fix it."""
    text = str(exc)
    if missing := _MISSING.search(text):
        kind, name = missing.groups()
        if kind == "database":
            advice = f'create it (CREATE DATABASE "{name}") or name an existing database in the URL'
        else:
            advice = f'create it (CREATE ROLE "{name}" LOGIN) or name an existing role in the URL'
        return ConfigurationError(f'PostgreSQL {kind} "{name}" does not exist: {advice}')
    if _LOGIN_REFUSED.search(text) or exc.sqlstate in _CONFIGURATION_STATES:
        detail = text.rsplit("FATAL:", 1)[-1].strip()
        return ConfigurationError(
            f"PostgreSQL refused the login ({detail}): check the user and password in the URL "
            "and the server's pg_hba.conf"
        )
    return None


def translate(exc: BaseException) -> ConveyorError:
    """conveyor's error for a psycopg (or pool) exception; the caller chains ``exc``.

    A database or role that does not exist, or a refused password, is a
    :class:`ConfigurationError` (fix the URL or the server); a server that cannot be reached or
    dropped the connection is :class:`BackendUnavailableError` (retry later).
    """
    if isinstance(exc, PoolTimeout | psycopg.InterfaceError | OSError):
        return BackendUnavailableError(f"PostgreSQL is unreachable: {exc}")
    if isinstance(exc, psycopg.OperationalError):
        if refused := _refused_login(exc):
            return refused
        state = exc.sqlstate
        if state is None or state.startswith(_UNAVAILABLE_STATES):
            return BackendUnavailableError(f"PostgreSQL connection lost: {exc}")
    return BackendError(f"PostgreSQL error: {exc}")


def _shown(url: str) -> str:
    """``url`` as error messages show it: without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def _check_conninfo(conninfo: str, url: str) -> None:
    """Refuse a URL libpq cannot use now, rather than as "connection lost" at connect()."""
    try:
        ports = conninfo_to_dict(conninfo).get("port")
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(f"invalid PostgreSQL URL {_shown(url)!r}: {exc}") from exc
    for port in str(ports or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigurationError(f"invalid PostgreSQL URL {_shown(url)!r}: port {port!r} is not 1-65535")


_UNSENDABLE = (UnicodeEncodeError, struct.error, OverflowError)
"""What encoding a commit's arguments raises for a value that cannot be sent (a lone surrogate,
an integer past 64 bits): nothing was sent."""


def rejected_content(exc: BaseException) -> CommitRejectedError | None:
    """The error for a commit call whose content the server refused or that could not be sent
    (see :mod:`conveyor.ports`); None for any other failure."""
    if isinstance(exc, psycopg.Error) and (exc.sqlstate or "").startswith(_REJECTED_STATES):
        return CommitRejectedError(f"PostgreSQL cannot store this commit batch: {exc}")
    if isinstance(exc, _UNSENDABLE):
        return CommitRejectedError(f"PostgreSQL cannot be sent a value of this commit batch: {exc}")
    return None


def _lease_params(queues: Mapping[str, float], limit: int, now: float) -> dict[str, Any]:
    names = list(queues)
    return {"queues": names, "seconds": [float(queues[name]) for name in names], "now": now, "limit": limit}


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


class PostgresBackend:
    """Every role on PostgreSQL, with settlements and effects committed atomically.

    URL query options (keywords override them): ``schema`` (default ``conveyor``),
    ``idempotency_retention`` (seconds, default 24h), ``pool_min_size``, ``pool_max_size``,
    ``pool_timeout`` (seconds to wait for a connection), ``vacuum_interval`` (seconds between the
    backend's own vacuums of its hot tables, default 10, 0 = leave it to autovacuum). Anything else
    goes to libpq (``sslmode``, ``application_name``, ...).

    Besides the ports it offers :meth:`commit_in` (the transactional outbox: commit jobs and events
    inside the caller's own transaction), :meth:`migrate` and :meth:`maintenance`.
    """

    def __init__(
        self,
        url: str = "postgresql://localhost/postgres",
        *,
        schema: str | None = None,
        idempotency_retention: float | None = None,
        pool_min_size: int | None = None,
        pool_max_size: int | None = None,
        pool_timeout: float | None = None,
        vacuum_interval: float | None = None,
    ) -> None:
        options = url_options(url)

        def option(given: float | None, key: str, default: float) -> float:
            return float(given if given is not None else options.get(key, default))

        try:
            self.schema = pg_schema.validate_schema(schema or options.get("schema", DEFAULT_SCHEMA))
            self.idempotency_retention = option(
                idempotency_retention, "idempotency_retention", DEFAULT_IDEMPOTENCY_RETENTION
            )
            self._pool_min_size = int(option(pool_min_size, "pool_min_size", DEFAULT_POOL_MIN_SIZE))
            self._pool_max_size = max(
                self._pool_min_size,
                int(option(pool_max_size, "pool_max_size", DEFAULT_POOL_MAX_SIZE)),
            )
            self._pool_timeout = option(pool_timeout, "pool_timeout", DEFAULT_POOL_TIMEOUT)
            self.vacuum_interval = option(vacuum_interval, "vacuum_interval", DEFAULT_VACUUM_INTERVAL)
        except ValueError as exc:
            raise ConfigurationError(f"invalid option in PostgreSQL URL {_shown(url)!r}: {exc}") from exc
        self.url = url
        self.channel = f"conveyor:{self.schema}"
        """This schema's NOTIFY channel; a payload is newline-separated queue names or ``*``."""
        self._conninfo = _libpq_url(url)
        _check_conninfo(self._conninfo, url)
        self._connect_options: dict[str, Any] = (
            {} if "application_name" in options else {"application_name": "conveyor"}
        )
        self._queries = pg_schema.load_queries(self.schema)
        self._queries["commit_and_lease"] = self._queries["commit_and_lease"].replace(
            "{commit}", self._queries["commit"]
        )
        self._pool: AsyncConnectionPool[Connection] | None = None
        self._listener = Listener(self._conninfo, self.channel, self._connect_options)
        self._next_purge: float | None = None
        self._next_vacuum = 0.0
        self._dirty = False
        self._vacuuming: asyncio.Task[None] | None = None
        self._serving: asyncio.Future[None] | None = None
        """Set by the first lease: from then on pooled connections are warmed up."""
        self._warmed: set[int] = set()
        """Server pids of the connections warmed up."""
        self.vacuums = 0
        """vacuums this backend ran (tests and benchmarks read it)"""

    # lifecycle

    async def connect(self) -> None:
        """Bring the schema up to date (see :meth:`migrate`) and open the connection pool.

        The migration's connection is made first, directly, so that a wrong URL, a missing
        database or a refused login fails at once with the server's message, before the pool
        tries (and logs) the same login once per connection.
        """
        if self._pool is not None:
            return
        conn = await self._connect_directly()
        pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            self._conninfo,
            min_size=self._pool_min_size,
            max_size=self._pool_max_size,
            kwargs={"autocommit": True, **self._connect_options},
            configure=self._configure,
            # No check at checkout (it would double the round trips): a connection found dead
            # makes the pool check all its idle ones (see _connection).
            timeout=self._pool_timeout,
            name=f"conveyor-{self.schema}",
            open=False,
        )
        # The pool's connections are made while the schema is brought up to date: they do not
        # touch it until connect() returns, and a fresh database makes each take ~10 ms (commit
        # 8f28325: connect() median 40.5 -> 36.3 ms over 8 runs; command not recorded, not re-measured).
        opening = asyncio.ensure_future(pool.open(wait=True, timeout=self._pool_timeout))
        try:
            async with conn:
                await self._migrate_on(conn)
            await opening
        except BaseException as exc:
            opening.cancel()
            with contextlib.suppress(BaseException):
                await opening
            await pool.close()
            if isinstance(exc, PoolTimeout):
                raise translate(exc) from exc
            raise
        self._pool = pool

    async def _configure(self, conn: Connection) -> None:
        """Set up a new pooled connection (warmed up too once workers lease here)."""
        arrays.register(conn)
        self._listener.own(conn.info.backend_pid)
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
                params = {"queues": [tag], "seconds": [1.0], "now": 0.0, "limit": 1}
                await conn.execute(self._queries["lease"], params)
                await self._apply(conn, [flatten([warm_up], [0])], 0.0, 0)
        except psycopg.Error as exc:
            if conn.broken or conn.closed:
                raise  # the pool discards the connection and makes another
            logger.warning("warming up a PostgreSQL connection failed (%s); it works unwarmed", exc)

    async def migrate(self) -> None:
        """Create or upgrade this backend's schema; idempotent, safe to run from many processes.

        Raises :class:`~conveyor.model.errors.SchemaVersionError` (changing nothing) if the schema
        was written by a newer conveyor.
        """
        async with await self._connect_directly() as conn:
            await self._migrate_on(conn)

    async def _connect_directly(self) -> Connection:
        try:
            return await psycopg.AsyncConnection.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=max(1, round(self._pool_timeout)),
                **self._connect_options,
            )
        except (psycopg.Error, OSError) as exc:
            raise translate(exc) from exc

    async def _migrate_on(self, conn: Connection) -> None:
        try:
            await pg_schema.migrate(conn, self.schema)
        except (psycopg.Error, OSError) as exc:
            raise translate(exc) from exc

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
        await self._listener.close()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        pool = self._pool
        if pool is None:
            raise BackendError("the PostgreSQL backend is not connected: call connect() first")
        try:
            async with pool.connection() as conn:
                yield conn
        except (PoolTimeout, psycopg.Error, OSError) as exc:
            error = translate(exc)
            if isinstance(error, BackendUnavailableError) and not isinstance(exc, PoolTimeout):
                # A server restart or pg_terminate_backend kills every idle connection at once:
                # have the pool test and replace them now rather than fail one call per corpse.
                with contextlib.suppress(Exception):
                    await pool.check()
            raise error from exc

    async def _once_more(self, operation: Callable[[Connection], Awaitable[T]]) -> T:
        """Run ``operation`` on a pooled connection, and once more if that connection was dead.

        Only for operations that may run twice: reads, and lease (a lease whose answer was lost
        just keeps its jobs until the lease expires). A commit is not retried here; the runtime
        retries it, fenced by the lease tokens.
        """
        try:
            async with self._connection() as conn:
                return await operation(conn)
        except BackendUnavailableError as exc:
            if isinstance(exc.__cause__, PoolTimeout):
                raise  # the server is not there: waiting again would only double the delay
        async with self._connection() as conn:
            return await operation(conn)

    async def _fetch(self, query: str, params: Mapping[str, Any], *, binary: bool = False) -> list[TupleRow]:
        async def run(conn: Connection) -> list[TupleRow]:
            cursor = conn.cursor(binary=binary)
            await cursor.execute(self._queries[query], params)
            return await cursor.fetchall()

        return await self._once_more(run)

    async def _rowcount(self, query: str, params: Mapping[str, Any]) -> int:
        async def run(conn: Connection) -> int:
            cursor = await conn.execute(self._queries[query], params)
            return cursor.rowcount

        return await self._once_more(run)

    # queue store

    async def lease(self, queues: Mapping[str, float], limit: int, now: float) -> list[LeasedJob]:
        if not queues or limit <= 0:
            return []
        if self._serving is None:
            self._serving = asyncio.ensure_future(self._serve())
        if not self._serving.done():
            await asyncio.shield(self._serving)  # several workers may be starting at once
        jobs = _leased(await self._fetch("lease", _lease_params(queues, limit, now), binary=True))
        self._vacuum_if_due(dirtied=bool(jobs))
        return jobs

    async def extend(self, job_id: str, token: int, until: float, now: float) -> bool:
        params = {"id": job_id, "token": token, "until": until, "now": now}
        return await self._rowcount("extend", params) == 1

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        await self._listener.wait(queues, timeout)

    async def dead_letters(self, queue: str | None, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        params = {"queue": queue, "limit": limit, "offset": offset}
        rows = await self._fetch("dead_letters", params, binary=True)
        return [DeadLetter.from_row(row) for row in rows]

    async def redrive(self, ids: Sequence[str], now: float) -> int:
        if not ids:
            return 0
        async with self._connection() as conn, conn.transaction():
            cursor = await conn.execute(self._queries["redrive"], {"ids": list(ids), "now": now})
            row = await cursor.fetchone()
            assert row is not None
            count, queues = row
            if queues:
                await self._notify(conn, queues)
        if queues:
            self._listener.wake(queues)  # this process's waiters do not hear their own notifications
        return int(count)

    async def _notify(self, conn: Connection, queues: Sequence[str]) -> None:
        await conn.execute(
            self._queries["notify"], {"channel": self.channel, "payload": notification(queues)}
        )

    async def purge(self, ids: Sequence[str] | None, queue: str | None = None) -> int:
        if ids is None:
            return await self._rowcount("purge_queue", {"queue": queue})
        return await self._rowcount("purge_ids", {"ids": list(ids)})

    async def stats(self, queues: Sequence[str], now: float) -> list[QueueStats]:
        if not queues:
            return []
        rows = {row[0]: row for row in await self._fetch("stats", {"queues": list(queues), "now": now})}
        return [
            QueueStats(
                queue=queue,
                ready=rows[queue][1],
                scheduled=rows[queue][2],
                leased=rows[queue][3],
                dead=rows[queue][4],
                oldest_ready_at=rows[queue][5],
            )
            for queue in queues
        ]

    async def queue_names(self) -> list[str]:
        return [row[0] for row in await self._fetch("queue_names", {})]

    # topic store

    async def register_subscriptions(self, routes: Sequence[tuple[str, str]]) -> None:
        if not routes:
            return
        params = {
            "events": [event for event, _ in routes],
            "queues": [queue for _, queue in routes],
        }
        await self._rowcount("register_subscriptions", params)

    async def subscriptions(self) -> list[tuple[str, str]]:
        return [(row[0], row[1]) for row in await self._fetch("subscriptions", {})]

    # state store

    async def get_states(self, keys: Sequence[str]) -> dict[str, StateRecord]:
        if not keys:
            return {}
        rows = await self._fetch("get_states", {"keys": list(keys)}, binary=True)
        found = {row[0]: StateRecord(row[1], row[2]) for row in rows}
        return {key: found[key] for key in keys if key in found}

    # history store

    async def history(self, correlation_id: str) -> list[HistoryEntry]:
        rows = await self._fetch("history", {"correlation_id": correlation_id})
        return [HistoryEntry(*row) for row in rows]

    async def instances(self, started_after: float | None = None, limit: int = 100) -> list[InstanceSummary]:
        after = -math.inf if started_after is None else started_after
        rows = await self._fetch("instances", {"started_after": after, "limit": limit})
        return [InstanceSummary(*row) for row in rows]

    async def prune_history(self, before: float) -> int:
        """Delete entries older than ``before``, a batch per transaction so no lock is held long."""
        return await self._delete_in_batches("prune_history", {"before": before}, PRUNE_BATCH)

    async def maintenance(self, now: float) -> int:
        """Delete every idempotency key whose retention ended by ``now``; returns how many.

        Commits already purge a few now and then; call this from a periodic job to catch up.
        """
        return await self._delete_in_batches("purge_idempotency", {"now": now}, PURGE_BATCH)

    async def _delete_in_batches(self, query: str, params: dict[str, Any], batch: int) -> int:
        deleted = 0
        while True:
            count = await self._rowcount(query, {**params, "batch": batch})
            deleted += count
            if count < batch:
                return deleted

    # commit

    async def commit(self, commits: Sequence[Commit], now: float) -> list[CommitResult]:
        if not commits:
            return []
        results, _ = await self._commit(commits, now, None)
        return results

    async def commit_and_lease(
        self, commits: Sequence[Commit], now: float, queues: Mapping[str, float], limit: int
    ) -> tuple[list[CommitResult], list[LeasedJob]]:
        """The commit and the lease in one transaction (one statement, see :meth:`_apply`): one
        round trip and one WAL flush for both."""
        if not commits or not queues or limit <= 0:
            return await self.commit(commits, now), await self.lease(queues, limit, now)
        return await self._commit(commits, now, (queues, limit))

    async def _commit(
        self, commits: Sequence[Commit], now: float, lease: tuple[Mapping[str, float], int] | None
    ) -> tuple[list[CommitResult], list[LeasedJob]]:
        groups = plan_groups(commits)
        batches = [flatten(commits, group) for group in groups]
        purge = self._purge_due(now)
        lease_params = None if lease is None else _lease_params(*lease, now)
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
            except _UNSENDABLE as exc:
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
        except (psycopg.Error, *_UNSENDABLE) as exc:
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
            lease_params = (lease["queues"], lease["seconds"], lease["now"], lease["limit"])
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
