"""The state store as user code sees it: ``ctx.states`` and ``app.states``, one class.

Reads go to the store. Where a write goes is what a :class:`States` is given: a handler's
``ctx.states`` is given the attempt's journal, so its writes join the job's commit (and its own
reads see them); ``app.states`` is given none, so each write commits at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from pydantic import BaseModel

from conveyor.model.json_value import dump_json
from conveyor.model.text import require_storable
from conveyor.ports import Commit, CommitStatus, Effects, StateOp, StateWrite
from conveyor.runtime.committer import rejection
from conveyor.runtime.runtime import Runtime


def encode_state(value: Any, key: str | None = None) -> bytes:
    """A state value as stored: JSON bytes (a model as ``model_dump(mode="json")``), after the
    checks of :func:`~conveyor.model.json_value.dump_json` (no NaN, ±Infinity or lone surrogate)
    and, with ``key``, that the key is storable (:func:`~conveyor.model.text.require_storable`)."""
    if key is not None:
        require_storable(key, "state key")
    data = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
    return dump_json(data, "value of state {!r}", key) if key is not None else dump_json(data, "state value")


class States:
    """The state store: JSON values by key, each with a version.

    With ``journal`` (a handler's), a write is handed to it and commits with the job; reads see
    the writes handed over, and ``compare_and_set`` is checked when the job commits (a conflict
    discards the attempt's effects and retries it). Without, every write commits at once and
    ``compare_and_set`` says whether it won.
    """

    __slots__ = ("_journal", "_runtime", "_written")

    def __init__(self, runtime: Runtime, journal: Callable[[StateWrite], None] | None = None) -> None:
        self._runtime = runtime
        self._journal = journal
        self._written: dict[str, bytes | None] = {}

    async def get(self, key: str, default: Any = None) -> Any:
        if key in self._written:
            raw = self._written[key]
            return default if raw is None else orjson.loads(raw)
        require_storable(key, "state key")
        record = (await self._runtime.backend.get_states([key])).get(key)
        return default if record is None else orjson.loads(record.value)

    async def get_versioned(self, key: str) -> tuple[Any, int]:
        """The stored value and its version (``(None, 0)`` when absent), for ``compare_and_set``."""
        require_storable(key, "state key")
        record = (await self._runtime.backend.get_states([key])).get(key)
        return (None, 0) if record is None else (orjson.loads(record.value), record.version)

    async def set(self, key: str, value: Any) -> None:
        """Write ``value`` at ``key``. Both are checked here, before anything is written: a key with
        a NUL or a lone surrogate raises :class:`~conveyor.model.errors.UnstorableTextError`, a
        value JSON cannot carry (NaN, ±Infinity, a lone surrogate, an unserializable object)
        :class:`~conveyor.model.errors.PayloadValidationError`."""
        await self._write(StateWrite(key, StateOp.SET, encode_state(value, key)))

    async def delete(self, key: str) -> None:
        require_storable(key, "state key")
        await self._write(StateWrite(key, StateOp.DELETE))

    async def compare_and_set(self, key: str, value: Any, version: int) -> bool:
        """Write ``value`` if the stored version is still ``version`` (0: the key must not exist).

        False when another writer won; in a handler always True, the check being made at commit.
        """
        return await self._write(
            StateWrite(key, StateOp.SET, encode_state(value, key), expected_version=version)
        )

    async def _write(self, write: StateWrite) -> bool:
        if self._journal is not None:
            self._journal(write)
            self._written[write.key] = write.value
            return True
        runtime = self._runtime
        [result] = await runtime.backend.commit(
            [Commit(effects=Effects(states=[write]))], runtime.clock.now()
        )
        if result.status is CommitStatus.REJECTED:
            raise rejection(result)
        return result.status is CommitStatus.OK
