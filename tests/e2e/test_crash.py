"""Crashes and concurrency with real worker processes on every durable backend.

Workers are ``conveyor worker tests.e2e.crash_app:app`` subprocesses, killed with SIGKILL mid-batch or
stopped with SIGTERM. Handlers may run more than once (at-least-once), so the assertions are on what
was committed: state versions, claimed keys, queue stats and dead letters. Every wait is on a
condition with a generous bound, and every subprocess is killed when its test ends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from itertools import pairwise
from pathlib import Path

import pytest

from conveyor import App
from conveyor.app import FORCED_EXIT_AFTER
from conveyor.runtime.attempt import CANCEL_GRACE
from conveyor.runtime.loop import LEFTOVER_GRACE
from conveyor.testing import wait_until

try:  # tests/ imported as a package, or as a plain directory on sys.path (as conftest.py is)
    from tests.e2e.crash_app import BLOCK_SECONDS, Settings, build_app, read_records
except ModuleNotFoundError:
    from crash_app import BLOCK_SECONDS, Settings, build_app, read_records  # type: ignore[no-redef,import-not-found,unused-ignore]

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WORKER_COMMAND = (
    sys.executable,
    "-c",
    "from conveyor.cli import main; main()",
    "worker",
    "tests.e2e.crash_app:app",
)
STARTUP = 60.0
"""Bound on a worker's start (imports and connect); generous because CI machines are busy."""
SETTLE = 60.0
"""Bound on draining a queue or on reaching a record count."""


class WorkerProcess:
    """One ``conveyor worker`` subprocess; its output goes to a log file for failure messages."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                WORKER_COMMAND,
                cwd=ROOT,
                env={**os.environ, **settings.to_env()},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self, last: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(lines[-last:])

    def check_alive(self) -> None:
        """Fail at once, with the worker's output, instead of waiting out a bound for a dead worker."""
        code = self.process.poll()
        if code is not None:
            raise AssertionError(f"worker {self.pid} exited with {code}:\n{self.output()}")

    def started(self) -> bool:
        self.check_alive()
        return "worker started" in self.log.read_text(errors="replace")

    def kill(self) -> None:
        """kill -9: no shutdown code runs, leases and in-flight commits are left as they are."""
        self.process.kill()
        self.process.wait(timeout=10)

    async def terminate(self, timeout: float) -> int:
        """SIGTERM, then the exit code (fails if the worker is still running after ``timeout``)."""
        self.process.send_signal(signal.SIGTERM)
        try:
            await wait_until(
                lambda: self.process.poll() is not None,
                timeout=timeout,
                interval=0.02,
                message=f"worker {self.pid} to exit after SIGTERM",
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its output:\n{self.output()}") from None
        return self.process.returncode


class Workers:
    """Starts worker subprocesses and kills whatever is still running at the end of the test."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: list[WorkerProcess] = []

    def start(self, settings: Settings) -> WorkerProcess:
        worker = WorkerProcess(settings, self.directory / f"worker-{len(self.started)}.log")
        self.started.append(worker)
        return worker

    def kill_all(self) -> None:
        for worker in self.started:
            if worker.process.poll() is None:
                worker.kill()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    spawned = Workers(tmp_path)
    try:
        yield spawned
    finally:
        spawned.kill_all()


@pytest.fixture
def durable_url(backend_kind: str, backend_url: str) -> str:
    if backend_kind == "memory":
        pytest.skip("memory:// lives in one process: worker processes cannot share it")
    return backend_url


def records_of(path: Path, pid: int) -> int:
    """How many records worker ``pid`` wrote (each line starts with its writer's pid)."""
    try:
        return path.read_bytes().count(b'{"pid":%d,' % pid)
    except FileNotFoundError:
        return 0


async def pending(app: App, queues: Sequence[str]) -> int:
    """Jobs not finished yet: ready, leased or scheduled (dead letters are checked separately)."""
    return sum(s.ready + s.leased + s.scheduled for s in await app.stats(queues))


async def test_kill_9_mid_batch_loses_nothing_and_commits_no_effect_twice(
    durable_url: str, tmp_path: Path, workers: Workers
) -> None:
    jobs, kills, progress = 300, 3, 100
    records = tmp_path / "records.jsonl"
    settings = Settings(
        backend=durable_url,
        records=str(records),
        visibility_timeout=2.0,
        handler_seconds=0.01,
        concurrency=10,
    )
    queues = ["work", "count_worked", "after"]
    app = build_app(settings)
    async with app:
        await app.enqueue_many("work", [{"n": n} for n in range(jobs)])
        victim = workers.start(settings)
        for _ in range(kills):
            # The next worker starts before the victim dies: it works beside it, then takes over the
            # victim's jobs when their leases expire (and a process start is not waited for each round).
            successor = workers.start(settings)

            def victim_progressed(victim: WorkerProcess = victim) -> bool:
                victim.check_alive()
                return records_of(records, victim.pid) >= progress

            await wait_until(
                victim_progressed,
                timeout=STARTUP,
                interval=0.005,
                message=f"{progress} handler calls of worker {victim.pid}",
            )
            victim.kill()
            victim = successor
        survivor = victim

        async def finished() -> bool:
            survivor.check_alive()
            return await pending(app, queues) == 0

        await wait_until(finished, timeout=SETTLE, interval=0.05, message="every job to complete")
        assert await survivor.terminate(timeout=30) == 0, survivor.output()

        assert await app.dead_letters().list() == []
        keys = [f"{prefix}:{n}" for prefix in ("done", "seen", "after") for n in range(jobs)]
        states = await app.backend.get_states(keys)
    missing = [key for key in keys if key not in states]
    overwritten = {key: record.version for key, record in states.items() if record.version != 1}
    lines = read_records(records)
    duplicates = [line for line in lines if line["kind"] == "duplicate"]
    assert missing == [], f"{len(missing)} effects never committed, e.g. {missing[:5]}"
    assert overwritten == {}, f"effects committed more than once (key: version): {overwritten}"
    assert duplicates == [], f"deliveries after a committed one: {duplicates[:5]}"
    # Only a lost lease makes a later attempt here (nothing fails): the kills did land mid-batch.
    taken_over = [line for line in lines if line["attempt"] > 1]
    assert taken_over, "no job was leased again: no kill landed while its worker held leases"
    # Re-runs are allowed (at-least-once); the handlers must still have run for every job.
    for kind in ("work", "worked", "after"):
        assert {line["n"] for line in lines if line["kind"] == kind} == set(range(jobs)), kind


async def test_two_worker_processes_never_run_a_job_concurrently_while_its_lease_is_valid(
    durable_url: str, tmp_path: Path, workers: Workers
) -> None:
    jobs = 200
    records = tmp_path / "records.jsonl"
    settings = Settings(backend=durable_url, records=str(records), handler_seconds=0.02, concurrency=4)
    app = build_app(settings)
    async with app:
        pair = [workers.start(settings), workers.start(settings)]
        # both lease from the first job on, so the two really compete for every batch
        await wait_until(
            lambda: all(worker.started() for worker in pair),
            timeout=STARTUP,
            interval=0.02,
            message="both workers to start",
        )
        ids = await app.enqueue_many("timed", [{"n": n} for n in range(jobs)])

        async def finished() -> bool:
            for worker in pair:
                worker.check_alive()
            return await pending(app, ["timed"]) == 0

        await wait_until(finished, timeout=SETTLE, interval=0.05, message="every job to complete")
        for worker in pair:
            assert await worker.terminate(timeout=30) == 0, worker.output()
        assert await app.dead_letters("timed").list() == []

    runs: dict[str, list[tuple[float, float, int]]] = defaultdict(list)
    for line in read_records(records):
        if line["kind"] == "timed":
            runs[line["job"]].append((line["start"], line["end"], line["pid"]))
    assert set(runs) == set(ids)
    overlapping = {
        job: spans
        for job, spans in runs.items()
        if any(later[0] < earlier[1] for earlier, later in pairwise(sorted(spans)))
    }
    assert overlapping == {}, f"jobs run by two holders at once: {overlapping}"
    # no crash, no failure and a lease far longer than the handler: nothing may run twice either
    twice = {job: spans for job, spans in runs.items() if len(spans) > 1}
    assert twice == {}, f"jobs run more than once while every lease was valid: {twice}"
    assert {pid for spans in runs.values() for _, _, pid in spans} == {w.pid for w in pair}


async def test_sigterm_releases_unfinished_jobs_without_spending_an_attempt(
    durable_url: str, tmp_path: Path, workers: Workers
) -> None:
    records = tmp_path / "records.jsonl"
    settings = Settings(backend=durable_url, records=str(records), shutdown_grace=0.5)
    app = build_app(settings)
    async with app:
        job_id = await app.enqueue("block", {"n": 1})
        worker = workers.start(settings)

        def blocking() -> bool:
            worker.check_alive()
            return any(line["kind"] == "block_started" for line in read_records(records))

        await wait_until(blocking, timeout=STARTUP, interval=0.02, message="the job to start")
        # well before the handler's own end (BLOCK_SECONDS): the grace period cut it short
        assert await worker.terminate(timeout=BLOCK_SECONDS / 2) == 0, worker.output()
        assert [line["kind"] for line in read_records(records)] == ["block_started"]

        # given back at once: the 60 s lease of the attempt it was running no longer holds it
        [stats] = await app.stats(["block"])
        assert (stats.ready, stats.leased, stats.scheduled) == (1, 0, 0)
        leased = await app.backend.lease({"block": 60.0}, 10, app.clock.now())
        assert [(job.id, job.attempt) for job in leased] == [(job_id, 1)]


async def _started(worker: WorkerProcess, records: Path, kind: str) -> None:
    def started() -> bool:
        worker.check_alive()
        return any(line["kind"] == kind for line in read_records(records))

    await wait_until(started, timeout=STARTUP, interval=0.02, message=f"a {kind} record")


async def _released_unspent(app: App, queue: str, job_id: str) -> None:
    """The job is ready again at once, and its next lease is attempt 1 again: no attempt spent."""
    [stats] = await app.stats([queue])
    assert (stats.ready, stats.leased, stats.scheduled) == (1, 0, 0)
    leased = await app.backend.lease({queue: 60.0}, 10, app.clock.now())
    assert [(job.id, job.attempt) for job in leased] == [(job_id, 1)]


async def test_sigterm_exits_after_the_grace_although_a_handler_ignores_cancellation(
    durable_url: str, tmp_path: Path, workers: Workers
) -> None:
    records = tmp_path / "records.jsonl"
    grace = 0.5
    settings = Settings(backend=durable_url, records=str(records), shutdown_grace=grace)
    app = build_app(settings)
    async with app:
        job_id = await app.enqueue("stubborn", {"n": 1})
        worker = workers.start(settings)
        await _started(worker, records, "stubborn_started")
        began = time.monotonic()
        # grace, then CANCEL_GRACE for the handler and LEFTOVER_GRACE for the loop, and a margin
        # for a busy machine; far below BLOCK_SECONDS, when the handler would end by itself
        assert await worker.terminate(timeout=grace + CANCEL_GRACE + LEFTOVER_GRACE + 5) == 0, worker.output()
        took = time.monotonic() - began
        assert grace <= took < BLOCK_SECONDS / 3, worker.output()
        assert "ignore cancellation" in worker.output()
        assert [line["kind"] for line in read_records(records)] == ["stubborn_started"]
        await _released_unspent(app, "stubborn", job_id)


@pytest.mark.parametrize("second", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_second_signal_releases_running_jobs_and_exits_at_once(
    durable_url: str, tmp_path: Path, workers: Workers, second: signal.Signals
) -> None:
    records = tmp_path / "records.jsonl"
    settings = Settings(backend=durable_url, records=str(records), shutdown_grace=BLOCK_SECONDS * 10)
    app = build_app(settings)
    async with app:
        blocked = await app.enqueue("block", {"n": 1})
        stubborn = await app.enqueue("stubborn", {"n": 2})
        worker = workers.start(settings)
        await _started(worker, records, "block_started")
        await _started(worker, records, "stubborn_started")
        worker.process.send_signal(signal.SIGTERM)
        await wait_until(
            lambda: "waiting up to" in worker.output(),
            timeout=STARTUP,
            interval=0.02,
            message="the worker to begin its grace period",
        )
        worker.process.send_signal(second)
        await wait_until(
            lambda: worker.process.poll() is not None,
            timeout=FORCED_EXIT_AFTER + LEFTOVER_GRACE + 5,
            interval=0.02,
            message="the worker to exit after a second signal",
        )
        assert worker.process.returncode == 1, worker.output()
        kinds = sorted(line["kind"] for line in read_records(records))
        assert kinds == ["block_started", "stubborn_started"]
        await _released_unspent(app, "block", blocked)
        await _released_unspent(app, "stubborn", stubborn)
