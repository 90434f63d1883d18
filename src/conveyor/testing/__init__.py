"""Helpers for testing conveyor apps, and the contract suites every backend passes.

* :class:`FakeClock`: time that moves only when the test says so.
* :class:`TestApp` (``conveyor.testing.app``): an app's services on ``memory://`` and a FakeClock,
  with ``run_until_idle()`` and ``assert_workflow()``; the pytest plugin
  (``conveyor.testing.pytest_plugin``, on by itself) gives it as the ``conveyor_app`` fixture.
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
    from conveyor.testing.app import TestApp

__all__ = ["FakeClock", "TestApp", "running", "wait_until"]


def __getattr__(name: str) -> Any:
    # TestApp is the whole library (App and the memory backend): imported only when asked for, so
    # `import conveyor.testing` (the pytest plugin, the contract suites) stays light
    if name == "TestApp":
        from conveyor.testing.app import TestApp

        return TestApp
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
