"""The effects one handler run produces, held until its job commits."""

from __future__ import annotations

from conveyor.model.errors import LeaseLostError
from conveyor.ports import Effects
from conveyor.runtime.messages import child_id


class EffectsBuffer:
    """Effects of one handler run, with deterministic ids for what it produces."""

    __slots__ = ("_sequence", "closed", "effects", "parent_id")

    def __init__(self, parent_id: str | None) -> None:
        self.effects = Effects()
        self.parent_id = parent_id
        self._sequence = 0
        self.closed: str | None = None
        """Why the attempt ended while its handler still runs (see :meth:`close`); None while open."""

    def close(self, reason: str) -> None:
        """End the attempt (it timed out, or was released at shutdown) while its handler may still
        run: every later write raises :class:`LeaseLostError` with ``reason``, so a handler that
        ignores cancellation learns that nothing it does from now on can commit."""
        self.closed = reason

    def check_open(self) -> None:
        if self.closed is not None:
            raise LeaseLostError(self.closed)

    def next_id(self) -> str | None:
        if self.parent_id is None:
            return None
        self._sequence += 1
        return child_id(self.parent_id, self._sequence)
