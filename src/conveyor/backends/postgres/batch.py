"""Flattening a batch of commits into the parallel arrays ``commit_batch()`` takes.

``commit_batch`` applies every part of a batch set-wise (all settlements, then all state writes,
cancels, new jobs, events, history). That equals applying the commits one after the other, the
reference semantics, as long as no two commits of one call interact in a way the order matters
for (``tests/contract/test_differential.py`` checks this against the in-memory backend).
:func:`plan_groups` cuts the batch where that could happen; each group is one call, all of them
in one transaction. Commits that share nothing, the normal case, make a single group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from conveyor.backends.postgres.arrays import (
    BigIntArray,
    BoolArray,
    BytesArray,
    FloatArray,
    IntArray,
    TextArray,
)
from conveyor.ports import (
    Commit,
    CommitResult,
    CommitStatus,
    ErrorInfo,
    Outcome,
    StateOp,
    StateWrite,
)


def plan_groups(commits: Sequence[Commit]) -> list[list[int]]:
    """Split ``commits`` (by index) into consecutive groups that can each be applied set-wise.

    A new group starts at a commit that settles a job already settled in the group, writes a state
    key already written in it, or cancels while earlier commits of the group create jobs (the
    cancel could reach one of them; set-wise, cancels run before any job is created).
    """
    groups: list[list[int]] = []
    current: list[int] = []
    settled: set[str] = set()
    written: set[str] = set()
    creates = False
    for index, commit in enumerate(commits):
        effects = commit.effects
        job_id = commit.settlement.job_id if commit.settlement is not None else None
        keys = {write.key for write in effects.states} if effects.states else set()
        if current and (
            (job_id is not None and job_id in settled)
            or (keys and not written.isdisjoint(keys))
            or (effects.cancels and creates)
        ):
            groups.append(current)
            current, settled, written, creates = [], set(), set(), False
        current.append(index)
        if job_id is not None:
            settled.add(job_id)
        written |= keys
        creates = creates or bool(effects.jobs or effects.events)
    if current:
        groups.append(current)
    return groups


@dataclass(slots=True)
class _FoldedWrite:
    """The writes of one key within one commit, folded into what they amount to."""

    expected: int | None = None
    delete: bool = False
    reset: bool = False
    value: bytes | None = None
    sets: int = 0


MISSING_ERROR = ErrorInfo("UnknownError", "dead-lettered without error details")

NEVER_MATCHES = -1
"""An expected version no stored state has: two different expectations of one key in a commit."""


def fold_state_writes(writes: Sequence[StateWrite]) -> dict[str, _FoldedWrite]:
    """Per key: every expectation is checked against the version before the commit; then the writes
    apply in order (each set adds one to the version, a delete drops the key and its version)."""
    folded: dict[str, _FoldedWrite] = {}
    for write in writes:
        entry = folded.setdefault(write.key, _FoldedWrite())
        if write.expected_version is not None:
            if entry.expected is None:
                entry.expected = write.expected_version
            elif entry.expected != write.expected_version:
                entry.expected = NEVER_MATCHES
        if write.op is StateOp.DELETE:
            entry.delete, entry.reset, entry.value, entry.sets = True, True, None, 0
        else:
            entry.delete, entry.value = False, write.value
            entry.sets += 1
    return folded


@dataclass(slots=True)
class Arrays:
    """The arguments of one ``commit_batch`` call (see its definition for their meaning)."""

    s_commit: IntArray = field(default_factory=IntArray)
    s_id: TextArray = field(default_factory=TextArray)
    s_token: BigIntArray = field(default_factory=BigIntArray)
    s_outcome: TextArray = field(default_factory=TextArray)
    s_available_at: FloatArray = field(default_factory=FloatArray)
    s_error_type: TextArray = field(default_factory=TextArray)
    s_error_message: TextArray = field(default_factory=TextArray)
    s_error_traceback: TextArray = field(default_factory=TextArray)
    w_commit: IntArray = field(default_factory=IntArray)
    w_key: TextArray = field(default_factory=TextArray)
    w_expected: BigIntArray = field(default_factory=BigIntArray)
    w_delete: BoolArray = field(default_factory=BoolArray)
    w_reset: BoolArray = field(default_factory=BoolArray)
    w_value: BytesArray = field(default_factory=BytesArray)
    w_sets: IntArray = field(default_factory=IntArray)
    x_commit: IntArray = field(default_factory=IntArray)
    x_queue: TextArray = field(default_factory=TextArray)
    x_key: TextArray = field(default_factory=TextArray)
    j_commit: IntArray = field(default_factory=IntArray)
    j_id: TextArray = field(default_factory=TextArray)
    j_queue: TextArray = field(default_factory=TextArray)
    j_body: BytesArray = field(default_factory=BytesArray)
    j_available_at: FloatArray = field(default_factory=FloatArray)
    j_enqueued_at: FloatArray = field(default_factory=FloatArray)
    j_key: TextArray = field(default_factory=TextArray)
    j_priority: IntArray = field(default_factory=IntArray)
    j_lease_seconds: FloatArray = field(default_factory=FloatArray)
    e_commit: IntArray = field(default_factory=IntArray)
    e_id: TextArray = field(default_factory=TextArray)
    e_event: TextArray = field(default_factory=TextArray)
    e_body: BytesArray = field(default_factory=BytesArray)
    e_emitted_at: FloatArray = field(default_factory=FloatArray)
    h_commit: IntArray = field(default_factory=IntArray)
    h_correlation_id: TextArray = field(default_factory=TextArray)
    h_at: FloatArray = field(default_factory=FloatArray)
    h_kind: TextArray = field(default_factory=TextArray)
    h_name: TextArray = field(default_factory=TextArray)
    h_message_id: TextArray = field(default_factory=TextArray)
    h_attempt: IntArray = field(default_factory=IntArray)
    h_detail: TextArray = field(default_factory=TextArray)

    def due_queues(self, now: float) -> list[str]:
        """The queues of new jobs that can run now, sorted: woken (at worst spuriously, if the
        commit fails)."""
        return sorted(
            {
                q
                for q, at in zip(self.j_queue, self.j_available_at, strict=True)
                if q is not None and at is not None and at <= now
            }
        )

    def params(self, now: float, retention: float, purge: int, channel: str) -> tuple[Any, ...]:
        """The positional parameters of the ``commit`` query, in the function's order."""
        wake = TextArray(self.due_queues(now))
        return (now, retention, purge, channel, wake, *(getattr(self, f.name) for f in fields(self)))

    def inserts_only(self) -> bool:
        """Whether these commits only add jobs without an idempotency key (and history): the
        ``insert_jobs`` query's case."""
        return (
            not (self.s_id or self.w_key or self.x_key or self.e_id)
            and all(key is None for key in self.j_key)
            and all(priority == 0 for priority in self.j_priority)
            and all(lease is None for lease in self.j_lease_seconds)
        )

    def insert_params(self, channel: str, payload: str) -> tuple[Any, ...]:
        """The positional parameters of the ``insert_jobs`` query (``payload`` its notification)."""
        return (
            self.j_id,
            self.j_queue,
            self.j_body,
            self.j_available_at,
            self.j_enqueued_at,
            self.h_correlation_id,
            self.h_at,
            self.h_kind,
            self.h_name,
            self.h_message_id,
            self.h_attempt,
            self.h_detail,
            channel,
            payload,
        )


def flatten(commits: Sequence[Commit], group: Sequence[int]) -> Arrays:
    """The arrays of the commits ``group`` (indexes into ``commits``), tagged with those indexes."""
    a = Arrays()
    for c in group:
        commit = commits[c]
        settlement, effects = commit.settlement, commit.effects
        if settlement is not None:
            # The runtime always gives a dead letter its error; should one come without, it still
            # moves (a commit is never refused for bad input) with a placeholder.
            error = settlement.error or (MISSING_ERROR if settlement.outcome is Outcome.DEAD else None)
            a.s_commit.append(c)
            a.s_id.append(settlement.job_id)
            a.s_token.append(settlement.token)
            a.s_outcome.append(settlement.outcome.value)
            a.s_available_at.append(settlement.available_at)
            a.s_error_type.append(error.type if error else None)
            a.s_error_message.append(error.message if error else None)
            a.s_error_traceback.append(error.traceback if error else None)
        if effects.states:
            for key, write in fold_state_writes(effects.states).items():
                a.w_commit.append(c)
                a.w_key.append(key)
                a.w_expected.append(write.expected)
                a.w_delete.append(write.delete)
                a.w_reset.append(write.reset)
                a.w_value.append(write.value)
                a.w_sets.append(write.sets)
        for queue, key in effects.cancels:
            a.x_commit.append(c)
            a.x_queue.append(queue)
            a.x_key.append(key)
        for job in effects.jobs:
            a.j_commit.append(c)
            a.j_id.append(job.id)
            a.j_queue.append(job.queue)
            a.j_body.append(job.body)
            a.j_available_at.append(job.available_at)
            a.j_enqueued_at.append(job.enqueued_at)
            a.j_key.append(job.idempotency_key)
            a.j_priority.append(job.priority)
            a.j_lease_seconds.append(job.lease_seconds)
        for event in effects.events:
            a.e_commit.append(c)
            a.e_id.append(event.id)
            a.e_event.append(event.event)
            a.e_body.append(event.body)
            a.e_emitted_at.append(event.emitted_at)
        for entry in effects.history:
            a.h_commit.append(c)
            a.h_correlation_id.append(entry.correlation_id)
            a.h_at.append(entry.at)
            a.h_kind.append(entry.kind)
            a.h_name.append(entry.name)
            a.h_message_id.append(entry.message_id)
            a.h_attempt.append(entry.attempt)
            a.h_detail.append(entry.detail)
    return a


@dataclass(slots=True)
class GroupResult:
    """What one ``commit_batch`` call answered, keyed back to commit indexes."""

    failed: dict[int, CommitStatus]
    job_ids: list[str | None]
    """Only of the jobs with an idempotency key, in order."""
    deliveries: list[int]
    woken: list[str]


def parse_row(row: Sequence[Any]) -> GroupResult:
    failed_commits, failed_statuses, job_ids, deliveries, woken = row
    return GroupResult(
        failed={c: CommitStatus(status) for c, status in zip(failed_commits, failed_statuses, strict=True)},
        job_ids=list(job_ids),
        deliveries=list(deliveries),
        woken=list(woken),
    )


def results(
    commits: Sequence[Commit], groups: Sequence[Sequence[int]], answers: Sequence[GroupResult]
) -> list[CommitResult]:
    """One :class:`CommitResult` per commit, in order, from the answers of its groups."""
    out: list[CommitResult | None] = [None] * len(commits)
    for group, answer in zip(groups, answers, strict=True):
        keyed = iter(answer.job_ids)
        event_at = 0
        for c in group:
            effects = commits[c].effects
            # keyed jobs' ids come from the server (the key's holder); any other job keeps its own
            job_ids = [next(keyed) if job.idempotency_key is not None else job.id for job in effects.jobs]
            delivered = answer.deliveries[event_at : event_at + len(effects.events)]
            event_at += len(effects.events)
            status = answer.failed.get(c)
            if status is not None:
                out[c] = CommitResult(status)
            else:
                out[c] = CommitResult(
                    CommitStatus.OK,
                    tuple(job_id for job_id in job_ids if job_id is not None),
                    sum(delivered),
                )
    return [result for result in out if result is not None]
