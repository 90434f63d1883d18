"""The robustness contract: one bad job fails alone, and bad input never stops a worker.

Each test feeds a worker something hostile (a value the backend cannot store, a broken envelope,
a handler that will not stop) next to good jobs, and checks that the bad job gets a dead letter
with its own reason on its first chance while everything else flows. Subclass
:class:`RobustnessContract` and provide ``backend_url`` as for
:class:`~conveyor.testing.runtime_contract.RuntimeContract`.

The tests live by topic in the modules of this package, one class each, every one usable on its own:
:mod:`.storable_values`, :mod:`.undeclared_queues`, :mod:`.commit_isolation`, :mod:`.timing`,
:mod:`.envelopes`.
"""

from __future__ import annotations

from conveyor.testing.robustness_contract.commit_isolation import (
    GOOD_JOBS,
    BadStep,
    CommitIsolationContract,
    assert_good_jobs_committed_once,
    beside_good_jobs,
)
from conveyor.testing.robustness_contract.envelopes import CorruptEnvelopesContract
from conveyor.testing.robustness_contract.storable_values import StorableValuesContract
from conveyor.testing.robustness_contract.timing import TimingContract
from conveyor.testing.robustness_contract.undeclared_queues import UndeclaredQueuesContract

__all__ = [
    "GOOD_JOBS",
    "BadStep",
    "RobustnessContract",
    "assert_good_jobs_committed_once",
    "beside_good_jobs",
]


# pytest collects the tests of base classes from the last base to the first: listed last topic
# first, they run in the order of the topics above.
class RobustnessContract(
    CorruptEnvelopesContract,
    TimingContract,
    CommitIsolationContract,
    UndeclaredQueuesContract,
    StorableValuesContract,
):
    """Every backend passes these unchanged."""
