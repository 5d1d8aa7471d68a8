"""The monitoring files in deploy/ (Prometheus scrape config, alert rules, Grafana
dashboard) parse, and every metric they query is one that some part of MoLE exports:
a renamed metric would otherwise leave an alert that can never fire."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mole.broker.metrics import render
from mole.frontend.metrics import Metrics
from mole.worker.metrics import WorkerMetrics

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
METRIC = re.compile(r"\bmole_[a-z0-9_]+")
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")

FULL_STATUS = {
    "broker": {"uptime_s": 1.0},
    "services": {"svc": {"workers": 1, "slots": 1, "in_flight": 0, "queue_depth": 0,
                         "served": 1, "errors": 0}},
    "workers": [{"id": "w", "service": "svc", "slots": 1, "in_flight": 0, "served": 1,
                 "last_heartbeat_s": 0.1}],
    "counters": {"requests": 1, "replies": 1, "redispatched": 0, "malformed": 0,
                 "workers_purged": 0, "errors_by_code": {"worker_lost": 0}},
}  # fmt: skip


def _family(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _exported() -> set[str]:
    worker = WorkerMetrics("svc")
    worker.observe_batch([])
    frontend = Metrics()
    texts = [
        render(FULL_STATUS),
        generate_latest(worker.registry).decode(),
        generate_latest(frontend.registry).decode(),
    ]
    return {
        _family(sample.name)
        for text in texts
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    } | {family.name for text in texts for family in text_string_to_metric_families(text)}


def _queried(text: str) -> set[str]:
    return {_family(name) for name in METRIC.findall(text)}


def test_alert_rules_parse_and_query_exported_metrics():
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    assert {r["alert"] for r in rules} >= {
        "MoleServiceHasNoWorker", "MoleQueueGrowing", "MoleErrorRateHigh",
        "MoleClassifyLatencyHigh",
    }  # fmt: skip
    exported = _exported()
    for rule in rules:
        used = _queried(rule["expr"])
        assert used, rule["alert"]
        assert used <= exported, (rule["alert"], used - exported)
        assert rule["annotations"]["summary"]


def test_scrape_config_names_the_rules_and_every_part():
    doc = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert doc["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"] for job in doc["scrape_configs"]}
    assert jobs == {"mole-broker", "mole-frontend", "mole-worker"}


def test_grafana_dashboard_queries_exported_metrics():
    doc = json.loads((DEPLOY / "grafana" / "mole-dashboard.json").read_text())
    exported = _exported()
    assert len(doc["panels"]) >= 8
    for panel in doc["panels"]:
        for target in panel["targets"]:
            used = _queried(target["expr"])
            assert used, panel["title"]
            assert used <= exported, (panel["title"], used - exported)
