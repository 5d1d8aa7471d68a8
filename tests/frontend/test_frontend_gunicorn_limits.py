"""Rate limits through the real ``python -m frontend`` (gunicorn, 2 worker processes) over
real HTTP: one budget shared by both processes, Retry-After, failed-login lockout that
wears off after its window, limits switched off, and no secret in gunicorn's log (access
log on, DEBUG)."""

from __future__ import annotations

import contextlib
import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.frontend.frontend_support import call, frontend_server, wait_for
from tests.support.procs import must_wait

pytestmark = pytest.mark.slow

SECRET = "QWPX-5512-hhzt"
TEXT = f"The quarterly revenue rose 12 percent at {SECRET} and the company raised its outlook."
DESCRIPTION = "Rate the sentiment of this financial statement"
PASSWORD = f"pw-{SECRET}-long"


@contextlib.contextmanager
def _serve(tmp_path_factory, logs_dir, broker_url, name, **env_extra):
    """Two worker processes with debug logs and the access log; no rate-limit setting is
    inherited from the environment, only those in ``env_extra``."""
    data = tmp_path_factory.mktemp(name)
    with frontend_server(
        broker_url,
        data,
        logs_dir / f"{name}.log",
        *("--workers", "2", "--access-log"),
        ready_workers=2,
        drop_env=("MOLE_RATE_LIMIT",),
        stop_grace=40,
        REQUEST_TIMEOUT_SECONDS="10",
        MOLE_FRONTEND_LOG_LEVEL="debug",
        **env_extra,
    ) as running:
        yield {
            "base": running.base,
            "proc": running.process,
            "log": running.log,
            "db": data / "frontend" / "ratelimit.sqlite3",
        }


@pytest.fixture(scope="module")
def limited(broker_url, fixed_workers, gating_pipeline, tmp_path_factory, logs_dir):
    with _serve(
        tmp_path_factory,
        logs_dir,
        broker_url,
        "gunicorn-limited",
        MOLE_RATE_LIMIT_CLASSIFY_USER="4/minute",
        MOLE_RATE_LIMIT_CLASSIFY_ADDRESS="off",
        MOLE_RATE_LIMIT_LOGIN_USER="5/10s",
        MOLE_RATE_LIMIT_LOGIN_ADDRESS="off",
        MOLE_LOGIN_FAILURE_COST="5",
        MOLE_MAX_BODY_BYTES="4096",
        MOLE_MAX_TEXT_CHARS="500",
    ) as server:
        yield server


@pytest.fixture(scope="module")
def unlimited(broker_url, fixed_workers, gating_pipeline, tmp_path_factory, logs_dir):
    with _serve(
        tmp_path_factory, logs_dir, broker_url, "gunicorn-unlimited", MOLE_RATE_LIMITS="off"
    ) as server:
        yield server


def register_and_login(base, username):
    status, _, body = call(
        "POST", f"{base}/api/v1/auth/register", {"username": username, "password": PASSWORD}
    )
    assert status == 201, body
    status, _, body = call(
        "POST", f"{base}/api/v1/auth/token", {"username": username, "password": PASSWORD}, form=True
    )
    assert status == 200, body
    return {"Authorization": f"Bearer {body['access_token']}"}


def _open_by(pid: int, path: Path) -> bool:
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if Path(fd.readlink()) == path:
                return True
        except OSError:
            continue
    return False


def test_one_budget_shared_by_both_worker_processes(limited):
    base = limited["base"]
    user = register_and_login(base, "shared1")

    def one(_):  # a new connection each; each slow enough to keep a process busy
        return call(
            "POST",
            f"{base}/api/v1/classify",
            {"text": TEXT + " __sleep:0.2", "description": DESCRIPTION},
            user,
        )

    with ThreadPoolExecutor(6) as pool:
        replies = list(pool.map(one, range(12)))
    statuses = sorted(r[0] for r in replies)
    # per-process counters would have let up to 8 through
    assert statuses == [200] * 4 + [429] * 8, [
        (r[0], r[2].get("error"), r[2].get("detail")) for r in replies
    ]
    for status, headers, body in replies:
        if status == 429:
            assert body["error"] == "rate_limited"
            assert body["request_id"]
            assert headers["X-Request-ID"] == body["request_id"]
            assert 1 <= int(headers["Retry-After"]) <= 15  # one unit of 4/minute: 15 s
    master = limited["proc"].pid
    children = [int(c) for c in Path(f"/proc/{master}/task/{master}/children").read_text().split()]
    assert len(children) == 2
    # both worker processes checked limits in the one shared file
    assert all(_open_by(c, limited["db"]) for c in children), children


def test_failed_login_locks_out_then_wears_off(limited):
    base = limited["base"]
    register_and_login(base, "locky")  # 2 of 5 units: register and one login
    form = {"username": "locky", "password": "not-the-password"}
    assert call("POST", f"{base}/api/v1/auth/token", form, form=True)[0] == 401
    locked_at = time.monotonic()
    good = {"username": "locky", "password": PASSWORD}
    status, headers, body = call("POST", f"{base}/api/v1/auth/token", good, form=True)
    assert status == 429, body
    assert body["error"] == "rate_limited", body
    retry_after = int(headers["Retry-After"])
    assert 1 <= retry_after <= 10
    # the right password is refused until the failure's cost has drained, then works
    statuses: list[int] = []

    def logged_in() -> bool:
        statuses.append(call("POST", f"{base}/api/v1/auth/token", good, form=True)[0])
        return statuses[-1] == 200

    must_wait(logged_in, "the lockout to wear off", timeout=30, interval=0.25)
    assert set(statuses[:-1]) <= {429}, statuses
    assert time.monotonic() - locked_at >= retry_after - 1.5


def test_no_secret_in_the_server_log(limited):
    base = limited["base"]
    user = register_and_login(base, "quiet1")
    call(
        "POST",
        f"{base}/api/v1/auth/token?password={SECRET}",
        {"username": "quiet1", "password": PASSWORD + "x"},
        form=True,
    )
    call("POST", f"{base}/api/v1/classify?q={SECRET}", {"text": TEXT, "description": TEXT}, user)
    call(
        "POST",
        f"{base}/api/v1/classify",
        {"text": TEXT + " __error:internal", "description": DESCRIPTION},
        user,
    )
    call("POST", f"{base}/api/v1/classify", {"text": TEXT, "description": 5}, user)
    log = limited["log"]

    def logged():
        text = log.read_text(errors="replace")
        return text if '"POST /api/v1/classify HTTP/1.1" 422' in text else None

    text = wait_for(logged, 10, "the access log lines")
    assert "/api/v1/auth/token HTTP/1.1" in text  # the path is there, the query is not
    assert SECRET not in text
    assert PASSWORD not in text
    assert "Bearer" not in text


def test_limits_switched_off(unlimited):
    base = unlimited["base"]
    user = register_and_login(base, "free1")
    bad = {"username": "free1", "password": "wrong-password"}
    assert {call("POST", f"{base}/api/v1/auth/token", bad, form=True)[0] for _ in range(12)} == {
        401
    }
    assert (
        call(
            "POST",
            f"{base}/api/v1/auth/token",
            {"username": "free1", "password": PASSWORD},
            form=True,
        )[0]
        == 200
    )
    with ThreadPoolExecutor(4) as pool:
        statuses = set(
            pool.map(
                lambda _: call(
                    "POST",
                    f"{base}/api/v1/classify",
                    {"text": TEXT, "description": DESCRIPTION},
                    user,
                )[0],
                range(30),
            )
        )
    assert statuses == {200}
    assert not unlimited["db"].exists()  # no limiter database is even created


def test_body_and_text_size_limits_over_real_http(limited):
    base = limited["base"]
    user = register_and_login(base, "sizes1")
    big = {"text": "word " * 2000, "description": DESCRIPTION}  # ~10 KB > 4096 bytes
    status, _, body = call("POST", f"{base}/api/v1/classify", big, user)
    assert status == 413, body
    assert body["error"] == "payload_too_large", body
    assert "4096" in body["detail"]
    assert body["request_id"]
    # chunked, so no Content-Length to refuse early: the bounded read still refuses it
    port = int(base.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(
            "POST",
            "/api/v1/classify",
            body=iter([json.dumps(big).encode()]),
            headers={**user, "Content-Type": "application/json", "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        resp = conn.getresponse()
        assert resp.status == 413
        assert json.loads(resp.read())["error"] == "payload_too_large"
    finally:
        conn.close()
    # under the body limit but over MOLE_MAX_TEXT_CHARS: 422 naming the field
    status, _, body = call(
        "POST", f"{base}/api/v1/classify", {"text": "x" * 501, "description": DESCRIPTION}, user
    )
    assert status == 422, body
    assert body["field"] == "text", body
    assert "500" in body["detail"], body
    status, _, body = call(
        "POST", f"{base}/api/v1/classify", {"text": TEXT, "description": "y" * 501}, user
    )
    assert status == 422, body
    assert body["field"] == "description", body
