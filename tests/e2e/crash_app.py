"""The app that the crash tests' worker subprocesses run: ``conveyor worker tests.e2e.crash_app:app``.

Everything that varies per test comes from ``CONVEYOR_CRASH_*`` environment variables (see
:class:`Settings`), so a test and its worker subprocesses build the same app on the same backend.
Every handler call leaves one JSON line in the records file with a single ``O_APPEND`` write, so
lines from concurrent processes never interleave and a ``kill -9`` cannot leave half a line. Those
lines count calls (a handler may run more than once); what was *committed* is checked in the backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import time
from pathlib import Path
from typing import Any

import orjson
from pydantic import BaseModel

from conveyor import App, Context, Lifecycle, Service, WorkerConfig

ENV_PREFIX = "CONVEYOR_CRASH_"
MANY_ATTEMPTS = 50
"""Every kill -9 spends the attempt of each job in flight: never let kills dead-letter a job."""
LONG_LEASE = 60.0
"""Far longer than any handler here: a job is leased again only if a worker dies or releases it."""
BLOCK_SECONDS = 30.0
"""How long a ``block`` job runs (a bound: it is meant to be cut short by shutdown)."""


@dataclasses.dataclass(frozen=True)
class Settings:
    backend: str = "memory://"
    records: str = os.devnull
    visibility_timeout: float = 2.0
    """of the ``work``, ``count_worked`` and ``after`` queues: killed leases expire this fast"""
    handler_seconds: float = 0.01
    concurrency: int = 10
    shutdown_grace: float = 30.0

    @classmethod
    def from_env(cls) -> Settings:
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = os.environ.get(ENV_PREFIX + field.name.upper())
            if raw is not None:
                values[field.name] = type(getattr(cls, field.name))(raw)
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        return {ENV_PREFIX + name.upper(): str(value) for name, value in dataclasses.asdict(self).items()}


def record(path: str, **fields: Any) -> None:
    """Append one line: a single ``write`` on an ``O_APPEND`` descriptor is atomic between processes."""
    line = orjson.dumps({"pid": os.getpid(), **fields}) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Every complete line so far (a line being written right now is left for the next read)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")[:-1]
    return [orjson.loads(line) for line in lines]


class Numbered(BaseModel):
    n: int


def attempt(ctx: Context) -> int:
    return ctx.job.attempt


def jittered(seconds: float) -> float:
    """Handlers of one batch end at different times, so a kill finds leases at every stage."""
    return seconds * random.uniform(0.5, 1.5)


def build_app(settings: Settings) -> App:
    """The crash app on ``settings.backend``: the test enqueues with it, the subprocesses work it."""
    crash = Service("crash", description="Handlers for the crash and multi-process tests")
    short = Lifecycle(visibility_timeout=settings.visibility_timeout, max_attempts=MANY_ATTEMPTS)
    records = settings.records

    @crash.queue_worker("work", emits=["worked"], enqueues=["after"], lifecycle=short)
    async def work(ctx: Context, job: Numbered) -> None:
        """Three effects that must each commit once: an event, a state write and a job."""
        await asyncio.sleep(jittered(settings.handler_seconds))
        await ctx.emit("worked", {"n": job.n})
        await ctx.states.set(f"done:{job.n}", {"pid": os.getpid(), "attempt": attempt(ctx)})
        await ctx.enqueue("after", {"n": job.n})
        record(records, kind="work", n=job.n, attempt=attempt(ctx))

    @crash.subscription("worked", lifecycle=short)
    async def count_worked(ctx: Context, event: Numbered) -> None:
        """Claim ``seen:<n>`` once; a delivery after a committed one is recorded as a duplicate."""
        key = f"seen:{event.n}"
        _, version = await ctx.states.get_versioned(key)
        if version:
            # Either the event was delivered twice or this job committed before and ran again. A
            # race the read misses fails the compare_and_set at commit and lands here on the retry.
            record(records, kind="duplicate", n=event.n, version=version, attempt=attempt(ctx))
            return
        await ctx.states.compare_and_set(key, {"pid": os.getpid()}, 0)
        record(records, kind="worked", n=event.n, attempt=attempt(ctx))

    @crash.queue_worker("after", lifecycle=short)
    async def after(ctx: Context, job: Numbered) -> None:
        await asyncio.sleep(jittered(settings.handler_seconds))
        await ctx.states.set(f"after:{job.n}", {"pid": os.getpid()})
        record(records, kind="after", n=job.n, attempt=attempt(ctx))

    @crash.queue_worker("timed", lifecycle=Lifecycle(visibility_timeout=LONG_LEASE))
    async def timed(ctx: Context, job: Numbered) -> None:
        """Record when this run held the job; the monotonic clock is shared by every process."""
        start = time.monotonic()
        await asyncio.sleep(settings.handler_seconds)
        job_id = ctx.job.id if ctx.job is not None else None
        record(records, kind="timed", job=job_id, n=job.n, start=start, end=time.monotonic())

    @crash.queue_worker("block", lifecycle=Lifecycle(visibility_timeout=LONG_LEASE))
    async def block(ctx: Context, job: Numbered) -> None:
        """A long-running step: far longer than any shutdown grace the tests give it."""
        record(records, kind="block_started", n=job.n, attempt=attempt(ctx))
        await asyncio.sleep(BLOCK_SECONDS)
        record(records, kind="block_finished", n=job.n, attempt=attempt(ctx))

    @crash.queue_worker("stubborn", lifecycle=Lifecycle(visibility_timeout=LONG_LEASE))
    async def stubborn(ctx: Context, job: Numbered) -> None:
        """A retry loop whose bare ``except`` swallows cancellation too (issue 14), for BLOCK_SECONDS."""
        record(records, kind="stubborn_started", n=job.n, attempt=attempt(ctx))
        deadline = time.monotonic() + BLOCK_SECONDS
        while time.monotonic() < deadline:
            with contextlib.suppress(BaseException):  # the very bug: cancellation swallowed with the rest
                await asyncio.sleep(0.05)
        record(records, kind="stubborn_finished", n=job.n, attempt=attempt(ctx))

    return App(
        [crash],
        backend=settings.backend,
        worker=WorkerConfig(concurrency=settings.concurrency, shutdown_grace=settings.shutdown_grace),
    )


app = build_app(Settings.from_env())
