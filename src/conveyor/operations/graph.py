"""The workflow graph, drawn from code: declared ``emits``, subscriptions, schedules and commands."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from conveyor.definitions.registry import Registry
from conveyor.definitions.workflow import Workflow


@dataclass
class Graph:
    mermaid: str
    warnings: list[str] = field(default_factory=list)


def _node(kind: str, name: str) -> str:
    ident = f"{kind}_{name}".replace(".", "_")
    if kind == "event":
        return f'{ident}(["{name}"])'
    if kind == "command":
        return f'{ident}[/"{name}"/]'
    if kind == "schedule":
        return f'{ident}{{{{"{name}"}}}}'
    return f'{ident}["{name}"]'


def _id(kind: str, name: str) -> str:
    return f"{kind}_{name}".replace(".", "_")


@dataclass(frozen=True, slots=True)
class Edge:
    """One arrow of the graph: ``source`` and ``target`` are ``(kind, name)`` with kind ``command``,
    ``schedule``, ``queue`` or ``event``; ``label`` is a schedule's spec or ``dead letter``."""

    source: tuple[str, str]
    target: tuple[str, str]
    label: str | None = None


def edges(registry: Registry) -> list[Edge]:
    """Every arrow the declarations draw: commands and queues to the events they emit (and a
    queue's dead-letter events), schedules to their queues, events to the queues subscribed."""
    found: list[Edge] = []
    for command in registry.commands.values():
        found += [Edge(("command", command.name), ("event", event)) for event in sorted(command.emits)]
    for definition in registry.queues.values():
        queue = ("queue", definition.name)
        if definition.schedule is not None:
            spec = definition.schedule.cron or f"every {definition.schedule.every:g}s"
            found.append(Edge(("schedule", definition.name + "_tick"), queue, spec))
        found += [Edge(queue, ("event", event)) for event in sorted(definition.emits)]
        dead_letter_events = set(definition.dead_letter_emits or ())
        if definition.dead_letter_event is not None:
            dead_letter_events.add(definition.dead_letter_event)
        found += [Edge(queue, ("event", event), "dead letter") for event in sorted(dead_letter_events)]
    found += [Edge(("event", route.event), ("queue", route.queue)) for route in registry.routes]
    return found


def build_graph(registry: Registry, workflows: Iterable[Workflow] = ()) -> Graph:
    """A Mermaid flowchart: commands and schedules start, events fan out to queues, queues emit.

    Warnings name events nobody consumes (unless a workflow declares them terminal) and queues
    nothing feeds (no subscription, schedule or command leads to them; ``ctx.enqueue`` calls are
    not visible from declarations, so such queues may still be fed at run time).
    """
    lines = ["flowchart TD"]
    nodes: dict[str, str] = {}
    arrows: list[str] = []

    def node(end: tuple[str, str]) -> str:
        ident = _id(*end)
        nodes.setdefault(ident, _node(*end))
        return ident

    drawn = edges(registry)
    for edge in drawn:
        source, target = node(edge.source), node(edge.target)
        if edge.label == "dead letter":
            arrows.append(f"{source} -. dead letter .-> {target}")
        elif edge.label is not None:
            arrows.append(f'{source} -->|"{edge.label}"| {target}')
        else:
            arrows.append(f"{source} --> {target}")
    lines += [f"    {text}" for text in nodes.values()]
    lines += [f"    {arrow}" for arrow in arrows]
    consumed = {route.event for route in registry.routes}
    fed = {route.queue for route in registry.routes}
    fed |= {d.name for d in registry.queues.values() if d.schedule is not None}
    emitted = {edge.target[1] for edge in drawn if edge.target[0] == "event"}
    terminal: set[str] = set()
    for workflow in workflows:
        terminal |= set(workflow.completed) | set(workflow.failed) | set(workflow.compensated)
    warnings = [
        f"event {event!r} is emitted but no subscription consumes it"
        for event in sorted(emitted - consumed - terminal)
    ]
    warnings += [
        f"queue {name!r} is not fed by any subscription or schedule "
        "(only ctx.enqueue/app.enqueue can reach it)"
        for name in sorted(set(registry.queues) - fed)
    ]
    warnings += [
        f"subscription to {route.event!r} enqueues into {route.queue!r}, which no service of this app works"
        for route in registry.routes
        if route.queue not in registry.queues
    ]
    return Graph("\n".join(lines), warnings)
