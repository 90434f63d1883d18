"""Backend URLs for the contract suites: every test that takes ``backend_url`` runs on each backend.

A backend whose server is not reachable is skipped locally and fails in CI (``CI=true``).
"""

from __future__ import annotations

import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import pytest

from conveyor.backends import open_backend
from conveyor.ports import Backend
from tests.helpers import connected

REDIS_URL = os.environ.get("CONVEYOR_TEST_REDIS", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("CONVEYOR_TEST_POSTGRES", "postgresql://root@127.0.0.1:5432/conveyor_test")
NATS_URL = os.environ.get("CONVEYOR_TEST_NATS", "nats://127.0.0.1:4222")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def require_server(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if IN_CI:
        pytest.fail(message + " (CI=true: backend tests must run against the real server)")
    pytest.skip(message)


def _available_backends() -> list[str]:
    backends = ["memory", "sqlite"]
    here = Path(__file__).parent.parent / "src" / "conveyor" / "backends"
    for name in ("redis", "postgres", "nats"):
        if (here / name / "__init__.py").exists():
            backends.append(name)
    return backends


BACKENDS = _available_backends()


_postgres_database_ready = False


def _create_postgres_database() -> None:
    """Create the test database of ``POSTGRES_URL`` once per session if it does not exist yet."""
    global _postgres_database_ready
    if _postgres_database_ready:
        return
    import psycopg
    from psycopg import sql

    parts = urlsplit(POSTGRES_URL)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            # Another test process may create it at the same moment: that is fine too.
            concurrent = (psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation)
            with contextlib.suppress(*concurrent):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    _postgres_database_ready = True


def fresh_url(kind: str, tmp_path: Path) -> str:
    """A URL of an empty, isolated backend of ``kind``."""
    unique = uuid.uuid4().hex[:10]
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path}/conveyor-{unique}.db"
    if kind == "redis":
        require_server("Redis", "127.0.0.1", 6379)
        return f"{REDIS_URL}?prefix=test-{unique}"
    if kind == "postgres":
        require_server("PostgreSQL", "127.0.0.1", 5432)
        _create_postgres_database()
        return f"{POSTGRES_URL}?schema=test_{unique}"
    if kind == "nats":
        require_server("NATS", "127.0.0.1", 4222)
        # snapshots every few records: the suites run through restores and purges too
        return f"{NATS_URL}?prefix=test-{unique}&snapshot_every=7"
    raise ValueError(kind)


@pytest.fixture(params=BACKENDS)
def backend_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    kind: str = request.param
    if (
        kind == "sqlite"
        and not (Path(__file__).parent.parent / "src/conveyor/backends/sqlite/__init__.py").exists()
    ):
        pytest.skip("the SQLite backend is not built yet")
    yield kind


@pytest.fixture
def backend_url(backend_kind: str, tmp_path: Path) -> Iterator[str]:
    url = fresh_url(backend_kind, tmp_path)
    yield url
    drop(url)


@pytest.fixture
async def opened_backend(backend_url: str) -> AsyncIterator[Backend]:
    """A backend of ``backend_url``, connected for the test and closed after it."""
    async with connected(open_backend(backend_url)) as backend:
        yield backend


def drop(url: str) -> None:
    """Delete what a test left on a shared server: its Redis prefix or its PostgreSQL schema."""
    options = dict(parse_qsl(urlsplit(url).query))
    if url.startswith("redis") and options.get("prefix", "").startswith("test-"):
        import redis

        client = redis.Redis.from_url(url.split("?", 1)[0])
        try:
            batch = list(client.scan_iter(match=f"{options['prefix']}:*", count=1000))
            for start in range(0, len(batch), 1000):
                client.unlink(*batch[start : start + 1000])
        finally:
            client.close()
    elif url.startswith("postgres") and options.get("schema", "").startswith("test_"):
        import psycopg

        with psycopg.connect(url.split("?", 1)[0], autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{options["schema"]}" CASCADE')
    elif url.startswith("nats") and options.get("prefix", "").startswith("test-"):
        stream = f"CONVEYOR_{options['prefix']}"
        _drop_nats_streams(url.split("?", 1)[0], [stream, f"OBJ_{stream}_snapshots"])


def _drop_nats_streams(server: str, streams: list[str]) -> None:
    """Delete a test's streams (in a thread: a test's event loop may still be running here)."""
    import asyncio
    import threading

    import nats
    from nats.js.errors import NotFoundError

    async def delete() -> None:
        nc = await nats.connect(server)
        try:
            for stream in streams:
                with contextlib.suppress(NotFoundError):
                    await nc.jetstream().delete_stream(stream)
        finally:
            await nc.close()

    thread = threading.Thread(target=asyncio.run, args=(delete(),))
    thread.start()
    thread.join()
