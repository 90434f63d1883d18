"""The connection side of the PostgreSQL backend: its URL, its pool, its schema's migration.

:class:`Connections` is the base of :class:`~conveyor.backends.postgres.backend.PostgresBackend`:
every query runs on a pooled connection through :meth:`Connections._connection`, which translates
driver errors (see :mod:`~conveyor.backends.postgres.errors`) and replaces dead connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from conveyor.backends.postgres import arrays
from conveyor.backends.postgres import schema as pg_schema
from conveyor.backends.postgres.errors import translate
from conveyor.backends.postgres.listener import Listener
from conveyor.model.errors import BackendError, BackendUnavailableError, ConfigurationError

Connection = psycopg.AsyncConnection[TupleRow]
T = TypeVar("T")

# URL query keys that configure the backend itself; every other key goes to libpq untouched.
_OWN_OPTIONS = frozenset(
    {"schema", "idempotency_retention", "pool_min_size", "pool_max_size", "pool_timeout", "vacuum_interval"}
)


def libpq_url(url: str) -> str:
    """``url`` as libpq reads it: the backend's own query options taken out."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in _OWN_OPTIONS]
    return urlunsplit(parts._replace(scheme="postgresql", query=urlencode(query)))


def shown(url: str) -> str:
    """``url`` as error messages show it: without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))


def check_conninfo(conninfo: str, url: str) -> None:
    """Refuse a URL libpq cannot use now, rather than as "connection lost" at connect()."""
    try:
        ports = conninfo_to_dict(conninfo).get("port")
    except psycopg.ProgrammingError as exc:
        raise ConfigurationError(f"invalid PostgreSQL URL {shown(url)!r}: {exc}") from exc
    for port in str(ports or "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise ConfigurationError(f"invalid PostgreSQL URL {shown(url)!r}: port {port!r} is not 1-65535")


class Connections:
    """The pool, the migration and the way every query gets a connection.

    Not used alone: :class:`~conveyor.backends.postgres.backend.PostgresBackend` sets these
    attributes from its URL and options.
    """

    schema: str
    _conninfo: str
    _connect_options: dict[str, Any]
    _pool_min_size: int
    _pool_max_size: int
    _pool_timeout: float
    _pool: AsyncConnectionPool[Connection] | None
    _listener: Listener
    _queries: dict[str, str]

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
        """Set up a new pooled connection."""
        arrays.register(conn)
        self._listener.own(conn.info.backend_pid)

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
