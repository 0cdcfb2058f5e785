"""The unit tier stays fast: no model is trained or exported here (tests/integration has the session's export)."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def digits_export():
    pytest.fail("unit tests must not train or export models: move this test to tests/integration")
