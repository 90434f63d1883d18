"""The overview's throughput chart: jobs settled per minute over the last hour, as bars the
template draws in an inline SVG (no script, no chart library)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from conveyor.ports import COUNT_BUCKET, MinuteCounts

WIDTH, HEIGHT, MINUTES = 600, 120, 60


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    width: float
    minute: float
    completed: int
    retried: int
    dead: int
    completed_height: float
    failed_height: float
    """Retried and dead together, drawn on top of the completed."""


@dataclass(frozen=True, slots=True)
class Chart:
    bars: list[Bar]
    peak: int
    width: int = WIDTH
    height: int = HEIGHT
    minutes: int = MINUTES

    @property
    def total(self) -> int:
        return sum(bar.completed for bar in self.bars)


def throughput(counts: Iterable[MinuteCounts], now: float, minutes: int = MINUTES) -> Chart:
    """One bar per minute of the last ``minutes`` (every queue summed), scaled to the busiest."""
    first = (now // COUNT_BUCKET - (minutes - 1)) * COUNT_BUCKET
    sums: dict[int, list[int]] = {}
    for count in counts:
        slot = int((count.minute - first) // COUNT_BUCKET)
        if 0 <= slot < minutes:
            total = sums.setdefault(slot, [0, 0, 0])
            total[0] += count.completed
            total[1] += count.retried
            total[2] += count.dead
    peak = max((sum(total) for total in sums.values()), default=0)
    scale = (HEIGHT - 4) / peak if peak else 0.0
    step = WIDTH / minutes
    bars = []
    for slot in range(minutes):
        completed, retried, dead = sums.get(slot, (0, 0, 0))
        bars.append(
            Bar(
                x=slot * step,
                width=max(1.0, step - 1),
                minute=first + slot * COUNT_BUCKET,
                completed=completed,
                retried=retried,
                dead=dead,
                completed_height=completed * scale,
                failed_height=(retried + dead) * scale,
            )
        )
    return Chart(bars, peak)
