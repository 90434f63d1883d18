"""The runtime contract: every guarantee of DESIGN.md §3, through the public API, on one backend.

Subclass :class:`RuntimeContract` and provide a ``backend_url`` fixture (an empty, isolated backend,
as for :class:`~conveyor.testing.store_contract.StoreContract`). Time is a :class:`FakeClock`: leases,
delays, retries and schedules are tested without waiting for them.

The tests live by topic in the modules of this package, one class each, every one usable on its own
(each is an :class:`AppFixtures`): :mod:`.delivery`, :mod:`.retries`, :mod:`.events_and_state`,
:mod:`.schedules`, :mod:`.shutdown`, :mod:`.bad_input`, :mod:`.job_options`,
:mod:`.operating`, :mod:`.operations` (workers and cancellation).
"""

from __future__ import annotations

from conveyor.testing.runtime_contract.bad_input import BadInputContract
from conveyor.testing.runtime_contract.delivery import DeliveryContract
from conveyor.testing.runtime_contract.events_and_state import EventsAndStateContract
from conveyor.testing.runtime_contract.fixtures import NO_JITTER, AppFixtures, Item, Recorder
from conveyor.testing.runtime_contract.job_options import JobOptionsContract
from conveyor.testing.runtime_contract.operating import OperatingContract
from conveyor.testing.runtime_contract.operations import OperationsContract
from conveyor.testing.runtime_contract.retries import RetriesContract
from conveyor.testing.runtime_contract.schedules import SchedulesContract
from conveyor.testing.runtime_contract.shutdown import ShutdownContract

__all__ = ["NO_JITTER", "AppFixtures", "Item", "Recorder", "RuntimeContract"]


# pytest collects the tests of base classes from the last base to the first: listed last topic
# first, they run in the order of the topics above.
class RuntimeContract(
    OperationsContract,
    OperatingContract,
    JobOptionsContract,
    BadInputContract,
    ShutdownContract,
    SchedulesContract,
    EventsAndStateContract,
    RetriesContract,
    DeliveryContract,
):
    """Every backend passes these unchanged."""
