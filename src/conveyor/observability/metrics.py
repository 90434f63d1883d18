"""Metrics through the OpenTelemetry metrics API (any SDK/exporter; Prometheus via the CLI).

Counters and a duration histogram are recorded as jobs move; queue depth, oldest job age and
dead-letter counts are observable gauges fed by a periodic ``stats`` query. With no meter provider
configured nothing is recorded at all, so the hot path pays one attribute check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from conveyor.ports import QueueStats

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

QUEUE = "messaging.destination.name"

DURATION_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
"""Bounds (seconds) of ``conveyor.job.duration``'s buckets, 1 ms to 10 minutes: a handler's run
time spans that range, where OpenTelemetry's default (0, 5, 10 ... 10000 s) puts every
millisecond job in its first bucket. Given as the instrument's advice, which an SDK view may
override."""


def sdk_configured() -> bool:
    provider = metrics.get_meter_provider()
    return type(provider).__name__ not in ("_ProxyMeterProvider", "NoOpMeterProvider")


class Metrics:
    """conveyor's instruments. ``enabled`` is decided when the app connects."""

    def __init__(self, enabled: bool | None = None, provider: MeterProvider | None = None) -> None:
        self._requested = enabled if provider is None or enabled is not None else True
        self._provider = provider
        self.enabled = False
        self._stats: dict[str, QueueStats] = {}
        self._now = 0.0

    def activate(self) -> None:
        self.enabled = sdk_configured() if self._requested is None else bool(self._requested)
        if not self.enabled or hasattr(self, "enqueued"):
            return
        meter = metrics.get_meter("conveyor", meter_provider=self._provider)
        self.enqueued = meter.create_counter("conveyor.jobs.enqueued", "{job}", "jobs stored on a queue")
        self.started = meter.create_counter(
            "conveyor.jobs.started", "{job}", "attempts started (jobs leased)"
        )
        self.succeeded = meter.create_counter("conveyor.jobs.succeeded", "{job}", "jobs acknowledged")
        self.failed = meter.create_counter(
            "conveyor.jobs.failed", "{job}", "failed attempts that will be retried"
        )
        self.dead_lettered = meter.create_counter(
            "conveyor.jobs.dead_lettered", "{job}", "jobs moved to the dead-letter queue"
        )
        self.lease_lost = meter.create_counter(
            "conveyor.lease.expired", "{job}", "attempts whose lease expired before they could commit"
        )
        self.duration = meter.create_histogram(
            "conveyor.job.duration",
            "s",
            "handler run time of one attempt",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        meter.create_observable_gauge(
            "conveyor.queue.depth", [self._observe_depth], "{job}", "jobs ready to run now"
        )
        meter.create_observable_gauge(
            "conveyor.queue.oldest_age", [self._observe_age], "s", "age of the oldest ready job"
        )
        meter.create_observable_gauge(
            "conveyor.queue.dead_letters", [self._observe_dead], "{job}", "jobs in the dead-letter queue"
        )
        meter.create_observable_gauge(
            "conveyor.queue.scheduled",
            [self._observe("scheduled")],
            "{job}",
            "jobs waiting for their time (delayed or retrying)",
        )
        meter.create_observable_gauge(
            "conveyor.queue.in_flight", [self._observe("leased")], "{job}", "jobs leased now"
        )
        meter.create_observable_gauge(
            "conveyor.queue.paused", [self._observe("paused")], "1", "1 while the queue is paused"
        )

    def record_stats(self, stats: Sequence[QueueStats], now: float) -> None:
        self._stats = {s.queue: s for s in stats}
        self._now = now

    def _observe_depth(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.ready, {QUEUE: q}) for q, s in self._stats.items()]

    def _observe_age(self, options: CallbackOptions) -> Iterable[Observation]:
        return [
            Observation(max(0.0, self._now - s.oldest_ready_at) if s.oldest_ready_at else 0.0, {QUEUE: q})
            for q, s in self._stats.items()
        ]

    def _observe_dead(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(s.dead, {QUEUE: q}) for q, s in self._stats.items()]

    def _observe(self, field: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        """A gauge callback of one :class:`QueueStats` field (a bool counts as 0 or 1)."""

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(int(getattr(s, field)), {QUEUE: q}) for q, s in self._stats.items()]

        return observe


def prometheus_meter_provider(service_name: str) -> MeterProvider:
    """An OpenTelemetry SDK meter provider exporting to the Prometheus client's registry, its
    resource's ``service.name`` the app's (``App(name=...)``). Needs ``conveyor[otel]``."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader
    from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    resource = Resource.create({SERVICE_NAME: service_name})
    return SdkMeterProvider(metric_readers=[PrometheusMetricReader()], resource=resource)
