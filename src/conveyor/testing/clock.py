"""A clock for tests: time moves only when the test says so."""

from __future__ import annotations

import asyncio


class FakeClock:
    """Time stands still until :meth:`advance`.

    ``sleep`` returns once the clock has been advanced, possibly before its deadline: every
    :meth:`advance` wakes every sleeper (the :class:`~conveyor.runtime.clock.Clock` contract allows
    early returns), so loops that re-check their conditions after a sleep react at once.

    With ``early_wakeups=False`` a sleep returns only once the clock has reached its deadline, as
    on the real clock: a test then shows that a loop wakes itself on time, not merely whenever the
    test moves the clock.

    >>> clock = FakeClock(start=1_000.0)
    >>> clock.advance(5)
    >>> clock.now()
    1005.0
    """

    def __init__(self, start: float = 1_700_000_000.0, *, early_wakeups: bool = True) -> None:
        self._now = start
        self._early_wakeups = early_wakeups
        self._sleepers: dict[asyncio.Future[None], float] = {}
        """each sleeper and its deadline"""

    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._now += seconds
        for sleeper, deadline in list(self._sleepers.items()):
            if self._early_wakeups or deadline <= self._now:
                del self._sleepers[sleeper]
                if not sleeper.done():
                    sleeper.set_result(None)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        sleeper: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sleepers[sleeper] = self._now + seconds
        try:
            await sleeper
        finally:
            self._sleepers.pop(sleeper, None)
