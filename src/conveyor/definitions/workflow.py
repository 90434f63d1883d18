"""A workflow's declaration, as data: the event that starts an instance and the events that end it.

What an instance's status is, folded from its history, is in :mod:`conveyor.operations.status`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from conveyor.model.lifecycle import Seconds


@dataclass(frozen=True)
class Workflow:
    """A workflow's shape: the event that starts an instance and the events that end it.

    >>> Workflow("order_fulfillment", start="order_placed", completed=["confirmation_sent"],
    ...          failed=["order_backordered"], compensated=["payment_compensated"]).name
    'order_fulfillment'
    """

    name: str
    start: str
    completed: Iterable[str] = ()
    failed: Iterable[str] = ()
    compensated: Iterable[str] = ()
    deadline: Seconds | None = None

    def __post_init__(self) -> None:
        for attribute in ("completed", "failed", "compensated"):
            object.__setattr__(self, attribute, frozenset(getattr(self, attribute)))
