"""conveyor: event-driven services and long-running workflows.

Durable queues with leases, retries and dead letters; events fanned out to durable subscriptions;
schedules; a state store; effects that commit with the job's acknowledgement.
"""

from conveyor.app import App
from conveyor.definitions.handlers import ScheduleTick
from conveyor.definitions.service import Service
from conveyor.definitions.workflow import Workflow
from conveyor.model.errors import (
    CommitRejectedError,
    ConfigurationError,
    ConveyorError,
    EnqueueIncompleteError,
    JobCancelledError,
    LeaseLostError,
    NotInJobError,
    PayloadValidationError,
    PermanentError,
    Retry,
    StateConflictError,
    UndeclaredEmitError,
    UndeclaredEnqueueError,
    UnknownApprovalGateError,
    UnknownCommandError,
    UnknownNameError,
    UnknownQueueError,
    UnstorableTextError,
)
from conveyor.model.history import HistoryKind
from conveyor.model.lifecycle import Lifecycle, RetryStrategy
from conveyor.operations.dead_letters import DeadLetters
from conveyor.operations.status import WorkflowStatus
from conveyor.runtime.context import Context, JobInfo
from conveyor.runtime.worker import WorkerConfig

__all__ = [
    "App",
    "CommitRejectedError",
    "ConfigurationError",
    "Context",
    "ConveyorError",
    "DeadLetters",
    "EnqueueIncompleteError",
    "HistoryKind",
    "JobCancelledError",
    "JobInfo",
    "LeaseLostError",
    "Lifecycle",
    "NotInJobError",
    "PayloadValidationError",
    "PermanentError",
    "Retry",
    "RetryStrategy",
    "ScheduleTick",
    "Service",
    "StateConflictError",
    "UndeclaredEmitError",
    "UndeclaredEnqueueError",
    "UnknownApprovalGateError",
    "UnknownCommandError",
    "UnknownNameError",
    "UnknownQueueError",
    "UnstorableTextError",
    "WorkerConfig",
    "Workflow",
    "WorkflowStatus",
]
__version__ = "0.1.0"
