"""``mole broker --metrics-port``: a real broker process, a raw RFC 18 echo worker and a raw
client; the endpoint is scraped over HTTP and parsed with prometheus_client's parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from tests.support.peers import BrokerProcess, RawClient, start_worker, stop_process
from tests.support.procs import free_port, wait_until


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_running_broker_serves_its_counters_and_fleet(tmp_path):
    port = free_port()
    broker = BrokerProcess(
        tmp_path / "broker.log",
        flags=["--heartbeat-interval", "0.2", "--metrics-port", str(port)],
    )
    endpoint = broker.start()
    worker = start_worker(endpoint, "echo", log_path=tmp_path / "worker.log", slots=2,
                          worker_id="w-metrics")  # fmt: skip
    try:
        svc = (("service", "echo"),)
        wait_until(lambda: _scrape(port).get(("mole_broker_service_workers", svc)) == 1, 20)
        with RawClient(endpoint) as client:
            for n in range(5):
                reply = client.call("echo", {"n": n})
                assert reply is not None
                assert reply.ok
            client.send_opaque("nobody-serves-this", b"x")  # queued: no worker of it

        def counted() -> dict:
            samples = _scrape(port)
            return samples if samples.get(("mole_broker_requests_total", ())) == 6 else {}

        samples = wait_until(counted, 10)
        assert samples[("mole_broker_service_served_total", svc)] == 5
        assert samples[("mole_broker_service_slots", svc)] == 2
        assert (
            samples[("mole_broker_service_queue_depth", (("service", "nobody-serves-this"),))] == 1
        )
        worker_labels = (("service", "echo"), ("worker", "w-metrics"))
        assert samples[("mole_broker_worker_served_total", worker_labels)] == 5
        assert samples[("mole_broker_worker_suspect", worker_labels)] == 0
        # a worker killed is purged, and the figures say so
        stop_process(worker)
        wait_until(lambda: _scrape(port).get(("mole_broker_service_workers", svc)) == 0, 20)
        assert _scrape(port)[("mole_broker_workers_purged_total", ())] >= 1
    finally:
        stop_process(worker)
        broker.stop()


def test_metrics_are_off_unless_asked_for(tmp_path):
    port = free_port()
    broker = BrokerProcess(tmp_path / "broker.log", flags=["--heartbeat-interval", "0.2"])
    broker.start()
    try:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
        except OSError:
            refused = True
        else:
            refused = False
        assert refused, "nothing listens on the metrics port unless --metrics-port is given"
        assert "metrics on" not in broker.log()
    finally:
        broker.stop()
