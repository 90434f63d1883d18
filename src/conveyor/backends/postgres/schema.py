"""The backend's SQL: the queries file, the versioned migrations and how they are applied.

Every object lives in one PostgreSQL schema (``?schema=``, default ``conveyor``), so several apps
or test runs share a database without seeing each other. SQL files name it ``{schema}``; it is
validated as a plain identifier and substituted quoted, never taken from anything but the URL.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg

from conveyor.backends import sql_files
from conveyor.model.errors import ConfigurationError, SchemaVersionError

HERE = Path(__file__).parent
SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")
"""A plain identifier, short enough for the NOTIFY channel named after it to fit in 63 bytes."""


def validate_schema(name: str) -> str:
    """``name`` if it is a plain identifier usable as a schema, else ConfigurationError."""
    if not SCHEMA_NAME.fullmatch(name):
        raise ConfigurationError(
            f"invalid PostgreSQL schema name {name!r}: use letters, digits and underscores "
            "(not starting with a digit), at most 48 characters"
        )
    return name


def render(text: str, schema: str) -> str:
    return text.replace("{schema}", f'"{schema}"')


_QUERY_TEXTS = sql_files.load_queries(HERE / "queries.sql")

MIGRATIONS: list[sql_files.Migration] = sql_files.load_migrations(HERE / "migrations")
"""The schema scripts by version (``NNNN_what.sql``, one per version, checked at import)."""

LATEST_VERSION = MIGRATIONS[-1].version
"""The schema version this code writes and understands."""


def load_queries(schema: str) -> dict[str, str]:
    """Every query of ``queries.sql`` by name, rendered for ``schema``."""
    return {name: render(text, schema) for name, text in _QUERY_TEXTS.items()}


async def migrate(conn: psycopg.AsyncConnection[tuple[object, ...]], schema: str) -> int:
    """Bring ``schema`` to :data:`LATEST_VERSION` in one transaction; returns the version found.

    Safe to run from many processes at once (they queue on an advisory lock) and idempotent. A
    schema written by a newer conveyor raises :class:`SchemaVersionError` before anything changes.
    """
    quoted = f'"{schema}"'
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"conveyor.migrate:{schema}",)
        )
        # as pg_dump does: the function bodies are checked when first called (the pool's warm-up
        # calls both at once), not parsed twice here; a quarter of a fresh schema's set-up time
        await conn.execute("SET LOCAL check_function_bodies = off")
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quoted}")
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {quoted}.schema_version ("
            " version integer PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        cursor = await conn.execute(f"SELECT max(version) FROM {quoted}.schema_version")
        row = await cursor.fetchone()
        found = int(row[0]) if row and row[0] is not None else 0  # type: ignore[call-overload]
        if found > LATEST_VERSION:
            raise SchemaVersionError(
                f"PostgreSQL schema {schema!r} is at version {found}, newer than version "
                f"{LATEST_VERSION} that this conveyor knows: upgrade conveyor (nothing was changed)"
            )
        for migration in MIGRATIONS:
            if migration.version > found:
                await conn.execute(render(migration.text, schema).encode())
                await conn.execute(
                    f"INSERT INTO {quoted}.schema_version (version) VALUES (%s)", (migration.version,)
                )
    return found
