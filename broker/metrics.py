"""The broker's Prometheus endpoint (``--metrics-port``), off unless asked for.

The broker's own loop is single-threaded and must never wait on a scrape, so the loop
publishes its ``mmi.status`` document (the same one ``mole status`` reads) into a
:class:`StatusSnapshot` at most once a second, and a small HTTP server on a daemon thread
renders the latest snapshot in the Prometheus text format on each scrape. The broker
installs nothing for this: the format is written here from the exposition format's
specification (``# HELP``/``# TYPE`` lines, one sample per line, label values escaped).

Every figure comes from the status document, so ``mole status``, the dashboard and
Prometheus can never disagree about what the broker counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("mole.broker.metrics")

#: counters of ``mmi.status`` and what they count (name -> help); others are exported too,
#: with a generic help line, so a counter added to the broker is never silently missing.
COUNTER_HELP: dict[str, str] = {
    "requests": "client requests received",
    "replies": "final replies sent to clients",
    "redispatched": "requests sent again to another worker after a worker was lost or slow",
    "expired": "requests that reached their deadline before a worker answered",
    "duplicates": "requests dropped as duplicates of one already being served",
    "late_replies": "worker replies that came after their request was answered or moved",
    "malformed": "messages the broker could not read",
    "protocol_errors": "peers disconnected for breaking the protocol",
    "workers_registered": "worker registrations",
    "workers_purged": "workers removed for silence or loss",
    "curve_refused": "messages refused by the CURVE key checks",
    "dropped_sends": "messages that could not be delivered to a vanished peer",
    "internal_errors": "messages whose handling failed inside the broker",
    "workers_drained": "worker ids drained by the operator (mmi.drain)",
    "workers_resumed": "drained worker ids put back into service (mmi.resume)",
    "management_refused": "management requests refused for a key without @manage",
    "drained_ready_refused": "READYs refused because the worker was drained with disconnect",
}

SERVICE_GAUGES: dict[str, str] = {
    "workers": "live workers registered for the service",
    "slots": "concurrent requests the service's workers accept in all",
    "in_flight": "requests of the service being processed by workers",
    "queue_depth": "requests of the service waiting for a free worker",
}
SERVICE_COUNTERS: dict[str, str] = {
    "served": "requests of the service answered by a worker",
    "errors": "requests of the service answered with an error",
}


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{_escape(str(value))}"' for key, value in labels.items())
    return "{" + inner + "}"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


class _Family:
    """One metric family: its HELP/TYPE header and its samples."""

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.kind = kind
        self.help = help_text
        self.samples: list[str] = []

    def add(self, value: Any, **labels: str) -> None:
        number = _number(value)
        if number is not None:
            sample = self.name + ("_total" if self.kind == "counter" else "")
            self.samples.append(f"{sample}{_labels(**labels)} {number!r}")

    def lines(self) -> Iterable[str]:
        if not self.samples:
            return
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} {self.kind}"
        yield from self.samples


def render(status: dict[str, Any]) -> str:
    """``mmi.status`` in the Prometheus text exposition format (version 0.0.4)."""
    families: list[_Family] = []

    def family(name: str, kind: str, help_text: str) -> _Family:
        made = _Family(f"mole_broker_{name}", kind, help_text)
        families.append(made)
        return made

    broker = status.get("broker", {})
    family("uptime_seconds", "gauge", "seconds since the broker started").add(
        broker.get("uptime_s")
    )
    counters = status.get("counters", {})
    for name in sorted(counters):
        value = counters[name]
        if name == "errors_by_code" and isinstance(value, dict):
            errors = family("errors", "counter", "error replies sent to clients, by code")
            for code in sorted(value):
                errors.add(value[code], code=str(code))
        elif name in ("queued", "live_requests"):
            gauge_help = {
                "queued": "requests waiting for a worker, all services",
                "live_requests": "requests the broker holds (queued or in flight)",
            }
            family(name, "gauge", gauge_help[name]).add(value)  # fmt: skip
        elif isinstance(value, dict):
            continue  # a structured counter this exporter does not know: left out
        else:
            family(name, "counter", COUNTER_HELP.get(name, f"broker counter {name}")).add(value)

    services = status.get("services", {})
    for key, help_text in SERVICE_GAUGES.items():
        metric = family(f"service_{key}", "gauge", help_text)
        for service in sorted(services):
            metric.add(services[service].get(key), service=service)
    for key, help_text in SERVICE_COUNTERS.items():
        metric = family(f"service_{key}", "counter", help_text)
        for service in sorted(services):
            metric.add(services[service].get(key), service=service)

    workers = sorted(status.get("workers", []), key=lambda w: str(w.get("id")))
    per_worker = {  # status key -> (metric name, type, help)
        "slots": ("worker_slots", "gauge", "concurrent requests the worker accepts"),
        "in_flight": ("worker_in_flight", "gauge", "requests the worker is processing"),
        "served": ("worker_served", "counter", "requests the worker answered"),
        "last_heartbeat_s": (
            "worker_last_heartbeat_age_seconds",
            "gauge",
            "seconds since the worker was last heard from",
        ),
    }
    for key, (name, kind, help_text) in per_worker.items():
        metric = family(name, kind, help_text)
        for worker in workers:
            metric.add(worker.get(key), worker=str(worker.get("id")),
                       service=str(worker.get("service")))  # fmt: skip
    suspect = family("worker_suspect", "gauge", "1 when the worker is marked suspect")
    draining = family("worker_draining", "gauge", "1 when the worker is draining")
    for worker in workers:
        labels = {"worker": str(worker.get("id")), "service": str(worker.get("service"))}
        suspect.add(int(bool(worker.get("suspect") or worker.get("state") == "suspect")), **labels)
        draining.add(
            int(bool(worker.get("draining") or worker.get("state") == "draining")), **labels
        )

    lines = [line for made in families for line in made.lines()]
    return "\n".join(lines) + "\n"


class StatusSnapshot:
    """The latest status document, published by the broker loop, read by scrapes.

    Publishing costs the loop one ``status()`` call per ``interval_s`` at most; a scrape
    never touches the broker's state. Replacing a reference is atomic in CPython, so no
    lock is needed between the loop and the HTTP thread.
    """

    def __init__(self, interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self._clock = clock
        self._status: dict[str, Any] = {}
        self._published = float("-inf")

    def due(self) -> bool:
        """Whether the loop should publish now."""
        return self._clock() - self._published >= self.interval_s

    def publish(self, status: dict[str, Any]) -> None:
        self._status = status
        self._published = self._clock()

    def latest(self) -> dict[str, Any]:
        return self._status


class MetricsServer:
    """``GET /metrics`` on ``host:port`` in a daemon thread, rendering ``snapshot``."""

    def __init__(self, snapshot: StatusSnapshot, port: int, host: str = "127.0.0.1") -> None:
        self.snapshot = snapshot

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics is served here")
                    return
                body = render(snapshot.latest()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics: " + format, *args)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="broker-metrics", daemon=True
        )

    def start(self) -> MetricsServer:
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics", *self._server.server_address[:2])
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
