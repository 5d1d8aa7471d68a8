"""HTTP classify throughput, p50/p99 and frontend CPU: MoLE against the design it replaces.

MoLE:    wrk -> gunicorn over uvicorn workers (`python -m mole.frontend`, falcon.asgi)
         -> broker -> the fixed-answer worker process
Legacy:  wrk -> FastAPI coordinator under uvicorn (ONE shared httpx.AsyncClient per
         process: the original design as a careful user would fix it) -> FastAPI worker

Every design verifies the JWT (the same TokenService) and runs the same real gating
pipeline per request; the worker answers a fixed label after a fixed service time (0 and
20 ms by default): MoLE's is the fixed-answer test double (tests/frontend/fixed_worker.py)
under the real worker runtime, the legacy one an HTTP endpoint. Frontend/coordinator
process counts are equal (``--frontend-workers``). MoLE runs as deployed: metrics,
analytics and rate limits on (limits far above the load, so they are checked, not hit).

CPU per request is read from /proc (utime + stime) for every process of each frontend
(the gunicorn or uvicorn master and its workers), and for MoLE's broker and worker, over
each wrk run, divided by the requests answered.

    .venv/bin/python tests/benchmarks/bench_http.py [--duration 8] [--delays 0,0.02]
        [--connections 1,8,32] [--frontend-workers 2] [--repeats 3]
        [--variant NAME:VAR=VALUE[,VAR=VALUE]]... [--baseline NAME=CHECKOUT]...
        [--bodies rotating|long|single] [--floor]

Requests carry a few hundred distinct texts in the twelve served languages under a
handful of task descriptions, cycled by the wrk script (``classify_bodies.py``), so no
per-text cache makes a design look cheaper than it is; ``--bodies single`` sends one
fixed body as earlier rounds did. ``--floor`` also runs ``GET /api/v1/health/live``
against MoLE's own frontend, interleaved with the rest (``mole-live``): what the server,
Falcon and the middleware cost per request before any classify work, on the same
processes and the same load.

All stacks of one service time run side by side; wrk runs are interleaved across designs
and repeated (``--repeats``), and the table shows medians, so load from neighbours on a
shared machine falls on every design alike. Needs wrk (`apt-get install -y wrk`). Prints
one table and the ratios the issue asks for (throughput >= 4x, p99 <= half, frontend CPU
<= 250 us per classify at 8 connections, 0 ms). A ``--variant`` is one more MoLE stack
with some frontend settings changed (a lever switched off, say), interleaved like the
rest and compared with MoLE as configured by default. A ``--baseline`` is one more MoLE
stack whose frontend is another checkout's code (the commit before a change, say), so a
change's effect on the frontend's CPU is measured side by side in one run:

    git archive BASE | tar -x -C /tmp/base && python -m venv /tmp/base/.venv && \
      /tmp/base/.venv/bin/pip install --no-deps --no-build-isolation -e /tmp/base
    (with the third-party packages reachable from that venv, e.g. through a .pth)
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
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tests.benchmarks.classify_bodies import BODY_KINDS, bodies_of_kind, wrk_script
from tests.support.procs import free_port, wait_http

PY = sys.executable
SECRET = "bench-secret-" + "s" * 40
LEGACY = "legacy (fixed)"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/<pid>/task/*/children)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return found


def cpu_seconds(roots: list[int]) -> float:
    """utime + stime of every process under ``roots``, in seconds."""
    total = 0
    for root in roots:
        for pid in process_tree(root):
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / CLK_TCK


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), e.get("PYTHONPATH")) if p)
    e.update({"HF_HUB_OFFLINE": "1", "JWT_SECRET_KEY": SECRET})
    e.update(extra)
    return e


@contextmanager
def proc(args: list[str], log: Path, environment: dict[str, str], cwd: Path = REPO):
    with open(log, "wb") as out:
        p = subprocess.Popen(args, cwd=cwd, env=environment, stdout=out, stderr=subprocess.STDOUT)
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


def check_one(url: str, token: str, body: dict) -> dict:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def start_mole(
    args,
    delay: float,
    work: Path,
    stack: ExitStack,
    name: str = "mole",
    extra_env=None,
    checkout: Path | None = None,
) -> dict:
    """Broker, worker process and `python -m mole.frontend`: classify URL, wrk script and
    the pids whose CPU is counted (``frontend``: the gunicorn master, with its workers).
    ``extra_env`` goes to the frontend only (a ``--variant``'s settings); ``checkout``
    runs the frontend of another checkout (a ``--baseline``) with that checkout's
    ``.venv/bin/python``, from its own directory; broker and worker are this tree's."""
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
    tag = f"{name}-{delay * 1000:.0f}ms"
    broker_proc = stack.enter_context(
        proc([*shlex.split(args.broker_cmd), "--bind", broker], work / f"broker-{tag}.log", env())
    )
    worker_proc = stack.enter_context(proc(worker_args, work / f"fixed_worker-{tag}.log", env()))
    log = work / f"frontend-{tag}.log"
    fe_python, fe_env = PY, env()
    if checkout is not None:
        fe_python = str(checkout / ".venv" / "bin" / "python")
        fe_env["PYTHONPATH"] = str(checkout)
    fe = stack.enter_context(
        proc(
            [
                fe_python,
                "-m",
                "mole.frontend",
                "--bind",
                f"127.0.0.1:{port}",
                "--broker",
                broker,
                "--workers",
                str(args.frontend_workers),
                "--data-dir",
                str(work / f"mole-{tag}"),
            ],
            log,
            # rate limits stay checked (their cost is part of MoLE's) but far above the load
            {
                **fe_env,
                "MOLE_BOOTSTRAP_ADMIN": "bench:bench-password",
                "REQUEST_TIMEOUT_SECONDS": "60",
                "MOLE_RATE_LIMIT_CLASSIFY": "10000000/second",
                **(extra_env or {}),
            },
            cwd=checkout or REPO,
        )
    )
    wait_http(f"{base}/api/v1/health/ready", 120, fe, log)
    token = get_token(base)
    url = f"{base}/api/v1/classify"
    sample = check_one(url, token, args.bodies[0])
    print(f"  {name} sample: {sample['routing_path']} -> {sample['result']}", flush=True)
    return {
        "url": url,
        "script": wrk_script(work / f"{name}-{tag}.lua", token, args.bodies),
        "frontend": [fe.pid],
        "others": {"broker": [broker_proc.pid], "worker": [worker_proc.pid]},
    }


def start_legacy(args, delay: float, work: Path, stack: ExitStack, token: str) -> dict:
    """The legacy FastAPI worker and coordinator under uvicorn (see legacy_http/)."""
    wport = free_port()
    tag = f"{delay * 1000:.0f}ms"
    uvicorn = [PY, "-m", "uvicorn", "--log-level", "warning", "--no-access-log"]
    wlog = work / f"legacy_worker-{tag}.log"
    w = stack.enter_context(
        proc(
            [*uvicorn, "--port", str(wport), "tests.benchmarks.legacy_http.worker:app"],
            wlog,
            env(LEGACY_DELAY_S=str(delay)),
        )
    )
    wait_http(f"http://127.0.0.1:{wport}/health", 60, w, wlog)
    cport = free_port()
    clog = work / f"legacy_coordinator-{tag}.log"
    c = stack.enter_context(
        proc(
            [
                *uvicorn,
                "--workers",
                str(args.frontend_workers),
                "--port",
                str(cport),
                "tests.benchmarks.legacy_http.coordinator:app",
            ],
            clog,
            env(LEGACY_WORKER_URL=f"http://127.0.0.1:{wport}"),
        )
    )
    base = f"http://127.0.0.1:{cport}"
    wait_http(f"{base}/api/v1/health", 120, c, clog)
    url = f"{base}/api/v1/classify"
    check_one(url, token, args.bodies[0])
    return {
        "url": url,
        "script": wrk_script(work / f"legacy-{tag}.lua", token, args.bodies),
        "frontend": [c.pid],
        "others": {"worker": [w.pid]},
    }


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
    parser.add_argument("--worker-slots", type=int, default=32)
    parser.add_argument("--designs", default="mole,legacy")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per point")
    parser.add_argument(
        "--broker-cmd",
        default=f"{PY} -m mole.broker",
        help="command that runs a broker (gets --bind URL appended)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:VAR=VALUE[,VAR=VALUE]",
        help="one more MoLE stack whose frontend gets these environment settings, run "
        "interleaved with the others (e.g. mole-asyncio:MOLE_EVENT_LOOP=asyncio); repeatable",
    )
    parser.add_argument(
        "--baseline",
        action="append",
        default=[],
        metavar="NAME=CHECKOUT",
        help="one more MoLE stack whose frontend is another checkout's (e.g. main's code "
        "exported with `git archive` and installed into CHECKOUT/.venv), interleaved "
        "with the others and compared with this tree's frontend; repeatable",
    )
    parser.add_argument(
        "--bodies",
        choices=BODY_KINDS,
        default="rotating",
        help="rotating: a few hundred distinct texts under a handful of descriptions, as "
        "clients send (default); long: article-length texts (1,500-6,000 characters); "
        "single: one fixed body (every per-text cache hits)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time GET /api/v1/health/live on MoLE's frontend (mole-live): the "
        "server's and Falcon's own cost per request",
    )
    args = parser.parse_args()
    args.bodies = bodies_of_kind(args.bodies)
    print(f"{len(args.bodies)} distinct request bodies", flush=True)
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
        f"logs in {work}; {args.frontend_workers} frontend processes; worker slots "
        f"{args.worker_slots}; {args.duration:.0f} s per run"
    )
    for delay in (float(d) for d in args.delays.split(",")):
        with ExitStack() as stack:
            targets: dict[str, dict] = {}
            if "mole" in designs:
                targets["mole"] = start_mole(args, delay, work, stack)
                if args.floor:  # the same processes, a request that does no classify work
                    live = work / f"live-{delay * 1000:.0f}ms.lua"
                    live.write_text('wrk.method = "GET"\n')
                    targets["mole-live"] = {
                        **targets["mole"],
                        "url": targets["mole"]["url"].replace("/classify", "/health/live"),
                        "script": live,
                    }
            for spec in args.variant:
                name, _, settings = spec.partition(":")
                extra = dict(pair.split("=", 1) for pair in settings.split(",") if pair)
                targets[name] = start_mole(args, delay, work, stack, name, extra)
            for spec in args.baseline:
                name, _, checkout = spec.partition("=")
                targets[name] = start_mole(
                    args, delay, work, stack, name, checkout=Path(checkout).resolve()
                )
            if "legacy" in designs:
                targets[LEGACY] = start_legacy(args, delay, work, stack, token)
            # Interleave designs and repeat, so a neighbour's load on this shared machine
            # hits every design alike; report the median of the repeats.
            schedule = [
                (rep, c, name)
                for rep in range(args.repeats)
                for c in args.connections
                for name in targets
            ]
            runs: dict[tuple[str, int], list[dict]] = {}
            for target in targets.values():  # warm-up: connections, caches
                run_wrk(target["url"], target["script"], max(args.connections), 2)
            for rep, c, name in schedule:
                target = targets[name]
                watched = {"frontend": target["frontend"], **target["others"]}
                before = {k: cpu_seconds(v) for k, v in watched.items()}
                r = run_wrk(target["url"], target["script"], c, args.duration)
                answered = max(1, r["requests"])
                r["cpu_us"] = {
                    k: (cpu_seconds(v) - before[k]) / answered * 1e6 for k, v in watched.items()
                }
                runs.setdefault((name, c), []).append(r)
                cpu = "  ".join(f"{k} {v:.0f}" for k, v in r["cpu_us"].items())
                print(
                    f"  rep {rep} {name:<16} delay {delay * 1000:>3.0f} ms c={c:<3}"
                    f"{r['rps']:>9.1f} req/s  p50 {r['p50_ms']:>7.2f}  p99 "
                    f"{r['p99_ms']:>7.2f} ms  CPU us/req: {cpu}  non-2xx {r['non_2xx']} "
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
                        "cpu_us": {
                            k: median([r["cpu_us"][k] for r in rs]) for k in rs[0]["cpu_us"]
                        },
                        "non_2xx": sum(r["non_2xx"] for r in rs),
                        "runs": rs,
                    }
                )
    print()
    print(f"medians of {args.repeats} interleaved runs of {args.duration:.0f} s")
    print(
        f"{'design':<18}{'delay':>6}{'conns':>6}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'frontend CPU us/req':>21}  {'others us/req':<28}{'non-2xx':>8}"
    )
    for r in results:
        others = " ".join(f"{k} {v:.0f}" for k, v in r["cpu_us"].items() if k != "frontend")
        print(
            f"{r['design']:<18}{r['delay_ms']:>6.0f}{r['connections']:>6}{r['rps']:>10.1f}"
            f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['cpu_us']['frontend']:>21.0f}  "
            f"{others:<28}{r['non_2xx']:>8}"
        )
    print()
    by = {(r["design"], r["delay_ms"], r["connections"]): r for r in results}
    for delay in sorted({r["delay_ms"] for r in results}):
        for c in args.connections:
            mole, base = by.get(("mole", delay, c)), by.get((LEGACY, delay, c))
            if mole and base and base["rps"]:
                print(
                    f"delay {delay:>3.0f} ms c={c:<3} mole / legacy (fixed): throughput "
                    f"x{mole['rps'] / base['rps']:.2f}, p99 {mole['p99_ms']:.2f} vs "
                    f"{base['p99_ms']:.2f} ms (x{mole['p99_ms'] / base['p99_ms']:.2f}), "
                    f"frontend CPU {mole['cpu_us']['frontend']:.0f} vs "
                    f"{base['cpu_us']['frontend']:.0f} us/req"
                )
    # each variant and baseline against MoLE as configured by default
    others = [spec.partition(":")[0] for spec in args.variant]
    others += [spec.partition("=")[0] for spec in args.baseline]
    for name in others:
        for delay in sorted({r["delay_ms"] for r in results}):
            for c in args.connections:
                var, mole = by.get((name, delay, c)), by.get(("mole", delay, c))
                if var and mole and var["rps"]:
                    # the repeats ran side by side: a neighbour's burst falls on both runs
                    # of one repeat alike, so the repeat's own ratio is the steadier figure
                    pairs = list(zip(mole["runs"], var["runs"], strict=True))
                    cpu_pairs = median(
                        [m["cpu_us"]["frontend"] / v["cpu_us"]["frontend"] for m, v in pairs]
                    )
                    rps_pairs = median([m["rps"] / v["rps"] for m, v in pairs])
                    print(
                        f"delay {delay:>3.0f} ms c={c:<3} mole / {name}: throughput "
                        f"x{mole['rps'] / var['rps']:.2f}, p99 {mole['p99_ms']:.2f} vs "
                        f"{var['p99_ms']:.2f} ms, frontend CPU "
                        f"{mole['cpu_us']['frontend']:.0f} vs "
                        f"{var['cpu_us']['frontend']:.0f} us/req "
                        f"(x{mole['cpu_us']['frontend'] / var['cpu_us']['frontend']:.2f}); "
                        f"median of the repeats' own ratios: CPU x{cpu_pairs:.2f}, "
                        f"throughput x{rps_pairs:.2f}"
                    )
    mole, base = by.get(("mole", 0.0, 8)), by.get((LEGACY, 0.0, 8))
    if mole and base and base["rps"]:
        checks = {
            "throughput >= 4x": mole["rps"] >= 4 * base["rps"],
            "p99 <= half": mole["p99_ms"] <= base["p99_ms"] / 2,
            "frontend CPU <= 250 us/classify": mole["cpu_us"]["frontend"] <= 250,
        }
        print(
            "issue targets at 0 ms, 8 connections: "
            + "; ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in checks.items())
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
