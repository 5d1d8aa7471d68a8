"""Under CURVE the broker runs without ROUTER_HANDOVER (so no other key can take over a
routing id), and libzmq refuses a connection under a routing id still in use, for good.
This checks the consequence that matters: a client whose connection went dead (a network
partition, simulated by a TCP proxy that stops forwarding) reconnects under its old routing
id and is served again, because the broker drops the dead connection first."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time

import pytest

from mole.protocol.client import Client
from mole.protocol.curve import CurveKeys
from tests.support.procs import must_wait

pytestmark = pytest.mark.timeout(90)


class FreezableProxy:
    """A loopback TCP proxy; :meth:`freeze` stops forwarding on the connections open now
    (they stay open, as in a partition), while new connections are forwarded normally."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.connections = 0
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def freeze(self) -> None:
        for a, b in self.pairs:
            for sock in (a, b):
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(sock)

    def _run(self) -> None:
        while not self._stop:
            for key, _ in self.sel.select(0.05):
                if key.data is None:
                    conn, _ = self.listener.accept()
                    upstream = socket.create_connection(self.target)
                    self.pairs.append((conn, upstream))
                    self.connections += 1
                    self.sel.register(conn, selectors.EVENT_READ, upstream)
                    self.sel.register(upstream, selectors.EVENT_READ, conn)
                    continue
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    for sock in (key.fileobj, key.data):
                        with contextlib.suppress(KeyError, ValueError):
                            self.sel.unregister(sock)
                        sock.close()
                    continue
                key.data.sendall(data)

    def close(self) -> None:
        self._stop = True
        self.thread.join(2)
        for a, b in self.pairs:
            a.close()
            b.close()
        self.listener.close()


def test_client_reconnects_under_its_routing_id_after_a_dead_connection(secure):
    secure.allow_keys("worker-a", "client-a")
    secure.start(heartbeat=1.0)
    secure.worker("worker-a", "svc", heartbeat=1.0)
    port = int(secure.url.rsplit(":", 1)[1])
    proxy = FreezableProxy(("127.0.0.1", port))
    keys = CurveKeys.from_files(secure.keys / "broker.key", secure.keys / "client-a.key_secret")
    client = Client(
        f"tcp://127.0.0.1:{proxy.port}",
        curve=keys,
        timeout=20,
        heartbeat_interval=1.0,
        heartbeat_timeout=3.0,
        routing_id=b"CLIENT-A",
    )
    try:
        must_wait(
            lambda: any(w["service"] == "svc" for w in client.status(timeout=5)["workers"]),
            "the worker to register",
        )
        assert client.request("svc", "before")["echo"] == "before"
        proxy.freeze()  # the partition: both ends keep the TCP connection open
        started = time.monotonic()
        # the client notices after its 3 s heartbeat timeout and reconnects (a new TCP
        # connection through the proxy, same routing id); it must be served again
        answer = client.request("svc", "after", timeout=25)
        assert answer["echo"] == "after"
        assert proxy.connections >= 2
        assert time.monotonic() - started < 15
    finally:
        client.close()
        proxy.close()
