"""Running the event loop of a worker process to its end, past tasks that will not stop."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Coroutine
from typing import Any

logger = logging.getLogger("conveyor")

LEFTOVER_GRACE = 0.5
"""How long tasks still running when the main coroutine ends get to finish their cancellation."""


def run_to_end(main: Coroutine[Any, Any, None]) -> None:
    """``asyncio.run(main)``, except that a task that ignores cancellation (a handler with a bare
    ``except:`` around an ``await``) cannot keep the process from exiting.

    ``asyncio.run`` cancels what is left when ``main`` ends (or when a signal handler raises
    ``SystemExit``) and then waits for it without a bound: one such task and the process never
    exits. Here leftovers get :data:`LEFTOVER_GRACE`; if some still run, the process ends at once
    (``os._exit``, with ``SystemExit``'s status), because their coroutines cannot be finalized
    either: one that swallows ``GeneratorExit`` with the rest spins in the garbage collector at
    interpreter exit.
    """
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    status = 0
    try:
        loop.run_until_complete(main)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
        raise
    finally:
        stuck: list[asyncio.Task[Any]] = []
        try:
            leftovers = asyncio.all_tasks(loop)
            for task in leftovers:
                task.cancel()
            if leftovers:
                loop.run_until_complete(asyncio.wait(leftovers, timeout=LEFTOVER_GRACE))
            stuck = [task for task in leftovers if not task.done()]
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(_bounded(loop.shutdown_default_executor()))
        finally:
            asyncio.set_event_loop(None)
            loop.close()
        if stuck:
            logger.warning(
                "exiting with %d tasks that ignore cancellation: %s",
                len(stuck),
                ", ".join(sorted(task.get_name() for task in stuck)[:5]),
            )
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(status)


async def _bounded(wait: Coroutine[Any, Any, None]) -> None:
    """At most :data:`LEFTOVER_GRACE` for the default executor's threads (a thread cannot be cancelled)."""
    try:
        await asyncio.wait_for(wait, LEFTOVER_GRACE)
    except TimeoutError:
        logger.warning("exiting while threads of the default executor still run")
