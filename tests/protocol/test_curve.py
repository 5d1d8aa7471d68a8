"""CURVE on the client side: keys from `mole keys generate` files; a wrong key never connects."""

from __future__ import annotations

import pytest
import zmq
import zmq.auth

from mole.protocol import Client
from mole.protocol.curve import CurveKeyError, CurveKeys
from mole.protocol.errors import DeadlineExceeded
from tests.protocol.fakebroker import FakeBroker

pytestmark = pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CURVE")


@pytest.fixture
def keys(tmp_path):
    for name in ("broker", "client", "intruder"):
        zmq.auth.create_certificates(str(tmp_path), name)
    return tmp_path


def test_client_talks_to_a_curve_broker(keys):
    _, broker_secret = zmq.auth.load_certificate(str(keys / "broker.key_secret"))
    broker = FakeBroker(curve_secret=broker_secret)
    try:
        curve = CurveKeys.from_files(keys / "broker.key", keys / "client.key_secret")
        with Client(broker.url, timeout=5, curve=curve) as client:
            assert client.request("svc", {"secret": True}) == {"secret": True}
    finally:
        broker.stop()


def test_wrong_server_key_never_connects(keys):
    _, broker_secret = zmq.auth.load_certificate(str(keys / "broker.key_secret"))
    broker = FakeBroker(curve_secret=broker_secret)
    try:
        curve = CurveKeys.from_files(keys / "intruder.key", keys / "client.key_secret")
        with (
            Client(broker.url, timeout=5, curve=curve, deadline_grace=0.05) as client,
            pytest.raises(DeadlineExceeded, match="never connected"),
        ):
            client.request("svc", 1, timeout=0.5)
        assert broker.seen == []
    finally:
        broker.stop()


def test_public_file_instead_of_secret_is_a_clear_error(keys):
    with pytest.raises(CurveKeyError, match="no secret key"):
        CurveKeys.from_files(keys / "broker.key", keys / "client.key")
    with pytest.raises(CurveKeyError, match="cannot load"):
        CurveKeys.from_files(keys / "missing.key", keys / "client.key_secret")
