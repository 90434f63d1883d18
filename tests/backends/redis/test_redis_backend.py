"""What the Redis backend must do beyond the store contract: concurrent instances, lost scripts,
restarts with AOF, connection loss, pub/sub wake-ups, its key layout and its URL."""

from __future__ import annotations

import asyncio
import random
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from conveyor.backends import open_backend
from conveyor.backends.memory import MemoryBackend
from conveyor.backends.redis import RedisBackend
from conveyor.backends.redis import errors as redis_errors
from conveyor.model.errors import BackendError, BackendUnavailableError, ConfigurationError
from conveyor.ports import (
    Backend,
    Commit,
    CommitStatus,
    Effects,
    ErrorInfo,
    HistoryEntry,
    NewEvent,
    NewJob,
    Outcome,
    Settlement,
    StateOp,
    StateWrite,
    WorkerInfo,
)
from conveyor.testing.differential import QUEUES, ROUTES, Scenario
from tests.conftest import IN_CI
from tests.helpers import LEASE, T0, enqueue, new_jobs

DURABLE_PORT = 6390
FLAKY_PORT = 6391
LOCKED_PORT = 6392


async def keys_of(client: Redis, prefix: str) -> set[str]:
    return {key.decode() async for key in client.scan_iter(match=f"{prefix}:*", count=1000)}


# concurrency


async def test_batches_larger_than_lua_unpack_limits_go_through(backend: RedisBackend) -> None:
    jobs = new_jobs(5_000)
    [result] = await backend.commit(enqueue(*jobs), T0)
    assert result.job_ids == tuple(job.id for job in jobs)
    leased = await backend.lease(LEASE, 5_000, T0)
    assert [job.id for job in leased] == [job.id for job in jobs]
    results = await backend.commit([Commit(Settlement(j.id, j.token, Outcome.ACK)) for j in leased], T0)
    assert {r.status for r in results} == {CommitStatus.OK}
    [stats] = await backend.stats(["q"], T0)
    assert (stats.ready, stats.leased) == (0, 0)


async def same_batch_scenario(backend: Backend) -> list[object]:
    """Commits in one batch that see each other's writes: acks, a duplicate, a re-enqueue, a cancel."""
    await backend.commit(enqueue(NewJob("a", "q", b"1", T0, T0, "key"), *new_jobs(1)), T0)
    a, b = await backend.lease(LEASE, 10, T0)
    results = await backend.commit(
        [
            Commit(Settlement("a", a.token, Outcome.ACK)),
            Commit(Settlement("a", a.token, Outcome.ACK)),
            Commit(effects=Effects(jobs=[NewJob("a", "q", b"2", T0, T0)])),
            Commit(Settlement(b.id, b.token, Outcome.RETRY, available_at=T0)),
            Commit(Settlement(b.id, b.token, Outcome.ACK)),
            Commit(effects=Effects(jobs=[NewJob("c", "q", b"3", T0, T0, "key")])),
            Commit(effects=Effects(cancels=[("q", "key")])),
        ],
        T0,
    )
    leased = await backend.lease(LEASE, 10, T0)
    stats = await backend.stats(["q"], T0)
    return [[(r.status, r.job_ids) for r in results], [(j.id, j.body, j.attempt) for j in leased], stats]


async def test_commits_of_one_batch_see_each_other_like_the_memory_backend(
    backend: RedisBackend,
) -> None:
    reference = MemoryBackend()
    assert await same_batch_scenario(backend) == await same_batch_scenario(reference)


async def test_lease_takes_the_oldest_across_many_queues_and_expired_leases(
    backend: RedisBackend,
) -> None:
    rng = random.Random(7)
    times = rng.sample(range(10_000), 300)
    jobs = [NewJob(f"j{n:03d}", f"q{n % 5}", b"{}", T0 + t / 100, T0) for n, t in enumerate(times)]
    await backend.commit(enqueue(*jobs), T0)
    queues = {f"q{n}": 10.0 + n for n in range(5)}
    first = await backend.lease(queues, 40, T0 + 30)
    due_first = sorted((j for j in jobs if j.available_at <= T0 + 30), key=lambda j: j.available_at)
    assert [j.id for j in first] == [j.id for j in due_first[:40]]
    # the 40 leases expire at T0 + 40..44 and come back among the waiting jobs, by deadline
    available = {j.id: (j.available_at, j.id, j.queue, 1) for j in jobs}
    for j in first:
        available[j.id] = (j.lease_deadline, j.id, j.queue, 2)
    expected = [(i, q, attempt) for _, i, q, attempt in sorted(available.values())]
    leased: list[tuple[str, str, int]] = []
    for limit in (1, 7, 50, 500):
        batch = await backend.lease(queues, limit, T0 + 200)
        assert len(batch) == min(limit, 300 - len(leased))
        leased += [(j.id, j.queue, j.attempt) for j in batch]
    assert leased == expected


async def test_expired_lease_counts_as_leased_until_leased_again(backend: RedisBackend) -> None:
    await backend.commit(enqueue(*new_jobs(2)), T0)
    await backend.lease({"q": 10.0}, 1, T0)
    [stats] = await backend.stats(["q"], T0 + 20)
    assert (stats.ready, stats.scheduled, stats.leased) == (1, 0, 1)
    assert [j.id for j in await backend.lease({"q": 10.0}, 10, T0 + 20)] == ["job-00001", "job-00000"]


async def test_prune_and_purge_work_through_more_than_one_batch(backend: RedisBackend) -> None:
    entries = [HistoryEntry(f"wf-{n}", T0 + n % 2, "enqueued", "q") for n in range(250)]
    await backend.commit([Commit(effects=Effects(history=entries))], T0)
    assert await backend.prune_history(T0 + 1) == 125
    assert await backend.history("wf-0") == [] and len(await backend.history("wf-1")) == 1

    await backend.commit(enqueue(*new_jobs(1_200)), T0)
    leased = await backend.lease(LEASE, 1_200, T0)
    error = ErrorInfo("E", "m")
    await backend.commit([Commit(Settlement(j.id, j.token, Outcome.DEAD, error=error)) for j in leased], T0)
    assert (await backend.stats(["q"], T0))[0].dead == 1_200
    assert await backend.purge(None, queue="q") == 1_200
    assert await backend.dead_letters(None) == []


# scripts


async def test_calls_still_work_after_redis_forgets_the_scripts(backend: RedisBackend, url: str) -> None:
    client = Redis.from_url(url.split("?", maxsplit=1)[0])
    try:
        await client.script_flush()
        [result] = await backend.commit(enqueue(*new_jobs(3)), T0)
        assert result.status is CommitStatus.OK
        await client.script_flush()
        assert len(await backend.lease(LEASE, 10, T0)) == 3
    finally:
        await client.aclose()


# wake-ups


async def test_waiting_instance_wakes_when_another_instance_commits(url: str) -> None:
    waiter, producer = RedisBackend(url), RedisBackend(url)
    await asyncio.gather(waiter.connect(), producer.connect())
    try:
        await waiter.wait_for_jobs(["q"], 5.0)  # the first wait subscribes and returns at once
        assert await waiter.lease(LEASE, 10, T0) == []
        waiting = asyncio.create_task(waiter.wait_for_jobs(["q"], 30.0))
        await asyncio.sleep(0)
        assert not waiting.done()
        await producer.commit(enqueue(*new_jobs(1)), T0)
        await asyncio.wait_for(waiting, 10.0)
        assert len(await waiter.lease(LEASE, 10, T0)) == 1
    finally:
        await asyncio.gather(waiter.close(), producer.close())


async def test_wait_returns_at_once_after_this_instance_enqueues(backend: RedisBackend) -> None:
    await backend.wait_for_jobs(["q"], 5.0)
    waiting = asyncio.create_task(backend.wait_for_jobs(["q"], 30.0))
    await asyncio.sleep(0)
    await backend.commit(enqueue(*new_jobs(1)), T0)
    await asyncio.wait_for(waiting, 1.0)


async def test_own_notifications_are_not_heard_twice(url: str) -> None:
    # A commit whose lease took every due job wakes nobody here, and its PUBLISH, tagged with this
    # instance's sender id, is ignored; another instance's still wakes.
    backend, producer = RedisBackend(url), RedisBackend(url)
    await asyncio.gather(backend.connect(), producer.connect())
    try:
        await backend.wait_for_jobs(["q", "marker"], 5.0)  # the first wait subscribes
        _, jobs = await backend.commit_and_lease(enqueue(*new_jobs(1)), T0, LEASE, 5)
        assert [j.id for j in jobs] == ["job-00000"]
        await producer.commit(enqueue(NewJob("m", "marker", b"{}", T0, T0)), T0)
        notifier = backend._notifier
        assert notifier is not None
        async with asyncio.timeout(10):
            while "marker" not in notifier._pending:  # noqa: ASYNC110 (private state)
                await asyncio.sleep(0.01)
        # messages arrive in publish order: the own one came first and left no mark
        assert "q" not in notifier._pending
    finally:
        await asyncio.gather(backend.close(), producer.close())


async def test_wait_without_news_times_out(backend: RedisBackend) -> None:
    await backend.wait_for_jobs(["q"], 5.0)
    await asyncio.wait_for(backend.wait_for_jobs(["q"], 0.2), 5.0)


async def test_delayed_jobs_wake_nobody(url: str) -> None:
    waiter, producer = RedisBackend(url), RedisBackend(url)
    await asyncio.gather(waiter.connect(), producer.connect())
    try:
        await waiter.wait_for_jobs(["q"], 5.0)
        await producer.commit(enqueue(NewJob("later", "q", b"{}", T0 + 60, T0)), T0)
        await producer.commit(enqueue(NewJob("now", "other", b"{}", T0, T0)), T0)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(waiter.wait_for_jobs(["q"], 0.3), 5.0)
        assert loop.time() - started >= 0.25, "woken though nothing became due in q"
        [stats] = await waiter.stats(["q"], T0)
        assert stats.scheduled == 1
    finally:
        await asyncio.gather(waiter.close(), producer.close())


# key layout


async def test_every_key_lives_under_the_prefix_and_queue_keys_under_their_hash_tag(
    backend: RedisBackend, url: str
) -> None:
    prefix = backend.prefix
    await backend.register_subscriptions([("placed", "reserve")])
    [leasable] = new_jobs(1)
    await backend.commit(
        [
            Commit(
                effects=Effects(
                    jobs=[
                        leasable,
                        NewJob("keyed", "other", b"{}", T0, T0, "k1"),
                        NewJob("urgent", "other", b"{}", T0 + 60, T0, priority=3, lease_seconds=5.0),
                    ],
                    events=[NewEvent("e1", "placed", b"{}", T0)],
                    states=[StateWrite("s", StateOp.SET, b"v")],
                    history=[HistoryEntry("wf", T0, "enqueued", "other", "keyed")],
                )
            )
        ],
        T0,
    )
    [leased] = await backend.lease(LEASE, 1, T0)
    error = ErrorInfo("E", "m")
    await backend.commit([Commit(Settlement(leased.id, leased.token, Outcome.DEAD, error=error))], T0)
    await backend.pause("idle", T0)
    await backend.register_worker(WorkerInfo("host:1:w", "host", 1, ("q",), 4, T0, T0, 0))
    client = Redis.from_url(url.split("?", maxsplit=1)[0])
    try:
        keys = await keys_of(client, prefix)
    finally:
        await client.aclose()
    minute = int(T0 // 60 * 60)
    assert keys == {
        f"{prefix}:{{other}}:jobs",
        f"{prefix}:{{other}}:jobs:3",
        f"{prefix}:{{other}}:control",
        f"{prefix}:{{other}}:idem:k1",
        f"{prefix}:{{reserve}}:jobs",
        f"{prefix}:{{q}}:dead",
        f"{prefix}:{{q}}:counts",
        f"{prefix}:{{q}}:counts:{minute}",
        f"{prefix}:{{idle}}:control",
        f"{prefix}:paused",
        f"{prefix}:workers",
        f"{prefix}:worked",
        f"{prefix}:history:wf",
        f"{prefix}:history",
        f"{prefix}:jobhistory:keyed",
        f"{prefix}:job:keyed",
        f"{prefix}:job:urgent",
        f"{prefix}:job:e1:reserve",
        f"{prefix}:dead:job-00000",
        f"{prefix}:dead",
        f"{prefix}:token",
        f"{prefix}:events",
        f"{prefix}:sub:placed",
        f"{prefix}:state:s",
    }


async def test_a_random_run_leaves_only_documented_key_families(backend: RedisBackend, url: str) -> None:
    """Every key the differential scenario's random operations write is one of the documented families."""
    scenario = Scenario(99)
    now = T0
    await backend.register_subscriptions(ROUTES)
    for round_ in range(20):
        now += 31.0
        await backend.commit(scenario.commits(now, round_)[1], now)
        leased = await backend.lease({q: 10.0 for q in QUEUES}, 1000, now)
        scenario.remember(leased, leased)
    await backend.redrive([d.id for d in await backend.dead_letters(None, 2)], now)
    client = Redis.from_url(url.split("?", maxsplit=1)[0])
    try:
        keys = await keys_of(client, backend.prefix)
    finally:
        await client.aclose()
    families = {key.removeprefix(f"{backend.prefix}:").split(":")[0] for key in keys}
    documented = {"{q0}", "{q1}", "{q2}", "job", "dead", "token", "events", "sub", "state", "history"}
    documented |= {"jobhistory", "worked"}
    assert families <= documented


# URL and lifecycle


def test_options_come_from_the_url_and_keywords_win() -> None:
    backend = RedisBackend("redis://127.0.0.1:6379/0?prefix=app&idempotency_retention=60")
    assert (backend.prefix, backend.idempotency_retention) == ("app", 60.0)
    assert RedisBackend("redis://127.0.0.1:6379/0").prefix == "conveyor"
    chosen = RedisBackend("redis://h/0?prefix=app", prefix="other", idempotency_retention=5)
    assert (chosen.prefix, chosen.idempotency_retention) == ("other", 5.0)
    assert isinstance(open_backend("rediss://h/0"), RedisBackend)


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("redis://h/0?prefix=a{b}", {}),
        ("redis://h/0?idempotency_retention=x", {}),
        ("redis://h/0", {"prefix": ""}),
    ],
)
def test_bad_options_are_configuration_errors(url: str, options: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        RedisBackend(url, **options)  # type: ignore[arg-type]


async def test_driver_options_in_the_url_reach_redis_py(url: str) -> None:
    backend = RedisBackend(url + "&socket_timeout=7&max_connections=3")
    await backend.connect()
    try:
        assert await backend.lease(LEASE, 1, T0) == []
        pool = backend._client.connection_pool
        assert pool.max_connections == 3
        assert pool.connection_kwargs["socket_timeout"] == 7.0
    finally:
        await backend.close()


async def test_sockets_time_out_by_default(backend: RedisBackend) -> None:
    """A silent network partition surfaces as BackendUnavailableError instead of a hang."""
    assert await backend.lease(LEASE, 1, T0) == []
    kwargs = backend._client.connection_pool.connection_kwargs
    assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (30.0, 5.0)


async def test_unknown_url_option_is_a_configuration_error_at_connect(url: str) -> None:
    with pytest.raises(ConfigurationError, match="bogus"):
        await RedisBackend(url + "&bogus=1").connect()


def test_error_messages_do_not_show_the_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        RedisBackend("redis://user:s3cret@h/0?idempotency_retention=soon")
    assert "s3cret" not in str(caught.value) and "user:***@h" in str(caught.value)


@pytest.mark.parametrize(
    ("error", "translated"),
    [
        (RedisConnectionError("refused"), BackendUnavailableError),
        (RedisTimeoutError("slow"), BackendUnavailableError),
        (BusyLoadingError("loading"), BackendUnavailableError),
        (ReadOnlyError("replica"), BackendUnavailableError),
        (ResponseError("BUSY Redis is busy running a script"), BackendUnavailableError),
        (AuthenticationError("invalid password"), BackendError),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), BackendError),
    ],
)
def test_driver_errors_are_translated(error: Exception, translated: type[BackendError]) -> None:
    with pytest.raises(translated) as caught, redis_errors.translated():
        raise error
    assert type(caught.value) is translated and caught.value.__cause__ is error


async def test_use_before_connect_is_a_clear_error() -> None:
    with pytest.raises(BackendError, match="connect"):
        await RedisBackend("redis://127.0.0.1:6379/0").lease(LEASE, 1, T0)


async def test_unreachable_redis_is_unavailable_at_connect() -> None:
    backend = RedisBackend(f"redis://127.0.0.1:{FLAKY_PORT + 10}/0?socket_connect_timeout=1")
    with pytest.raises(BackendUnavailableError):
        await backend.connect()


# restarts and outages, against Redis servers of our own


class RedisServer:
    """A ``redis-server`` child process on ``port`` with ``directory`` as its data directory."""

    def __init__(self, port: int, directory: Path, *options: str) -> None:
        self.port, self.directory, self.options = port, directory, options
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self, password: str | None = None) -> None:
        with (self.directory / "redis.log").open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", *self.options,
                stdout=log, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
        client = Redis.from_url(self.url, socket_connect_timeout=0.5, password=password)
        try:
            for _ in range(200):  # up to ~10 s, AOF loading included
                assert self.process.returncode is None, (self.directory / "redis.log").read_text()
                try:
                    if await client.ping():
                        return
                except RedisError:
                    await asyncio.sleep(0.05)
            raise AssertionError(f"redis-server on port {self.port} never answered PING")
        finally:
            await client.aclose()

    async def shutdown(self) -> None:
        """A clean SHUTDOWN: the AOF is flushed and fsynced before the process exits."""
        client = Redis.from_url(self.url)
        try:
            await client.shutdown()
        except RedisConnectionError:
            pass  # the server closes the connection as it goes
        finally:
            await client.aclose()
        await self.wait()

    async def terminate(self) -> None:
        assert self.process is not None
        self.process.terminate()
        await self.wait()

    async def wait(self) -> None:
        assert self.process is not None
        await asyncio.wait_for(self.process.wait(), 10)

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.wait()


@pytest.fixture
def server_binary() -> None:
    if shutil.which("redis-server") is None:
        if IN_CI:
            pytest.fail("redis-server is not installed (CI=true: these tests must run)")
        pytest.skip("redis-server is not installed")


@pytest.fixture
async def durable_server(server_binary: None, tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(DURABLE_PORT, tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    try:
        yield server
    finally:
        await server.kill()


@pytest.fixture
async def flaky_server(server_binary: None, tmp_path: Path) -> AsyncIterator[RedisServer]:
    server = RedisServer(FLAKY_PORT, tmp_path, "--appendonly", "no")
    try:
        yield server
    finally:
        await server.kill()


@pytest.mark.slow
async def test_everything_committed_survives_a_restart_with_aof(durable_server: RedisServer) -> None:
    await durable_server.start()
    url = f"{durable_server.url}?prefix=durable"
    backend = RedisBackend(url)
    await backend.connect()
    try:
        await backend.register_subscriptions([("placed", "reserve")])
        for start in range(0, 1_000, 250):
            await backend.commit(enqueue(*new_jobs(1_000)[start : start + 250]), T0)
        await backend.commit(
            [Commit(effects=Effects(states=[StateWrite("order-1", StateOp.SET, b"paid")]))], T0
        )
    finally:
        await backend.close()
    await durable_server.shutdown()
    assert list((durable_server.directory).rglob("*.aof")), "the AOF was written"

    await durable_server.start()
    backend = RedisBackend(url)
    await backend.connect()
    try:
        assert await backend.subscriptions() == [("placed", "reserve")]
        assert (await backend.get_states(["order-1"]))["order-1"].value == b"paid"
        leased = await backend.lease(LEASE, 2_000, T0)
        assert sorted(job.id for job in leased) == [job.id for job in new_jobs(1_000)]
    finally:
        await backend.close()


@pytest.mark.slow
async def test_lost_connection_is_unavailable_and_the_same_instance_recovers(
    flaky_server: RedisServer,
) -> None:
    await flaky_server.start()
    backend = RedisBackend(f"{flaky_server.url}?prefix=flaky&socket_connect_timeout=1")
    other = RedisBackend(f"{flaky_server.url}?prefix=flaky")
    await backend.connect()
    try:
        await backend.wait_for_jobs(["q"], 5.0)  # subscribe, so the listener must recover too
        await backend.commit(enqueue(*new_jobs(1)), T0)
        assert len(await backend.lease(LEASE, 10, T0)) == 1

        await flaky_server.terminate()
        with pytest.raises(BackendUnavailableError):
            await backend.lease(LEASE, 10, T0)
        with pytest.raises(BackendUnavailableError):
            await backend.commit(enqueue(*new_jobs(1)), T0)
        await asyncio.wait_for(backend.wait_for_jobs(["q"], 0.2), 5.0)  # waits, does not raise

        await flaky_server.start()  # empty: no persistence, and no scripts loaded
        [result] = await backend.commit(enqueue(*new_jobs(2)), T0)
        assert result.status is CommitStatus.OK
        assert len(await backend.lease(LEASE, 10, T0)) == 2

        # the wake-up subscription comes back on its own
        channel = backend._key("q", "notify")
        client = Redis.from_url(flaky_server.url)
        try:
            for _ in range(100):  # up to ~10 s
                [(_, subscribers)] = await client.pubsub_numsub(channel)
                if subscribers:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the notification listener never subscribed again")
        finally:
            await client.aclose()
        await other.connect()
        for _ in range(10):  # the listener may wake us once, spuriously, after the outage
            await backend.lease(LEASE, 10, T0)
            waiting = asyncio.create_task(backend.wait_for_jobs(["q"], 30.0))
            await asyncio.sleep(0.05)
            if not waiting.done():
                break
        await other.commit(enqueue(NewJob("after", "q", b"{}", T0, T0)), T0)
        await asyncio.wait_for(waiting, 10.0)
    finally:
        await asyncio.gather(backend.close(), other.close())


@pytest.mark.slow
async def test_wrong_password_is_not_mistaken_for_an_outage(server_binary: None, tmp_path: Path) -> None:
    server = RedisServer(LOCKED_PORT, tmp_path, "--appendonly", "no", "--requirepass", "secret")
    try:
        await server.start(password="secret")
        with pytest.raises(BackendError) as caught:
            await RedisBackend(f"redis://:wrong@127.0.0.1:{LOCKED_PORT}/0").connect()
        assert not isinstance(caught.value, BackendUnavailableError)
        backend = RedisBackend(f"redis://:secret@127.0.0.1:{LOCKED_PORT}/0")
        await backend.connect()
        await backend.close()
    finally:
        await server.kill()
