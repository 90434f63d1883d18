"""Every test here runs on Redis: ``backend_url`` is a fresh prefix on the shared server (deleted
after the test), ``url`` names it, and ``backend`` is the shared ``opened_backend`` on it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from conveyor.backends.redis import RedisBackend
from conveyor.ports import Backend
from tests.conftest import drop, fresh_url


@pytest.fixture
def backend_url(tmp_path: Path) -> Iterator[str]:
    url = fresh_url("redis", tmp_path)
    yield url
    drop(url)


@pytest.fixture
def url(backend_url: str) -> str:
    return backend_url


@pytest.fixture
def backend(opened_backend: Backend) -> RedisBackend:
    assert isinstance(opened_backend, RedisBackend)
    return opened_backend
