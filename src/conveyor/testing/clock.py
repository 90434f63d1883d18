"""A clock for tests: time moves only when the test says so."""

from __future__ import annotations

import asyncio


class FakeClock:
    """Time stands still until :meth:`advance`.

    ``sleep`` returns once the clock has been advanced, possibly before its deadline: every
    :meth:`advance` wakes every sleeper (the :class:`~conveyor.runtime.clock.Clock` contract allows
    early returns), so loops that re-check their conditions after a sleep react at once.

    >>> clock = FakeClock(start=1_000.0)
    >>> clock.advance(5)
    >>> clock.now()
    1005.0
    """

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._sleepers: set[asyncio.Future[None]] = set()

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._now += seconds
        sleepers, self._sleepers = self._sleepers, set()
        for sleeper in sleepers:
            if not sleeper.done():
                sleeper.set_result(None)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        sleeper: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers.add(sleeper)
        try:
            await sleeper
        finally:
            self._sleepers.discard(sleeper)
