"""The worker registry: each serving worker's heartbeat record, and who is alive.

A worker is ``"{hostname}:{pid}:{6 random hex}"`` (its leases carry that id, see
:meth:`~conveyor.ports.QueueStore.lease`). While ``App.serve`` runs, :func:`heartbeat` stores the
worker's :class:`~conveyor.ports.WorkerInfo` at start and every ``heartbeat_interval``; a clean stop
removes it. A worker that died without a clean stop stops beating, and drops out of
:func:`alive_workers` once its last beat is older than :data:`WORKER_TIMEOUT_FACTOR` intervals.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from typing import Protocol

from conveyor.ports import WorkerInfo
from conveyor.runtime.runtime import Runtime

logger = logging.getLogger("conveyor.worker")

HEARTBEAT_INTERVAL = 5.0
"""Default seconds between two heartbeats of a worker (``WorkerConfig.heartbeat_interval``)."""
WORKER_TIMEOUT_FACTOR = 3
"""A worker whose last heartbeat is older than this many intervals counts as dead: two beats may
be lost (a slow backend, a long pause of the process) before it drops out."""


def new_worker_id(host: str, pid: int) -> str:
    """A worker's id: unique even when a pid is reused on the host, or two workers share a process.

    >>> new_worker_id("web-1", 4242).startswith("web-1:4242:")
    True
    """
    return f"{host}:{pid}:{secrets.token_hex(3)}"


def this_process() -> tuple[str, int]:
    """The host name and pid a worker of this process reports."""
    return socket.gethostname(), os.getpid()


class Beating(Protocol):
    """What a heartbeat needs of its worker."""

    @property
    def id(self) -> str: ...

    def info(self) -> WorkerInfo:
        """The worker's record as of now (``last_seen`` is now)."""
        ...


async def heartbeat(runtime: Runtime, worker: Beating, interval: float) -> None:
    """Register ``worker`` now and every ``interval`` seconds on the runtime's clock, until
    cancelled. A beat that fails is logged and tried again at the next one: never fatal."""
    clock = runtime.clock
    while True:
        try:
            await runtime.backend.register_worker(worker.info())
        except Exception as exc:
            logger.warning("worker heartbeat failed (%s); trying again in %gs", exc, interval)
        due = clock.now() + interval
        while (left := due - clock.now()) > 0:  # a clock's sleep may return early
            await clock.sleep(left)


async def unregister(runtime: Runtime, worker_id: str) -> None:
    """Remove a worker's record at its clean stop (a failure only leaves it to expire)."""
    try:
        await runtime.backend.unregister_worker(worker_id)
    except Exception as exc:
        logger.warning("could not unregister worker %s (%s); its record expires by itself", worker_id, exc)


async def alive_workers(runtime: Runtime, interval: float = HEARTBEAT_INTERVAL) -> list[WorkerInfo]:
    """The workers whose last heartbeat is at most :data:`WORKER_TIMEOUT_FACTOR` ``interval``\\ s
    old, by id (older records are deleted on the way)."""
    return await runtime.backend.workers(runtime.clock.now() - WORKER_TIMEOUT_FACTOR * interval)
