"""The fleet dashboard in a real headless Chromium, against a running stack: a broker
process, two worker processes (the fixed-answer test double under the real worker
runtime), and the real frontend under gunicorn.

The page is loaded, an administrator logs in through its form, the live numbers appear,
classifications show up in the routing table, one worker process is SIGKILLed and the page
shows it leaving; a screenshot is saved (``MOLE_SCREENSHOT_DIR``, else the test's tmp dir).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from mole.protocol.client import Client
from tests.frontend.frontend_support import (
    FIXED_WORKER,
    call,
    child,
    child_env,
    frontend_process,
    wait_for,
)
from tests.support import browser
from tests.support.procs import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(browser.available() is not None, reason=str(browser.available())),
]

HEARTBEAT = "0.3"
SERVICE = "llama-2-7b-hf"  # the expert of English finance/rating
TEXT = "The quarterly revenue rose 12 percent and the company raised its full-year outlook."


def _live_workers(broker: str) -> set[str]:
    with Client(broker, timeout=2.0) as client:
        status = client.status(timeout=2.0)
    return {str(w["id"]) for w in status["workers"]}


def _text(driver, css: str) -> str:
    """The text of every element matching ``css``, read in one script call: the page
    redraws its tables every poll, so element handles go stale between two calls."""
    script = (
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".map(e => e.textContent.trim()).join(' ')"
    )
    return str(driver.execute_script(script, css))


def test_dashboard_shows_the_live_fleet_and_a_worker_leaving(tmp_path, registry):
    from selenium.webdriver.common.by import By

    broker = f"tcp://127.0.0.1:{free_port()}"
    beat = {"MOLE_HEARTBEAT_INTERVAL": HEARTBEAT}
    services = sorted(registry.base_models)
    worker_args = [sys.executable, str(FIXED_WORKER), "--broker", broker]
    worker_args += ["--heartbeat-interval", HEARTBEAT]
    for service in services:
        worker_args += ["--service", service]
    shots = Path(os.environ.get("MOLE_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    with (
        child([sys.executable, "-m", "mole.broker", "--bind", broker], tmp_path / "broker.log",
              env=child_env(**beat)),
        child([*worker_args, "--id-prefix", "steady"], tmp_path / "steady.log"),
        child([*worker_args, "--id-prefix", "victim"], tmp_path / "victim.log") as victim,
        frontend_process(broker, tmp_path / "data", tmp_path / "frontend.log",
                         MOLE_BOOTSTRAP_ADMIN="admin:admin-password-1") as base,
        browser.chromium() as driver,
    ):  # fmt: skip
        wait_for(lambda: len(_live_workers(broker)) == 2 * len(services), 60, "both workers", 0.3)
        driver.get(f"{base}/dashboard")
        browser.wait_for(driver, lambda d: d.find_element(By.ID, "login-form").is_displayed(),
                         30, "the login form")  # fmt: skip
        driver.find_element(By.NAME, "username").send_keys("admin")
        driver.find_element(By.NAME, "password").send_keys("admin-password-1")
        driver.find_element(By.CSS_SELECTOR, "#login-form button").click()

        count = str(2 * len(services))
        browser.wait_for(driver, lambda d: d.find_element(By.ID, "worker-count").text == count,
                         30, f"the worker count to read {count}")  # fmt: skip
        service_row = f'tr.service-row[data-service="{SERVICE}"]'
        browser.wait_for(driver, lambda d: _text(d, f"{service_row} td.workers") == "2",
                         30, f"{SERVICE} to show its 2 workers")  # fmt: skip
        assert "victim-0" in _text(driver, "tr.worker-row")

        # traffic: it shows in the routing table (language -> task -> model)
        login = {"username": "admin", "password": "admin-password-1"}
        status, _, token = call("POST", f"{base}/api/v1/auth/token", login, form=True)
        assert status == 200, token
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        for _ in range(12):
            status, _, body = call("POST", f"{base}/api/v1/classify",
                                   {"text": TEXT, "task": "rating"}, headers)  # fmt: skip
            assert status == 200, body
        # each frontend process writes its analytics out on its own schedule: wait for all
        cell = f'tr[data-route="english/rating/{SERVICE}"] td:nth-child(4)'
        browser.wait_for(driver, lambda d: _text(d, cell) == "12",
                         30, "the routing table to count the 12 requests")  # fmt: skip
        driver.save_screenshot(str(shots / "dashboard.png"))

        # a worker dies: the broker purges it and the page says so without a reload
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        browser.wait_for(driver, lambda d: "worker victim-0 left" in _text(d, "#events li.left"),
                         45, "the page to report victim-0 leaving")  # fmt: skip
        browser.wait_for(driver, lambda d: _text(d, f"{service_row} td.workers") == "1",
                         30, f"{SERVICE} to show 1 worker")  # fmt: skip
        gone = driver.find_elements(
            By.CSS_SELECTOR, 'tr.worker-row.gone[data-worker-id="victim-0"]'
        )
        assert gone, "the dead worker should stay listed, struck through"
        driver.save_screenshot(str(shots / "dashboard-worker-lost.png"))
        assert (shots / "dashboard.png").stat().st_size > 10_000


def test_the_data_endpoint_is_for_admins_only(api):
    r = api.client.simulate_get("/api/v1/admin/dashboard", headers=api.user())
    assert r.status_code == 403, r.text
    assert r.json["error"] == "forbidden"
    r = api.client.simulate_get("/api/v1/admin/dashboard", headers=api.user("root", admin=True))
    assert r.status_code == 200, r.text
    assert set(r.json) == {"now", "fleet", "fleet_error", "series", "routing"}
    bad = api.client.simulate_get(
        "/api/v1/admin/dashboard", params={"span": "5"}, headers=api.user("root", admin=True)
    )
    assert bad.status_code == 422
    assert bad.json["field"] == "span"
    page = api.client.simulate_get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "/dashboard/dashboard.js" in page.text
    assert api.client.simulate_get("/dashboard/dashboard.js").status_code == 200
    assert api.client.simulate_get("/dashboard/secrets.txt").status_code == 404


def test_dashboard_stays_usable_with_100_workers(tmp_path, registry):
    """100 workers registered by raw RFC 18 sockets: the page draws them collapsed under
    their services, expands one on a click, and the filter finds one worker among all."""
    import msgpack
    import zmq
    from selenium.webdriver.common.by import By

    broker = f"tcp://127.0.0.1:{free_port()}"
    services = sorted(registry.base_models)
    context = zmq.Context.instance()
    sockets = []
    with (
        # heartbeats every 5 s (liveness 15 s): the silent raw sockets stay registered
        child([sys.executable, "-m", "mole.broker", "--bind", broker], tmp_path / "broker.log",
              env=child_env(MOLE_HEARTBEAT_INTERVAL="5")),
        frontend_process(broker, tmp_path / "data", tmp_path / "frontend.log",
                         MOLE_BOOTSTRAP_ADMIN="admin:admin-password-1") as base,
        browser.chromium() as driver,
    ):  # fmt: skip
        try:
            for n in range(100):
                sock = context.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(broker)
                service = services[n % len(services)]
                meta = msgpack.packb({"worker_id": f"gpu-{n:03d}", "slots": 4, "device": "cuda:0"})
                sock.send_multipart([b"MDPW02", b"\x01", service.encode(), meta])
                sockets.append(sock)
            wait_for(lambda: len(_live_workers(broker)) == 100, 30, "100 workers", 0.3)
            driver.get(f"{base}/dashboard")
            browser.wait_for(driver, lambda d: d.find_element(By.ID, "login-form").is_displayed(),
                             30, "the login form")  # fmt: skip
            driver.find_element(By.NAME, "username").send_keys("admin")
            driver.find_element(By.NAME, "password").send_keys("admin-password-1")
            driver.find_element(By.CSS_SELECTOR, "#login-form button").click()
            browser.wait_for(driver, lambda d: _text(d, "#worker-count") == "100",
                             30, "the worker count to read 100")  # fmt: skip
            # collapsed: one row per service, no worker rows until asked
            assert _text(driver, "tr.worker-row") == ""
            rows = driver.find_elements(By.CSS_SELECTOR, "tr.service-row")
            assert len(rows) == len(services)
            driver.find_element(
                By.CSS_SELECTOR, f'tr.service-row[data-service="{services[0]}"]'
            ).click()
            expected = sum(1 for n in range(100) if n % len(services) == 0)
            browser.wait_for(
                driver,
                lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.worker-row")) == expected,
                10,
                f"{expected} worker rows of {services[0]}",
            )
            driver.find_element(By.ID, "worker-filter").send_keys("gpu-042")
            browser.wait_for(driver, lambda d: _text(d, "tr.worker-row").startswith("gpu-042"),
                             10, "the filter to find gpu-042")  # fmt: skip
            assert len(driver.find_elements(By.CSS_SELECTOR, "tr.worker-row")) == 1
        finally:
            for sock in sockets:
                sock.close(0)
