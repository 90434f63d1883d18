"""The fuzz contract on every backend (see ``conveyor.testing.fuzz_contract``)."""

from conveyor.testing.fuzz_contract import FuzzContract


class TestFuzzContract(FuzzContract):
    pass
