"""The NATS backend beyond the contract suites: server restarts and outages against nats-servers of
our own (ports 4230-4239), records larger than one message, the log's deduplication, its URL."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest

from conveyor.backends.nats import NatsBackend, records
from conveyor.model.errors import BackendUnavailableError, ConfigurationError
from conveyor.ports import Commit, CommitStatus, Effects, NewJob, Outcome, Settlement, StateOp, StateWrite
from conveyor.testing import running, wait_until
from tests.conftest import IN_CI, drop, fresh_url
from tests.e2e.crash_app import Settings, build_app
from tests.helpers import LEASE, T0, connected, enqueue, new_jobs

PORT = 4230
"""Of this suite's range (4230-4239): one server at a time, each test its own store directory."""


class NatsServer:
    """A ``nats-server -js`` child process on ``port`` storing its streams in ``directory``."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port, self.directory = port, directory
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    async def start(self) -> None:
        with (self.directory / "nats.log").open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                "nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js",
                "-sd", str(self.directory / "store"),
                stdout=log, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        for _ in range(200):  # up to ~10 s, JetStream's recovery of its streams included
            assert self.process.returncode is None, (self.directory / "nats.log").read_text()
            try:
                client = await nats.connect(self.url, connect_timeout=0.5, allow_reconnect=False)
            except Exception:
                await asyncio.sleep(0.05)
                continue
            try:
                await client.jetstream().account_info()
                return
            except Exception:
                await asyncio.sleep(0.05)
            finally:
                await client.close()
        raise AssertionError(f"nats-server on port {self.port} never served JetStream")

    async def kill(self) -> None:
        """kill -9: nothing is flushed on the way out."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await asyncio.wait_for(self.process.wait(), 10)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[NatsServer]:
    if shutil.which("nats-server") is None:
        if IN_CI:
            pytest.fail("nats-server is not installed (CI=true: these tests must run)")
        pytest.skip("nats-server is not installed")
    own = NatsServer(PORT, tmp_path)
    try:
        yield own
    finally:
        await own.kill()


def state(key: str, value: bytes) -> Commit:
    return Commit(effects=Effects(states=[StateWrite(key, StateOp.SET, value)]))


@pytest.mark.slow
async def test_everything_acknowledged_survives_a_kill_9_of_the_server(server: NatsServer) -> None:
    await server.start()
    url = f"{server.url}?prefix=durable"
    async with connected(NatsBackend(url)) as backend:
        await backend.register_subscriptions([("placed", "reserve")])
        for start in range(0, 1_000, 250):
            await backend.commit(enqueue(*new_jobs(1_000)[start : start + 250]), T0)
        await backend.commit([state("order-1", b"paid")], T0)
    await server.kill()

    await server.start()
    async with connected(NatsBackend(url)) as backend:
        assert await backend.subscriptions() == [("placed", "reserve")]
        assert (await backend.get_states(["order-1"]))["order-1"].value == b"paid"
        leased = await backend.lease(LEASE, 2_000, T0)
        assert sorted(job.id for job in leased) == [job.id for job in new_jobs(1_000)]


@pytest.mark.slow
async def test_an_instance_rides_out_a_server_restart_and_an_outage_is_unavailable(
    server: NatsServer,
) -> None:
    await server.start()
    url = f"{server.url}?prefix=restart&publish_timeout=1"
    async with connected(NatsBackend(url)) as backend, connected(NatsBackend(url)) as other:
        await backend.commit(enqueue(*new_jobs(2)), T0)
        [first] = await backend.lease(LEASE, 1, T0)

        await server.kill()
        with pytest.raises(BackendUnavailableError):
            await backend.commit(enqueue(NewJob("lost?", "q", b"{}", T0, T0)), T0)
        await server.start()

        # the same instances go on: the leased job is still leased, the other one still waits
        [result] = await backend.commit([Commit(Settlement(first.id, first.token, Outcome.ACK))], T0)
        assert result.status is CommitStatus.OK
        await wait_until(lambda: other._log.applied >= backend._log.applied, timeout=15)
        # a record in doubt (its publish gave up) may still have been stored after all (nats-py
        # sends what it buffered when it reconnects): then once, as any other
        rest = [job.id for job in await other.lease(LEASE, 10, T0)]
        assert rest in (["job-00001"], ["job-00001", "lost?"], ["lost?", "job-00001"])


@pytest.mark.slow
async def test_workers_reconnect_after_a_server_restart_and_commit_every_effect_once(
    server: NatsServer, tmp_path: Path
) -> None:
    await server.start()
    jobs = 200
    settings = Settings(backend=f"{server.url}?prefix=working", records=str(tmp_path / "records.jsonl"))
    app = build_app(settings)
    keys = [f"{prefix}:{n}" for prefix in ("done", "seen", "after") for n in range(jobs)]

    async def committed(wanted: int) -> bool:
        try:
            return len(await app.backend.get_states(keys)) >= wanted
        except BackendUnavailableError:  # while the server is down
            return False

    async with running(app):
        await app.enqueue_many("work", [{"n": n} for n in range(jobs)])
        await wait_until(lambda: committed(60), timeout=30, message="some effects committed")
        before = len(await app.backend.get_states(keys))
        await server.kill()
        assert before < len(keys), "the server went down with work left"
        await server.start()
        await wait_until(lambda: committed(len(keys)), timeout=60, message="every effect")
        states = await app.backend.get_states(keys)
        assert await app.dead_letters().list() == []
    assert {key: s.version for key, s in states.items() if s.version != 1} == {}, "an effect twice"


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    """A fresh prefix on the shared server."""
    url = fresh_url("nats", tmp_path)
    yield url
    drop(url)


async def test_a_record_larger_than_a_message_is_applied_whole(nats_url: str) -> None:
    body = b"x" * 100_000
    jobs = [NewJob(f"big-{i:02d}", "q", body, T0, T0) for i in range(30)]  # 3 MB: four parts
    async with connected(NatsBackend(nats_url)) as backend:
        [result] = await backend.commit(enqueue(*jobs), T0)
        assert result.status is CommitStatus.OK and len(result.job_ids) == 30
        async with connected(NatsBackend(nats_url)) as replayed:
            leased = await replayed.lease(LEASE, 100, T0)
            assert sorted(job.id for job in leased) == [job.id for job in jobs]
            assert all(job.body == body for job in leased)


def test_records_carry_bodies_and_times_exactly() -> None:
    commit = Commit(
        Settlement("j", 7, Outcome.RETRY, T0 + 0.1),
        Effects(jobs=[NewJob("n", "q", b"\x00\xff\n", T0 / 3, T0, "key", 5, 1.5)]),
    )
    command, (decoded, now) = records.decode(records.encode("commit", ([commit], T0 / 7)))
    assert command == "commit" and now == T0 / 7 and decoded == [commit]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("nats://127.0.0.1:4222?prefix=a.b", "must be letters"),
        ("nats://127.0.0.1:4222?publish_timeout=200", "shorter than duplicate_window"),
        ("nats://127.0.0.1:4222?replicas=three", "not a number"),
    ],
)
def test_url_options_are_checked(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        NatsBackend(url)


async def test_snapshots_purge_the_log_and_a_new_instance_starts_from_the_newest(nats_url: str) -> None:
    url = f"{nats_url}&snapshot_every=20"
    async with connected(NatsBackend(url)) as backend:
        await backend.commit([state("order-1", b"paid")], T0)
        for job in new_jobs(100):  # a record each: five snapshot intervals
            await backend.commit(enqueue(job), T0)
        [leased] = await backend.lease(LEASE, 1, T0)
        log = backend._log
        await wait_until(lambda: not log._tasks, message="the snapshots stored")
        info = await log._js.stream_info(log.stream)
        assert info.state.first_seq > 60, "the records before the previous snapshot were purged"
        async with connected(NatsBackend(url)) as fresh:
            assert fresh._log.applied == log.applied
            assert (await fresh.get_states(["order-1"]))["order-1"].value == b"paid"
            assert await fresh.stats(["q"], T0) == await backend.stats(["q"], T0)
            [result] = await fresh.commit([Commit(Settlement(leased.id, leased.token, Outcome.ACK))], T0)
            assert result.status is CommitStatus.OK, "the lease's token survived the snapshot"
            rest = await backend.lease(LEASE, 200, T0)
            assert len(rest) == 99


async def test_an_instance_behind_the_purged_records_restores_the_newest_snapshot(nats_url: str) -> None:
    url = f"{nats_url}&snapshot_every=10"
    async with connected(NatsBackend(url)) as ahead, connected(NatsBackend(url)) as behind:
        await behind._log._subscription.unsubscribe()  # it stops applying here
        stopped_at = behind._log.applied
        for job in new_jobs(60):
            await ahead.commit(enqueue(job), T0)
        await wait_until(lambda: not ahead._log._tasks, message="the snapshots stored")
        await behind._log._subscribe(stopped_at)  # it reads on from where it stood: purged
        assert len(await behind.lease(LEASE, 100, T0)) == 60
