"""The in-memory backend: complete and real (every port, every guarantee but surviving a restart).

Used by tests and by ``conveyor.testing``; fine for a single process that may lose its jobs on exit.
All operations run on the event loop without awaiting in between, so each commit is atomic.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import heapq
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from conveyor.backends import DEFAULT_IDEMPOTENCY_RETENTION
from conveyor.ports import (
    Commit,
    CommitResult,
    CommitStatus,
    DeadLetter,
    DeadLetterFilter,
    ErrorInfo,
    HistoryEntry,
    InstanceSummary,
    JobRecord,
    LeasedJob,
    LeaseInfo,
    MinuteCounts,
    NewJob,
    Outcome,
    QueueStats,
    Settlement,
    StateOp,
    StateRecord,
    WorkerInfo,
)
from conveyor.ports.operations import bucket, live_state, matches


@dataclass(slots=True)
class _Job:
    id: str
    queue: str
    body: bytes
    available_at: float
    enqueued_at: float
    idempotency_key: str | None
    priority: int = 0
    lease_seconds: float | None = None
    attempts: int = 0
    token: int = 0
    leased: bool = False
    leased_at: float = 0.0
    worker: str = ""
    extensions: int = 0
    cancel_requested: bool = False
    last_error: ErrorInfo | None = None


class MemoryBackend:
    """``memory://``: one process, nothing survives it."""

    def __init__(self, url: str = "memory://", *, idempotency_retention: float | None = None) -> None:
        self.url = url
        self.idempotency_retention = (
            DEFAULT_IDEMPOTENCY_RETENTION if idempotency_retention is None else idempotency_retention
        )
        self._jobs: dict[str, _Job] = {}
        # per queue and priority: heap of (available_at, seq, job_id, token-at-push); stale entries
        # skipped lazily
        self._ready: dict[str, dict[int, list[tuple[float, int, str, int]]]] = {}
        self._seq = itertools.count()
        self._last_token = 0
        # (queue, key) -> (job_id, expires_at or None while the job exists)
        self._keys: dict[tuple[str, str], tuple[str, float | None]] = {}
        self._routes: dict[str, list[str]] = {}
        self._states: dict[str, StateRecord] = {}
        self._dead: dict[str, DeadLetter] = {}
        self._history: dict[str, list[HistoryEntry]] = {}
        self._paused: dict[str, float] = {}
        self._counts: dict[tuple[str, float], list[int]] = {}
        """(queue, bucket) -> [completed, retried, dead]"""
        self._workers: dict[str, WorkerInfo] = {}
        self._wakeup = asyncio.Event()

    # the whole state as JSON-able data, for a backend that snapshots it (``nats://``)

    def dump(self) -> dict[str, Any]:
        """Everything this store holds, as JSON-able data (bytes as base64): :meth:`load` of it
        gives a store that answers every later call exactly as this one does (superseded entries
        of the ready lanes are left out; they never change an answer)."""
        jobs = self._jobs
        lanes = {
            queue: {
                str(priority): [
                    list(entry)
                    for entry in heap
                    if (job := jobs.get(entry[2])) is not None
                    and job.token == entry[3]
                    and job.available_at == entry[0]
                ]
                for priority, heap in by_priority.items()
            }
            for queue, by_priority in self._ready.items()
        }
        return {
            "jobs": [
                [
                    j.id,
                    j.queue,
                    _b64(j.body),
                    j.available_at,
                    j.enqueued_at,
                    j.idempotency_key,
                    j.priority,
                    j.lease_seconds,
                    j.attempts,
                    j.token,
                    j.leased,
                    j.leased_at,
                    j.worker,
                    j.extensions,
                    j.cancel_requested,
                    _error_data(j.last_error),
                ]
                for j in jobs.values()
            ],
            "lanes": lanes,
            "last_token": self._last_token,
            "keys": [[queue, key, job_id, expires] for (queue, key), (job_id, expires) in self._keys.items()],
            "routes": self._routes,
            "states": [[key, _b64(r.value), r.version] for key, r in self._states.items()],
            "dead": [
                [d.id, d.queue, _b64(d.body), _error_data(d.error), d.attempts, d.enqueued_at, d.failed_at]
                for d in self._dead.values()
            ],
            "history": [
                [[e.correlation_id, e.at, e.kind, e.name, e.message_id, e.attempt, e.detail] for e in entries]
                for entries in self._history.values()
            ],
            "paused": self._paused,
            "counts": [[queue, minute, *counts] for (queue, minute), counts in self._counts.items()],
            "workers": [
                [w.id, w.host, w.pid, list(w.queues), w.concurrency, w.started_at, w.last_seen, w.settled]
                for w in self._workers.values()
            ],
        }

    @classmethod
    def load(cls, data: Mapping[str, Any], *, idempotency_retention: float | None = None) -> MemoryBackend:
        """A store holding what :meth:`dump` gave."""
        store = cls(idempotency_retention=idempotency_retention)
        for row in data["jobs"]:
            job = _Job(row[0], row[1], _unb64(row[2]), row[3], row[4], row[5], row[6], row[7])
            (job.attempts, job.token, job.leased, job.leased_at, job.worker) = row[8:13]
            job.extensions, job.cancel_requested, job.last_error = row[13], row[14], _error_from(row[15])
            store._jobs[job.id] = job
        highest = -1
        for queue, by_priority in data["lanes"].items():
            lanes = store._ready.setdefault(queue, {})
            for priority, entries in by_priority.items():
                heap = [(e[0], e[1], e[2], e[3]) for e in entries]
                heapq.heapify(heap)
                lanes[int(priority)] = heap
                highest = max([highest, *(e[1] for e in heap)])
        store._seq = itertools.count(highest + 1)  # later entries still sort after every earlier one
        store._last_token = data["last_token"]
        store._keys = {(queue, key): (job_id, expires) for queue, key, job_id, expires in data["keys"]}
        store._routes = {event: list(queues) for event, queues in data["routes"].items()}
        store._states = {key: StateRecord(_unb64(value), version) for key, value, version in data["states"]}
        for d in data["dead"]:
            error = _error_from(d[3])
            assert error is not None
            store._dead[d[0]] = DeadLetter(d[0], d[1], _unb64(d[2]), error, d[4], d[5], d[6])
        for entries in data["history"]:
            store._history[entries[0][0]] = [HistoryEntry(*e) for e in entries]
        store._paused = dict(data["paused"])
        store._counts = {(c[0], c[1]): list(c[2:]) for c in data["counts"]}
        store._workers = {w[0]: WorkerInfo(w[0], w[1], w[2], tuple(w[3]), *w[4:]) for w in data["workers"]}
        return store

    # lifecycle

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def next_due(self, now: float) -> float | None:
        """When the first job waiting for a time after ``now`` (delayed, or retrying) becomes due,
        in a queue that is not paused; None when there is none. What
        :meth:`conveyor.testing.TestApp.run_until_idle` moves its clock to."""
        return min(
            (
                job.available_at
                for job in self._jobs.values()
                if not job.leased and job.available_at > now and job.queue not in self._paused
            ),
            default=None,
        )

    # queue store

    def _push(self, job: _Job) -> None:
        heap = self._ready.setdefault(job.queue, {}).setdefault(job.priority, [])
        heapq.heappush(heap, (job.available_at, next(self._seq), job.id, job.token))

    async def lease(
        self, queues: Mapping[str, float], limit: int, now: float, worker: str = ""
    ) -> list[LeasedJob]:
        leased: list[LeasedJob] = []
        candidates: list[tuple[int, float, int, str, int, str]] = []
        for queue in queues:
            lanes = self._ready.get(queue)
            if not lanes or queue in self._paused:
                continue
            taken = 0  # up to `limit` from every queue, so the first overall are among them
            for priority in sorted(lanes, reverse=True):
                heap = lanes[priority]
                while heap and taken < limit:
                    available_at, seq, job_id, token = heap[0]
                    job = self._jobs.get(job_id)
                    if job is None or job.token != token or job.available_at != available_at:
                        heapq.heappop(heap)  # superseded entry
                        continue
                    if available_at > now:
                        break
                    heapq.heappop(heap)
                    candidates.append((-priority, available_at, seq, job_id, token, queue))
                    taken += 1
        candidates.sort()
        seen: set[str] = set()
        for negated, available_at, seq, job_id, token, queue in candidates:
            job = self._jobs[job_id]
            if job_id in seen:  # two heap entries of one job: lease it once
                continue
            seen.add(job_id)
            if len(leased) >= limit:
                heapq.heappush(self._ready[queue][-negated], (available_at, seq, job_id, token))
                continue
            job.attempts += 1
            self._last_token += 1
            job.token = self._last_token
            job.leased = True
            job.leased_at = now
            job.worker = worker
            job.extensions = 0
            job.available_at = now + (job.lease_seconds if job.lease_seconds is not None else queues[queue])
            self._push(job)
            leased.append(
                LeasedJob(
                    id=job.id,
                    queue=job.queue,
                    body=job.body,
                    attempt=job.attempts,
                    token=job.token,
                    lease_deadline=job.available_at,
                    enqueued_at=job.enqueued_at,
                )
            )
        return leased

    def has_due(self, queues: Iterable[str], now: float) -> bool:
        """Whether a lease of ``queues`` at ``now`` may find a job; False means it surely finds none.

        For a backend that keeps this state as a replica (``nats://``): an idle worker's poll asks
        here first, and writes nothing when there is nothing to lease."""
        for queue in queues:
            if queue in self._paused:
                continue
            for heap in self._ready.get(queue, {}).values():
                if heap and heap[0][0] <= now:  # (a superseded entry may answer True: harmless)
                    return True
        return False

    def _live(self, job_id: str, token: int, now: float) -> _Job | None:
        job = self._jobs.get(job_id)
        if job is None or not job.leased or job.token != token or job.available_at < now:
            return None
        return job

    async def extend(self, job_id: str, token: int, until: float, now: float) -> bool:
        job = self._live(job_id, token, now)
        if job is None:
            return False
        # never earlier: a worker extending by less than its lease has left must not lose the job
        if until > job.available_at:
            job.available_at = until
            self._push(job)
        job.extensions += 1
        return True

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def dead_letters(self, queue: str | None, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        rows = [d for d in self._dead.values() if queue is None or d.queue == queue]
        rows.sort(key=lambda d: (d.failed_at, d.id))
        return rows[offset : offset + limit]

    async def redrive(self, ids: Sequence[str], now: float, available_at: float | None = None) -> int:
        count = 0
        for dead_id in ids:
            if dead_id in self._jobs:  # a live job holds the id: replacing it would break its lease
                continue
            dead = self._dead.pop(dead_id, None)
            if dead is None:
                continue
            at = now if available_at is None else available_at
            job = _Job(dead.id, dead.queue, dead.body, at, dead.enqueued_at, None)
            self._jobs[job.id] = job
            self._push(job)
            count += 1
        if count:
            self._wakeup.set()
        return count

    async def purge(self, ids: Sequence[str] | None, queue: str | None = None) -> int:
        if ids is None:
            doomed = [d.id for d in self._dead.values() if queue is None or d.queue == queue]
        else:
            doomed = [i for i in ids if i in self._dead]
        for dead_id in doomed:
            del self._dead[dead_id]
        return len(doomed)

    async def stats(self, queues: Sequence[str], now: float) -> list[QueueStats]:
        result = []
        for queue in queues:
            jobs = [j for j in self._jobs.values() if j.queue == queue]
            ready = [j for j in jobs if not j.leased and j.available_at <= now]
            result.append(
                QueueStats(
                    queue=queue,
                    ready=len(ready),
                    scheduled=sum(1 for j in jobs if not j.leased and j.available_at > now),
                    leased=sum(1 for j in jobs if j.leased),
                    dead=sum(1 for d in self._dead.values() if d.queue == queue),
                    oldest_ready_at=min((j.available_at for j in ready), default=None),
                    paused=queue in self._paused,
                )
            )
        return result

    async def queue_names(self) -> list[str]:
        return sorted({j.queue for j in self._jobs.values()} | {d.queue for d in self._dead.values()})

    # topic store

    async def register_subscriptions(self, routes: Sequence[tuple[str, str]]) -> None:
        for event, queue in routes:
            queues = self._routes.setdefault(event, [])
            if queue not in queues:
                queues.append(queue)

    async def subscriptions(self) -> list[tuple[str, str]]:
        return [(event, queue) for event, queues in self._routes.items() for queue in queues]

    # state store

    async def get_states(self, keys: Sequence[str]) -> dict[str, StateRecord]:
        return {key: self._states[key] for key in keys if key in self._states}

    # history store

    async def history(self, correlation_id: str) -> list[HistoryEntry]:
        return list(self._history.get(correlation_id, ()))

    async def prune_history(self, before: float) -> int:
        removed = 0
        for correlation_id in list(self._history):
            entries = self._history[correlation_id]
            kept = [e for e in entries if e.at >= before]
            removed += len(entries) - len(kept)
            if kept:
                self._history[correlation_id] = kept
            else:
                del self._history[correlation_id]
        return removed

    async def instances(
        self,
        started_after: float | None = None,
        limit: int = 100,
        *,
        before: tuple[float, str] | None = None,
        prefix: str | None = None,
    ) -> list[InstanceSummary]:
        found = [
            InstanceSummary(cid, entries[0].at, max(e.at for e in entries))
            for cid, entries in self._history.items()
            if entries and (prefix is None or cid.startswith(prefix))
        ]
        if started_after is not None:
            found = [i for i in found if i.started_at > started_after]
        if before is not None:
            found = [i for i in found if (i.started_at, i.correlation_id) < before]
        found.sort(key=lambda i: (i.started_at, i.correlation_id), reverse=True)
        return found[:limit]

    # commit

    async def commit(self, commits: Sequence[Commit], now: float) -> list[CommitResult]:
        results = [self._commit_one(commit, now) for commit in commits]
        self._wakeup.set()
        return results

    async def commit_and_lease(
        self,
        commits: Sequence[Commit],
        now: float,
        queues: Mapping[str, float],
        limit: int,
        worker: str = "",
    ) -> tuple[list[CommitResult], list[LeasedJob]]:
        """:meth:`commit`, then :meth:`lease`: the reference for the backends that do it in one call."""
        return await self.commit(commits, now), await self.lease(queues, limit, now, worker)

    def _key_holder(self, queue: str, key: str, now: float) -> str | None:
        held = self._keys.get((queue, key))
        if held is None:
            return None
        job_id, expires_at = held
        if expires_at is not None and expires_at <= now:
            del self._keys[(queue, key)]
            return None
        return job_id

    def _retire_key(self, job: _Job, now: float) -> None:
        if job.idempotency_key is not None:
            self._keys[(job.queue, job.idempotency_key)] = (
                job.id,
                now + self.idempotency_retention,
            )

    def _commit_one(self, commit: Commit, now: float) -> CommitResult:
        settlement, effects = commit.settlement, commit.effects
        job: _Job | None = None
        if settlement is not None:
            job = self._live(settlement.job_id, settlement.token, now)
            if job is None:
                return CommitResult(CommitStatus.STALE)
        for write in effects.states:
            if write.expected_version is not None:
                current = self._states.get(write.key)
                if (current.version if current else 0) != write.expected_version:
                    return CommitResult(CommitStatus.CONFLICT)
        # From here on nothing can fail: apply everything.
        if settlement is not None and job is not None:
            self._settle(job, settlement.outcome, settlement, now)
            self._count(job.queue, settlement.outcome, now)
        for write in effects.states:
            if write.op is StateOp.DELETE:
                self._states.pop(write.key, None)
            else:
                current = self._states.get(write.key)
                assert write.value is not None
                self._states[write.key] = StateRecord(write.value, (current.version if current else 0) + 1)
        for queue, key in effects.cancels:
            job_id = self._key_holder(queue, key, now)
            cancelled = self._jobs.get(job_id) if job_id else None
            if cancelled is not None and not cancelled.leased:
                del self._jobs[cancelled.id]
                del self._keys[(queue, key)]
        job_ids = tuple(self._enqueue(new, now) for new in effects.jobs)
        deliveries = 0
        for event in effects.events:
            for queue in self._routes.get(event.event, ()):
                self._enqueue(
                    NewJob(f"{event.id}:{queue}", queue, event.body, event.emitted_at, event.emitted_at),
                    now,
                )
                deliveries += 1
        for entry in effects.history:
            self._history.setdefault(entry.correlation_id, []).append(entry)
        return CommitResult(CommitStatus.OK, job_ids, deliveries)

    def _settle(self, job: _Job, outcome: Outcome, settlement: Settlement, now: float) -> None:
        if outcome is Outcome.ACK:
            del self._jobs[job.id]
            self._retire_key(job, now)
        elif outcome is Outcome.DEAD:
            del self._jobs[job.id]
            self._retire_key(job, now)
            assert settlement.error is not None, "a dead-letter settlement carries its error"
            self._dead[job.id] = DeadLetter(
                id=job.id,
                queue=job.queue,
                body=job.body,
                error=settlement.error,
                attempts=job.attempts,
                enqueued_at=job.enqueued_at,
                failed_at=now,
            )
        else:
            job.leased = False
            if outcome is Outcome.RELEASE:
                job.attempts -= 1
                job.available_at = now
            else:
                job.available_at = settlement.available_at if settlement.available_at is not None else now
            if settlement.error is not None:
                job.last_error = settlement.error
            self._push(job)

    def _enqueue(self, new: NewJob, now: float) -> str:
        if new.idempotency_key is not None:
            holder = self._key_holder(new.queue, new.idempotency_key, now)
            if holder is not None:
                return holder
            self._keys[(new.queue, new.idempotency_key)] = (new.id, None)
        if new.id in self._jobs:
            return new.id
        job = _Job(
            new.id,
            new.queue,
            new.body,
            new.available_at,
            new.enqueued_at,
            new.idempotency_key,
            new.priority,
            new.lease_seconds,
        )
        self._jobs[job.id] = job
        self._push(job)
        return job.id

    def _count(self, queue: str, outcome: Outcome, now: float) -> None:
        column = _COUNTED.get(outcome)
        if column is not None:
            self._counts.setdefault((queue, bucket(now)), [0, 0, 0])[column] += 1

    # operations

    async def pause(self, queue: str, now: float) -> bool:
        if queue in self._paused:
            return False
        self._paused[queue] = now
        return True

    async def resume(self, queue: str) -> bool:
        if self._paused.pop(queue, None) is None:
            return False
        self._wakeup.set()
        return True

    async def paused_queues(self) -> dict[str, float]:
        return dict(self._paused)

    async def leases(self, queue: str | None, limit: int = 100, after: str | None = None) -> list[LeaseInfo]:
        held = sorted(
            (j for j in self._jobs.values() if j.leased and (queue is None or j.queue == queue)),
            key=lambda j: j.id,
        )
        return [_lease_info(j) for j in held if after is None or j.id > after][:limit]

    async def queue_counts(self, queues: Sequence[str], since: float) -> list[MinuteCounts]:
        start, wanted = bucket(since), set(queues)
        return [
            MinuteCounts(queue, minute, *counts)
            for (queue, minute), counts in sorted(self._counts.items())
            if queue in wanted and minute >= start
        ]

    async def prune_counts(self, before: float) -> int:
        doomed = [key for key in self._counts if key[1] < before]
        for key in doomed:
            del self._counts[key]
        return len(doomed)

    async def job(self, job_id: str, now: float) -> JobRecord | None:
        job = self._jobs.get(job_id)
        if job is not None:
            return JobRecord(
                job.id,
                job.queue,
                live_state(job.leased, job.available_at, now),
                job.body,
                job.attempts,
                job.enqueued_at,
                job.available_at,
                job.priority,
                job.idempotency_key,
                job.last_error,
                _lease_info(job) if job.leased else None,
                job.cancel_requested,
            )
        dead = self._dead.get(job_id)
        if dead is None:
            return None
        return JobRecord.from_dead_letter(dead)

    async def job_for_key(self, queue: str, key: str, now: float) -> str | None:
        return self._key_holder(queue, key, now)

    async def job_history(self, job_id: str) -> list[HistoryEntry]:
        # (a scan: the memory backend is for tests and one process)
        return [e for entries in self._history.values() for e in entries if e.message_id == job_id]

    async def cancel_jobs(
        self, ids: Sequence[str], now: float, history: Sequence[HistoryEntry] = ()
    ) -> list[str]:
        cancelled: list[str] = []
        for job_id in ids:
            job = self._jobs.get(job_id)
            if job is None or (job.leased and job.available_at >= now) or job_id in cancelled:
                continue
            del self._jobs[job_id]
            if job.idempotency_key is not None:
                self._keys.pop((job.queue, job.idempotency_key), None)
            cancelled.append(job_id)
        done = set(cancelled)
        for entry in history:
            if entry.message_id in done:
                self._history.setdefault(entry.correlation_id, []).append(entry)
        return cancelled

    async def request_cancel(self, job_id: str) -> bool:
        job = self._jobs.get(job_id)
        if job is None:
            return False
        job.cancel_requested = True
        return True

    async def cancel_requests(self, job_ids: Sequence[str]) -> list[str]:
        jobs = self._jobs
        return [i for i in job_ids if (job := jobs.get(i)) is not None and job.cancel_requested]

    async def register_worker(self, worker: WorkerInfo) -> None:
        self._workers[worker.id] = worker

    async def unregister_worker(self, worker_id: str) -> None:
        self._workers.pop(worker_id, None)

    async def workers(self, alive_since: float) -> list[WorkerInfo]:
        for worker_id in [w.id for w in self._workers.values() if w.last_seen < alive_since]:
            del self._workers[worker_id]
        return sorted(self._workers.values(), key=lambda w: w.id)

    async def find_dead_letters(
        self, where: DeadLetterFilter, limit: int = 100, before: tuple[float, str] | None = None
    ) -> list[DeadLetter]:
        found = sorted(
            (
                d
                for d in self._dead.values()
                if matches(where, d) and (before is None or (d.failed_at, d.id) < before)
            ),
            key=lambda d: (d.failed_at, d.id),
            reverse=True,
        )
        return found[:limit]

    async def count_dead_letters(self, where: DeadLetterFilter) -> int:
        return sum(1 for d in self._dead.values() if matches(where, d))

    async def dead_letter(self, dead_id: str) -> DeadLetter | None:
        return self._dead.get(dead_id)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _error_data(error: ErrorInfo | None) -> list[str | None] | None:
    return None if error is None else [error.type, error.message, error.traceback]


def _error_from(data: list[Any] | None) -> ErrorInfo | None:
    return None if data is None else ErrorInfo(data[0], data[1], data[2])


_COUNTED = {Outcome.ACK: 0, Outcome.RETRY: 1, Outcome.DEAD: 2}
"""The column of :meth:`MemoryBackend.queue_counts` each outcome counts in."""


def _lease_info(job: _Job) -> LeaseInfo:
    return LeaseInfo(
        job.id,
        job.queue,
        job.attempts,
        job.token,
        job.worker,
        job.leased_at,
        job.available_at,
        job.extensions,
    )
