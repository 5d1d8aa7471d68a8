"""HTTP classify throughput and p50/p99: MoLE against the design it replaces, in one run.

MoLE:      wrk -> gunicorn (`python -m frontend`: threaded workers) -> broker -> worker process
Legacy:    wrk -> gunicorn (gthread) HTTP coordinator -> HTTP worker (gunicorn gthread)
           as it was (a new httpx-style client per call) and as fixed (one shared client)

Every design verifies the JWT and runs the same real gating pipeline per request; the
worker answers a fixed label after a fixed service time (0 and 20 ms by default):
MoLE's is the fixed-answer test double (tests/frontend/fixed_worker.py) under the real
worker runtime, the legacy one an HTTP endpoint. Frontend/coordinator process counts are
equal (``--frontend-workers``), as are the workers' concurrent slots (``--worker-slots``);
MoLE has one more process, the broker.

    .venv/bin/python tests/benchmarks/bench_http.py [--duration 8] [--delays 0,0.02]
        [--connections 1,8,32] [--frontend-workers 2] [--threads 16]

All stacks of one service time run side by side; wrk runs are interleaved across designs
and repeated (``--repeats``), and the table shows medians, so load from neighbours on a
shared machine falls on every design alike. Needs wrk (`apt-get install -y wrk`). Prints
one table and the ratios the issue asks for.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from contextlib import ExitStack, contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.support.procs import free_port, wait_http  # noqa: E402 - after the root is importable

PY = sys.executable
SECRET = "bench-secret-" + "s" * 40
TEXT = "The quarterly revenue rose 12 percent and the company raised its full-year outlook."
DESCRIPTION = "Rate the sentiment of this financial statement"
AS_IT_WAS = "legacy (as it was)"


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), e.get("PYTHONPATH")) if p)
    e.update({"HF_HUB_OFFLINE": "1", "JWT_SECRET_KEY": SECRET})
    e.update(extra)
    return e


@contextmanager
def proc(args: list[str], log: Path, environment: dict[str, str]):
    with open(log, "wb") as out:
        p = subprocess.Popen(args, cwd=REPO, env=environment, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield p
    finally:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def get_token(base: str) -> str:
    form = urllib.parse.urlencode({"username": "bench", "password": "bench-password"}).encode()
    req = urllib.request.Request(
        f"{base}/api/v1/auth/token",
        data=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["access_token"]


def lua_script(path: Path, token: str) -> Path:
    body = json.dumps({"text": TEXT, "description": DESCRIPTION})
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body)}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    )
    return path


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"unparsable latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(url: str, script: Path, connections: int, duration: float) -> dict:
    threads = min(connections, 2)
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(connections),
            "-d",
            f"{max(1, round(duration))}s",
            "--timeout",
            "30s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: .*", out)
    return {
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "requests": total,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(0) if errors else "",
    }


def check_one(url: str, token: str) -> dict:
    req = urllib.request.Request(
        url,
        data=json.dumps({"text": TEXT, "description": DESCRIPTION}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def start_mole(args, delay: float, work: Path, stack: ExitStack) -> tuple[str, Path]:
    """Broker, worker process and `python -m frontend`; returns the classify URL and script."""
    broker = f"tcp://127.0.0.1:{free_port()}"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    from mole.protocol.registry import load_registry

    services = sorted(load_registry().base_models)
    worker_args = [
        PY,
        str(REPO / "tests" / "frontend" / "fixed_worker.py"),
        "--broker",
        broker,
        "--delay",
        str(delay),
        "--slots",
        str(args.worker_slots),
    ]
    for s in services:
        worker_args += ["--service", s]
    tag = f"{delay * 1000:.0f}ms"
    stack.enter_context(
        proc([*shlex.split(args.broker_cmd), "--bind", broker], work / f"broker-{tag}.log", env())
    )
    stack.enter_context(proc(worker_args, work / f"fixed_worker-{tag}.log", env()))
    log = work / f"frontend-{tag}.log"
    fe = stack.enter_context(
        proc(
            [
                PY,
                "-m",
                "mole.frontend",
                "--bind",
                f"127.0.0.1:{port}",
                "--broker",
                broker,
                "--workers",
                str(args.frontend_workers),
                "--threads",
                str(args.threads),
                "--data-dir",
                str(work / f"mole-{tag}"),
            ],
            log,
            # rate limits stay checked (their cost is part of MoLE's) but far above the load
            env(
                MOLE_BOOTSTRAP_ADMIN="bench:bench-password",
                REQUEST_TIMEOUT_SECONDS="60",
                MOLE_RATE_LIMIT_CLASSIFY="10000000/second",
            ),
        )
    )
    wait_http(f"{base}/api/v1/health/ready", 120, fe, log)
    token = get_token(base)
    url = f"{base}/api/v1/classify"
    sample = check_one(url, token)
    print(f"  mole sample: {sample['routing_path']} -> {sample['result']}", flush=True)
    return url, lua_script(work / f"mole-{tag}.lua", token)


def start_legacy(
    args, delay: float, work: Path, stack: ExitStack, token: str
) -> dict[str, tuple[str, Path]]:
    """The legacy HTTP worker and both coordinator variants; name -> (URL, script)."""
    wport = free_port()
    tag = f"{delay * 1000:.0f}ms"
    gunicorn = [PY, "-m", "gunicorn", "-k", "gthread", "--log-level", "warning"]
    wlog = work / f"legacy_worker-{tag}.log"
    w = stack.enter_context(
        proc(
            [
                *gunicorn,
                "-w",
                "1",
                "--threads",
                str(args.worker_slots),
                "-b",
                f"127.0.0.1:{wport}",
                "tests.benchmarks.legacy_http.worker:app",
            ],
            wlog,
            env(LEGACY_DELAY_S=str(delay)),
        )
    )
    wait_http(f"http://127.0.0.1:{wport}/health", 60, w, wlog)
    targets = {}
    for mode, name in (("per_call", AS_IT_WAS), ("shared", "legacy (fixed)")):
        cport = free_port()
        clog = work / f"legacy_{mode}-{tag}.log"
        c = stack.enter_context(
            proc(
                [
                    *gunicorn,
                    "-w",
                    str(args.frontend_workers),
                    "--threads",
                    str(args.threads),
                    "-b",
                    f"127.0.0.1:{cport}",
                    "tests.benchmarks.legacy_http.coordinator:app",
                ],
                clog,
                env(LEGACY_CLIENT_MODE=mode, LEGACY_WORKER_URL=f"http://127.0.0.1:{wport}"),
            )
        )
        base = f"http://127.0.0.1:{cport}"
        wait_http(f"{base}/api/v1/health", 120, c, clog)
        url = f"{base}/api/v1/classify"
        check_one(url, token)
        targets[name] = (url, lua_script(work / f"{mode}-{tag}.lua", token))
    return targets


def median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per wrk run")
    parser.add_argument("--delays", default="0,0.02", help="worker service times, seconds")
    parser.add_argument("--connections", default="1,8,32")
    parser.add_argument("--frontend-workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--worker-slots", type=int, default=32)
    parser.add_argument("--designs", default="mole,legacy")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per point")
    parser.add_argument(
        "--broker-cmd",
        default=f"{PY} -m broker",
        help="command that runs a broker (gets --bind URL appended)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args()
    args.connections = [int(c) for c in args.connections.split(",")]
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(REPO))
    from mole.frontend.tokens import TokenService

    token = TokenService(SECRET).issue("bench")  # same secret and issuer as every design
    designs = args.designs.split(",")
    results: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="bench_http_"))
    print(
        f"logs in {work}; {args.frontend_workers} frontend processes x {args.threads} "
        f"threads; worker slots {args.worker_slots}; {args.duration:.0f} s per run"
    )
    for delay in (float(d) for d in args.delays.split(",")):
        with ExitStack() as stack:
            targets: dict[str, tuple[str, Path]] = {}
            if "mole" in designs:
                targets["mole"] = start_mole(args, delay, work, stack)
            if "legacy" in designs:
                targets.update(start_legacy(args, delay, work, stack, token))
            # Interleave designs and repeat, so a neighbour's load on this shared machine
            # hits every design alike; report the median of the repeats. "As it was" runs
            # once per point (plenty at ~40 req/s), after the others: its leftovers (a new
            # client, connection and TLS context per call, sockets in TIME_WAIT on the
            # shared legacy worker) slowed whichever run came next, and the fixed variant's
            # first run, which used to follow it, was often that variant's slowest.
            schedule = [
                (rep, c, name)
                for rep in range(args.repeats)
                for c in args.connections
                for name in targets
                if name != AS_IT_WAS
            ]
            if AS_IT_WAS in targets:
                schedule += [(0, c, AS_IT_WAS) for c in args.connections]
            runs: dict[tuple[str, int], list[dict]] = {}
            warmed: set[str] = set()
            for rep, c, name in schedule:
                url, script = targets[name]
                if name not in warmed:  # warm-up: connections, caches
                    run_wrk(url, script, max(args.connections), 2)
                    warmed.add(name)
                r = run_wrk(url, script, c, args.duration)
                runs.setdefault((name, c), []).append(r)
                print(
                    f"  rep {rep} {name:<20} delay {delay * 1000:>3.0f} ms c={c:<3}"
                    f"{r['rps']:>9.1f} req/s  p50 {r['p50_ms']:>8.2f}  p99 "
                    f"{r['p99_ms']:>8.2f} ms  non-2xx {r['non_2xx']} "
                    f"{r['socket_errors']}",
                    flush=True,
                )
            for (name, c), rs in runs.items():
                results.append(
                    {
                        "design": name,
                        "connections": c,
                        "delay_ms": delay * 1000,
                        "repeats": len(rs),
                        "rps": median([r["rps"] for r in rs]),
                        "p50_ms": median([r["p50_ms"] for r in rs]),
                        "p99_ms": median([r["p99_ms"] for r in rs]),
                        "non_2xx": sum(r["non_2xx"] for r in rs),
                        "runs": rs,
                    }
                )
    print()
    print(f"medians of {args.repeats} interleaved runs of {args.duration:.0f} s")
    print(
        f"{'design':<22}{'delay':>7}{'conns':>7}{'req/s':>11}{'p50 ms':>10}{'p99 ms':>10}"
        f"{'non-2xx':>9}"
    )
    for r in results:
        print(
            f"{r['design']:<22}{r['delay_ms']:>7.0f}{r['connections']:>7}{r['rps']:>11.1f}"
            f"{r['p50_ms']:>10.2f}{r['p99_ms']:>10.2f}{r['non_2xx']:>9}"
        )
    print()
    by = {(r["design"], r["delay_ms"], r["connections"]): r for r in results}
    for delay in sorted({r["delay_ms"] for r in results}):
        for c in args.connections:
            mole = by.get(("mole", delay, c))
            for other in ("legacy (fixed)", AS_IT_WAS):
                base = by.get((other, delay, c))
                if mole and base and base["rps"]:
                    print(
                        f"delay {delay:>3.0f} ms c={c:<3} mole / {other:<19} throughput "
                        f"x{mole['rps'] / base['rps']:.2f}, p99 {mole['p99_ms']:.2f} vs "
                        f"{base['p99_ms']:.2f} ms"
                    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
