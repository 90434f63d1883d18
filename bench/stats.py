"""Reading the handlers' records, and the statistics and table the peers' driver prints.

Percentiles, medians, spreads and the table layout follow ``shared/bench/peers/driver.py`` so
that conveyor's figures and the peers' figures read the same way.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple


class Record(NamedTuple):
    """One handler run: ``kind`` (1 = W1 job, 2 = W2 step), workflow, step, three wall-clock times
    and the worker's CPU seconds at ``t_end``."""

    kind: int
    wf: int
    step: int
    t_enq: float
    t_start: float
    t_end: float
    cpu: float


def new_lines(path: str, offset: int) -> tuple[list[bytes], int]:
    """The complete lines appended to ``path`` after byte ``offset``, and the offset after them
    (a line still being written is left for the next call; a missing file has none yet)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return [], offset
    complete = chunk[: chunk.rfind(b"\n") + 1]
    return complete.splitlines(), offset + len(complete)


class RecordFile:
    """Reads a growing record file incrementally (only complete lines, each byte once)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.records: list[Record] = []
        self._offset = 0

    def poll(self) -> list[Record]:
        """Read what was appended since the last call; return every record so far."""
        lines, self._offset = new_lines(self.path, self._offset)
        for line in lines:
            kind, wf, step, *times = line.split()
            self.records.append(Record(int(kind), int(wf), int(step), *map(float, times)))
        return self.records


def pct(values: Iterable[float], q: float) -> float | None:
    """The peers' percentile: the value at index ``int(q * n)`` of the sorted values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else None


def latency(steps: Sequence[Record]) -> dict[str, dict[str, float | int | None]]:
    """p50/p99 of step start minus step enqueue, in ms: all steps, step 1, and hops (steps 2-3)."""
    groups = {
        "all": steps,
        "step1": [r for r in steps if r.step == 1],
        "next": [r for r in steps if r.step > 1],
    }
    out: dict[str, dict[str, float | int | None]] = {}
    for name, group in groups.items():
        ms = [(r.t_start - r.t_enq) * 1000 for r in group]
        out[name] = {"p50_ms": pct(ms, 0.5), "p99_ms": pct(ms, 0.99), "n": len(ms)}
    return out


def cpu_per_job_us(records: Sequence[Record]) -> float | None:
    """Worker CPU (all threads) per job in µs, from the first to the last record.

    The first record's own job is not covered by the difference, hence ``len - 1`` jobs.
    """
    if len(records) < 2:
        return None
    ordered = sorted(records, key=lambda r: r.cpu)
    return (ordered[-1].cpu - ordered[0].cpu) / (len(ordered) - 1) * 1e6


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _spread_pct(values: Sequence[float | None]) -> float | None:
    """(max - min) / median in percent, like the peers' driver (None for fewer than 2 values)."""
    present = [v for v in values if v is not None]
    if len(present) < 2 or not statistics.median(present):
        return None
    return (max(present) - min(present)) / statistics.median(present) * 100


COLUMNS: list[tuple[str, str, Callable[[dict[str, Any]], float | None]]] = [
    ("w1_enqueue_per_s", "W1 enq/s", lambda r: r["w1"]["enqueue_per_s"]),
    ("w1_process_per_s", "W1 proc/s", lambda r: r["w1"]["process_per_s"]),
    ("w2_workflows_per_s", "W2 wf/s", lambda r: r["w2"]["workflows_per_s"]),
    ("w2_p50_ms", "p50 ms", lambda r: _paced(r, "all", "p50_ms")),
    ("w2_p99_ms", "p99 ms", lambda r: _paced(r, "all", "p99_ms")),
    ("w2_next_p50_ms", "hop p50", lambda r: _paced(r, "next", "p50_ms")),
    ("w2_next_p99_ms", "hop p99", lambda r: _paced(r, "next", "p99_ms")),
]
"""(summary key, table heading, how to read it from one run) for each of the peers' figures."""

CPU_COLUMNS: list[tuple[str, str, Callable[[dict[str, Any]], float | None]]] = [
    ("w1_enqueue_many_per_s", "enqueue_many/s", lambda r: r["w1"]["enqueue_many_per_s"]),
    ("w1_cpu_us_per_job", "W1 CPU µs/job", lambda r: r["w1"]["cpu_us_per_job"]),
    ("w2_cpu_us_per_step", "W2 CPU µs/step", lambda r: r["w2"]["cpu_us_per_step"]),
    ("paced_cpu_us_per_step", "paced µs/step", lambda r: r["w2"].get("paced", {}).get("cpu_us_per_step")),
]
"""conveyor's own extra figures: ``enqueue_many`` without connecting, and the worker's CPU time
per job, which the machine's load moves less than rates."""


def _paced(run: dict[str, Any], group: str, key: str) -> float | None:
    value = run["w2"].get("paced", {}).get("latency", {}).get(group, {}).get(key)
    return None if value is None else float(value)


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per label: median, spread and every run's value of each figure, and whether all completed."""
    out: dict[str, dict[str, Any]] = {}
    for label in dict.fromkeys(r["label"] for r in runs):
        mine = [r for r in runs if r["label"] == label]
        row: dict[str, Any] = {}
        for key, _, read in COLUMNS + CPU_COLUMNS:
            values = [read(r) for r in mine]
            row[key] = {"median": _median(values), "spread_pct": _spread_pct(values), "runs": values}
        row["complete"] = all(r["w1"]["complete"] and r["w2"]["complete"] for r in mine)
        out[label] = row
    return out


def _cell(median: float | None, spread: float | None) -> str:
    text = "-" if median is None else (f"{median:.0f}" if median >= 100 else f"{median:.1f}")
    return text + ("" if spread is None else f" ±{spread / 2:.0f}%")


def table(
    summary: dict[str, dict[str, Any]],
    columns: Sequence[tuple[str, str, Callable[[dict[str, Any]], float | None]]] = COLUMNS,
) -> str:
    """The peers' table: one row per label, median ±half-spread per column, ``*`` if incomplete."""
    width = max([20, *(len(label) + 2 for label in summary)])
    lines = [f"{'backend':<{width}}" + "".join(f"{heading:>18}" for _, heading, _ in columns)]
    for label, row in summary.items():
        cells = "".join(f"{_cell(row[key]['median'], row[key]['spread_pct']):>18}" for key, _, _ in columns)
        lines.append(f"{label + ('' if row['complete'] else '*'):<{width}}" + cells)
    return "\n".join(lines)
