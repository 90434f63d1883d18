"""App: services wired to a backend, resources and a clock. The entry point of everything."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any

import orjson
from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from conveyor.backends import open_backend
from conveyor.definitions.registry import Registry
from conveyor.definitions.service import Service
from conveyor.model.errors import (
    ConfigurationError,
    ConveyorError,
    EnqueueIncompleteError,
)
from conveyor.model.lifecycle import Seconds, seconds
from conveyor.model.text import require_storable
from conveyor.observability.metrics import QUEUE, Metrics
from conveyor.observability.tracing import Tracing
from conveyor.operations.dead_letters import DeadLetters
from conveyor.operations.health import HealthReport, HealthThresholds, check_health
from conveyor.operations.status import Workflow, Workflows
from conveyor.ports import (
    Backend,
    Commit,
    CommitResult,
    CommitStatus,
    Effects,
    QueueStats,
    StateOp,
    StateWrite,
    TransactionalOutbox,
)
from conveyor.runtime import approval
from conveyor.runtime.clock import Clock, SystemClock
from conveyor.runtime.committer import not_applied, rejection
from conveyor.runtime.context import encode_state, run_command
from conveyor.runtime.loop import run_to_end
from conveyor.runtime.messages import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    MessageFactory,
    Origin,
    available_at,
    check_names,
    jsonable,
    jsonable_many,
)
from conveyor.runtime.runtime import Runtime
from conveyor.runtime.scheduler import Scheduler
from conveyor.runtime.worker import Worker, WorkerConfig

logger = logging.getLogger("conveyor")

DEFAULT_BACKEND = "sqlite:///conveyor.db"
FORCED_EXIT_AFTER = 3.0
"""After a second SIGTERM/SIGINT, the longest the release of running jobs may take before the
process exits without it (a third signal exits at once)."""
DEFAULT_HISTORY_RETENTION = 7 * 24 * 3600.0
MAINTENANCE_INTERVAL = 3600.0
ENQUEUE_BATCH = 250
"""Jobs per commit in :meth:`App.enqueue_many`. Small enough that the next batch is encoded while
the backend stores the previous one; big enough that a round trip carries plenty of jobs."""
ENQUEUE_IN_FLIGHT = 4
"""Batches of one :meth:`App.enqueue_many` call being stored at once."""
UNDECLARED_QUEUES_INTERVAL = 300.0
"""How often a worker's metrics look for jobs in queues no service declares (seconds)."""


class AppStates:
    """``app.states``: the state store outside handlers; every write commits at once."""

    def __init__(self, app: App) -> None:
        self._app = app

    async def get(self, key: str, default: Any = None) -> Any:
        require_storable(key, "state key")
        record = (await self._app.backend.get_states([key])).get(key)
        return default if record is None else orjson.loads(record.value)

    async def get_versioned(self, key: str) -> tuple[Any, int]:
        require_storable(key, "state key")
        record = (await self._app.backend.get_states([key])).get(key)
        return (None, 0) if record is None else (orjson.loads(record.value), record.version)

    async def _write(self, write: StateWrite) -> bool:
        [result] = await self._app.backend.commit(
            [Commit(effects=Effects(states=[write]))], self._app.clock.now()
        )
        if result.status is CommitStatus.REJECTED:
            raise rejection(result)
        return result.status is CommitStatus.OK

    async def set(self, key: str, value: Any) -> None:
        """Write ``value`` (JSON: no NaN, ±Infinity or lone surrogate) at ``key`` (no NUL, no lone
        surrogate); both are checked here, before anything is written."""
        await self._write(StateWrite(key, StateOp.SET, encode_state(value, key)))

    async def delete(self, key: str) -> None:
        require_storable(key, "state key")
        await self._write(StateWrite(key, StateOp.DELETE))

    async def compare_and_set(self, key: str, value: Any, version: int) -> bool:
        """Write if the stored version is ``version`` (0: absent). False when another writer won."""
        return await self._write(
            StateWrite(key, StateOp.SET, encode_state(value, key), expected_version=version)
        )


class App:
    """Services wired to a backend.

    >>> # app = App([orders], backend="sqlite:///conveyor.db", resources={"inventory": Inventory()})
    >>> # async with app:
    >>> #     await app.enqueue("validate_inventory", {...})

    ``backend`` is a URL (``memory://``, ``sqlite:///path``, ``redis://…``, ``postgresql://…``) or a
    backend object. ``clock`` is injectable for tests (see :class:`conveyor.testing.FakeClock`).
    ``external_queues`` names the queues another app serves that this one enqueues to: any other
    queue no service declares is refused with :class:`UnknownQueueError`.
    """

    def __init__(
        self,
        services: Iterable[Service],
        backend: str | Backend = DEFAULT_BACKEND,
        *,
        resources: Mapping[str, Any] | None = None,
        clock: Clock | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        history: bool = True,
        history_retention: Seconds | None = DEFAULT_HISTORY_RETENTION,
        tracing: bool | None = None,
        tracer_provider: TracerProvider | None = None,
        metrics: bool | None = None,
        meter_provider: MeterProvider | None = None,
        worker: WorkerConfig | None = None,
        workflows: Iterable[Workflow] = (),
        external_queues: Iterable[str] = (),
    ) -> None:
        self.registry = Registry(services, external_queues, gate_timer=approval.fire_timeout)
        self.backend: Backend = open_backend(backend) if isinstance(backend, str) else backend
        self.clock: Clock = clock or SystemClock()
        self.worker_config = worker or WorkerConfig()
        self.runtime = Runtime(
            backend=self.backend,
            registry=self.registry,
            clock=self.clock,
            resources=resources or {},
            messages=MessageFactory(max_payload_bytes, history=history),
            tracer=Tracing(tracing, tracer_provider),
            metrics=Metrics(metrics, meter_provider),
        )
        self.history_retention = None if history_retention is None else seconds(history_retention)
        self.states = AppStates(self)
        self._connected = 0
        self._workers: list[Worker] = []
        self._scheduler: Scheduler | None = None
        self.workflows = Workflows(self.runtime)
        self.workflows.declare(*workflows)

    # lifecycle

    async def __aenter__(self) -> App:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect the backend and register this app's subscriptions durably (re-entrant)."""
        self._connected += 1
        if self._connected > 1:
            return
        try:
            await self.backend.connect()
            self.runtime.tracer.activate()
            self.runtime.metrics.activate()
            routes = [(route.event, route.queue) for route in self.registry.routes]
            if routes:
                await self.backend.register_subscriptions(routes)
        except BaseException:
            self._connected -= 1
            raise

    async def close(self) -> None:
        self._connected -= 1
        if self._connected == 0:
            await self.backend.close()

    # producing

    async def enqueue(
        self,
        queue: str,
        payload: Any = None,
        *,
        delay: Seconds | None = None,
        run_at: datetime | float | None = None,
        idempotency_key: str | None = None,
        correlation_id: str | None = None,
        connection: Any = None,
        external: bool = False,
    ) -> str:
        """Store a job on ``queue`` and return its id (the first job's id on an idempotency-key hit).

        With ``connection`` (a psycopg ``AsyncConnection`` in a transaction, on the PostgreSQL
        backend) the job is written inside that transaction: the transactional outbox.
        A queue no service of this app declares raises :class:`UnknownQueueError`, unless it is
        in ``App(external_queues=...)`` or ``external=True`` says that another app serves it.
        """
        [job_id] = await self.enqueue_many(
            queue,
            [payload],
            delay=delay,
            run_at=run_at,
            idempotency_keys=[idempotency_key],
            correlation_id=correlation_id,
            connection=connection,
            external=external,
        )
        return job_id

    async def enqueue_many(
        self,
        queue: str,
        payloads: Iterable[Any],
        *,
        delay: Seconds | None = None,
        run_at: datetime | float | None = None,
        idempotency_keys: Sequence[str | None] | None = None,
        correlation_id: str | None = None,
        connection: Any = None,
        external: bool = False,
    ) -> list[str]:
        """Store many jobs on ``queue``; their ids, in order.

        Every payload is checked first (against the queue's model, and for what JSON cannot carry:
        NaN, ±Infinity, lone surrogates), with the idempotency keys and the correlation id (no NUL,
        no lone surrogate), so an invalid one raises before anything is stored. The
        jobs then go in batches of :data:`ENQUEUE_BATCH`, each stored atomically, several on the way
        at once. If one batch fails, :class:`EnqueueIncompleteError` says which jobs were stored
        (give the jobs idempotency keys to retry safely). With ``connection=`` the batches are
        written one after the other inside the caller's transaction, so all or none commit.
        ``external`` is as for :meth:`enqueue`.
        """
        runtime = self.runtime
        now = self.clock.now()
        when = available_at(now, delay, run_at)
        definition = self.registry.destination(queue, external=external)
        model = definition.payload if definition is not None and definition.accepts_payload else None
        data = jsonable_many(list(payloads), model, f"queue {queue!r}")
        keys = list(idempotency_keys) if idempotency_keys is not None else [None] * len(data)
        if len(keys) != len(data):
            raise ConfigurationError("idempotency_keys must have one entry per payload")
        check_names("queue name", queue, correlation_id, keys)  # all of them before any batch is stored
        ids: list[str] = []
        with runtime.tracer.produce("enqueue", queue):
            origin = Origin(trace=runtime.tracer.inject())
            batches: list[asyncio.Future[CommitResult]] = []
            failure: Exception | None = None
            try:
                for start in range(0, len(data), ENQUEUE_BATCH):
                    effects = Effects()
                    runtime.messages.add_jobs(
                        effects,
                        queue,
                        data[start : start + ENQUEUE_BATCH],
                        idempotency_keys=keys[start : start + ENQUEUE_BATCH],
                        origin=origin,
                        now=now,
                        available_at=when,
                        correlation_id=correlation_id,
                    )
                    if connection is not None:
                        ids.extend((await self._commit(effects, connection)).job_ids)
                        continue
                    on_the_way = [batch for batch in batches if not batch.done()]
                    if len(on_the_way) >= ENQUEUE_IN_FLIGHT:
                        await asyncio.wait(on_the_way, return_when=asyncio.FIRST_COMPLETED)
                    batches.append(asyncio.ensure_future(self._commit(effects)))
                    await asyncio.sleep(0)  # let the batch go out while the next one is encoded
            except Exception as exc:
                failure = exc
            results = await asyncio.gather(*batches, return_exceptions=True)
            for result in results:
                if isinstance(result, CommitResult):
                    ids.extend(result.job_ids)
                elif failure is None:
                    failure = result if isinstance(result, Exception) else ConveyorError(repr(result))
            if failure is not None:
                if not ids or connection is not None:  # in the caller's transaction: none will commit
                    raise failure
                raise EnqueueIncompleteError(
                    f"enqueue_many on {queue!r} failed after storing {len(ids)} of {len(data)} jobs: "
                    f"{type(failure).__name__}: {failure}",
                    ids,
                ) from failure
        if runtime.metrics.enabled:
            runtime.metrics.enqueued.add(len(ids), {QUEUE: queue})
        return ids

    async def emit(
        self, event: str, payload: Any = None, *, correlation_id: str | None = None, connection: Any = None
    ) -> str:
        """Publish ``event``: one job per subscription. ``correlation_id`` starts a workflow instance;
        ``connection`` writes it inside the caller's own transaction (see :meth:`enqueue`)."""
        runtime = self.runtime
        with runtime.tracer.produce("emit", event):
            effects = Effects()
            new = runtime.messages.add_event(
                effects,
                event,
                jsonable(payload, None, f"event {event!r}"),
                message_id=None,
                origin=Origin(trace=runtime.tracer.inject()),
                now=self.clock.now(),
                correlation_id=correlation_id,
            )
            result = await self._commit(effects, connection)
        if result.deliveries == 0:
            logger.warning("event %r (%s) has no subscription: nobody will receive it", event, new.id)
        return new.id

    async def _commit(self, effects: Effects, connection: Any = None) -> CommitResult:
        commits = [Commit(effects=effects)]
        if connection is None:
            [result] = await self.backend.commit(commits, self.clock.now())
        elif isinstance(self.backend, TransactionalOutbox):
            [result] = await self.backend.commit_in(connection, commits, self.clock.now())
        else:
            raise ConfigurationError(
                f"{type(self.backend).__name__} cannot write inside your transaction (connection=); "
                "the PostgreSQL backend can"
            )
        if (error := not_applied(result, "this write")) is not None:
            raise error
        return result

    async def invoke(self, command: str, payload: Any = None) -> Any:
        """Run ``command`` in this process and return its result; its effects commit on success."""
        return await run_command(self.runtime, command, payload)

    # operating

    def dead_letters(self, queue: str | None = None) -> DeadLetters:
        """The dead-letter queue of ``queue`` (all queues when None)."""
        return DeadLetters(self.backend, self.clock, queue)

    async def stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        """Counts of ``queues``; by default of every queue this app declares or names external,
        and of every other queue holding jobs (see :meth:`undeclared_queues`)."""
        names = list(queues) if queues is not None else await self._queues_to_report()
        return await self.backend.stats(names, self.clock.now())

    async def undeclared_queues(self) -> list[str]:
        """Queues holding jobs or dead letters that no service of this app declares and that are
        not in ``external_queues``: nothing of this app will ever run their jobs."""
        known = self.registry.known_queues
        return [name for name in await self.backend.queue_names() if name not in known]

    async def _queues_to_report(self) -> list[str]:
        return sorted(self.registry.known_queues | set(await self.backend.queue_names()))

    async def health(self, thresholds: HealthThresholds | None = None) -> HealthReport:
        """ok, warn (dead letters, backlog, old ready jobs) or fail (backend unreachable)."""
        return await check_health(self.backend, self.clock, self.registry.known_queues, thresholds)

    # running

    async def serve(
        self,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        scheduler: bool = True,
        ready: asyncio.Event | None = None,
    ) -> None:
        """Run workers and the scheduler until :meth:`stop` (graceful: see ``WorkerConfig``)."""
        config = self.worker_config
        if concurrency is not None:
            config = WorkerConfig(
                concurrency, config.poll_interval, config.shutdown_grace, config.commit_batch
            )
        names = list(queues) if queues is not None else sorted(self.registry.queues)
        definitions = [self.registry.queue(name) for name in names]
        async with self:
            worker = Worker(self.runtime, definitions, config)
            schedules = [d for d in definitions if d.schedule is not None] if scheduler else []
            self._scheduler = Scheduler(self.runtime, schedules)
            self._workers.append(worker)
            tasks = [
                asyncio.create_task(worker.run(), name="conveyor-worker"),
                asyncio.create_task(self._scheduler.run(), name="conveyor-scheduler"),
            ]
            helpers = [asyncio.create_task(self._maintain(), name="conveyor-maintenance")]
            if self.runtime.metrics.enabled:
                helpers.append(
                    asyncio.create_task(self._refresh_queue_metrics(names), name="conveyor-metrics")
                )
            if ready is not None:
                ready.set()
            try:
                await asyncio.gather(*tasks)
            finally:
                for task in tasks + helpers:
                    task.cancel()
                await asyncio.gather(*tasks, *helpers, return_exceptions=True)
                self._workers.remove(worker)

    @contextlib.asynccontextmanager
    async def serving(
        self,
        *,
        queues: Sequence[str] | None = None,
        concurrency: int | None = None,
        scheduler: bool = True,
    ) -> AsyncIterator[App]:
        """Serve in the background for the block: :meth:`serve` in a task, the block entered once
        it is ready, and a graceful :meth:`stop` on exit (the block waits for it).

        ``async with app.serving(): await app.enqueue(...)``. What stops ``serve`` from starting
        (an unknown queue, an unreachable backend) is raised here, before the block runs.
        """
        ready = asyncio.Event()
        task = asyncio.create_task(
            self.serve(queues=queues, concurrency=concurrency, scheduler=scheduler, ready=ready)
        )
        waiter = asyncio.ensure_future(ready.wait())
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            waiter.cancel()
            task.result()
        try:
            yield self
        finally:
            self.stop()
            await task

    async def _maintain(self) -> None:
        """Hourly: delete workflow history older than ``history_retention``."""
        while self.history_retention is not None:
            try:
                removed = await self.backend.prune_history(self.clock.now() - self.history_retention)
                if removed:
                    logger.info("pruned %d history entries older than %.0fs", removed, self.history_retention)
            except ConveyorError as exc:
                logger.warning("history pruning failed: %s", exc)
            await self.clock.sleep(MAINTENANCE_INTERVAL)

    async def _refresh_queue_metrics(self, names: list[str], every: float = 15.0) -> None:
        """Feed the queue gauges (depth, oldest age, dead letters) from a periodic stats query.

        The served queues, and the undeclared ones holding jobs, looked for every
        :data:`UNDECLARED_QUEUES_INTERVAL` (on Redis that look is a SCAN of the keyspace).
        """
        undeclared: list[str] = []
        looked_at: float | None = None
        while True:
            try:
                now = self.clock.now()
                if looked_at is None or now - looked_at >= UNDECLARED_QUEUES_INTERVAL:
                    undeclared, looked_at = await self.undeclared_queues(), now
                self.runtime.metrics.record_stats(
                    await self.backend.stats(names + undeclared, now), self.clock.now()
                )
            except ConveyorError as exc:
                logger.warning("queue metrics not refreshed: %s", exc)
            await self.clock.sleep(every)

    def stop(self, *, now: bool = False) -> None:
        """Ask running workers to stop gracefully (what SIGTERM does).

        ``now`` (what a second SIGTERM does): do not wait out the shutdown grace; cancel running
        handlers and release their jobs at once.
        """
        for worker in self._workers:
            worker.stop(now=now)
        if self._scheduler is not None:
            self._scheduler.stop()

    def run(self, *, queues: Sequence[str] | None = None, concurrency: int | None = None) -> None:
        """Blocking: serve until SIGTERM or SIGINT, then shut down gracefully.

        A second signal releases running jobs at once and exits with status 1; a third, or a
        release that takes over ``FORCED_EXIT_AFTER`` seconds, exits without waiting.
        """
        self._signals, self._forced_exit = 0, None
        run_to_end(self._run_with_signals(self.serve(queues=queues, concurrency=concurrency)))

    async def _run_with_signals(self, main: Awaitable[None]) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            # not available off the main thread or on some platforms
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal, sig)
        await main
        if self._forced_exit is not None:
            self._forced_exit.cancel()  # stopped in time: no exit from inside the loop's cleanup
        if self._signals > 1:
            raise SystemExit(1)  # cut short by a second signal: not a clean shutdown

    _signals = 0
    """SIGTERM/SIGINT received during :meth:`run`."""
    _forced_exit: asyncio.TimerHandle | None = None
    """The exit that follows a second signal if stopping takes too long."""

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            logger.info("%s received: finishing running jobs, then stopping", sig.name)
            self.stop()
        elif self._signals == 2:
            logger.warning("second %s: releasing running jobs now, then exiting", sig.name)
            self.stop(now=True)
            self._forced_exit = asyncio.get_running_loop().call_later(
                FORCED_EXIT_AFTER, self._exit_now, "still stopping"
            )
        else:
            self._exit_now(f"another {sig.name}")

    def _exit_now(self, why: str) -> None:
        """Leave the event loop at once (raised from a loop callback, ``SystemExit`` ends ``run``)."""
        logger.warning("%s: exiting without waiting for running jobs to be released", why)
        raise SystemExit(1)


__all__ = ["App", "ConveyorError", "DeadLetters"]
