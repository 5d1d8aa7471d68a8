"""Soak and fault figures for the HTTP stack, plus the rate limiter's cost per check.

Three parts, each a flag (all on by default; durations are flags so a short run works)::

    .venv/bin/python tests/benchmarks/bench_soak.py [--rate 100] [--fault-seconds 60]
        [--kill-every 15] [--memory-seconds 300] [--sample-every 5] [--limiter-checks 20000]
    # a quick run:  --fault-seconds 10 --kill-every 4 --memory-seconds 20 --sample-every 2

1. limiter: the cost of one rate-limit check (two keys, one SQLite transaction) in one
   process, and in each of two processes hammering the same file at once (the gunicorn
   case), as median / p99 microseconds.
2. fault run: a real stack (``python -m broker``, two worker processes of one service
   running the fixed-answer test double ``tests/frontend/fixed_worker.py`` under the real
   worker runtime, ``python -m mole.frontend`` with 2 gunicorn/uvicorn processes) takes classify
   requests over HTTP at a fixed offered rate (open loop: request i is sent at t0 + i/rate
   whatever happened to the others) while a worker is SIGKILLed and restarted every
   ``--kill-every`` seconds (the two in turn). Printed: answered, errors by status and
   code, lost (no HTTP response at all: must be 0), latency p50/p99/max (none may pass
   the client timeout, REQUEST_TIMEOUT_SECONDS + 5 s).
3. memory run: the same load without kills; RSS of the broker and of the frontend (the
   gunicorn master and its worker processes) sampled every ``--sample-every`` seconds;
   growth is the mean of the last fifth against the first fifth after the warm-up (the
   first fifth of the run), and must stay under 10 %.

Rate limits stay ON during the runs (raised far above the offered rate with
MOLE_RATE_LIMIT_CLASSIFY, as a soak test must), so their cost is inside the figures.
The machine's load average is printed before and after.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.procs import free_port

FIXED_WORKER = REPO / "tests" / "frontend" / "fixed_worker.py"
SERVICE = "llama-2-7b-hf"  # english / finance / rating routes here
TEXT = "The quarterly revenue rose 12 percent and the company raised its full-year outlook."
DESCRIPTION = "Rate the sentiment of this financial statement"
PASSWORD = "soak-password-123"
REQUEST_TIMEOUT_S = 10.0


# ---------------------------------------------------------------- 1. limiter cost


def _limiter_worker(path: str, checks: int, barrier, out) -> None:
    from mole.frontend.ratelimit import Rate, RateLimiter

    limiter = RateLimiter(Path(path))
    rate = Rate(10**9, 60.0)
    limiter.hit([("warm", rate)])
    times = []
    barrier.wait()
    for i in range(checks):
        keys = [(f"classify:user:u{i % 50}", rate), (f"classify:addr:10.0.0.{i % 20}", rate)]
        t = time.perf_counter()
        limiter.hit(keys)
        times.append(time.perf_counter() - t)
    limiter.close()
    out.put(times)


def limiter_cost(checks: int) -> None:
    print(f"\n== rate limiter: one check = 2 keys in one SQLite transaction ({checks} checks)")
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "rl.sqlite3")
        for procs in (1, 2):
            ctx = multiprocessing.get_context("spawn")
            barrier, out = ctx.Barrier(procs), ctx.Queue()
            workers = [
                ctx.Process(target=_limiter_worker, args=(path, checks, barrier, out))
                for _ in range(procs)
            ]
            for w in workers:
                w.start()
            results = [out.get() for _ in workers]
            for w in workers:
                w.join()
            for i, times in enumerate(results):
                times.sort()
                print(
                    f"  {procs} process(es), process {i}: median "
                    f"{statistics.median(times) * 1e6:7.1f} us  p99 "
                    f"{times[int(len(times) * 0.99)] * 1e6:7.1f} us"
                )


# ---------------------------------------------------------------- the stack


class Stack:
    """broker + 2 fixed workers + `python -m frontend` (2 gunicorn processes)."""

    def __init__(self, tmp: Path, *, worker_delay: float, frontend_workers: int) -> None:
        self.tmp = tmp
        self.broker_url = f"tcp://127.0.0.1:{free_port()}"
        self.port = free_port()
        self.worker_delay = worker_delay
        self.frontend_workers = frontend_workers
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO), self.env.get("PYTHONPATH")) if p
        )
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.env.pop("JWT_SECRET_KEY", None)
        self.env.update(
            MOLE_ARGON2_PROFILE="cheap",
            REQUEST_TIMEOUT_SECONDS=str(REQUEST_TIMEOUT_S),
            MOLE_RATE_LIMIT_CLASSIFY="1000000/minute",
            MOLE_RATE_LIMIT_LOGIN="1000/minute",
            HF_HUB_OFFLINE="1",
        )
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: list = []

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        self.logs.append(log)
        proc = subprocess.Popen(args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def start_worker(self, index: int) -> subprocess.Popen:
        return self._start(
            f"worker{index}",
            [
                sys.executable,
                str(FIXED_WORKER),
                "--broker",
                self.broker_url,
                "--service",
                SERVICE,
                "--delay",
                str(self.worker_delay),
            ],
        )

    def start(self) -> None:
        self._start("broker", [sys.executable, "-m", "mole.broker", "--bind", self.broker_url])
        self.start_worker(0)
        self.start_worker(1)
        self._start(
            "frontend",
            [
                sys.executable,
                "-m",
                "mole.frontend",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--broker",
                self.broker_url,
                "--workers",
                str(self.frontend_workers),
                "--data-dir",
                str(self.tmp / "data"),
            ],
        )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SystemExit(f"{name} exited; see {self.tmp / (name + '.log')}")
            try:
                if (
                    request(self.port, "GET", "/api/v1/health/ready", timeout=5)[0] == 200
                    and self.live_workers() >= 2
                ):
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise SystemExit("the stack did not become ready in 180 s")

    def live_workers(self) -> int:
        from mole.protocol.client import Client

        with Client(self.broker_url, timeout=2.0) as client:
            status = client.status(timeout=2.0)
        return int((status["services"].get(SERVICE) or {}).get("workers", 0))

    def token(self) -> str:
        user = {"username": "soak1", "password": PASSWORD}
        request(
            self.port,
            "POST",
            "/api/v1/auth/register",
            json.dumps(user).encode(),
            {"Content-Type": "application/json"},
        )
        status, body = request(
            self.port,
            "POST",
            "/api/v1/auth/token",
            urllib.parse.urlencode(user).encode(),
            {"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert status == 200, body
        return json.loads(body)["access_token"]

    def pids(self) -> dict[str, list[int]]:
        master = self.procs["frontend"].pid
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        return {"broker": [self.procs["broker"].pid], "frontend": [master, *map(int, children)]}

    def stop(self) -> None:
        for name in ("frontend", "worker0", "worker1", "broker"):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for log in self.logs:
            log.close()


def request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except FileNotFoundError:
        pass
    return 0


# ---------------------------------------------------------------- load


class Load:
    """Open-loop load: request i is sent at t0 + i/rate, on a thread of its own."""

    def __init__(self, port: int, token: str, rate: float) -> None:
        self.port = port
        self.rate = rate
        self.body = json.dumps({"text": TEXT, "description": DESCRIPTION}).encode()
        self.headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        self.results: list[tuple[float, float, int | None, str]] = []
        self._lock = threading.Lock()

    def _one(self, scheduled: float) -> None:
        started = time.monotonic()
        try:
            status, raw = request(
                self.port,
                "POST",
                "/api/v1/classify",
                self.body,
                self.headers,
                timeout=REQUEST_TIMEOUT_S + 5,
            )
            code = "ok" if status == 200 else json.loads(raw).get("error", "?")
        except Exception as err:  # no HTTP answer: lost
            status, code = None, type(err).__name__
        with self._lock:
            self.results.append((started - scheduled, time.monotonic() - started, status, code))

    def run(self, seconds: float, during=None) -> list:
        total = int(seconds * self.rate)
        with ThreadPoolExecutor(max_workers=256) as pool:
            t0 = time.monotonic()
            for i in range(total):
                target = t0 + i / self.rate
                delay = target - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if during is not None:
                    during(time.monotonic() - t0)
                pool.submit(self._one, target)
        return self.results


def summarize(title: str, results: list, seconds: float, rate: float) -> None:
    answered = [r for r in results if r[2] is not None]
    lost = [r for r in results if r[2] is None]
    codes = Counter(f"{r[2]} {r[3]}" if r[2] is not None else f"lost {r[3]}" for r in results)
    lat = sorted(r[1] for r in answered)
    late = sorted(r[0] for r in results)
    print(f"\n== {title}: offered {rate:g} req/s for {seconds:g} s = {len(results)} requests")
    print(f"  answered {len(answered)}  lost {len(lost)}  by status/code: {dict(codes)}")
    if lat:
        print(
            f"  latency ms: p50 {lat[len(lat) // 2] * 1e3:.1f}  p99 "
            f"{lat[int(len(lat) * 0.99)] * 1e3:.1f}  max {lat[-1] * 1e3:.1f}  "
            f"(client timeout {(REQUEST_TIMEOUT_S + 5) * 1e3:.0f})"
        )
    if late:
        print(
            f"  send lag behind schedule ms: p50 {late[len(late) // 2] * 1e3:.1f}  "
            f"max {late[-1] * 1e3:.1f}"
        )


def fault_run(stack: Stack, token: str, args) -> None:
    load = Load(stack.port, token, args.rate)
    kills: list[tuple[float, int, int]] = []
    state = {"next": args.kill_every, "victim": 0}

    def during(elapsed: float) -> None:
        if elapsed < state["next"]:
            return
        state["next"] += args.kill_every
        name = f"worker{state['victim']}"
        proc = stack.procs[name]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        new = stack.start_worker(state["victim"])
        kills.append((round(elapsed, 1), proc.pid, new.pid))
        state["victim"] = 1 - state["victim"]

    results = load.run(args.fault_seconds, during)
    summarize(
        f"fault run (a worker SIGKILLed and restarted every {args.kill_every:g} s)",
        results,
        args.fault_seconds,
        args.rate,
    )
    print(f"  kills (t s, killed pid, new pid): {kills}")


def memory_run(stack: Stack, token: str, args) -> None:
    load = Load(stack.port, token, args.rate)
    samples: list[tuple[float, dict[str, int]]] = []
    stop = threading.Event()

    def sampler() -> None:
        t0 = time.monotonic()
        while not stop.is_set():
            pids = stack.pids()
            samples.append(
                (time.monotonic() - t0, {k: sum(rss_kib(p) for p in v) for k, v in pids.items()})
            )
            stop.wait(args.sample_every)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    results = load.run(args.memory_seconds)
    stop.set()
    thread.join()
    summarize("memory run (no faults)", results, args.memory_seconds, args.rate)
    fifth = max(1, len(samples) // 5)
    warm = samples[fifth:]
    print(
        f"  RSS samples: {len(samples)} every {args.sample_every:g} s; warm-up = first "
        f"{fifth} sample(s); frontend processes: {len(stack.pids()['frontend'])}"
    )
    for name in ("broker", "frontend"):
        series = [s[name] for _, s in warm]
        if len(series) < 2:
            print(f"  {name}: too few samples")
            continue
        k = max(1, len(series) // 5)
        first, last = statistics.mean(series[:k]), statistics.mean(series[-k:])
        growth = (last - first) / first * 100
        print(
            f"  {name:8s} RSS MiB: start {samples[0][1][name] / 1024:.1f}  after warm-up "
            f"{first / 1024:.1f}  end {last / 1024:.1f}  max {max(series) / 1024:.1f}  "
            f"growth {growth:+.1f} %  {'OK' if growth < 10 else 'OVER 10 %'}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=100.0, help="offered requests/s")
    parser.add_argument("--fault-seconds", type=float, default=60.0, help="0 skips it")
    parser.add_argument("--kill-every", type=float, default=15.0)
    parser.add_argument("--memory-seconds", type=float, default=300.0, help="0 skips it")
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--limiter-checks", type=int, default=20000, help="0 skips it")
    parser.add_argument(
        "--worker-delay",
        type=float,
        default=0.01,
        help="the test double's service time per request (s)",
    )
    parser.add_argument("--frontend-workers", type=int, default=2)
    args = parser.parse_args(argv)
    print(f"load average before: {os.getloadavg()}  cpus: {os.cpu_count()}")
    if args.limiter_checks:
        limiter_cost(args.limiter_checks)
    if args.fault_seconds or args.memory_seconds:
        with tempfile.TemporaryDirectory(prefix="mole-soak-") as tmp:
            stack = Stack(
                Path(tmp), worker_delay=args.worker_delay, frontend_workers=args.frontend_workers
            )
            try:
                stack.start()
                token = stack.token()
                if args.fault_seconds:
                    fault_run(stack, token, args)
                if args.memory_seconds:
                    memory_run(stack, token, args)
            finally:
                stack.stop()
    print(f"\nload average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
