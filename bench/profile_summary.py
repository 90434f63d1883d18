"""Summarize py-spy's raw (collapsed-stack) profiles: where a worker's time goes.

    .venv/bin/python bench/profile_summary.py /tmp/prof/conveyor-sqlite-r0-w1.txt [--top 25] \\
        [--match conveyor/]

Prints the share of samples per function, line numbers dropped: **self** (the function was on top
of the stack), **inclusive** (anywhere on the stack, counted once per sample) and, with
``--match``, **attributed**: each sample goes to the deepest frame containing ``--match``, so
e.g. the time psycopg or sqlite3 spend for a conveyor function is charged to that function (samples
with no such frame are the event loop, threads' plumbing and start-up). The inclusive table, too,
then lists only frames containing ``--match``. Shares are of all non-idle samples of
all threads, so start-up appears too (it is small next to a drain of 10,000 jobs).
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
    """Print the self and inclusive tables for each profile given."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profiles", nargs="+", help="py-spy record --format raw output files")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--match", default="", help="inclusive table: only frames containing this text")
    a = ap.parse_args(argv)
    for path in a.profiles:
        with open(path) as f:
            total, own, inclusive, attributed = shares(read_stacks(f), a.match)
        print(f"== {path}: {total} samples")
        tables = [("self", own), (f"inclusive {a.match}".rstrip(), inclusive)]
        if a.match:
            tables.append((f"attributed to the deepest {a.match} frame", attributed))
        for title, counter in tables:
            print(f"-- {title}")
            for frame, samples in counter.most_common(a.top):
                print(f"{samples / max(total, 1) * 100:6.1f}%  {frame}")


if __name__ == "__main__":
    main()
