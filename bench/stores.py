"""A fresh, empty store per benchmark phase, and its removal afterwards.

Given the backend URL from the command line, :func:`fresh_store` derives a URL that no earlier phase
touched: SQLite gets a new directory beside the given file, Redis a new key prefix
(``?prefix=``), PostgreSQL a new schema (``?schema=``, conveyor creates it on connect). ``drop``
removes exactly that: the directory, the prefix's keys, the schema (``DROP SCHEMA ... CASCADE``).
Nothing else on the server is touched, so other users of the same Redis/PostgreSQL are safe.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

DEFAULT_URLS = {
    "sqlite": "sqlite:////tmp/conveyor-bench/bench.db",
    "redis": "redis://127.0.0.1:6379/0",
    "postgres": "postgresql://root@127.0.0.1:5432/conveyor_bench",
}
"""``--backends`` shortcuts. memory:// is missing on purpose: it does not span processes."""

_SCAN_ROUNDS = 100_000
"""Upper bound on SCAN calls when deleting a Redis prefix (1,000 keys a call)."""


_CONVEYOR_OPTIONS = frozenset(
    {
        "prefix",
        "schema",
        "idempotency_retention",
        "pool_min_size",
        "pool_max_size",
        "pool_timeout",
        "vacuum_interval",
    }
)


def backend_kind(url: str) -> str:
    """``sqlite``, ``redis`` or ``postgres`` for a backend URL (ValueError for anything else)."""
    scheme = url.split(":", 1)[0].lower()
    kinds = {"sqlite": "sqlite", "redis": "redis", "postgres": "postgres", "postgresql": "postgres"}
    if scheme not in kinds:
        raise ValueError(f"cannot benchmark {url!r}: use sqlite://, redis:// or postgresql://")
    return kinds[scheme]


def _with_query(url: str, **options: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(options)
    return urlunsplit(parts._replace(query=urlencode(query)))


@dataclass(frozen=True)
class Store:
    """One phase's private store: ``url`` for conveyor, ``drop()`` to remove it."""

    kind: str
    url: str
    name: str
    """The SQLite directory, Redis prefix or PostgreSQL schema that only this phase uses."""

    def drop(self) -> None:
        """Remove this phase's data (idempotent)."""
        if self.kind == "sqlite":
            shutil.rmtree(self.name, ignore_errors=True)
        elif self.kind == "redis":
            _drop_redis_prefix(self.url, self.name)
        else:
            _drop_postgres_schema(self.url, self.name)


def fresh_store(url: str, tag: str) -> Store:
    """A store for ``url`` that no earlier phase used; ``tag`` (``[a-z0-9_]``) names the phase."""
    kind = backend_kind(url)
    options = dict(parse_qsl(urlsplit(url).query))
    if kind == "sqlite":
        parts = urlsplit(url)
        path = parts.path[1:]  # sqlite:///rel.db -> rel.db, sqlite:////abs.db -> /abs.db
        directory = os.path.join(os.path.dirname(path) or ".", tag)
        shutil.rmtree(directory, ignore_errors=True)
        os.makedirs(directory)
        db = os.path.join(directory, os.path.basename(path) or "bench.db")
        # built by hand: urlunsplit would drop the empty host and write sqlite://path
        query = f"?{parts.query}" if parts.query else ""
        return Store(kind, f"sqlite:///{db}{query}", directory)
    if kind == "redis":
        prefix = f"{options.get('prefix', 'bench')}-{tag}"
        store = Store(kind, _with_query(url, prefix=prefix), prefix)
    else:
        schema = f"{options.get('schema', 'bench')}_{tag}"
        _ensure_postgres_database(url)
        store = Store(kind, _with_query(url, schema=schema), schema)
    store.drop()
    return store


def _drop_redis_prefix(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(driver_url(url))
    try:
        cursor = 0
        for _ in range(_SCAN_ROUNDS):
            cursor, keys = client.scan(cursor, match=f"{prefix}:*", count=1000)
            if keys:
                client.delete(*keys)
            if cursor == 0:
                break
    finally:
        client.close()


def driver_url(url: str) -> str:
    """``url`` without conveyor's own query options, which redis-py and libpq would reject."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in _CONVEYOR_OPTIONS]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _ensure_postgres_database(url: str) -> None:
    import psycopg

    target = driver_url(url)
    database = urlsplit(target).path.lstrip("/")
    try:
        psycopg.connect(target, connect_timeout=5).close()
    except psycopg.OperationalError:
        admin = urlunsplit(urlsplit(target)._replace(path="/postgres"))
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone()
            if exists is None:
                conn.execute(f'CREATE DATABASE "{database}"')


def _drop_postgres_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(driver_url(url), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
