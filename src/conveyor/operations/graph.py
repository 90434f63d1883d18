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


def build_graph(registry: Registry, workflows: Iterable[Workflow] = ()) -> Graph:
    """A Mermaid flowchart: commands and schedules start, events fan out to queues, queues emit
    events and enqueue jobs (``enqueues=[...]``). Every declared queue and event is a node, even
    one with no edge.

    Warnings name events nobody consumes (unless a workflow declares them terminal), queues
    nothing feeds (no subscription, schedule, command or declared enqueue leads to them: only
    ``app.enqueue`` can reach them) and declared enqueues to queues no service of the app works.
    """
    lines = ["flowchart TD"]
    nodes: dict[str, str] = {}
    edges: list[str] = []

    def node(kind: str, name: str) -> str:
        ident = _id(kind, name)
        nodes.setdefault(ident, _node(kind, name))
        return ident

    consumed = {route.event for route in registry.routes}
    fed = {route.queue for route in registry.routes}
    emitted: set[str] = set()
    enqueued: set[str] = set()

    def enqueue_edges(source: str, queues: Iterable[str], arrow: str = "-- enqueue -->") -> None:
        for queue in sorted(queues):
            kind = "external" if queue in registry.external_queues else "queue"
            edges.append(f"{source} {arrow} {node(kind, queue)}")
            enqueued.add(queue)

    for definition in registry.queues.values():
        node("queue", definition.name)
    for event in sorted(registry.declared_events()):
        node("event", event)
    for command in registry.commands.values():
        for event in sorted(command.emits):
            edges.append(f"{node('command', command.name)} --> {node('event', event)}")
            emitted.add(event)
        enqueue_edges(node("command", command.name), command.enqueues)
    for definition in registry.queues.values():
        if definition.schedule is not None:
            spec = definition.schedule.cron or f"every {definition.schedule.every:g}s"
            tick = node("schedule", definition.name + "_tick")
            edges.append(f'{tick} -->|"{spec}"| {node("queue", definition.name)}')
            fed.add(definition.name)
        for event in sorted(definition.emits):
            edges.append(f"{node('queue', definition.name)} --> {node('event', event)}")
            emitted.add(event)
        dead_letter_events = set(definition.dead_letter_emits or ())
        if definition.dead_letter_event is not None:
            dead_letter_events.add(definition.dead_letter_event)
        for event in sorted(dead_letter_events):
            edges.append(f"{node('queue', definition.name)} -. dead letter .-> {node('event', event)}")
            emitted.add(event)
        enqueue_edges(node("queue", definition.name), definition.enqueues)
        enqueue_edges(
            node("queue", definition.name), definition.dead_letter_enqueues or (), "-. dead letter .->"
        )
    for route in registry.routes:
        edges.append(f"{node('event', route.event)} --> {node('queue', route.queue)}")
    lines += [f"    {text}" for text in nodes.values()]
    lines += [f"    {edge}" for edge in edges]
    terminal: set[str] = set()
    for workflow in workflows:
        terminal |= set(workflow.completed) | set(workflow.failed) | set(workflow.compensated)
    warnings = [
        f"event {event!r} is emitted but no subscription consumes it"
        for event in sorted(emitted - consumed - terminal)
    ]
    warnings += [
        f"queue {name!r} is not fed by any subscription, schedule or declared enqueue "
        "(only app.enqueue can reach it)"
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
