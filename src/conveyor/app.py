"""App: services wired to a backend, resources and a clock. The entry point of everything.

The composition root: it opens the backend and builds the parts (registry, runtime, state store,
workflows) that the runtime and the operations modules run on; what they do is theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal

from opentelemetry.metrics import MeterProvider
from opentelemetry.trace import TracerProvider

from conveyor.backends import open_backend
from conveyor.definitions.registry import Registry
from conveyor.definitions.service import Service
from conveyor.definitions.workflow import Workflow
from conveyor.model.errors import ConfigurationError, ConveyorError
from conveyor.model.lifecycle import JobOptions, Seconds, seconds
from conveyor.observability.metrics import Metrics
from conveyor.observability.tracing import Tracing
from conveyor.operations.dead_letters import DeadLetters
from conveyor.operations.health import HealthReport, HealthThresholds, check_health
from conveyor.operations.jobs import Jobs
from conveyor.operations.queues import Queues
from conveyor.operations.status import Workflows
from conveyor.ports import Backend, DeadLetterFilter, QueueStats, WorkerInfo
from conveyor.runtime import approval, maintenance, producer, registry
from conveyor.runtime.clock import Clock, SystemClock
from conveyor.runtime.context import run_command
from conveyor.runtime.loop import FORCED_EXIT_AFTER, SignalStop, cancel_and_wait, run_to_end
from conveyor.runtime.messages import DEFAULT_MAX_PAYLOAD_BYTES, MessageFactory, available_at
from conveyor.runtime.producer import ENQUEUE_BATCH, ENQUEUE_IN_FLIGHT
from conveyor.runtime.runtime import Runtime
from conveyor.runtime.scheduler import Scheduler
from conveyor.runtime.states import States
from conveyor.runtime.worker import Worker, WorkerConfig
from conveyor.settings import DEFAULT_URL, load_app_settings

DEFAULT_HISTORY_RETENTION = 7 * 24 * 3600.0

BackendOrigin = Literal["code", "environment", "default", "cli"]


class App:
    """Services wired to a backend.

    >>> # app = App([orders], backend="sqlite:///conveyor.db", resources={"inventory": Inventory()})
    >>> # async with app:
    >>> #     await app.enqueue("validate_inventory", {...})

    ``backend`` is a URL (``memory://``, ``sqlite:///path``, ``redis://…``, ``postgresql://…``) or a
    backend object; left out, it is ``CONVEYOR_URL``, else ``sqlite:///conveyor.db`` (see
    :mod:`conveyor.settings` for the precedence; ``conveyor --backend URL`` overrides both).
    Without ``worker``, the worker's concurrency is ``CONVEYOR_CONCURRENCY`` when set. ``clock``
    is injectable for tests (see :class:`conveyor.testing.FakeClock`).
    ``external_queues`` names the queues another app serves that this one enqueues to: any other
    queue no service declares is refused with :class:`UnknownQueueError`. ``tracing`` and
    ``metrics`` are on (True), off (False), on when an OpenTelemetry SDK is configured (None), or on
    with the given provider. ``name`` names the app where a service's name is wanted, as the
    OpenTelemetry resource's ``service.name`` of the metrics ``conveyor worker --metrics-port``
    serves (default: the first service's name, or ``"conveyor"`` without one).
    """

    def __init__(
        self,
        services: Iterable[Service],
        backend: str | Backend | None = None,
        *,
        resources: Mapping[str, Any] | None = None,
        clock: Clock | None = None,
        workflows: Iterable[Workflow] = (),
        external_queues: Iterable[str] = (),
        worker: WorkerConfig | None = None,
        history: bool = True,
        history_retention: Seconds | None = DEFAULT_HISTORY_RETENTION,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        tracing: bool | TracerProvider | None = None,
        metrics: bool | MeterProvider | None = None,
        name: str | None = None,
    ) -> None:
        self.registry = Registry(services, external_queues, gate_timer=approval.fire_timeout)
        settings = load_app_settings() if backend is None or worker is None else None
        self.backend_origin: BackendOrigin = "code"
        """Where the backend came from: ``code``, ``environment`` (``CONVEYOR_URL``), ``default``
        or ``cli`` (:meth:`use_backend`)."""
        if backend is None:
            assert settings is not None
            self.backend_origin = "environment" if settings.url else "default"
            backend = settings.url or DEFAULT_URL
        self.backend_url: str | None = backend if isinstance(backend, str) else None
        """The backend's URL, None when a backend object was given."""
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise ConfigurationError(f"App(name=...) must be a non-empty string, not {name!r}")
        self.name: str = name or (self.registry.services[0].name if self.registry.services else "conveyor")
        self.backend: Backend = open_backend(backend) if isinstance(backend, str) else backend
        self.clock: Clock = clock or SystemClock()
        if worker is None:
            assert settings is not None
            given = {} if settings.concurrency is None else {"concurrency": settings.concurrency}
            worker = WorkerConfig(**given)
        self.worker_config = worker
        self.runtime = Runtime(
            backend=self.backend,
            registry=self.registry,
            clock=self.clock,
            resources=resources or {},
            messages=MessageFactory(max_payload_bytes, history=history),
            tracer=Tracing(None, tracing) if isinstance(tracing, TracerProvider) else Tracing(tracing),
            metrics=Metrics(None, metrics) if isinstance(metrics, MeterProvider) else Metrics(metrics),
        )
        self.history_retention = None if history_retention is None else seconds(history_retention)
        self.states = States(self.runtime)
        """The state store outside handlers: every write commits at once."""
        self._connected = 0
        self._workers: list[Worker] = []
        self._scheduler: Scheduler | None = None
        self.workflows = Workflows(self.runtime)
        self.workflows.declare(*workflows)
        self.queues = Queues(self.backend, self.clock, self.registry)
        """Pause and resume queues, their metrics and leases (:class:`~conveyor.operations.queues.Queues`)."""
        self.jobs = Jobs(self.backend, self.clock)
        """Look jobs up and cancel them (:class:`~conveyor.operations.jobs.Jobs`)."""

    def use_backend(self, url: str, *, origin: BackendOrigin = "cli") -> None:
        """Put the backend at ``url`` in place of the one this app was created with (what
        ``conveyor --backend URL`` does); only while the app is not connected."""
        if self.connected:
            raise ConfigurationError("cannot change the backend of a connected app: close it first")
        self.backend = open_backend(url)
        self.backend_url = url
        self.backend_origin = origin
        self.runtime.backend = self.backend
        self.queues = Queues(self.backend, self.clock, self.registry)
        self.jobs = Jobs(self.backend, self.clock)

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

    @property
    def connected(self) -> bool:
        """Whether :meth:`connect` was called more often than :meth:`close`."""
        return self._connected > 0

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
        priority: int = 0,
        max_attempts: int | None = None,
        visibility_timeout: Seconds | None = None,
    ) -> str:
        """Store a job on ``queue`` and return its id (the first job's id on an idempotency-key hit).

        ``priority`` (an int from -10 to 10, higher first among the queue's due jobs),
        ``max_attempts`` and ``visibility_timeout`` are the job's own, in place of its queue's
        (see :class:`~conveyor.model.lifecycle.JobOptions`).

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
            priority=priority,
            max_attempts=max_attempts,
            visibility_timeout=visibility_timeout,
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
        priority: int = 0,
        max_attempts: int | None = None,
        visibility_timeout: Seconds | None = None,
    ) -> list[str]:
        """Store many jobs on ``queue``; their ids, in order.

        Every payload is checked first (against the queue's model, and for what JSON cannot carry:
        NaN, ±Infinity, lone surrogates), with the idempotency keys and the correlation id (no NUL,
        no lone surrogate), so an invalid one raises before anything is stored. The
        jobs then go in batches of :data:`ENQUEUE_BATCH`, each stored atomically, up to
        :data:`ENQUEUE_IN_FLIGHT` on the way at once. If one batch fails,
        :class:`EnqueueIncompleteError` says which jobs were stored (give the jobs idempotency keys
        to retry safely). With ``connection=`` the batches are written one after the other inside
        the caller's transaction, so all or none commit. ``external``, ``priority``,
        ``max_attempts`` and ``visibility_timeout`` are as for :meth:`enqueue`, for every job.
        """
        options = JobOptions(priority, max_attempts, visibility_timeout)
        now = self.clock.now()
        return await producer.enqueue_many(
            self.runtime,
            queue,
            payloads,
            idempotency_keys,
            now=now,
            when=available_at(now, delay, run_at),
            correlation_id=correlation_id,
            connection=connection,
            external=external,
            options=options,
        )

    async def emit(
        self,
        event: str,
        payload: Any = None,
        *,
        correlation_id: str | None = None,
        connection: Any = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Publish ``event``: one job per subscription. ``correlation_id`` starts a workflow instance;
        ``connection`` writes it inside the caller's own transaction (see :meth:`enqueue`).

        With ``idempotency_key``, an emit of the same event and key again publishes nothing and
        returns the first one's id. The key is kept in the state store (as
        ``conveyor.emit:<event>:<key>``), written in the event's own commit, for good.
        """
        event_id, _ = await producer.emit(
            self.runtime,
            event,
            payload,
            correlation_id=correlation_id,
            connection=connection,
            idempotency_key=idempotency_key,
        )
        return event_id

    async def invoke(self, command: str, payload: Any = None) -> Any:
        """Run ``command`` in this process and return its result; its effects commit on success."""
        return await run_command(self.runtime, command, payload)

    # operating

    def dead_letters(
        self,
        queue: str | None = None,
        *,
        error_type: str | None = None,
        since: datetime | float | None = None,
        until: datetime | float | None = None,
        text: str | None = None,
    ) -> DeadLetters:
        """The dead letters of ``queue`` (all queues when None) that match every filter given:
        ``error_type`` (the stored type, or its last dotted part: ``PaymentDeclined``), failed
        at or after ``since`` and before ``until``, ``text`` in the error's message (any case)."""
        where = DeadLetterFilter(queue, error_type, _timestamp(since), _timestamp(until), text)
        return DeadLetters(self.backend, self.clock, where, history=self.runtime.history_enabled)

    async def stats(self, queues: Sequence[str] | None = None) -> list[QueueStats]:
        """Counts of ``queues``; by default of every queue this app declares or names external,
        and of every other queue holding jobs (see :meth:`undeclared_queues`)."""
        names = list(queues) if queues is not None else await self._queues_to_report()
        return await self.backend.stats(names, self.clock.now())

    async def undeclared_queues(self) -> list[str]:
        """Queues holding jobs or dead letters that no service of this app declares and that are
        not in ``external_queues``: nothing of this app will ever run their jobs."""
        return await maintenance.undeclared_queues(self.runtime)

    async def _queues_to_report(self) -> list[str]:
        return sorted(self.registry.known_queues | set(await self.backend.queue_names()))

    async def workers(self) -> list[WorkerInfo]:
        """The serving workers alive now, of every app on this backend: those whose last heartbeat
        is at most ``WORKER_TIMEOUT_FACTOR`` (3) times ``WorkerConfig.heartbeat_interval`` old."""
        return await registry.alive_workers(self.runtime, self.worker_config.heartbeat_interval)

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
            config = dataclasses.replace(config, concurrency=concurrency)
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
            pruning = maintenance.prune_history(self.runtime, self.history_retention)
            beating = registry.heartbeat(self.runtime, worker, config.heartbeat_interval)
            helpers = [
                asyncio.create_task(pruning, name="conveyor-maintenance"),
                asyncio.create_task(beating, name="conveyor-heartbeat"),
            ]
            if self.runtime.metrics.enabled:
                gauges = maintenance.refresh_queue_metrics(self.runtime, names)
                helpers.append(asyncio.create_task(gauges, name="conveyor-metrics"))
            if ready is not None:
                ready.set()
            try:
                await asyncio.gather(*tasks)
            finally:
                await cancel_and_wait(tasks + helpers)
                self._workers.remove(worker)
            await registry.unregister(self.runtime, worker.id)  # a clean stop; a crash's record expires

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
        run_to_end(SignalStop(self).run(self.serve(queues=queues, concurrency=concurrency)))


def _timestamp(value: datetime | float | None) -> float | None:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ConfigurationError("give a timezone-aware datetime (naive ones are ambiguous)")
        return value.timestamp()
    return value


__all__ = ["ENQUEUE_BATCH", "ENQUEUE_IN_FLIGHT", "FORCED_EXIT_AFTER", "App", "ConveyorError", "DeadLetters"]
