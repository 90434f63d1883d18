"""conveyor's exceptions.

Two families, kept apart on purpose:

* control flow a handler raises on purpose: :class:`PermanentError` (do not retry, dead-letter now),
  :class:`Retry` (retry, optionally after a given delay) and :class:`JobCancelledError` (stop here,
  the job is cancelled);
* errors that signal a misuse or a failure of the system: everything under :class:`ConveyorError`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Self


class PermanentError(Exception):
    """Raised by a handler when retrying cannot help: the job goes straight to the dead-letter queue."""


class Retry(Exception):
    """Raised by a handler to ask for another attempt, optionally after ``delay`` seconds.

    The attempt still counts towards ``max_attempts``.
    """

    def __init__(self, message: str = "retry requested", *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class JobCancelledError(Exception):
    """Raised by a handler to end its attempt as cancelled, typically once an operator asked for it
    (``ctx.raise_if_cancel_requested()``): the job is settled for good, without retry, dead letter or
    ``on_dead_letter``, its buffered effects discarded, and its history records it as cancelled."""


class ConveyorError(Exception):
    """Base of every error conveyor itself raises."""


class ConfigurationError(ConveyorError):
    """The app, a service or a decorator was configured in a way that cannot work."""


class UndeclaredEmitError(ConveyorError):
    """A handler emitted an event it did not declare in ``emits=[...]``."""


class UndeclaredEnqueueError(ConveyorError):
    """A handler enqueued to a queue it did not declare in ``enqueues=[...]``."""


class NotInJobError(ConveyorError):
    """``ctx.job`` was read where there is no job: in a command run by ``app.invoke``."""


class UnknownNameError(ConveyorError):
    """A name (queue, command, approval gate) that no service of the app declares.

    ``name`` is the unknown name and ``suggestions`` the closest declared ones (maybe none), which
    the message names too: ``queue 'proces_payment' ...; did you mean 'process_payment'?``. Catch
    this to catch any of :class:`UnknownQueueError`, :class:`UnknownCommandError` and
    :class:`UnknownApprovalGateError`.
    """

    def __init__(self, message: str, *, name: str | None = None, suggestions: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.name = name
        self.suggestions = list(suggestions)

    @classmethod
    def among(cls, kind: str, name: str, declared: Iterable[str], hint: str = "") -> Self:
        """The error for ``kind`` ``name`` missing from ``declared``, with the closest names."""
        known = sorted(declared)
        close = difflib.get_close_matches(name, known, n=3)
        message = f"no service of this app declares {kind} {name!r}"
        if close:
            message += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
        elif known:
            shown = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
            message += f" (declared: {shown})"
        return cls(message + hint, name=name, suggestions=close)


class UnknownQueueError(UnknownNameError):
    """A queue (or schedule) name that no service of the app declares and that is not external."""


class UnknownCommandError(UnknownNameError):
    """A command name that no service of the app declares (``app.invoke``, ``ctx.invoke``)."""


class ApprovalError(ConveyorError):
    """A decision that cannot be taken: nothing requested, or already decided or timed out."""


class UnknownApprovalGateError(UnknownNameError):
    """An approval gate name that no service of the app declares (request or decision)."""


class PayloadValidationError(ConveyorError):
    """A payload (or state value) did not validate against its pydantic model, or cannot be stored
    as JSON: not serializable, or holding NaN, ±Infinity or a lone surrogate. Raised by the call
    that was given it, before anything is stored. Permanent for an incoming job."""


class UnstorableTextError(ConveyorError):
    """A key, name or id given to conveyor holds a character no backend can store: a NUL
    (PostgreSQL's ``text`` refuses it) or a lone surrogate (it has no UTF-8 form). Raised by the
    call that was given it (``ctx.states.set``, ``enqueue(idempotency_key=...)``, ...), before
    anything is stored."""


class PayloadTooLargeError(ConveyorError):
    """A serialized payload is larger than the app's ``max_payload_bytes``."""


class UndecodableMessageError(ConveyorError):
    """A stored message could not be decoded (not JSON, or not a conveyor envelope)."""


class LeaseLostError(ConveyorError):
    """The job's lease expired or was taken by another worker; this attempt can no longer commit."""


class StateConflictError(ConveyorError):
    """A ``compare_and_set`` found another version than the one expected."""


class EnqueueIncompleteError(ConveyorError):
    """``enqueue_many`` stored some of its batches, then one failed (the cause is chained).

    ``stored_ids`` are the ids of the jobs known to be stored, in payload order; the others may or
    may not be (a batch whose reply was lost). Give each job an idempotency key to retry safely.
    """

    def __init__(self, message: str, stored_ids: list[str]) -> None:
        super().__init__(message)
        self.stored_ids = stored_ids


class BackendError(ConveyorError):
    """A backend operation failed; the driver's own exception is chained as ``__cause__``."""


class CommitRejectedError(BackendError):
    """The backend cannot store what a commit holds (text it refuses, a key too long for its
    index, ...); nothing of it was applied. The backend's own error, if any, is chained.

    A backend raises it for a whole commit call it applied nothing of; the worker's committer
    narrows that down to the one commit responsible and fails only that job's commit with it (the
    job is then dead-lettered with this error). See :mod:`conveyor.ports`.
    """


class BackendUnavailableError(BackendError):
    """The backend cannot be reached (connection refused, lost, timed out)."""


class SchemaVersionError(BackendError):
    """The backend's stored schema is of a version this conveyor does not know."""


class HandlerTimeoutError(ConveyorError):
    """An attempt ran longer than its ``Lifecycle.timeout``. Retryable."""
