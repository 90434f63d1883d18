"""Helpers for testing conveyor apps, and the contract suites every backend passes.

* :class:`FakeClock`: time that moves only when the test says so.
* :func:`running`: run an app's workers in the background for the duration of a block.
* :func:`wait_until`: wait for a condition (never a fixed sleep).
* ``conveyor.testing.store_contract`` / ``conveyor.testing.runtime_contract`` /
  ``conveyor.testing.robustness_contract``: the contract suites, each a package of one module a topic.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from conveyor.testing.clock import FakeClock

if TYPE_CHECKING:
    from conveyor.app import App

__all__ = ["FakeClock", "running", "wait_until"]


async def wait_until(
    condition: Callable[[], Any | Awaitable[Any]],
    *,
    timeout: float = 10.0,
    interval: float = 0.002,
    message: str = "condition",
) -> Any:
    """Poll ``condition`` (sync or async) until it is truthy; return its value. Fails after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(interval)


@contextlib.asynccontextmanager
async def running(
    app: App,
    *,
    queues: Sequence[str] | None = None,
    concurrency: int | None = None,
    scheduler: bool = True,
) -> AsyncIterator[App]:
    """Serve ``app`` in the background inside the block; stop it gracefully on exit
    (:meth:`App.serving <conveyor.app.App.serving>`, kept here for existing tests).

    >>> # async with running(app):
    >>> #     await app.enqueue("q", {...})
    >>> #     await wait_until(lambda: done)
    """
    async with app.serving(queues=queues, concurrency=concurrency, scheduler=scheduler):
        yield app
