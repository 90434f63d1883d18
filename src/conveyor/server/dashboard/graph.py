"""The workflow graph from code, laid out for an inline SVG, with the path an instance took lit.

Nodes sit in rows by their distance from where work starts (commands, schedules, anything nothing
leads to); within a row they follow their parents, left to right. The graphs of a service are
small (tens of nodes), so this simple layered layout reads well without a layout engine.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from conveyor.operations.graph import DEAD_LETTER, DEAD_LETTER_ENQUEUE, Edge

ROW, GAP, CHAR, PAD, NODE_HEIGHT = 64, 18, 7.2, 18, 30

Node = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Box:
    kind: str
    name: str
    x: float
    y: float
    width: float
    lit: bool
    dead: bool = False

    @property
    def cx(self) -> float:
        return self.x + self.width / 2


@dataclass(frozen=True, slots=True)
class Arrow:
    path: str
    """An SVG path from the source's bottom to the target's top (a curve round the side when the
    target is not below)."""
    label: str | None
    lit: bool
    dead_letter: bool


@dataclass(frozen=True, slots=True)
class Layout:
    boxes: list[Box]
    arrows: list[Arrow]
    width: float
    height: float


def _rows(nodes: list[Node], edges: list[Edge]) -> dict[Node, int]:
    """Each node's row: breadth first from the nodes nothing leads to (and, for a cycle nothing
    leads into, from its first node)."""
    children: dict[Node, list[Node]] = {node: [] for node in nodes}
    entered: set[Node] = set()
    for edge in edges:
        children[edge.source].append(edge.target)
        entered.add(edge.target)
    row: dict[Node, int] = {}
    frontier = [node for node in nodes if node not in entered]
    while len(row) < len(nodes):
        if not frontier:
            frontier = [next(node for node in nodes if node not in row)]
        for node in frontier:
            row.setdefault(node, 0)
        while frontier:
            following: list[Node] = []
            for node in frontier:
                for child in children[node]:
                    if child not in row:
                        row[child] = row[node] + 1
                        following.append(child)
            frontier = following
    return row


def layout(
    edges: Iterable[Edge],
    *,
    nodes: Iterable[Node] = (),
    visited: AbstractSet[Node] = frozenset(),
    dead: AbstractSet[Node] = frozenset(),
) -> Layout:
    """Boxes and arrows of the graph drawn by ``edges`` (and of ``nodes`` no edge touches: a queue
    only ``ctx.enqueue`` feeds); ``visited`` nodes (and arrows between two of them) are lit,
    ``dead`` ones marked as dead-lettered."""
    drawn = list(edges)
    every: list[Node] = []
    for edge in drawn:
        every += (edge.source, edge.target)
    every += nodes
    ordered = list(dict.fromkeys(every))
    row = _rows(ordered, drawn)
    parents: dict[Node, list[Node]] = {node: [] for node in ordered}
    for edge in drawn:
        parents[edge.target].append(edge.source)
    by_row: dict[int, list[Node]] = {}
    for node in ordered:
        by_row.setdefault(row[node], []).append(node)
    width_of = {node: len(node[1]) * CHAR + 2 * PAD for node in ordered}
    centre: dict[Node, float] = {}
    placed: dict[Node, Box] = {}
    for number in sorted(by_row):
        members = by_row[number]
        wanted = {
            node: sum(centre[p] for p in parents[node] if p in centre)
            / max(1, sum(1 for p in parents[node] if p in centre))
            for node in members
        }
        members.sort(key=lambda node: wanted[node])
        x = 0.0
        for node in members:
            placed[node] = Box(
                node[0], node[1], x, number * ROW + 8, width_of[node], node in visited, node in dead
            )
            centre[node] = x + width_of[node] / 2
            x += width_of[node] + GAP
    widest = max((sum(width_of[n] + GAP for n in members) for members in by_row.values()), default=0.0)
    boxes = []
    for members in by_row.values():  # centre every row under the widest
        span = sum(width_of[n] + GAP for n in members) - GAP
        shift = (widest - GAP - span) / 2
        for node in members:
            box = placed[node]
            placed[node] = Box(box.kind, box.name, box.x + shift, box.y, box.width, box.lit, box.dead)
            boxes.append(placed[node])
    arrows = [_arrow(placed[e.source], placed[e.target], e, visited) for e in drawn]
    return Layout(boxes, arrows, max(widest - GAP, 1.0), (max(row.values(), default=0) + 1) * ROW + 8)


def _arrow(source: Box, target: Box, edge: Edge, visited: AbstractSet[Node]) -> Arrow:
    x1, y1 = source.cx, source.y + NODE_HEIGHT
    x2, y2 = target.cx, target.y
    if y2 > y1:
        middle = (y1 + y2) / 2
        path = f"M{x1:.1f},{y1:.1f} C{x1:.1f},{middle:.1f} {x2:.1f},{middle:.1f} {x2:.1f},{y2:.1f}"
    else:  # back up the graph: round the right side
        side = max(source.x + source.width, target.x + target.width) + 30
        path = f"M{x1:.1f},{y1:.1f} C{side:.1f},{y1 + 40:.1f} {side:.1f},{y2 - 40:.1f} {x2:.1f},{y2:.1f}"
    lit = edge.source in visited and edge.target in visited
    return Arrow(path, edge.label, lit, edge.label in (DEAD_LETTER, DEAD_LETTER_ENQUEUE))
