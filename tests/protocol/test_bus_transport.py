"""Which transport an AsyncClient gets: the argument, MOLE_BUS_TRANSPORT, the default."""

from __future__ import annotations

import asyncio

import pytest

from mole.frontend.dispatch import BrokerDispatcher
from mole.protocol import AsyncClient, bus_transport
from mole.protocol.bus_transport import DEFAULT_TRANSPORT, ENV_TRANSPORT, choose_transport

TCP = "tcp://127.0.0.1:5555"


def test_named_transport_wins_over_the_environment():
    assert choose_transport("zmq", TCP, curve=False, env={ENV_TRANSPORT: "native"}) == "zmq"
    assert choose_transport(None, TCP, curve=False, env={ENV_TRANSPORT: " Native "}) == "native"
    assert choose_transport(None, TCP, curve=False, env={ENV_TRANSPORT: "zmq"}) == "zmq"
    with pytest.raises(ValueError, match=f"unknown bus transport 'tcp'.*{ENV_TRANSPORT}"):
        choose_transport(None, TCP, curve=False, env={ENV_TRANSPORT: "tcp"})


def test_default_is_native_where_it_can_serve_and_pyzmq_elsewhere(monkeypatch):
    assert DEFAULT_TRANSPORT == "native"
    assert choose_transport(None, TCP, curve=False, env={}) == "native"
    assert choose_transport(None, TCP, curve=True, env={}) == "native"
    assert choose_transport(None, "ipc:///run/mole.sock", curve=False, env={}) == "zmq"
    # without PyNaCl the native transport has no CURVE: a CURVE client takes pyzmq's
    monkeypatch.setattr(bus_transport, "curve_available", lambda: False)
    assert choose_transport(None, TCP, curve=True, env={}) == "zmq"
    assert choose_transport(None, TCP, curve=False, env={}) == "native"


def test_async_client_reports_its_transport(monkeypatch):
    monkeypatch.delenv(ENV_TRANSPORT, raising=False)
    assert AsyncClient(TCP).transport == "native"
    assert AsyncClient(TCP, transport="zmq").transport == "zmq"
    assert AsyncClient("ipc:///run/mole.sock").transport == "zmq"
    monkeypatch.setenv(ENV_TRANSPORT, "zmq")
    assert AsyncClient(TCP).transport == "zmq"


def test_frontend_dispatcher_takes_the_transport_from_the_environment(monkeypatch):
    monkeypatch.delenv("MOLE_CURVE_SERVER_KEY", raising=False)
    monkeypatch.delenv("MOLE_CURVE_SECRET_KEY", raising=False)

    async def transport_of(dispatcher: BrokerDispatcher) -> str:
        try:
            return dispatcher.client().transport
        finally:
            await dispatcher.close()

    monkeypatch.setenv(ENV_TRANSPORT, "zmq")
    assert asyncio.run(transport_of(BrokerDispatcher(TCP))) == "zmq"
    monkeypatch.delenv(ENV_TRANSPORT)
    assert asyncio.run(transport_of(BrokerDispatcher(TCP))) == "native"
    monkeypatch.setenv(ENV_TRANSPORT, "pigeon")
    with pytest.raises(ValueError, match="unknown bus transport 'pigeon'"):
        BrokerDispatcher(TCP)  # at start-up, not on the first request
