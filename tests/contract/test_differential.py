"""Every backend against the in-memory reference (see ``conveyor.testing.differential``)."""

from __future__ import annotations

import pytest

from conveyor.testing.differential import DifferentialContract


class TestDifferential(DifferentialContract):
    @pytest.fixture(autouse=True)
    def _not_the_reference_itself(self, backend_kind: str) -> None:
        if backend_kind == "memory":
            pytest.skip("the memory backend is the reference")
