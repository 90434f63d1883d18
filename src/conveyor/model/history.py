"""The kinds of workflow history entry the runtime writes, one member per transition it records.

A :class:`HistoryKind` is a :class:`str` (a :class:`~enum.StrEnum`): a member is its stored text, so
writing one costs nothing over a literal and a backend stores and returns plain text, as it always
has. A kind read back compares equal to its member (``entry.kind == HistoryKind.SUCCEEDED``), which
is how the history is read; it is not converted, so a kind this version does not know (written by a
newer one during a rolling deploy) is skipped rather than an error.

>>> HistoryKind.DEAD_LETTERED == "dead_lettered"
True
"""

from __future__ import annotations

import enum


class HistoryKind(enum.StrEnum):
    """What a :class:`~conveyor.ports.HistoryEntry` records; its ``kind`` holds one of these values."""

    ENQUEUED = "enqueued"
    """A job was enqueued (by a handler, ``App.enqueue``, a compensation or an approval timer);
    its detail holds ``available_at`` when the job is delayed."""
    EMITTED = "emitted"
    """An event was emitted; the entry's name is the event's."""
    SUCCEEDED = "succeeded"
    """A job's handler returned and its job committed; a compensable step's detail keeps its payload."""
    RETRIED = "retried"
    """An attempt failed and the job was scheduled for another; the detail holds the error."""
    DEAD_LETTERED = "dead_lettered"
    """A job was moved to the dead letters (attempts exhausted, permanent error, invalid payload)."""
    COMPENSATED = "compensated"
    """A queue's ``on_dead_letter`` ran for a dead-lettered job, or a saga's compensation job succeeded."""
    COMPENSATION_STARTED = "compensation_started"
    """A dead letter started a saga's compensations; the detail lists the steps to undo, newest first."""
    STATE_CHANGED = "state_changed"
    """A handler wrote a state; the entry's name is the key, its detail the operation (set, delete)."""
    CANCELLED = "cancelled"
    """A handler cancelled a pending job; the entry's name is the queue, its detail the idempotency key."""
    APPROVAL_REQUESTED = "approval_requested"
    """A handler asked for an approval at a gate; the detail holds the deadline."""
    APPROVAL_DECIDED = "approval_decided"
    """An approval was approved or rejected; the detail holds the outcome, who decided, and the note."""
    APPROVAL_TIMED_OUT = "approval_timed_out"
    """An approval's deadline passed undecided; its gate's timer wrote this."""
