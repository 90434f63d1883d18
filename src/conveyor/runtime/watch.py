"""What one worker keeps an eye on while its jobs run: cancellation requests and lease deadlines.

One task per worker, not per job. While no job runs it waits on an event and costs nothing; while
jobs run it asks the backend, once every ``watch_interval``, which of them an operator asked to
cancel (:meth:`~conveyor.ports.QueueAdmin.cancel_requests`, one call for all of them) and marks
their contexts (``ctx.cancel_requested``). Between polls it wakes at the earliest lease deadline:
a job whose deadline is reached without an extension (its heartbeat failing, a lost backend) has
lost its lease, so its handler task is cancelled rather than left running on unseen while another
worker takes the job. A heartbeat whose extend finds the lease taken cancels the handler at once.

A handler cancelled for a lost lease commits nothing (its commit would be ``STALE``): the job
runs again when it is leased again, by this worker or another.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from conveyor.model.errors import BackendError
from conveyor.ports import Backend, LeasedJob
from conveyor.runtime.clock import Clock

logger = logging.getLogger("conveyor.worker")

WATCH_INTERVAL = 1.0
"""Default seconds between two looks for cancellation requests (``WorkerConfig.watch_interval``)."""


class Running:
    """One job whose attempt runs now: its task, its lease deadline, what was asked of it."""

    __slots__ = ("_requested", "deadline", "lease_lost", "leased", "task")

    def __init__(self, task: asyncio.Task[Any], leased: LeasedJob) -> None:
        self.task = task
        self.leased = leased
        self.deadline = leased.lease_deadline
        """when its lease ends, moved on by each successful extend (heartbeat, ``ctx.extend_lease``)"""
        self.lease_lost = False
        """set (before its task is cancelled) when the watch found its lease lost"""
        self._requested: asyncio.Event | bool = False
        """True once cancellation is requested; an Event while a handler awaits it"""

    @property
    def cancel_requested(self) -> bool:
        requested = self._requested
        return requested if isinstance(requested, bool) else requested.is_set()

    def request_cancel(self) -> None:
        requested = self._requested
        if isinstance(requested, asyncio.Event):
            requested.set()
        else:
            self._requested = True

    async def cancellation(self) -> None:
        """Return once cancellation is requested (at once if it was)."""
        requested = self._requested
        if requested is True:
            return
        if not isinstance(requested, asyncio.Event):
            requested = self._requested = asyncio.Event()
        await requested.wait()


class Watch:
    """The watch task of one worker (see the module's docstring); :meth:`run` until cancelled."""

    def __init__(self, backend: Backend, clock: Clock, interval: float) -> None:
        self._backend = backend
        self._clock = clock
        self._interval = interval
        self.running: dict[asyncio.Task[Any], Running] = {}
        """every job whose attempt runs (the worker's own record too: what shutdown cancels)"""
        self._busy = asyncio.Event()
        self.polls = 0
        """cancel_requests calls made: tests wait on it"""

    def start(self, task: asyncio.Task[Any], leased: LeasedJob) -> Running:
        """Watch ``leased``, whose attempt runs in ``task``, until it leaves :attr:`running`."""
        running = self.running[task] = Running(task, leased)
        if not self._busy.is_set():
            self._busy.set()
        return running

    def lose(self, running: Running, why: str) -> None:
        """``running``'s lease is lost: cancel its attempt, which then commits nothing."""
        if self.running.get(running.task) is not running or running.lease_lost:
            return  # its attempt is over already (committing, or released at shutdown)
        running.lease_lost = True
        running.task.cancel()
        leased = running.leased
        logger.warning(
            "job %s of %r: lease lost, handler cancelled (%s); it runs again when it is leased again",
            leased.id,
            leased.queue,
            why,
        )

    async def run(self) -> None:
        clock, running = self._clock, self.running
        next_poll = 0.0
        while True:
            if not running:
                self._busy.clear()
                await self._busy.wait()
                next_poll = clock.now() + self._interval
                continue
            now = clock.now()
            wake = next_poll
            for job in list(running.values()):
                if job.lease_lost:
                    continue
                if job.deadline <= now:
                    self.lose(job, "its deadline passed without an extension")
                elif job.deadline < wake:
                    wake = job.deadline
            if now >= next_poll:
                await self._poll()
                next_poll = clock.now() + self._interval
                continue
            await clock.sleep(wake - now)

    async def _poll(self) -> None:
        """Mark the running jobs an operator asked to cancel (one backend call for all)."""
        by_id = {job.leased.id: job for job in self.running.values() if not job.cancel_requested}
        if not by_id:
            return
        try:
            requested = await self._backend.cancel_requests(list(by_id))
        except Exception as exc:  # the next look asks again; a watch that stopped would never
            if isinstance(exc, BackendError):
                logger.warning("could not look for cancellation requests: %s", exc)
            else:
                logger.error("looking for cancellation requests failed unexpectedly", exc_info=exc)
            return
        finally:
            self.polls += 1
        for job_id in requested:
            job = by_id.get(job_id)
            if job is not None and self.running.get(job.task) is job:
                logger.info("job %s of %r: cancellation requested", job_id, job.leased.queue)
                job.request_cancel()
