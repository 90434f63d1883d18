"""Summarize py-spy's raw (collapsed-stack) profiles: where a worker's time goes.

    .venv/bin/python bench/profile_summary.py /tmp/prof/conveyor-sqlite-r0-w1.txt [--top 25] \\
        [--match conveyor/] [--buckets] [--no-startup]

Prints the share of samples per function, line numbers dropped: **self** (the function was on top
of the stack), **inclusive** (anywhere on the stack, counted once per sample) and, with
``--match``, **attributed**: each sample goes to the deepest frame containing ``--match``, so
e.g. the time psycopg or sqlite3 spend for a conveyor function is charged to that function (samples
with no such frame are the event loop, threads' plumbing and start-up). The inclusive table, too,
then lists only frames containing ``--match``. ``--buckets`` adds one coarse split of all samples:
start-up, the benchmark's handler, event-loop waits, thread hand-offs, socket sends, and per
conveyor package (the deepest ``conveyor/`` frame decides: ``backends/<name>``, ``runtime``...).
Shares are of all non-idle samples of all threads, so start-up appears too.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable

_LINE_NUMBER = re.compile(r":\d+\)$")


def frame_name(frame: str) -> str:
    """``func (path/file.py:123)`` -> ``func (path/file.py)``, the unit the shares add up in."""
    return _LINE_NUMBER.sub(")", frame.strip())


def read_stacks(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    """Parse ``frame;frame;...;frame count`` lines into (frames root first, samples)."""
    stacks = []
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if stack and count.isdigit():
            stacks.append(([frame_name(f) for f in stack.split(";")], int(count)))
    return stacks


OUTSIDE = "(no matching frame)"
_IMPORTING = "<frozen importlib"
_HANDLERS = ("noop (workload.py)", "step (workload.py)")
_HANDOFF = ("_write_to_self", "concurrent/futures/thread.py", "(threading.py)")


def bucket(frames: list[str]) -> str:
    """The coarse category of one sample (frames root first); the first rule that applies wins.

    Epoll waits and thread hand-offs show up as busy when the waking thread waits for the GIL:
    their share is the price of a second thread (SQLite's) contending with the event loop.
    """
    top = frames[-1]
    if any(_IMPORTING in f for f in frames):
        return "start-up (imports)"
    handler = next((i for i, f in enumerate(frames) if f.startswith(_HANDLERS)), None)
    if handler is not None and not any("conveyor/" in f for f in frames[handler + 1 :]):
        return "the benchmark's handler and recorder"
    if top.startswith("EpollSelector.select"):
        return "event loop: epoll wait"
    if any(part in top for part in _HANDOFF):
        return "thread hand-off (executor, call_soon_threadsafe, locks)"
    if top.startswith(("_SelectorSocketTransport.write", "WriteTransport.writelines")):
        return "socket send"
    deepest = next((f for f in reversed(frames) if "conveyor/" in f), None)
    if deepest is None:
        return "no conveyor frame (threads' plumbing, interpreter)"
    path = deepest[deepest.index("conveyor/") :].rstrip(")")
    parts = path.split("/")
    if parts[1] == "backends" and len(parts) > 3:
        return f"conveyor/backends/{parts[2]}"
    if path == "conveyor/app.py":
        return "asyncio loop machinery (no conveyor frame below App.run)"
    return "conveyor/" + parts[1].removesuffix(".py")


def shares(
    stacks: list[tuple[list[str], int]], match: str
) -> tuple[int, Counter[str], Counter[str], Counter[str]]:
    """(total samples, and samples per frame: self, inclusive of matching frames, attributed)."""
    total = 0
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    attributed: Counter[str] = Counter()
    for frames, samples in stacks:
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            if match in frame:
                inclusive[frame] += samples
        deepest = next((f for f in reversed(frames) if match in f), OUTSIDE)
        attributed[deepest] += samples
    return total, own, inclusive, attributed


def main(argv: list[str] | None = None) -> None:
    """Print the tables for each profile given (buckets in full, the others' ``--top`` rows)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profiles", nargs="+", help="py-spy record --format raw output files")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--match", default="", help="inclusive table: only frames containing this text")
    ap.add_argument("--buckets", action="store_true", help="also print the coarse split (see bucket())")
    ap.add_argument("--no-startup", action="store_true", help="drop the samples taken while importing")
    a = ap.parse_args(argv)
    for path in a.profiles:
        with open(path) as f:
            stacks = read_stacks(f)
        if a.no_startup:
            stacks = [(frames, n) for frames, n in stacks if not any(_IMPORTING in f for f in frames)]
        total, own, inclusive, attributed = shares(stacks, a.match)
        print(f"== {path}: {total} samples")
        tables = [("self", own), (f"inclusive {a.match}".rstrip(), inclusive)]
        if a.match:
            tables.append((f"attributed to the deepest {a.match} frame", attributed))
        if a.buckets:
            buckets: Counter[str] = Counter()
            for frames, samples in stacks:
                buckets[bucket(frames)] += samples
            tables.insert(0, ("buckets", buckets))
        for title, counter in tables:
            print(f"-- {title}")
            for frame, samples in counter.most_common(None if title == "buckets" else a.top):
                print(f"{samples / max(total, 1) * 100:6.1f}%  {frame}")


if __name__ == "__main__":
    main()
