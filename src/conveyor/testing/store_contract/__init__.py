"""The port-level contract: what every backend's storage must do, tested directly on the ports.

Use it from a test module by subclassing and providing a ``backend_url`` fixture that yields a URL
of an empty, isolated backend (a fresh SQLite file, a fresh Redis prefix, a fresh PostgreSQL schema)::

    class TestMyBackend(StoreContract):
        durable = True

        @pytest.fixture
        def backend_url(self, tmp_path):
            return f"sqlite:///{tmp_path}/test.db"

The tests live by topic in the modules of this package, one class each, every one usable on its own
(each is a :class:`~conveyor.testing.store_contract.fixtures.StoreFixtures`): :mod:`.leases`,
:mod:`.commits`, :mod:`.dead_letters`, :mod:`.events_states_history`, :mod:`.backend_instances`,
:mod:`.operations`.
"""

from __future__ import annotations

from conveyor.testing.store_contract.backend_instances import BackendInstancesContract, drain
from conveyor.testing.store_contract.commits import CommitsContract
from conveyor.testing.store_contract.dead_letters import DeadLettersContract
from conveyor.testing.store_contract.events_states_history import EventsStatesHistoryContract
from conveyor.testing.store_contract.fixtures import ERR, T0, enqueue, job, settle
from conveyor.testing.store_contract.leases import LeasesContract
from conveyor.testing.store_contract.operations import OperationsContract

__all__ = ["ERR", "T0", "StoreContract", "drain", "enqueue", "job", "settle"]


# pytest collects the tests of base classes from the last base to the first: listed last topic
# first, they run in the order of the topics above.
class StoreContract(
    OperationsContract,
    BackendInstancesContract,
    EventsStatesHistoryContract,
    DeadLettersContract,
    CommitsContract,
    LeasesContract,
):
    """Every backend passes these unchanged."""
