"""Dead-lettering a job: what commits with its move to the dead-letter queue (``on_dead_letter``'s
effects, its history entry, its workflow's compensation), and what is left to commit when the
backend refused its attempt's commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from conveyor.definitions.service import QueueWorker
from conveyor.model.envelope import Envelope
from conveyor.model.errors import CommitRejectedError, HandlerTimeoutError, PermanentError
from conveyor.model.history import HistoryKind
from conveyor.ports import Commit, Effects, ErrorInfo, LeasedJob, Outcome, Settlement
from conveyor.runtime import producer
from conveyor.runtime.context import Context
from conveyor.runtime.error_text import describe_error, error_info
from conveyor.runtime.messages import Origin
from conveyor.runtime.observers import JobHistory
from conveyor.runtime.runtime import Runtime

logger = logging.getLogger("conveyor.worker")


class DeadLetters:
    """Builds the commits that dead-letter one worker's jobs."""

    def __init__(
        self, runtime: Runtime, queues: Mapping[str, QueueWorker[Any]], history: JobHistory | None
    ) -> None:
        self.runtime = runtime
        self.queues = queues
        self.history = history

    async def dead(
        self,
        leased: LeasedJob,
        envelope: Envelope | None,
        error: BaseException,
        effects: Effects,
        started: float,
        info: ErrorInfo | None = None,
    ) -> Commit:
        """Dead-letter the job with ``effects``, its history entry and its saga's compensation
        (``info``: what is stored of ``error``, when the caller has it already)."""
        if info is None:
            info = error_info(error)
        if envelope is not None and self.history is not None:
            await self.history.dead_lettered(envelope, leased, started, error, effects)
        definition = self.queues.get(leased.queue)
        if definition is not None and definition.dead_letter_event is not None:
            self._announce(definition.dead_letter_event, leased, envelope, info, effects)
        return Commit(Settlement(leased.id, leased.token, Outcome.DEAD, None, info), effects)

    def _announce(
        self, event: str, leased: LeasedJob, envelope: Envelope | None, info: ErrorInfo, effects: Effects
    ) -> None:
        """The queue's ``dead_letter_event`` into the dead letter's commit. Its id is the job's and
        attempt's, so the same dead letter committed twice announces itself once."""
        producer.add_event(
            self.runtime,
            effects,
            event,
            {
                "job_id": leased.id,
                "queue": leased.queue,
                "attempts": leased.attempt,
                "error": {"type": info.type, "message": info.message},
                "payload": envelope.payload if envelope is not None else None,
            },
            message_id=f"{leased.id}.dead.{leased.attempt}",
            origin=Origin(envelope),
            correlation_id=envelope.correlation_id if envelope is not None else leased.id,
        )

    async def with_hook(
        self,
        leased: LeasedJob,
        definition: QueueWorker[Any],
        envelope: Envelope,
        payload: Any,
        error: BaseException,
        started: float,
    ) -> Commit:
        """Dead-letter the job; ``on_dead_letter``'s effects commit with the move."""
        hook = definition.dead_letter_handler
        effects = Effects()
        info = error_info(error)
        # the stored, capped traceback rather than exc_info: a 5 MB message must not reach the log whole
        expected = isinstance(error, PermanentError | HandlerTimeoutError)
        logger.error(
            "job %s of %r dead-lettered after attempt %d: %s: %s%s",
            leased.id,
            leased.queue,
            leased.attempt,
            type(error).__name__,
            info.message,
            "" if expected or not info.traceback else "\n" + info.traceback.rstrip(),
        )
        if hook is not None:
            if payload is None and definition.payload is not None:
                with contextlib.suppress(Exception):  # invalid, or a validator that raised: None
                    payload = definition.payload.model_validate(envelope.payload)
            # a context of its own: the failed attempt's buffered writes neither commit nor show
            context = Context(
                self.runtime,
                service=definition.service.name,
                service_version=definition.service.version,
                emits=definition.dead_letter_emits,
                enqueues=definition.dead_letter_enqueues,
                envelope=envelope,
                leased=leased,
                max_attempts=envelope.max_attempts or definition.lifecycle.max_attempts,
            )
            try:
                await hook(context, payload, error)
            except asyncio.CancelledError:
                raise
            except BaseException as hook_error:
                logger.error(
                    "on_dead_letter of %r failed for job %s; dead-lettered without its effects",
                    definition.name,
                    leased.id,
                    exc_info=hook_error,
                )
                error = RuntimeError(
                    f"{describe_error(error)} (then on_dead_letter failed: {describe_error(hook_error)})"
                )
                info = error_info(error)
            else:
                effects = context.buffer.effects
                if self.history is not None:
                    self.history.dead_letter_handled(definition, envelope, leased, effects)
        return await self.dead(leased, envelope, error, effects, started, info)

    async def after_refusal(
        self, leased: LeasedJob, commit: Commit, rejected: CommitRejectedError
    ) -> list[Commit]:
        """What to commit, first to last until one is stored, to dead-letter ``leased`` on this
        attempt without the effects of ``commit`` that could not be stored: with ``rejected`` as
        its error, through ``on_dead_letter`` and with its history entry (a refused dead letter
        keeps its own error, noting the refusal, and gets its history entry only); last, bare."""
        started = self.runtime.clock.now()
        settlement = commit.settlement
        info = error_info(rejected)
        refused_dead = settlement is not None and settlement.outcome is Outcome.DEAD
        if refused_dead and settlement is not None and settlement.error is not None:
            own = settlement.error
            note = f"dead-lettered without its effects, which could not be stored: {info.message}"
            info = ErrorInfo(own.type, f"{own.message} ({note})", own.traceback)
        bare = Commit(Settlement(leased.id, leased.token, Outcome.DEAD, None, info))
        try:
            envelope = Envelope.decode(leased.body)
        except Exception:  # as in Attempts.run: whatever decode raises, this job has no envelope
            return [bare]
        envelope.attempt = leased.attempt
        if refused_dead:  # on_dead_letter ran already: its effects may be what was refused
            logger.error(
                "job %s of %r: its dead letter could not be stored with its effects; "
                "dead-lettered without them: %s",
                leased.id,
                leased.queue,
                describe_error(rejected),
            )
            effects = Effects()
            if self.history is not None:
                effects.history.append(
                    self.history.entry(envelope, leased, HistoryKind.DEAD_LETTERED, started, rejected)
                )
            return [Commit(bare.settlement, effects), bare]
        definition = self.queues[leased.queue]
        try:
            dead = await self.with_hook(leased, definition, envelope, None, rejected, started)
        except Exception as exc:  # e.g. a saga's history read refused the same text
            logger.error("job %s of %r: dead-lettering it bare: %s", leased.id, leased.queue, exc)
            return [bare]
        return [dead, bare]
