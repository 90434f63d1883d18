"""The in-memory backend: complete and real (every port, every guarantee but surviving a restart).

Used by tests and by ``conveyor.testing``; fine for a single process that may lose its jobs on exit.
All operations run on the event loop without awaiting in between, so each commit is atomic.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from conveyor.backends import DEFAULT_IDEMPOTENCY_RETENTION
from conveyor.ports import (
    Commit,
    CommitResult,
    CommitStatus,
    DeadLetter,
    HistoryEntry,
    InstanceSummary,
    LeasedJob,
    NewJob,
    Outcome,
    QueueStats,
    Settlement,
    StateOp,
    StateRecord,
)


@dataclass(slots=True)
class _Job:
    id: str
    queue: str
    body: bytes
    available_at: float
    enqueued_at: float
    idempotency_key: str | None
    attempts: int = 0
    token: int = 0
    leased: bool = False


class MemoryBackend:
    """``memory://``: one process, nothing survives it."""

    def __init__(self, url: str = "memory://", *, idempotency_retention: float | None = None) -> None:
        self.url = url
        self.idempotency_retention = (
            DEFAULT_IDEMPOTENCY_RETENTION if idempotency_retention is None else idempotency_retention
        )
        self._jobs: dict[str, _Job] = {}
        # per queue: heap of (available_at, seq, job_id, token-at-push); stale entries skipped lazily
        self._ready: dict[str, list[tuple[float, int, str, int]]] = {}
        self._seq = itertools.count()
        self._tokens = itertools.count(1)
        # (queue, key) -> (job_id, expires_at or None while the job exists)
        self._keys: dict[tuple[str, str], tuple[str, float | None]] = {}
        self._routes: dict[str, list[str]] = {}
        self._states: dict[str, StateRecord] = {}
        self._dead: dict[str, DeadLetter] = {}
        self._history: dict[str, list[HistoryEntry]] = {}
        self._wakeup = asyncio.Event()

    # lifecycle

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        return None

    # queue store

    def _push(self, job: _Job) -> None:
        heap = self._ready.setdefault(job.queue, [])
        heapq.heappush(heap, (job.available_at, next(self._seq), job.id, job.token))

    async def lease(self, queues: Mapping[str, float], limit: int, now: float) -> list[LeasedJob]:
        leased: list[LeasedJob] = []
        candidates: list[tuple[float, int, str, int, str]] = []
        for queue in queues:
            heap = self._ready.get(queue)
            taken = 0  # up to `limit` from every queue, so the oldest overall are among them
            while heap and taken < limit:
                available_at, seq, job_id, token = heap[0]
                job = self._jobs.get(job_id)
                if job is None or job.token != token or job.available_at != available_at:
                    heapq.heappop(heap)  # superseded entry
                    continue
                if available_at > now:
                    break
                heapq.heappop(heap)
                candidates.append((available_at, seq, job_id, token, queue))
                taken += 1
        candidates.sort()
        seen: set[str] = set()
        for available_at, seq, job_id, token, queue in candidates:
            job = self._jobs[job_id]
            if job_id in seen:  # two heap entries of one job: lease it once
                continue
            seen.add(job_id)
            if len(leased) >= limit:
                heapq.heappush(self._ready[queue], (available_at, seq, job_id, token))
                continue
            job.attempts += 1
            job.token = next(self._tokens)
            job.leased = True
            job.available_at = now + queues[queue]
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
        return True

    async def wait_for_jobs(self, queues: Sequence[str], timeout: float) -> None:
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def dead_letters(self, queue: str | None, limit: int = 100, offset: int = 0) -> list[DeadLetter]:
        rows = [d for d in self._dead.values() if queue is None or d.queue == queue]
        rows.sort(key=lambda d: (d.failed_at, d.id))
        return rows[offset : offset + limit]

    async def redrive(self, ids: Sequence[str], now: float) -> int:
        count = 0
        for dead_id in ids:
            if dead_id in self._jobs:  # a live job holds the id: replacing it would break its lease
                continue
            dead = self._dead.pop(dead_id, None)
            if dead is None:
                continue
            job = _Job(dead.id, dead.queue, dead.body, now, dead.enqueued_at, None)
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

    async def instances(self, started_after: float | None = None, limit: int = 100) -> list[InstanceSummary]:
        found = [
            InstanceSummary(cid, min(e.at for e in entries), max(e.at for e in entries))
            for cid, entries in self._history.items()
            if entries
        ]
        if started_after is not None:
            found = [i for i in found if i.started_at > started_after]
        found.sort(key=lambda i: (i.started_at, i.correlation_id), reverse=True)
        return found[:limit]

    # commit

    async def commit(self, commits: Sequence[Commit], now: float) -> list[CommitResult]:
        results = [self._commit_one(commit, now) for commit in commits]
        self._wakeup.set()
        return results

    async def commit_and_lease(
        self, commits: Sequence[Commit], now: float, queues: Mapping[str, float], limit: int
    ) -> tuple[list[CommitResult], list[LeasedJob]]:
        """:meth:`commit`, then :meth:`lease`: the reference for the backends that do it in one call."""
        return await self.commit(commits, now), await self.lease(queues, limit, now)

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
            self._push(job)

    def _enqueue(self, new: NewJob, now: float) -> str:
        if new.idempotency_key is not None:
            holder = self._key_holder(new.queue, new.idempotency_key, now)
            if holder is not None:
                return holder
            self._keys[(new.queue, new.idempotency_key)] = (new.id, None)
        if new.id in self._jobs:
            return new.id
        job = _Job(new.id, new.queue, new.body, new.available_at, new.enqueued_at, new.idempotency_key)
        self._jobs[job.id] = job
        self._push(job)
        return job.id
