"""Fixtures for broker tests (helpers live in ``brokerfix``)."""

import pytest

from tests.broker.brokerfix import Bus


@pytest.fixture
def bus(tmp_path):
    made = Bus(tmp_path)
    yield made
    made.close()
