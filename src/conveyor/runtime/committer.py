"""Group commit: settlements submitted while a commit is in flight share the next round trip.

One job's commit that cannot be stored fails alone: its text is checked before it joins a batch,
a commit the backend answers ``REJECTED`` fails alone, and a batch the backend refuses whole is
split until the culprit is alone (see :mod:`conveyor.ports` for what a backend does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Protocol

from conveyor.model.errors import (
    BackendError,
    BackendUnavailableError,
    CommitRejectedError,
    ConveyorError,
    LeaseLostError,
    StateConflictError,
)
from conveyor.model.text import is_storable, text_problem
from conveyor.ports import Backend, Commit, CommitAndLease, CommitResult, CommitStatus, LeasedJob
from conveyor.runtime.clock import Clock

logger = logging.getLogger("conveyor.worker")


class Refill(Protocol):
    """The worker's side of leasing with a commit (see :class:`~conveyor.ports.CommitAndLease`)."""

    @property
    def id(self) -> str:
        """The worker's id, which its leases record."""
        ...

    @property
    def lease_map(self) -> Mapping[str, float]:
        """Queue name → lease seconds."""
        ...

    def reserve(self, settling: int) -> int:
        """Claim the slots free once ``settling`` jobs are settled; returns how many (maybe 0)."""
        ...

    def leased(self, jobs: list[LeasedJob], reserved: int) -> None:
        """Start ``jobs`` and give back the ``reserved`` slots they were leased for."""
        ...


class Committer:
    """Batches commits from many concurrent jobs into few backend calls.

    A failed round trip is retried while the backend is unreachable: that is safe because every
    settlement is fenced by its lease token (a commit that did apply comes back ``STALE``, applying
    nothing twice). A round trip that fails otherwise is split in halves, committed again, down to
    single commits: the others commit in this pass, and the one that cannot be stored fails with
    :class:`CommitRejectedError`.
    """

    def __init__(
        self, backend: Backend, clock: Clock, *, max_batch: int = 500, refill: Refill | None = None
    ) -> None:
        self._backend = backend
        self._refill = refill if isinstance(backend, CommitAndLease) else None
        self._clock = clock
        self._max_batch = max_batch
        self._pending: list[tuple[Commit, asyncio.Future[CommitResult]]] = []
        self._wake = asyncio.Event()
        self._closing = False
        self.retry_for = 60.0

    async def submit(self, commit: Commit) -> CommitResult:
        """Commit ``commit`` with whatever else is pending; raises :class:`CommitRejectedError`
        (before it joins a batch, or after) if it cannot be stored."""
        problem = unstorable(commit)
        if problem is not None:
            raise CommitRejectedError(f"the commit cannot be stored: {problem}")
        return await self.queue(commit)

    def queue(self, commit: Commit) -> asyncio.Future[CommitResult]:
        """Add ``commit`` to the pending ones now (unchecked: for settlements without effects) and
        return its future; a committer that is closing still commits it before it stops."""
        future: asyncio.Future[CommitResult] = asyncio.get_running_loop().create_future()
        self._pending.append((commit, future))
        self._wake.set()
        return future

    async def run(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            try:
                await self._settle(batch)
            except Exception:
                # A bug (a backend answering the wrong number of results, say): the batch's futures
                # have failed, so its jobs run again when their leases expire. A committer that
                # stopped here would leave every later commit, and so every slot, waiting forever.
                logger.exception("a commit batch of %d failed unexpectedly; committing goes on", len(batch))

    async def _settle(self, batch: list[tuple[Commit, asyncio.Future[CommitResult]]]) -> None:
        """Commit ``batch``, splitting it on a failure so only the culprits' futures fail."""
        parts, part = [batch], batch
        alone: list[tuple[Commit, asyncio.Future[CommitResult], Exception]] = []
        """commits that failed on their own, with the error"""
        through = False
        """whether any commit of the batch was applied: then a commit failing alone, twice, is to blame"""
        try:
            while parts:
                part = parts.pop()
                try:
                    results = await self._commit([commit for commit, _ in part])
                except BackendUnavailableError as exc:
                    _fail((future for _, future in part), exc)
                    continue
                except Exception as exc:
                    if len(part) == 1:
                        alone.append((part[0][0], part[0][1], exc))
                    else:
                        if len(part) == len(batch):
                            logger.warning(
                                "a batch of %d commits failed (%s: %s); committing it in halves "
                                "to isolate the commit responsible",
                                len(part),
                                type(exc).__name__,
                                exc,
                            )
                        half = len(part) // 2
                        parts += [part[half:], part[:half]]  # the first half next
                    continue
                through = True
                for (_, future), result in zip(part, results, strict=True):
                    if future.done():
                        continue
                    if result.status is CommitStatus.REJECTED:
                        future.set_exception(rejection(result))
                    else:
                        future.set_result(result)
        except BaseException as exc:  # cancelled, or worse: nothing more will be committed
            error = BackendError(f"commit interrupted: {exc!r}")
            for unsettled in [part, *parts]:
                _fail((future for _, future in unsettled), error)
            _fail((future for _, future, _ in alone), error)
            raise
        for commit, future, failure in alone:
            if future.done():
                continue
            if isinstance(failure, CommitRejectedError):
                future.set_exception(_rejected(failure))
            elif through:
                # Others went through, yet this one failed with an error its backend did not call a
                # refusal: a content error it does not map, or a passing one (a deadlock that
                # outlasted the backend's own retries). Once more, alone: what fails again is this
                # commit's to blame; what passes was the moment's.
                await self._blame_if_it_fails_again(commit, future)
            else:  # every commit failed: the backend's failure, not this commit's
                future.set_exception(failure)

    async def _blame_if_it_fails_again(self, commit: Commit, future: asyncio.Future[CommitResult]) -> None:
        try:
            [result] = await self._commit([commit])
        except BackendUnavailableError as exc:
            future.set_exception(exc)
        except Exception as exc:
            future.set_exception(_rejected(exc))
        else:
            if result.status is CommitStatus.REJECTED:
                future.set_exception(rejection(result))
            else:
                future.set_result(result)

    async def _commit(self, commits: list[Commit]) -> list[CommitResult]:
        delay, waited = 0.05, 0.0
        while True:
            try:
                return await self._commit_once(commits)
            except BackendUnavailableError as exc:
                if waited >= self.retry_for:
                    raise
                logger.warning("commit failed, retrying in %.2fs: %s", delay, exc)
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 2.0)

    async def _commit_once(self, commits: list[Commit]) -> list[CommitResult]:
        refill = self._refill
        reserved = refill.reserve(len(commits)) if refill is not None else 0
        if not reserved:
            return await self._backend.commit(commits, self._clock.now())
        assert refill is not None and isinstance(self._backend, CommitAndLease)
        jobs: list[LeasedJob] = []
        try:
            results, jobs = await self._backend.commit_and_lease(
                commits, self._clock.now(), refill.lease_map, reserved, refill.id
            )
        finally:
            refill.leased(jobs, reserved)  # before the settled jobs' slots free up
        return results

    async def close(self) -> None:
        """Let every pending commit go through, then stop."""
        self._closing = True
        self._wake.set()


def _fail(futures: Iterable[asyncio.Future[CommitResult]], error: Exception) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(error)


def _rejected(error: Exception) -> CommitRejectedError:
    reason = str(error) if isinstance(error, CommitRejectedError) else f"{type(error).__name__}: {error}"
    rejected = CommitRejectedError(f"the backend refused this commit: {reason}")
    rejected.__cause__ = error
    return rejected


def rejection(result: CommitResult) -> CommitRejectedError:
    """The error for a commit the backend answered ``REJECTED``."""
    return CommitRejectedError(f"the backend refused this commit: {result.error or 'no reason given'}")


def not_applied(result: CommitResult, what: str) -> ConveyorError | None:
    """The error for ``what`` (a commit the backend answered ``result`` for), named after why
    nothing of it was applied; None if it was."""
    match result.status:
        case CommitStatus.OK:
            return None
        case CommitStatus.REJECTED:
            return rejection(result)
        case CommitStatus.CONFLICT:
            return StateConflictError(f"{what}: a compare_and_set found another version; nothing applied")
        case CommitStatus.STALE:
            return LeaseLostError(f"{what}: the job's lease was lost; nothing applied")


def unstorable(commit: Commit) -> str | None:
    """What text of ``commit``'s effects some backend cannot store, in words; None if all is fine.

    The calls that make effects check what they are given; this catches what they do not see
    (a correlation id inherited from a stored message, effects built by hand). About 0.5 µs for a
    job's usual commit (timeit, 0.5-0.7 µs in docs/BENCHMARKS.md "After the reliability hardening
    (issue 14)"; the command was not recorded, not re-measured). The settlement is not checked:
    its job id came from the backend, its error from :func:`~conveyor.runtime.error_text.error_info`,
    which makes it storable.
    """
    effects = commit.effects
    texts = [write.key for write in effects.states]
    for queue, key in effects.cancels:
        texts += (queue, key)
    for job in effects.jobs:
        texts += (job.id, job.queue, job.idempotency_key or "")
    for event in effects.events:
        texts += (event.id, event.event)
    for entry in effects.history:
        texts += (entry.correlation_id, entry.name, entry.kind, entry.message_id or "", entry.detail or "")
    joined = "\x01".join(texts)  # one scan of everything: the usual case
    if "\x00" not in joined and (joined.isascii() or is_storable(joined)):
        return None
    for what, text in _texts(commit):
        if not is_storable(text):
            return f"{what} {text!r} holds {text_problem(text)}"
    return None


def _texts(commit: Commit) -> Iterator[tuple[str, str]]:
    effects = commit.effects
    for write in effects.states:
        yield "state key", write.key
    for queue, key in effects.cancels:
        yield "queue name", queue
        yield "idempotency key", key
    for job in effects.jobs:
        yield "job id", job.id
        yield "queue name", job.queue
        if job.idempotency_key is not None:
            yield "idempotency key", job.idempotency_key
    for event in effects.events:
        yield "event id", event.id
        yield "event name", event.event
    for entry in effects.history:
        yield "correlation id", entry.correlation_id
        yield "history name", entry.name
        yield "history kind", entry.kind
        if entry.message_id is not None:
            yield "message id", entry.message_id
        if entry.detail is not None:
            yield "history detail", entry.detail
