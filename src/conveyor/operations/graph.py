"""The workflow graph, drawn from code: every declared queue and event, what each handler declares it
``emits`` and ``enqueues``, subscriptions, schedules and commands."""

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
    if kind == "external":
        return f'{ident}[["{name}"]]'
    return f'{ident}["{name}"]'


def _id(kind: str, name: str) -> str:
    return f"{kind}_{name}".replace(".", "_")


ENQUEUE = "enqueue"
DEAD_LETTER = "dead letter"
DEAD_LETTER_ENQUEUE = "dead letter enqueue"


@dataclass(frozen=True, slots=True)
class Edge:
    """One arrow of the graph: ``source`` and ``target`` are ``(kind, name)`` with kind ``command``,
    ``schedule``, ``queue``, ``external`` (a queue another app works) or ``event``; ``label`` is a
    schedule's spec, :data:`ENQUEUE` (a declared ``enqueues``), :data:`DEAD_LETTER` or
    :data:`DEAD_LETTER_ENQUEUE`."""

    source: tuple[str, str]
    target: tuple[str, str]
    label: str | None = None


def nodes(registry: Registry) -> list[tuple[str, str]]:
    """Every declared queue and event, drawn even when no arrow touches it."""
    found = [("queue", name) for name in registry.queues]
    return found + [("event", event) for event in sorted(registry.declared_events())]


def edges(registry: Registry) -> list[Edge]:
    """Every arrow the declarations draw: commands and queues to the events they emit (and a
    queue's dead-letter events) and the queues they declare they enqueue to, schedules to their
    queues, events to the queues subscribed."""

    def enqueues(source: tuple[str, str], queues: Iterable[str], label: str) -> list[Edge]:
        return [
            Edge(source, ("external" if queue in registry.external_queues else "queue", queue), label)
            for queue in sorted(queues)
        ]

    found: list[Edge] = []
    for command in registry.commands.values():
        source = ("command", command.name)
        found += [Edge(source, ("event", event)) for event in sorted(command.emits)]
        found += enqueues(source, command.enqueues or (), ENQUEUE)
    for definition in registry.queues.values():
        queue = ("queue", definition.name)
        if definition.schedule is not None:
            spec = definition.schedule.cron or f"every {definition.schedule.every:g}s"
            found.append(Edge(("schedule", definition.name + "_tick"), queue, spec))
        found += [Edge(queue, ("event", event)) for event in sorted(definition.emits)]
        dead_letter_events = set(definition.dead_letter_emits or ())
        if definition.dead_letter_event is not None:
            dead_letter_events.add(definition.dead_letter_event)
        found += [Edge(queue, ("event", event), DEAD_LETTER) for event in sorted(dead_letter_events)]
        found += enqueues(queue, definition.enqueues or (), ENQUEUE)
        found += enqueues(queue, definition.dead_letter_enqueues or (), DEAD_LETTER_ENQUEUE)
    found += [Edge(("event", route.event), ("queue", route.queue)) for route in registry.routes]
    return found


_ARROWS = {
    ENQUEUE: "-- enqueue -->",
    DEAD_LETTER: "-. dead letter .->",
    DEAD_LETTER_ENQUEUE: "-. dead letter .->",
}


def build_graph(registry: Registry, workflows: Iterable[Workflow] = ()) -> Graph:
    """A Mermaid flowchart: commands and schedules start, events fan out to queues, queues emit
    events and enqueue jobs (``enqueues=[...]``). Every declared queue and event is a node, even
    one with no edge.

    Warnings name events nobody consumes (unless a workflow declares them terminal), queues
    nothing feeds (no subscription, schedule, command or declared enqueue leads to them: only
    ``app.enqueue`` can reach them) and declared enqueues to queues no service of the app works.
    """
    lines = ["flowchart TD"]
    drawn_nodes: dict[str, str] = {}
    arrows: list[str] = []

    def node(end: tuple[str, str]) -> str:
        ident = _id(*end)
        drawn_nodes.setdefault(ident, _node(*end))
        return ident

    for end in nodes(registry):
        node(end)
    drawn = edges(registry)
    for edge in drawn:
        source, target = node(edge.source), node(edge.target)
        if edge.label in _ARROWS:
            arrows.append(f"{source} {_ARROWS[edge.label]} {target}")
        elif edge.label is not None:
            arrows.append(f'{source} -->|"{edge.label}"| {target}')
        else:
            arrows.append(f"{source} --> {target}")
    lines += [f"    {text}" for text in drawn_nodes.values()]
    lines += [f"    {arrow}" for arrow in arrows]
    consumed = {route.event for route in registry.routes}
    fed = {route.queue for route in registry.routes}
    fed |= {d.name for d in registry.queues.values() if d.schedule is not None}
    emitted = {edge.target[1] for edge in drawn if edge.target[0] == "event"}
    enqueued = {edge.target[1] for edge in drawn if edge.label in (ENQUEUE, DEAD_LETTER_ENQUEUE)}
    terminal: set[str] = set()
    for workflow in workflows:
        terminal |= set(workflow.completed) | set(workflow.failed) | set(workflow.compensated)
    warnings = [
        f"event {event!r} is emitted but no subscription consumes it"
        for event in sorted(emitted - consumed - terminal)
    ]
    warnings += [
        f"queue {name!r} is not fed by any subscription, schedule or declared enqueue "
        "(only app.enqueue, or a ctx.enqueue of a handler that declares no enqueues=[...], can reach it)"
        for name in sorted(set(registry.queues) - fed - enqueued - registry.timer_queues)
    ]
    warnings += [
        f"a handler declares enqueues to {name!r}, which no service of this app works "
        "(nor App(external_queues=...) names)"
        for name in sorted(enqueued - registry.known_queues)
    ]
    warnings += [
        f"subscription to {route.event!r} enqueues into {route.queue!r}, which no service of this app works"
        for route in registry.routes
        if route.queue not in registry.queues
    ]
    return Graph("\n".join(lines), warnings)
