"""The robustness contract on every backend (see ``conveyor.testing.robustness_contract``)."""

from conveyor.testing.robustness_contract import RobustnessContract


class TestRobustnessContract(RobustnessContract):
    pass
