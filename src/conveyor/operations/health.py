"""Health: ok, warn (dead letters, backlog, old jobs, jobs in undeclared queues) or fail (backend
unreachable)."""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass, field
from typing import Literal

from conveyor.model.errors import BackendError
from conveyor.ports import Backend
from conveyor.runtime.clock import Clock

Level = Literal["ok", "warn", "fail"]
_ORDER: dict[Level, int] = {"ok": 0, "warn": 1, "fail": 2}


@dataclass(frozen=True)
class HealthThresholds:
    """When a queue counts as unhealthy: more ready jobs than ``max_backlog``, or a ready job
    waiting longer than ``max_age`` seconds; any dead letter warns unless ``dead_letters_warn`` is off."""

    max_backlog: int = 10_000
    max_age: float = 300.0
    dead_letters_warn: bool = True


@dataclass(frozen=True)
class HealthReport:
    status: Level
    problems: list[str] = field(default_factory=list)
    queues: dict[str, dict[str, float | int | bool | None]] = field(default_factory=dict)
    undeclared_queues: list[str] = field(default_factory=list)
    """Queues holding jobs or dead letters that no service of the app declares (nor names external)."""
    paused_queues: dict[str, float] = field(default_factory=dict)
    """Paused queues, with when each was paused. A pause is an operator's choice, so it does not
    make the status warn (a probe must not restart workers for it); it is reported beside it."""

    @property
    def exit_code(self) -> int:
        """0 ok, 1 warn, 2 fail (the Nagios convention)."""
        return _ORDER[self.status]


async def check_health(
    backend: Backend, clock: Clock, known: Set[str], thresholds: HealthThresholds | None = None
) -> HealthReport:
    """The health of every queue ``backend`` holds; ``known`` are the queues the app declares or
    names external (others holding jobs are reported as undeclared)."""
    limits = thresholds or HealthThresholds()
    try:
        names = sorted(known | set(await backend.queue_names()))
        stats = await backend.stats(names, clock.now())
        paused = await backend.paused_queues()
    except (BackendError, OSError) as exc:
        return HealthReport("fail", [f"backend unreachable: {exc}"])
    now = clock.now()
    status: Level = "ok"
    problems: list[str] = []
    queues: dict[str, dict[str, float | int | bool | None]] = {}
    undeclared: list[str] = []
    for s in stats:
        age = None if s.oldest_ready_at is None else max(0.0, now - s.oldest_ready_at)
        queues[s.queue] = {
            "ready": s.ready,
            "scheduled": s.scheduled,
            "leased": s.leased,
            "dead": s.dead,
            "oldest_ready_age": age,
            "paused": s.paused,
        }
        if s.dead and limits.dead_letters_warn:
            problems.append(f"{s.queue}: {s.dead} dead letter(s)")
        if s.queue not in known:
            undeclared.append(s.queue)
            if waiting := s.ready + s.scheduled + s.leased:
                problems.append(
                    f"{s.queue}: {waiting} job(s) in a queue no service of this app declares; nothing "
                    "here will run them (declare the queue, or name it in App(external_queues=[...]) "
                    "if another app serves it)"
                )
            continue  # the thresholds below are for the queues this app knows
        if s.ready > limits.max_backlog:
            problems.append(f"{s.queue}: backlog of {s.ready} ready jobs (over {limits.max_backlog})")
        if age is not None and age > limits.max_age:
            problems.append(f"{s.queue}: oldest ready job waited {age:.0f}s (over {limits.max_age:g}s)")
    if problems:
        status = "warn"
    return HealthReport(status, problems, queues, undeclared, paused)
