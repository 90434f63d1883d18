"""``MemoryBackend.dump`` and ``load``: a store reloaded from its dump after every call answers the
random operations of the differential contract exactly as the reference does (the NATS backend's
snapshots rely on it)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from conveyor.backends.memory import MemoryBackend
from conveyor.ports import Commit, Effects, ErrorInfo, NewJob, Outcome, Settlement
from conveyor.testing.differential import RETENTION, DifferentialContract


class Reloaded:
    """A memory store replaced by ``load(dump())``, through JSON, after every call."""

    def __init__(self) -> None:
        self.store = MemoryBackend(idempotency_retention=RETENTION)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            result = await method(*args, **kwargs)
            data = orjson.loads(orjson.dumps(self.store.dump()))
            self.store = MemoryBackend.load(data, idempotency_retention=RETENTION)
            return result

        return call


class TestDumpAndLoad(DifferentialContract):
    @pytest.fixture
    async def backend(self) -> AsyncIterator[Any]:
        yield Reloaded()


async def test_a_reloaded_store_holds_the_same_and_hands_out_greater_tokens() -> None:
    store = MemoryBackend()
    jobs = [NewJob(i, "q", b"\x00" + i.encode(), 1.0, 1.0, f"key-{i}", 3, 9.0) for i in ("a", "b")]
    await store.commit([Commit(effects=Effects(jobs=jobs))], 1.0)
    [a] = await store.lease({"q": 10.0}, 1, 1.0, worker="w")
    await store.commit([Commit(Settlement(a.id, a.token, Outcome.DEAD, error=ErrorInfo("E", "m")))], 2.0)
    await store.pause("q", 2.0)
    await store.resume("q")
    dumped = orjson.loads(orjson.dumps(store.dump()))
    reloaded = MemoryBackend.load(dumped)
    assert orjson.loads(orjson.dumps(reloaded.dump())) == dumped
    [b] = await reloaded.lease({"q": 10.0}, 1, 3.0)
    assert b.id == "b" and b.token > a.token
