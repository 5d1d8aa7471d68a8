"""`python -m mole.frontend` (gunicorn over 2 uvicorn worker processes) in front of a real
broker and real worker processes, over real HTTP: the whole API, metrics across
processes, no broker connection in the gunicorn master, and graceful shutdown with a
request in flight."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from mole.protocol import Client
from tests.frontend.frontend_support import call, frontend_server, wait_for

pytestmark = pytest.mark.slow

TEXT = "The quarterly revenue rose 12 percent and the company raised its full-year outlook."
DESCRIPTION = "Rate the sentiment of this financial statement"


@pytest.fixture(scope="module")
def server(broker_url, fixed_workers, gating_pipeline, tmp_path_factory, logs_dir):
    data = tmp_path_factory.mktemp("gunicorn-data")
    with frontend_server(
        broker_url,
        data,
        logs_dir / "gunicorn.log",
        *("--workers", "2"),
        ready_workers=2,
        stop_grace=40,
        MOLE_BOOTSTRAP_ADMIN="admin:admin-password",
        REQUEST_TIMEOUT_SECONDS="10",
    ) as running:
        yield {
            "base": running.base,
            "proc": running.process,
            "data": data / "frontend",
            "log": running.log,
            "broker_port": int(broker_url.rsplit(":", 1)[1]),
            "broker_url": broker_url,
        }


def token(base: str, username: str, password: str) -> dict[str, str]:
    status, _, body = call(
        "POST", f"{base}/api/v1/auth/token", {"username": username, "password": password}, form=True
    )
    assert status == 200, body
    return {"Authorization": f"Bearer {body['access_token']}"}


def test_the_api_over_real_http(server):
    base = server["base"]
    assert call("GET", f"{base}/")[2]["docs"] == "/api/v1/openapi.json"
    status, _, body = call(
        "POST",
        f"{base}/api/v1/auth/register",
        {"username": "httpuser", "password": "http-password"},
    )
    assert status == 201
    user = token(base, "httpuser", "http-password")
    status, headers, body = call(
        "POST",
        f"{base}/api/v1/classify",
        {"text": TEXT, "description": DESCRIPTION, "options": {"return_probabilities": True}},
        user,
    )
    assert status == 200, body
    assert headers["X-Request-ID"] == body["request_id"]
    assert body["language"] == "english"
    assert body["domain"] == "finance"
    assert body["routing_path"].startswith("english -> finance -> ")
    assert body["worker_id"].startswith("fixed-")
    assert body["tiny_model"] is True
    assert abs(sum(body["probabilities"].values()) - 1.0) < 1e-6
    status, _, batch = call(
        "POST",
        f"{base}/api/v1/classify/batch",
        {
            "items": [{"text": TEXT, "description": DESCRIPTION}] * 5
            + [{"text": "", "description": DESCRIPTION}]
        },
        user,
    )
    assert status == 200
    assert batch["successful"] == 5
    assert batch["failed"] == 1
    assert batch["results"][5]["error"] == "validation_error"
    # admin: from MOLE_BOOTSTRAP_ADMIN; a registered user is refused
    assert call("GET", f"{base}/api/v1/admin/workers", headers=user)[0] == 403
    admin = token(base, "admin", "admin-password")
    status, _, workers = call("GET", f"{base}/api/v1/admin/workers", headers=admin)
    assert status == 200
    assert any(w["id"].startswith("fixed-") for w in workers["workers"])
    # the generated secret is private
    assert (server["data"] / "jwt_secret").stat().st_mode & 0o777 == 0o600


def test_metrics_add_up_across_worker_processes(server):
    base = server["base"]
    user = token(base, "admin", "admin-password")
    time.sleep(0.6)  # earlier tests' counts are folded in by now (0.25 s interval)
    before = _classify_count(call("GET", f"{base}/metrics")[2])
    for _ in range(12):  # a new connection each: both gunicorn workers get some
        assert (
            call(
                "POST", f"{base}/api/v1/classify", {"text": TEXT, "description": DESCRIPTION}, user
            )[0]
            == 200
        )
    # each process folds its counts into the shared files within its flush interval
    # (0.25 s): the sum reaches exactly +12 and stays there
    wait_for(
        lambda: _classify_count(call("GET", f"{base}/metrics")[2]) >= before + 12,
        10,
        "both processes' counts in /metrics",
    )
    time.sleep(0.5)
    assert _classify_count(call("GET", f"{base}/metrics")[2]) == before + 12


def _classify_count(text: str) -> float:
    for line in text.splitlines():
        if (
            line.startswith("mole_http_requests_total{")
            and 'route="/api/v1/classify"' in line
            and 'status="200"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _broker_connection_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port:
                inodes.add(fields[9])
    return inodes


def test_many_keep_alive_connections_are_all_served_each_on_one_socket(server):
    """64 kept-alive connections on 2 processes, 3 requests each on the same socket: each
    connection keeps its one TCP socket throughout (an event loop holds them all)."""
    import http.client
    import json

    base = server["base"]
    user = token(base, "admin", "admin-password")
    host, port = base.removeprefix("http://").split(":")
    body = json.dumps({"text": TEXT, "description": DESCRIPTION})
    headers = {**user, "Content-Type": "application/json"}
    outcome: dict[int, list] = {}

    def client(n: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        sockets, statuses = set(), []
        try:
            for _ in range(3):
                conn.request("POST", "/api/v1/classify", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                statuses.append(response.status)
                sockets.add(id(conn.sock))
                time.sleep(0.02)
        finally:
            conn.close()
        outcome[n] = [statuses, len(sockets)]

    threads = [threading.Thread(target=client, args=(n,)) for n in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outcome == {n: [[200, 200, 200], 1] for n in range(64)}


def test_back_to_back_connections_do_not_starve_later_ones(server):
    """12 connections sending back to back and then 4 more: the later ones are answered
    promptly, not once the busy ones stop."""
    import http.client
    import json

    base = server["base"]
    user = token(base, "admin", "admin-password")
    host, port = base.removeprefix("http://").split(":")
    body = json.dumps({"text": TEXT, "description": DESCRIPTION})
    headers = {**user, "Content-Type": "application/json"}
    stop = threading.Event()
    late: dict[int, list[float]] = {}

    def one(conn: http.client.HTTPConnection) -> int:
        conn.request("POST", "/api/v1/classify", body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status

    busy: set[int] = set()

    def hog(n: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        deadline = time.monotonic() + 20
        try:
            while not stop.is_set() and time.monotonic() < deadline:
                assert one(conn) == 200
                busy.add(n)
        finally:
            conn.close()

    def newcomer(n: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        took = []
        try:
            for _ in range(3):
                start = time.monotonic()
                assert one(conn) == 200
                took.append(time.monotonic() - start)
        finally:
            conn.close()
        late[n] = took

    hogs = [threading.Thread(target=hog, args=(n,)) for n in range(12)]
    for t in hogs:
        t.start()
    wait_for(lambda: len(busy) == 12, 30, "every hog to be answered at least once")
    newcomers = [threading.Thread(target=newcomer, args=(n,)) for n in range(4)]
    started = time.monotonic()
    for t in newcomers:
        t.start()
    for t in newcomers:
        t.join(30)
    waited = time.monotonic() - started
    stop.set()
    for t in hogs:
        t.join(30)
    assert sorted(late) == [0, 1, 2, 3]
    assert waited < 8, late  # with the busy connections still sending
    assert max(max(took) for took in late.values()) < 5, late


def test_the_gunicorn_master_holds_no_broker_connection(server):
    master = server["proc"].pid
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 2
    broker = _broker_connection_inodes(server["broker_port"])
    assert not (_socket_inodes(master) & broker)
    assert any(_socket_inodes(int(c)) & broker for c in children)


def test_the_server_opens_no_control_socket_another_stack_could_share(server):
    """gunicorn's control socket would be one path per user (~/.gunicorn/gunicorn.ctl), the
    same for every stack on the machine: no process of the frontend holds a Unix socket
    bound to a path."""
    pids = [server["proc"].pid]
    pids += [int(c) for c in Path(f"/proc/{pids[0]}/task/{pids[0]}/children").read_text().split()]
    ours = set().union(*(_socket_inodes(pid) for pid in pids))
    bound = {}
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8:  # the eighth column is the path, when there is one
            bound[fields[6]] = fields[7]
    assert not {inode: bound[inode] for inode in ours if inode in bound}


def test_graceful_shutdown_finishes_the_request_in_flight(server):
    base = server["base"]
    user = token(base, "admin", "admin-password")
    outcome = {}

    def slow():
        outcome["reply"] = call(
            "POST",
            f"{base}/api/v1/classify",
            {"text": TEXT + " __sleep:1.5", "description": DESCRIPTION},
            user,
        )

    thread = threading.Thread(target=slow)
    thread.start()
    with Client(server["broker_url"], timeout=5) as broker:
        wait_for(
            lambda: sum(w["in_flight"] for w in broker.status()["workers"]) == 1,
            30,
            "the request to be with the worker",
        )
    server["proc"].send_signal(signal.SIGTERM)
    thread.join(30)
    assert outcome["reply"][0] == 200, outcome
    assert server["proc"].wait(40) == 0
