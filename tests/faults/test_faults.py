"""Faults under load: every request gets exactly one final outcome, none is lost or answered
twice, nothing hangs, and service resumes after healing without restarting anything.

Real processes throughout: the broker, the project's worker runtime (echo handler) and a
fixed-rate wire-level load (``fault_load``) that sees every FINAL the broker sends.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.faults.fault_load import FixedRateLoad
from tests.support.peers import RawClient
from tests.support.procs import must_wait, wait_until

pytestmark = pytest.mark.slow
SERVICE = "faulty"


def _registered(endpoint: str, worker_id: str) -> bool:
    with RawClient(endpoint) as client:
        status = client.status()
    return any(w["id"] == worker_id for w in status["workers"])


def _wait_registered(bus, *worker_ids: str, timeout: float = 30.0) -> None:
    for worker_id in worker_ids:
        assert wait_until(
            lambda w=worker_id: _registered(bus.broker.endpoint, w), timeout=timeout
        ), f"{worker_id} never registered\n{bus.logs()}"


def _assert_exactly_once(report, allowed=("ok",)) -> None:
    assert not report.lost, f"lost requests: {report}"
    assert not report.duplicated, f"duplicated finals: {report}"
    assert set(report.codes) <= set(allowed), report


def test_worker_sigkill_under_load_loses_nothing(bus):
    endpoint = bus.start_broker()
    victim = bus.start_worker(SERVICE, "victim")
    bus.start_worker(SERVICE, "survivor")
    _wait_registered(bus, "victim", "survivor")
    load = FixedRateLoad(endpoint, SERVICE, rate=150, ttl_ms=8000)
    load.run(1.5)
    victim.kill()
    load.run(2.0)
    load.drain(grace=2.0)
    report = load.report()
    _assert_exactly_once(report)
    assert report.workers["victim"] > 0, report
    assert report.workers["survivor"] > 0, report


def test_worker_sigstop_is_purged_and_late_replies_dropped_then_it_rejoins(bus):
    endpoint = bus.start_broker()
    frozen = bus.start_worker(SERVICE, "frozen", delay=0.05)
    bus.start_worker(SERVICE, "steady", delay=0.05)
    _wait_registered(bus, "frozen", "steady")
    load = FixedRateLoad(endpoint, SERVICE, rate=100, ttl_ms=8000)
    load.run(1.0)
    frozen.send_signal(signal.SIGSTOP)
    load.run(2.0)  # longer than the liveness window: the broker purges it and re-dispatches
    frozen.send_signal(signal.SIGCONT)  # its late answers must not reach the client twice
    healed_at = time.monotonic()
    load.run(4.0)
    load.drain(grace=2.0)
    report = load.report(since=healed_at + 2.0)
    _assert_exactly_once(report)
    assert report.late_workers["frozen"] > 0, f"the thawed worker never served again: {report}"


def test_handler_that_hangs_gets_deadline_exceeded_and_others_are_served(bus):
    endpoint = bus.start_broker()
    bus.start_worker(SERVICE, "hangs", slots=4)
    _wait_registered(bus, "hangs")
    load = FixedRateLoad(endpoint, SERVICE, rate=50, ttl_ms=4000)
    hung = [load.send_one({"_echo": {"delay_s": 30}}, ttl_ms=800) for _ in range(2)]
    sent = time.monotonic()
    load.run(2.0)
    load.drain(grace=2.0)
    report = load.report()
    _assert_exactly_once(report, allowed=("ok", "deadline_exceeded"))
    for rid in hung:
        ((answered_at, reply),) = load.finals[rid]
        assert reply.code == "deadline_exceeded"
        assert answered_at - sent < 3.0, "the deadline fired late"
    assert report.codes["ok"] == report.sent - len(hung)


def test_broker_restart_clients_resend_and_workers_rejoin(bus):
    from mole.protocol.client import Client
    from mole.protocol.errors import RequestError

    endpoint = bus.start_broker()
    bus.start_worker(SERVICE, "w1")
    _wait_registered(bus, "w1")
    outcomes: list[str] = []
    with Client(endpoint, timeout=15.0) as client:
        assert client.request(SERVICE, {"n": 0})["worker_id"] == "w1"
        bus.broker.stop()  # SIGKILL: everything the broker held is gone
        futures_started = time.monotonic()
        import threading

        def one(n: int) -> None:
            try:
                client.request(SERVICE, {"n": n}, timeout=15.0)
                outcomes.append("ok")
            except RequestError as err:
                outcomes.append(err.code.value)

        threads = [threading.Thread(target=one, args=(n,)) for n in range(20)]
        for t in threads:
            t.start()
        # all twenty are sent, and held by the client, while no broker is there
        must_wait(lambda: client.pending == 20, "the twenty requests to be pending")
        bus.broker.bind = endpoint
        bus.start_broker(endpoint)
        for t in threads:
            t.join(timeout=30)
        assert not any(t.is_alive() for t in threads), "a request hung"
        assert outcomes == ["ok"] * 20, outcomes
        assert time.monotonic() - futures_started < 20


# --------------------------------------------------------------------------- link faults


def _can_netns() -> str | None:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    probe = f"moleprobe{os.getpid()}"
    if os.system(f"ip netns add {probe} >/dev/null 2>&1") != 0:
        return "ip netns is not available here"
    os.system(f"ip netns del {probe}")
    return None


class Link:
    """A veth link between this namespace (broker side) and a new one (worker side).

    Addresses are link-local and exist only inside this test's own namespaces."""

    def __init__(self) -> None:
        n = os.getpid() % 100000
        self.ns, self.host_if, self.ns_if = f"molew{n}", f"mh{n}", f"mw{n}"
        self.host_ip, self.ns_ip = "169.254.77.1", "169.254.77.2"
        cmds = [
            f"ip netns add {self.ns}",
            f"ip link add {self.host_if} type veth peer name {self.ns_if}",
            f"ip link set {self.ns_if} netns {self.ns}",
            f"ip addr add {self.host_ip}/30 dev {self.host_if}",
            f"ip link set {self.host_if} up",
            f"ip netns exec {self.ns} ip addr add {self.ns_ip}/30 dev {self.ns_if}",
            f"ip netns exec {self.ns} ip link set {self.ns_if} up",
            f"ip netns exec {self.ns} ip link set lo up",
        ]
        for cmd in cmds:
            if os.system(cmd) != 0:
                self.close()
                pytest.skip(f"could not set up the test link: {cmd}")

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]

    def cut(self) -> None:
        os.system(f"ip link set {self.host_if} down")

    def heal(self) -> None:
        os.system(f"ip link set {self.host_if} up")

    def close(self) -> None:
        os.system(f"ip link del {self.host_if} >/dev/null 2>&1")
        os.system(f"ip netns del {self.ns} >/dev/null 2>&1")


@pytest.fixture
def link():
    reason = _can_netns()
    if reason:
        pytest.skip(reason)
    made = Link()
    yield made
    made.close()


def _start_split_bus(bus, link):
    endpoint = bus.start_broker(f"tcp://{link.host_ip}:*")
    bus.start_worker(SERVICE, "local")
    bus.start_worker(SERVICE, "remote", prefix=link.prefix)
    _wait_registered(bus, "local", "remote")
    return endpoint


def _assert_remote_serves_again(bus, load) -> None:
    """After the link settles: the remote worker is back and serving, nothing was lost."""
    _wait_registered(bus, "remote", timeout=30)
    healed_at = time.monotonic()
    load.run(3.0)
    load.drain(grace=3.0)
    report = load.report(since=healed_at)
    _assert_exactly_once(report)
    assert report.late_workers["remote"] > 0, f"no service from the healed worker: {report}"


def test_link_cut_and_healed_between_namespaces(bus, link):
    endpoint = _start_split_bus(bus, link)
    load = FixedRateLoad(endpoint, SERVICE, rate=80, ttl_ms=8000)
    load.run(1.0)
    link.cut()
    load.run(2.5)  # the broker purges the silent remote worker and re-dispatches
    link.heal()
    _assert_remote_serves_again(bus, load)
    with RawClient(endpoint) as client:
        counters = client.status()["counters"]
    assert counters.get("workers_purged", 0) >= 1, f"the cut worker was never purged: {counters}"


def test_flapping_link(bus, link):
    endpoint = _start_split_bus(bus, link)
    load = FixedRateLoad(endpoint, SERVICE, rate=80, ttl_ms=8000)
    for _ in range(5):
        load.run(0.5)
        link.cut()
        load.run(0.5)
        link.heal()
    _assert_remote_serves_again(bus, load)
