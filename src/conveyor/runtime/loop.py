"""Running the event loop of a worker process to its end, past signals and tasks that will not stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Coroutine
from typing import Any, Protocol

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


FORCED_EXIT_AFTER = 3.0
"""After a second SIGTERM/SIGINT, the longest the release of running jobs may take before the
process exits without it (a third signal exits at once)."""


class Stoppable(Protocol):
    def stop(self, *, now: bool = False) -> None: ...


class SignalStop:
    """SIGTERM and SIGINT while ``main`` runs: the first stops ``target`` gracefully; a second stops
    it now (running jobs released at once) and makes :meth:`run` exit with status 1, or the
    process after :data:`FORCED_EXIT_AFTER` seconds if stopping takes longer; a third exits at once."""

    def __init__(self, target: Stoppable) -> None:
        self._target = target
        self.received = 0
        self._forced_exit: asyncio.TimerHandle | None = None

    async def run(self, main: Awaitable[None]) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # not available off the main thread or on some platforms
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)
        await main
        if self._forced_exit is not None:
            self._forced_exit.cancel()  # stopped in time: no exit from inside the loop's cleanup
        if self.received > 1:
            raise SystemExit(1)  # cut short by a second signal: not a clean shutdown

    def _on_signal(self, sig: signal.Signals) -> None:
        self.received += 1
        if self.received == 1:
            logger.info("%s received: finishing running jobs, then stopping", sig.name)
            self._target.stop()
        elif self.received == 2:
            logger.warning("second %s: releasing running jobs now, then exiting", sig.name)
            self._target.stop(now=True)
            self._forced_exit = asyncio.get_running_loop().call_later(
                FORCED_EXIT_AFTER, _exit_now, "still stopping"
            )
        else:
            _exit_now(f"another {sig.name}")


def _exit_now(why: str) -> None:
    """Leave the event loop at once (raised from a loop callback, ``SystemExit`` ends the run)."""
    logger.warning("%s: exiting without waiting for running jobs to be released", why)
    raise SystemExit(1)


RECANCEL_EVERY = 0.2
"""How often :func:`cancel_and_wait` cancels again a task that swallowed its cancellation."""


async def cancel_and_wait(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one has ended, cancelling again whichever is still
    running after :data:`RECANCEL_EVERY` seconds.

    One cancellation is not always enough: a driver can swallow it (redis-py 8 returns a command's
    reply to a caller cancelled while the reply was on its way), and a periodic loop then goes back
    to an hour-long sleep. Its next cancellation lands in that sleep.
    """
    for task in tasks:
        task.cancel()
    pending = {task for task in tasks if not task.done()}
    while pending:
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_EVERY)
        for task in pending:
            task.cancel()
    for task in tasks:  # retrieved, so none is logged as never retrieved
        if not task.cancelled():
            task.exception()
