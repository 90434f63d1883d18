"""What watches a job's attempts: its workflow history (and the sagas that history drives) and its
metrics. Each is None in the worker when it is off, so an app without it pays one ``is None`` test
per point, and each is called directly at fixed points of a job's way:

* leased (:meth:`JobMetrics.started`), when a lease call brings the worker its jobs;
* its handler ended (:meth:`JobMetrics.ended`), returning or raising;
* settled (:class:`JobHistory`: ``succeeded``, ``retried``, ``dead_lettered``,
  ``dead_letter_handled``), writing into the effects that commit with the settlement; a saga's
  step is kept, advanced or its compensation started here, since it lives in the history;
* committed (:meth:`JobMetrics.committed`), with the status the backend answered.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from conveyor.definitions.service import QueueWorker
from conveyor.model.envelope import Envelope
from conveyor.model.history import HistoryKind
from conveyor.observability.metrics import QUEUE, Metrics
from conveyor.ports import Commit, CommitStatus, Effects, HistoryEntry, LeasedJob, Outcome
from conveyor.runtime import saga
from conveyor.runtime.error_text import describe_error
from conveyor.runtime.runtime import Runtime


class JobHistory:
    """The history entry each attempt writes into its commit, and the sagas it drives."""

    __slots__ = ("_runtime",)

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def entry(
        self,
        envelope: Envelope,
        leased: LeasedJob,
        kind: HistoryKind,
        started: float,
        error: BaseException | None = None,
        extra: dict[str, Any] | None = None,
    ) -> HistoryEntry:
        """The attempt's entry: when it started, how long it took, what it raised."""
        now = self._runtime.clock.now()
        detail: dict[str, Any] = {"started_at": started, "duration": now - started}
        if extra:
            detail.update(extra)
        if error is not None:
            detail["error"] = describe_error(error)
        return HistoryEntry(
            envelope.correlation_id,
            now,
            kind,
            leased.queue,
            leased.id,
            leased.attempt,
            orjson.dumps(detail).decode(),
        )

    def succeeded(
        self,
        definition: QueueWorker[Any],
        envelope: Envelope,
        leased: LeasedJob,
        started: float,
        effects: Effects,
    ) -> None:
        """Raises what the job's history cannot hold (a compensable step's payload JSON cannot
        carry): the next attempt could not store it either, so the job is dead-lettered."""
        step = saga.completed_step(definition, envelope)
        extra = {saga.SAGA_STEP: step} if step else None
        # the step's own entry first, so a timeline reads "step, then what it emitted"
        effects.history.insert(0, self.entry(envelope, leased, HistoryKind.SUCCEEDED, started, None, extra))
        saga.advance(self._runtime, envelope, effects)

    def retried(
        self, envelope: Envelope, leased: LeasedJob, started: float, error: BaseException, effects: Effects
    ) -> None:
        effects.history.append(self.entry(envelope, leased, HistoryKind.RETRIED, started, error))

    async def dead_lettered(
        self, envelope: Envelope, leased: LeasedJob, started: float, error: BaseException, effects: Effects
    ) -> None:
        """The dead letter's entry, and the compensation of the workflow's completed steps."""
        effects.history.insert(0, self.entry(envelope, leased, HistoryKind.DEAD_LETTERED, started, error))
        await saga.start(self._runtime, envelope, effects)

    def dead_letter_handled(
        self, definition: QueueWorker[Any], envelope: Envelope, leased: LeasedJob, effects: Effects
    ) -> None:
        """``on_dead_letter`` ran and its effects commit with the dead letter."""
        effects.history.append(
            HistoryEntry(
                envelope.correlation_id,
                self._runtime.clock.now(),
                HistoryKind.COMPENSATED,
                definition.name,
                leased.id,
                leased.attempt,
            )
        )


class JobMetrics:
    """The worker's counters and its attempts' durations (see :mod:`conveyor.observability.metrics`)."""

    __slots__ = ("_metrics",)

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def started(self, jobs: Sequence[LeasedJob]) -> None:
        started = self._metrics.started
        for leased in jobs:
            started.add(1, {QUEUE: leased.queue})

    def ended(self, queue: str, started: float, now: float) -> None:
        self._metrics.duration.record(max(0.0, now - started), {QUEUE: queue})

    def committed(self, queue: str, commit: Commit, status: CommitStatus) -> None:
        metrics = self._metrics
        attributes = {QUEUE: queue}
        settlement = commit.settlement
        if status is CommitStatus.STALE:
            metrics.lease_lost.add(1, attributes)
        elif status is CommitStatus.OK and settlement is not None:
            counter = {
                Outcome.ACK: metrics.succeeded,
                Outcome.RETRY: metrics.failed,
                Outcome.DEAD: metrics.dead_lettered,
            }.get(settlement.outcome)
            if counter is not None:
                counter.add(1, attributes)
            for job in commit.effects.jobs:
                metrics.enqueued.add(1, {QUEUE: job.queue})
