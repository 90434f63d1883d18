"""The runtime contract (DESIGN.md §3) on every backend (see ``conveyor.testing.runtime_contract``)."""

from conveyor.testing.runtime_contract import RuntimeContract


class TestRuntimeContract(RuntimeContract):
    pass
