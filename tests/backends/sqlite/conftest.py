"""The SQLite backend tests' file URL and connected backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from conveyor.backends.sqlite import SQLiteBackend
from tests.helpers import connected


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/conveyor.db"


@pytest.fixture
async def backend(url: str) -> AsyncIterator[SQLiteBackend]:
    async with connected(SQLiteBackend(url)) as store:
        yield store
