"""The frontend's own CPU per classify, in one process: the ASGI app called directly.

What ``bench_http.py`` measures over HTTP includes uvicorn, httptools, the kernel's TCP
work and the bus client. This takes all of those away and keeps exactly what the
frontend's code does per classify: the app as served (``ServerGuard`` around
``create_app``, as ``frontend.asgi`` builds it; real SQLite user store, analytics,
metrics, rate limits, JWT verification and the real gating pipeline) called with ASGI
``http`` scopes, bodies from the same rotating set as ``bench_http.py``, and a
dispatcher that answers at once with a fixed reply (the bus client is another
engineer's part and is measured by ``bench_client.py``).

It prints CPU microseconds per classify (process CPU time, the median of ``--repeats``
rounds) and, with ``--profile``, the functions where that time goes (cProfile, grouped
by part of the request path). The same script runs under another checkout's interpreter
to compare a change with the code before it, interleaved in one run (``--baseline``):

    .venv/bin/python tests/benchmarks/bench_frontend_app.py [--requests 3000]
        [--repeats 5] [--baseline /tmp/base] [--profile] [--bodies rotating|long|single]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

SECRET = "bench-secret-" + "s" * 40


class InstantDispatcher:
    """Answers every dispatch at once, as the fixed-answer worker would."""

    async def start(self) -> None:
        return None

    async def dispatch(self, expert: Any, payload: dict[str, Any], timeout: float) -> Any:
        return {
            "result": expert.label_set[0],
            "confidence": 0.9,
            "worker_id": "w-1",
            "model": expert.base_model_key,
            "adapter": expert.adapter_name,
            "timings": {"queue_ms": 0.01, "inference_ms": 0.02},
        }

    async def status(self, timeout: float) -> dict[str, Any]:
        return {"services": {}}

    async def manage(self, service: str, worker_id: str, timeout: float) -> dict[str, Any]:
        return {}

    async def close(self) -> None:
        return None


def build_app(work: Path) -> tuple[Any, str]:
    """The served ASGI app and a bearer token of an enabled user."""
    from mole.frontend.app import Components, create_app
    from mole.frontend.gating_holder import GatingHolder
    from mole.frontend.guard import ConnectionGauge, ServerGuard
    from mole.frontend.settings import Settings
    from mole.gating import GatingPipeline
    from mole.protocol.registry import load_registry

    settings = Settings(
        data_dir=work,
        jwt_secret=SECRET,
        argon2_profile="cheap",
        rate_limit_classify_user="10000000/second",
        rate_limit_classify_address="10000000/second",
    )
    registry = load_registry()
    holder = GatingHolder.loaded(GatingPipeline.load(registry=registry), registry)
    from mole.frontend.app import build_components

    components: Components = build_components(
        settings, gating=holder, dispatcher=InstantDispatcher()
    )
    components.users.create("bench", "bench-password-123")
    token = components.tokens.issue("bench")
    app = ServerGuard(create_app(components), max_connections=1000, gauge=ConnectionGauge())
    return app, token


def scope_for(token: str, body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/classify",
        "raw_path": b"/api/v1/classify",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"wrk"),
            (b"content-type", b"application/json"),
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def one(app: Any, token: str, body: bytes) -> int:
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:  # the app asks again only to learn of a disconnect
            await asyncio.sleep(3600)
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope_for(token, body), receive, send)
    return int(sent[0]["status"])


async def run_round(app: Any, token: str, bodies: list[bytes], n: int) -> float:
    """CPU seconds per request over ``n`` requests (8 at a time, as wrk's 8 connections)."""
    started = time.process_time()
    done = 0
    while done < n:
        batch = [bodies[(done + k) % len(bodies)] for k in range(8)]
        statuses = await asyncio.gather(*(one(app, token, b) for b in batch))
        bad = [s for s in statuses if s != 200]
        if bad:
            raise SystemExit(f"non-200 answers: {bad}")
        done += len(batch)
    return (time.process_time() - started) / done


def load_bodies(kind: str) -> list[bytes]:
    from tests.benchmarks.classify_bodies import bodies_of_kind

    return [json.dumps(b, ensure_ascii=False).encode() for b in bodies_of_kind(kind)]


def child(args: argparse.Namespace, bodies_file: Path) -> int:
    """Serve one measurement request per line of stdin ("round N"), answer µs per request."""
    import uvloop

    bodies = json.loads(bodies_file.read_text())
    encoded = [b.encode() for b in bodies]
    with tempfile.TemporaryDirectory(prefix="bench_frontend_app_") as tmp:
        app, token = build_app(Path(tmp))
        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
        loop.run_until_complete(run_round(app, token, encoded, 800))  # warm-up
        print("ready", flush=True)
        for line in sys.stdin:
            if line.strip() == "profile":
                import cProfile
                import pstats

                prof = cProfile.Profile()
                prof.enable()
                loop.run_until_complete(run_round(app, token, encoded, args.requests))
                prof.disable()
                stats = pstats.Stats(prof, stream=sys.stderr)
                stats.sort_stats("tottime").print_stats(45)
                stats.sort_stats("cumulative").print_stats(60)
                print("done", flush=True)
                continue
            per = loop.run_until_complete(run_round(app, token, encoded, args.requests))
            print(f"{per * 1e6:.2f}", flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="classifies per round")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--bodies", choices=("rotating", "long", "single"), default="rotating")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout (with .venv/bin/python) to measure interleaved with this one",
    )
    parser.add_argument("--profile", action="store_true", help="print a cProfile of one round")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        return child(args, args.child)

    bodies = [b.decode() for b in load_bodies(args.bodies)]
    work = Path(tempfile.mkdtemp(prefix="bench_frontend_app_"))
    bodies_file = work / "bodies.json"
    bodies_file.write_text(json.dumps(bodies))
    sides = {"this tree": (sys.executable, REPO)}
    if args.baseline is not None:
        base = args.baseline.resolve()
        sides["baseline"] = (str(base / ".venv" / "bin" / "python"), base)
    procs: dict[str, subprocess.Popen[str]] = {}
    for name, (python, checkout) in sides.items():
        env = dict(os.environ, PYTHONPATH=str(checkout), HF_HUB_OFFLINE="1")
        procs[name] = subprocess.Popen(
            [
                python,
                str(Path(__file__).resolve()),
                *("--child", str(bodies_file), "--requests", str(args.requests)),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=checkout,
            env=env,
        )
    try:
        for name, p in procs.items():
            assert p.stdout is not None
            line = p.stdout.readline().strip()
            if line != "ready":
                raise SystemExit(f"{name} did not start: {line!r}")
        print(
            f"{len(bodies)} distinct bodies, {args.requests} classifies per round, "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )
        figures: dict[str, list[float]] = {name: [] for name in procs}
        for rep in range(args.repeats):
            for name, p in procs.items():  # interleaved: neighbours' load falls on both
                assert p.stdin is not None
                assert p.stdout is not None
                p.stdin.write("round\n")
                p.stdin.flush()
                figures[name].append(float(p.stdout.readline()))
                print(f"  round {rep} {name:<10} {figures[name][-1]:8.1f} us/classify", flush=True)
        print(f"load {os.getloadavg()[0]:.1f}")
        for name, values in figures.items():
            print(
                f"{name:<10} median {statistics.median(values):7.1f} us/classify "
                f"(min {min(values):.1f}, max {max(values):.1f}, {len(values)} rounds)"
            )
        if "baseline" in figures:
            ratio = statistics.median(figures["this tree"]) / statistics.median(figures["baseline"])
            paired = statistics.median(
                t / b for t, b in zip(figures["this tree"], figures["baseline"], strict=True)
            )
            best = min(figures["this tree"]) / min(figures["baseline"])
            # a neighbour's burst hits both sides of one round alike: the round's ratio is
            # steadier than either median on a shared machine
            print(
                f"this tree / baseline: x{ratio:.2f} (medians), x{paired:.2f} (median of "
                f"the rounds' ratios), x{best:.2f} (best rounds)"
            )
        if args.profile:
            p = procs["this tree"]
            assert p.stdin is not None
            assert p.stdout is not None
            p.stdin.write("profile\n")
            p.stdin.flush()
            p.stdout.readline()
    finally:
        for p in procs.values():
            if p.stdin is not None:
                p.stdin.close()
            p.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
