"""The broker's Prometheus text, read back with prometheus_client's own parser (an
independent implementation of the exposition format)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from mole.broker.metrics import MetricsServer, StatusSnapshot, render

STATUS = {
    "broker": {"id": "b1", "uptime_s": 12.5},
    "services": {
        "llama-2-7b-hf": {"workers": 2, "slots": 32, "in_flight": 3, "queue_depth": 4,
                          "served": 100, "errors": 2},
        'odd "name"\\x': {"workers": 0, "slots": 0, "in_flight": 0, "queue_depth": 1,
                          "served": 0, "errors": 0},
    },
    "workers": [
        {"id": "w-1", "service": "llama-2-7b-hf", "slots": 16, "in_flight": 2, "served": 60,
         "last_heartbeat_s": 0.4},
        {"id": "w-2", "service": "llama-2-7b-hf", "slots": 16, "in_flight": 1, "served": 40,
         "last_heartbeat_s": 1.1, "suspect": True},
    ],
    "counters": {"requests": 110, "replies": 102, "redispatched": 3, "malformed": 1,
                 "workers_purged": 1, "queued": 5, "live_requests": 8,
                 "errors_by_code": {"worker_lost": 1, "deadline_exceeded": 1},
                 "brand_new_counter": 7},
}  # fmt: skip


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_every_status_figure_is_a_sample_with_its_labels():
    samples = _samples(render(STATUS))
    assert samples[("mole_broker_requests_total", ())] == 110
    assert samples[("mole_broker_redispatched_total", ())] == 3
    assert samples[("mole_broker_queued", ())] == 5
    assert samples[("mole_broker_errors_total", (("code", "worker_lost"),))] == 1
    assert samples[("mole_broker_brand_new_counter_total", ())] == 7
    svc = (("service", "llama-2-7b-hf"),)
    assert samples[("mole_broker_service_queue_depth", svc)] == 4
    assert samples[("mole_broker_service_workers", svc)] == 2
    assert samples[("mole_broker_service_served_total", svc)] == 100
    odd = (("service", 'odd "name"\\x'),)
    assert samples[("mole_broker_service_queue_depth", odd)] == 1
    w2 = (("service", "llama-2-7b-hf"), ("worker", "w-2"))
    assert samples[("mole_broker_worker_suspect", w2)] == 1
    assert samples[("mole_broker_worker_last_heartbeat_age_seconds", w2)] == 1.1
    w1 = (("service", "llama-2-7b-hf"), ("worker", "w-1"))
    assert samples[("mole_broker_worker_suspect", w1)] == 0
    assert samples[("mole_broker_worker_served_total", w1)] == 60


def test_an_empty_status_renders_valid_text():
    assert _samples(render({})) == {}


def test_the_server_serves_the_latest_snapshot_over_http():
    snapshot = StatusSnapshot(interval_s=0.0)
    server = MetricsServer(snapshot, port=0).start()
    try:
        snapshot.publish(STATUS)
        url = f"http://127.0.0.1:{server.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            first = _samples(response.read().decode())
        assert first[("mole_broker_requests_total", ())] == 110
        snapshot.publish({**STATUS, "counters": {"requests": 111}})
        with urllib.request.urlopen(url, timeout=5) as response:
            second = _samples(response.read().decode())
        assert second[("mole_broker_requests_total", ())] == 111
    finally:
        server.stop()
