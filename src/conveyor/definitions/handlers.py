"""The forms a handler takes, checked when it is declared rather than on its first job.

A handler written against the wrong form (a schedule's ``(ctx, tick)`` before schedules took a
tick, a queue worker missing its payload, a ``def`` instead of an ``async def``) would otherwise
raise ``TypeError`` on every job, be retried and dead-lettered, with nothing said at start-up.

====================  ============================================
declared with          the handler's form
====================  ============================================
``queue_worker``       ``async def handler(ctx, job)``
``subscription``       ``async def handler(ctx, event)``
``schedule``           ``async def handler(ctx)`` or ``async def handler(ctx, tick: ScheduleTick)``
``command``            ``async def handler(ctx, cmd) -> result``
``on_dead_letter``     ``async def handler(ctx, payload, error)``
====================  ============================================
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from conveyor.model.errors import ConfigurationError


@dataclass(frozen=True, slots=True)
class ScheduleTick:
    """The tick a schedule's handler runs for: ``async def nightly(ctx, tick: ScheduleTick)``.

    ``at`` is the tick's time (timezone-aware, UTC), the one the cron expression or interval named,
    not the time the handler started (which is later after downtime, or with ``catch_up="all"``).
    ``key`` is the tick's idempotency key, also its workflow instance id:
    ``schedule:<name>:<iso tick>``.
    """

    schedule: str
    at: datetime
    key: str


@dataclass(frozen=True)
class HandlerForm:
    """What a kind of handler is called with: its ``parameters`` after ``ctx`` (each a name for
    messages), and, for schedules, whether the last one may be left out."""

    kind: str
    parameters: tuple[str, ...]
    optional_last: bool = False

    def describe(self, name: str) -> str:
        shown = ", ".join(("ctx", *self.parameters))
        form = f"async def {name}({shown})"
        if self.optional_last:
            shorter = ", ".join(("ctx", *self.parameters[:-1]))
            form = f"async def {name}({shorter}) or {form}"
        return form


QUEUE_WORKER = HandlerForm("queue worker", ("job",))
SUBSCRIPTION = HandlerForm("subscription", ("event",))
SCHEDULE = HandlerForm("schedule", ("tick: ScheduleTick",), optional_last=True)
COMMAND = HandlerForm("command", ("cmd",))
DEAD_LETTER = HandlerForm("on_dead_letter hook", ("payload", "error"))


def _is_async(handler: Callable[..., Any]) -> bool:
    target: Any = handler
    while isinstance(target, functools.partial):
        target = target.func
    if inspect.iscoroutinefunction(target):
        return True
    call = getattr(type(target), "__call__", None)  # noqa: B004 - a callable object's own method
    return not inspect.isfunction(target) and call is not None and inspect.iscoroutinefunction(call)


def _accepts(signature: inspect.Signature, count: int) -> bool:
    try:
        signature.bind(*range(count))
    except TypeError:
        return False
    return True


def check_handler(form: HandlerForm, name: str, handler: Callable[..., Any]) -> int:
    """Check ``handler`` against ``form``; return how many arguments it is to be called with.

    Raises :class:`~conveyor.model.errors.ConfigurationError` naming the handler, the form
    expected and what was found: not callable, not ``async def``, or parameters that cannot take
    the arguments (extra parameters with defaults, ``*args`` and ``**kwargs`` are fine).
    """
    label = getattr(handler, "__qualname__", None) or repr(handler)
    where = f"{form.kind} {name!r}: handler {label}"
    expected = form.describe(getattr(handler, "__name__", "handler"))
    if not callable(handler):
        raise ConfigurationError(f"{where} is {type(handler).__name__}, not a function; expected {expected}")
    if not _is_async(handler):
        what = "an async generator" if inspect.isasyncgenfunction(handler) else "not async def"
        raise ConfigurationError(f"{where} is {what}; expected {expected}")
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):  # a builtin without a signature: nothing to check
        return 1 + len(form.parameters)
    counts = [1 + len(form.parameters)]
    if form.optional_last:
        counts.append(len(form.parameters))
    for count in counts:
        if _accepts(signature, count):
            return count
    raise ConfigurationError(f"{where} takes {signature}; expected {expected}")


def check_tick_annotation(name: str, handler: Callable[..., Any]) -> None:
    """A schedule handler's second parameter, when annotated, is a :class:`ScheduleTick`."""
    parameters = list(inspect.signature(handler).parameters.values())
    if len(parameters) < 2:
        return
    try:
        hint = typing.get_type_hints(handler).get(parameters[1].name)
    except Exception:  # an annotation that does not resolve here: mypy is the judge then
        return
    if hint is None or hint is ScheduleTick or hint is Any or hint is object:
        return
    label = getattr(handler, "__qualname__", repr(handler))
    raise ConfigurationError(
        f"schedule {name!r}: handler {label} annotates its tick as {hint!r}; expected "
        f"{SCHEDULE.describe(getattr(handler, '__name__', 'handler'))} (the tick is a ScheduleTick)"
    )
