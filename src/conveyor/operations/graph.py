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


def build_graph(registry: Registry, workflows: Iterable[Workflow] = ()) -> Graph:
    """A Mermaid flowchart: commands and schedules start, events fan out to queues, queues emit.

    Warnings name events nobody consumes (unless a workflow declares them terminal) and queues
    nothing feeds (no subscription, schedule or command leads to them; ``ctx.enqueue`` calls are
    not visible from declarations, so such queues may still be fed at run time).
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
    for command in registry.commands.values():
        for event in sorted(command.emits):
            edges.append(f"{node('command', command.name)} --> {node('event', event)}")
            emitted.add(event)
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
