"""Arguments for the Lua scripts and their replies, in the flat layouts the scripts document.

Scripts take one flat ARGV list rather than one JSON document: bodies pass through as the bytes
they are, times keep every digit (floats go as ``repr``, which Lua reads back exactly), and Lua
decodes nothing it does not need.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import orjson

from conveyor.backends.redis.scripts import BULK, Packed, bulk
from conveyor.ports import (
    Commit,
    CommitResult,
    CommitStatus,
    DeadLetter,
    ErrorInfo,
    HistoryEntry,
    LeasedJob,
    NewJob,
    Outcome,
    StateOp,
)

_STATUSES = (CommitStatus.OK, CommitStatus.STALE, CommitStatus.CONFLICT)
_OUTCOMES = {Outcome.ACK: b"a", Outcome.RETRY: b"r", Outcome.DEAD: b"d", Outcome.RELEASE: b"l"}
_COUNTS = struct.Struct(">5I")
_OK = CommitResult(CommitStatus.OK)
_SETTLEMENT, _JOB, _HISTORY = BULK * 3, BULK * 7, BULK * 4
_SHOWN_CULPRITS = 5


def _optional(text: str | None) -> bytes:
    # "" stands for None, so a present value (even an empty one) gets a leading marker
    return b"" if text is None else b"=" + text.encode()


def _error(error: ErrorInfo) -> bytes:
    return bulk(error.type) + bulk(error.message) + bulk(_optional(error.traceback))


_NO_ERROR = bulk("") * 3


def _options(job: NewJob) -> bytes:
    """A new job's priority and own lease seconds, "" for the defaults (nearly every job)."""
    if not job.priority and job.lease_seconds is None:
        return b""
    seconds = b"-" if job.lease_seconds is None else repr(float(job.lease_seconds)).encode()
    return b"%d %b" % (job.priority, seconds)


class _Reprs(dict[float, bytes]):
    """``repr(x).encode()`` per float, each worked out once: a batch's jobs share their times."""

    def __missing__(self, key: float) -> bytes:
        text = self[key] = repr(key).encode()
        return text


def commit_args(commits: Sequence[Commit]) -> Packed:
    """The ``commit.lua`` layout of ``commits``, after its four leading arguments."""
    reprs = _Reprs()
    parts: list[bytes] = []
    append = parts.append
    count = 0
    for commit in commits:
        effects, settlement = commit.effects, commit.settlement
        outcome = b"-" if settlement is None else _OUTCOMES[settlement.outcome]
        states, cancels, jobs = effects.states, effects.cancels, effects.jobs
        events, history = effects.events, effects.history
        with_effects = bool(states or cancels or jobs or events or history)
        # binary counts: Lua's struct.unpack reads them without making strings
        head = (
            outcome + _COUNTS.pack(len(states), len(cancels), len(jobs), len(events), len(history))
            if with_effects
            else outcome
        )
        if settlement is None:
            append(BULK % (len(head), head))
            count += 1
        else:
            job_id, token = settlement.job_id.encode(), b"%d" % settlement.token
            append(_SETTLEMENT % (len(head), head, len(job_id), job_id, len(token), token))
            count += 3
            if settlement.outcome is Outcome.RETRY:
                append(bulk("" if settlement.available_at is None else settlement.available_at))
                append(_NO_ERROR if settlement.error is None else _error(settlement.error))
                count += 4
            elif settlement.outcome is Outcome.DEAD:
                error = settlement.error
                if error is None:
                    raise ValueError(f"dead-letter settlement of {settlement.job_id!r} has no error")
                append(_error(error))
                count += 3
        if not with_effects:
            continue
        for write in states:
            append(
                bulk(write.key)
                + bulk("d" if write.op is StateOp.DELETE else "s")
                + bulk(b"" if write.value is None else write.value)
                + bulk("" if write.expected_version is None else write.expected_version)
            )
        for queue, key in cancels:
            append(bulk(queue) + bulk(key))
        for job in jobs:
            # one % per job, the loop of a 1,000-job enqueue: id, queue, body, available_at,
            # enqueued_at, idempotency key, options
            i, q, b, k = job.id.encode(), job.queue.encode(), job.body, _optional(job.idempotency_key)
            a, e = reprs[job.available_at], reprs[job.enqueued_at]
            o = _options(job)
            append(_JOB % (len(i), i, len(q), q, len(b), b, len(a), a, len(e), e, len(k), k, len(o), o))
        for event in events:
            append(bulk(event.id) + bulk(event.event) + bulk(event.body) + bulk(event.emitted_at))
        for entry in history:
            c, a, h = entry.correlation_id.encode(), reprs[entry.at], encode_history(entry)
            m = _optional(entry.message_id)
            append(_HISTORY % (len(c), c, len(a), a, len(m), m, len(h), h))
        count += 4 * len(states) + 2 * len(cancels) + 7 * len(jobs) + 4 * len(events) + 4 * len(history)
    return Packed(count, b"".join(parts))


def commit_results(commits: Sequence[Commit], reply: list[Any]) -> list[CommitResult]:
    """The results of ``commit.lua``: each job id is the one sent unless the reply replaces it."""
    results = []
    at = 0
    for commit in commits:
        status, deliveries, replaced = reply[at], reply[at + 1], reply[at + 2]
        at += 3
        if status:
            results.append(CommitResult(_STATUSES[status]))
        elif not commit.effects.jobs and not deliveries:
            results.append(_OK)  # the common ack: share one immutable result
        else:
            job_ids = [job.id for job in commit.effects.jobs]
            for index in range(at, at + 2 * replaced, 2):
                job_ids[reply[index] - 1] = reply[index + 1].decode()
            at += 2 * replaced
            results.append(CommitResult(CommitStatus.OK, tuple(job_ids), deliveries))
    return results


def rejection(commits: Sequence[Commit], rejected: list[Any]) -> str:
    """The message of a batch ``commit.lua`` rejected: each culprit (its job, if it settles one)
    and the corrupt key it needs, the first few of them."""
    culprits = []
    for i in range(0, min(len(rejected), 2 * _SHOWN_CULPRITS), 2):
        number, problem = rejected[i], rejected[i + 1].decode(errors="backslashreplace")
        settlement = commits[number - 1].settlement
        job = f" (job {settlement.job_id})" if settlement is not None else ""
        culprits.append(f"commit {number} of {len(commits)}{job}: {problem}")
    more = len(rejected) // 2 - len(culprits)
    return (
        "Redis rejected the commit batch, nothing was applied: "
        + "; ".join(culprits)
        + (f"; and {more} more" if more else "")
    )


def leased_jobs(reply: list[Any], now: float) -> list[LeasedJob]:
    """The jobs of a ``lease.lua`` reply's job list."""
    jobs = []
    for i in range(0, len(reply), 7):
        try:
            enqueued_at = float(reply[i + 5])
        except ValueError:  # a job hash edited by hand: this job must not fail the whole lease
            enqueued_at = now
        jobs.append(
            LeasedJob(
                id=reply[i].decode(),
                queue=reply[i + 1].decode(),
                body=reply[i + 2],
                attempt=reply[i + 3],
                token=reply[i + 4],
                lease_deadline=float(reply[i + 6]),
                enqueued_at=enqueued_at,
            )
        )
    return jobs


def dead_letters(reply: list[Any]) -> list[DeadLetter]:
    """The dead letters of a ``dead_letters.lua`` reply."""
    letters = []
    for i in range(0, len(reply), 9):
        traceback = reply[i + 5]
        letters.append(
            DeadLetter(
                id=reply[i].decode(),
                queue=reply[i + 1].decode(),
                body=reply[i + 2],
                error=ErrorInfo(
                    reply[i + 3].decode(),
                    reply[i + 4].decode(),
                    None if traceback is None else traceback.decode(),
                ),
                attempts=int(reply[i + 6]),
                enqueued_at=float(reply[i + 7]),
                failed_at=float(reply[i + 8]),
            )
        )
    return letters


def encode_history(entry: HistoryEntry) -> bytes:
    """A history entry as a JSON array starting with ``at`` (``prune_history.lua`` reads it)."""
    return orjson.dumps([entry.at, entry.kind, entry.name, entry.message_id, entry.attempt, entry.detail])


def decode_history(correlation_id: str, raw: bytes) -> HistoryEntry:
    """The inverse of :func:`encode_history`."""
    at, kind, name, message_id, attempt, detail = orjson.loads(raw)
    return HistoryEntry(correlation_id, float(at), kind, name, message_id, attempt, detail)
