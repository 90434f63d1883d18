"""Opening the database file: pragmas, schema migrations and transactions that survive contention.

Everything here is blocking and runs on the backend's own thread (see ``backend.py``).
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

from conveyor.backends.sqlite.sql import MIGRATIONS, QUERIES, SCHEMA_VERSION
from conveyor.model.errors import (
    BackendError,
    BackendUnavailableError,
    CommitRejectedError,
    ConfigurationError,
    SchemaVersionError,
)

T = TypeVar("T")

MIN_SQLITE_VERSION = (3, 24, 0)
"""Upserts (``ON CONFLICT ... DO UPDATE``) arrived in SQLite 3.24."""

_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_CANTOPEN = 14
_SQLITE_TOOBIG = 18
# SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25, 50, 100 ms: under contention between
# worker processes a loser sleeps far longer than the winner holds the lock (measured with four
# processes on one file: worst lease+ack cycle 0.2-1.2 s with it, 0.06-0.4 s with this loop;
# commit c9c827b, the command was not recorded, not re-measured).
_FIRST_BACKOFF = 0.0002
_MAX_BACKOFF = 0.004


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def is_busy(exc: sqlite3.Error) -> bool:
    """Whether ``exc`` means another connection holds a lock we need (worth retrying)."""
    code = _primary_code(exc)
    if code is not None:
        return code in (_SQLITE_BUSY, _SQLITE_LOCKED)
    message = str(exc)
    return "database is locked" in message or "database table is locked" in message


def translate(exc: sqlite3.Error, path: str) -> BackendError:
    """The conveyor error for a driver error (the caller chains ``exc`` as its cause)."""
    if _primary_code(exc) == _SQLITE_CANTOPEN or "unable to open database" in str(exc):
        return BackendUnavailableError(f"cannot open SQLite database {path!r}: {exc}")
    if _primary_code(exc) == _SQLITE_TOOBIG:
        return CommitRejectedError(f"SQLite cannot store a value this large in {path!r}: {exc}")
    return BackendError(f"SQLite error on {path!r}: {exc}")


def script_statements(script: str) -> Iterator[str]:
    """The statements of an SQL script, one at a time (``executescript`` would commit mid-way)."""
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            yield buffer.strip()
            buffer = ""
    leftover = [line for line in buffer.splitlines() if line.strip() and not line.lstrip().startswith("--")]
    if leftover:
        raise ValueError(f"unterminated SQL statement in script: {leftover[0][:80]!r}")


class Connection:
    """One sqlite3 connection with conveyor's pragmas and a contention-proof transaction runner.

    Lock waits are bounded by ``busy_timeout`` seconds in total: an operation that hits
    ``SQLITE_BUSY`` is retried with a short randomized backoff (0.2 ms doubling up to 4 ms), and
    past ``busy_timeout`` fails with :class:`BackendUnavailableError` saying how long it waited.
    """

    def __init__(self, path: str, *, busy_timeout: float) -> None:
        if sqlite3.sqlite_version_info < MIN_SQLITE_VERSION:
            needed = ".".join(map(str, MIN_SQLITE_VERSION))
            raise ConfigurationError(
                f"the SQLite backend needs SQLite >= {needed}; this Python uses {sqlite3.sqlite_version}"
            )
        self.path = path
        self.busy_timeout = busy_timeout
        try:
            self.db = sqlite3.connect(
                path,
                timeout=0,  # lock waits are ours (see _retrying), not SQLite's coarse busy handler
                isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
                check_same_thread=False,  # created and used on the backend thread, closed there too
                cached_statements=256,
            )
        except sqlite3.Error as exc:
            raise translate(exc, path) from exc

    def close(self) -> None:
        self.db.close()

    def _retrying(self, attempt: Callable[[], T]) -> T:
        started = time.monotonic()
        delay = _FIRST_BACKOFF
        while True:
            try:
                return attempt()
            except sqlite3.Error as exc:
                if not is_busy(exc):
                    raise translate(exc, self.path) from exc
                waited = time.monotonic() - started
                if waited + delay > self.busy_timeout:
                    # unavailable, not refused: the commit is retried whole rather than split
                    # (see conveyor.runtime.committer), each half waiting busy_timeout again
                    raise BackendUnavailableError(
                        f"SQLite database {self.path!r} stayed locked for {waited:.2f}s "
                        f"(busy_timeout={self.busy_timeout:g}s): other connections kept it locked "
                        "(one long transaction, or more writers than the file can serve); raise "
                        "busy_timeout or find the connection that holds the lock"
                    ) from exc
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, _MAX_BACKOFF)

    def write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` in one ``BEGIN IMMEDIATE`` transaction, committed if it returns.

        IMMEDIATE takes the write lock up front, so two processes never deadlock upgrading a read
        lock. ``work`` may run more than once (after a busy error): it must only touch the database.
        """
        db = self.db

        def attempt() -> T:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return result

        return self._retrying(attempt)

    def read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run read-only ``work`` (autocommit: each statement sees the latest commit)."""
        return self._retrying(lambda: work(self.db))

    def setup(self) -> None:
        """Check the schema version, switch to WAL and create or migrate the schema.

        The version is read before anything is written: a database made by a newer conveyor is
        refused with :class:`SchemaVersionError` and left untouched.
        """
        self._check_version(self.read(_stored_version))
        mode = self._retrying(lambda: self.db.execute("PRAGMA journal_mode = WAL").fetchone())
        if mode is None or str(mode[0]).lower() != "wal":
            raise ConfigurationError(
                f"SQLite database {self.path!r} cannot use WAL mode (got {mode!r}); "
                "conveyor needs WAL, which does not work on network file systems"
            )
        # NORMAL in WAL mode: a commit survives a crash of the process; an OS crash or power loss
        # may lose the last transactions (never corrupts the file). FULL would fsync every commit.
        self.db.execute("PRAGMA synchronous = NORMAL")
        if self.read(_stored_version) != SCHEMA_VERSION:
            self.write(self._migrate)

    def _check_version(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"SQLite database {self.path!r} has conveyor schema version {version}, but this "
                f"conveyor only knows versions up to {SCHEMA_VERSION}: upgrade conveyor to use it "
                "(nothing was changed in the file)"
            )

    def _migrate(self, db: sqlite3.Connection) -> None:
        # Re-read under the write lock: another process may have migrated meanwhile.
        current = _stored_version(db)
        self._check_version(current)
        db.execute(QUERIES["create_schema_version_table"])
        for migration in MIGRATIONS:
            if migration.version > current:
                for statement in script_statements(migration.text):
                    db.execute(statement)
                db.execute(QUERIES["record_schema_version"], {"version": migration.version})


def _stored_version(db: sqlite3.Connection) -> int:
    if db.execute(QUERIES["schema_version_table_exists"]).fetchone() is None:
        return 0
    row = db.execute(QUERIES["schema_version"]).fetchone()
    return int(row[0]) if row and row[0] is not None else 0
