"""The port-level contract on every backend (see ``conveyor.testing.store_contract``)."""

from __future__ import annotations

import pytest

from conveyor.testing.store_contract import StoreContract


class TestStoreContract(StoreContract):
    @pytest.fixture(autouse=True)
    def _durability(self, backend_kind: str) -> None:
        self.durable = backend_kind != "memory"
