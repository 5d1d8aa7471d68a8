"""Throughput and latency of the client library: sync Client and AsyncClient, K in flight.

Starts a broker (``python -m broker``) and echo workers (``python -m worker.echo``) on
loopback, or uses ``--broker URL`` if one is running, then for each K keeps K requests of
1 KiB in flight for ``--duration`` seconds: K caller threads sharing one ``Client``, and
K asyncio tasks sharing one ``AsyncClient`` (on ``--loop`` asyncio or uvloop). Prints
req/s, p50 and p99 latency and the client process's CPU per request (every thread of it,
libzmq's I/O thread included, from ``time.process_time``), the median over ``--repeat``
runs. ``--target raw`` replaces broker and workers with one bare
Python ROUTER echo process, which measures the client library's own ceiling.
``--transports native,zmq`` runs the AsyncClient on each of its transports, interleaved
run by run, and prints each one's median and the ratios of the first to the others.

    .venv/bin/python tests/benchmarks/bench_client.py --k 1,16,64 --workers 4
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from mole.protocol import AsyncClient, Client
from tests.support.procs import free_port

RAW_ECHO = r"""
import sys, zmq
sock = zmq.Context.instance().socket(zmq.ROUTER)
sock.setsockopt(zmq.SNDHWM, 0); sock.setsockopt(zmq.RCVHWM, 0)
sock.bind(sys.argv[1])
from mole.protocol.envelope import ReplyHeader, decode_request_header
while True:
    sock.poll()
    while True:
        try:
            ident, h, c, svc, hdr, *body = sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            break
        rid = decode_request_header(hdr).request_id
        sock.send_multipart([ident, h, b"\x03", svc, ReplyHeader(rid).encode(), *body])
"""


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_sync(
    url: str, service: str, k: int, duration: float, payload: bytes, loop: str, transport: str
) -> tuple:
    latencies: list[float] = []
    with Client(url, timeout=30) as client:
        client.request(service, payload)  # warm-up and connection
        stop = time.perf_counter() + duration

        def caller():
            mine = []
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                client.request(service, payload)
                mine.append(time.perf_counter() - t0)
            latencies.extend(mine)

        start, cpu = time.perf_counter(), time.process_time()
        threads = [threading.Thread(target=caller) for _ in range(k)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return len(latencies) / elapsed, latencies, cpu / max(1, len(latencies))


def run_async(
    url: str, service: str, k: int, duration: float, payload: bytes, loop: str, transport: str
) -> tuple:
    async def main():
        latencies: list[float] = []
        async with AsyncClient(url, timeout=30, transport=transport) as client:
            await client.request(service, payload)
            stop = time.perf_counter() + duration

            async def caller():
                while time.perf_counter() < stop:
                    t0 = time.perf_counter()
                    await client.request(service, payload)
                    latencies.append(time.perf_counter() - t0)

            start, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*[caller() for _ in range(k)])
            elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
            return len(latencies) / elapsed, latencies, cpu / max(1, len(latencies))

    if loop == "uvloop":
        import uvloop

        return uvloop.run(main())
    return asyncio.run(main())


def wait_registered(url: str, service: str, workers: int, timeout: float = 60) -> None:
    with Client(url, timeout=5) as client:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            try:
                status = client.status(timeout=1)
                count = sum(1 for w in status["workers"] if w.get("service") == service)
                if count >= workers:
                    return
            except Exception:
                pass
            time.sleep(0.1)
    raise SystemExit(f"{workers} echo workers did not register in {timeout} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--broker", help="use this running broker (with echo workers)")
    parser.add_argument("--target", choices=["broker", "raw"], default="broker")
    parser.add_argument("--service", default="bench-echo")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--k", default="1,16,64", help="requests in flight, comma-separated")
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--payload", type=int, default=1024, help="payload bytes")
    parser.add_argument("--clients", default="sync,async")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument(
        "--transports",
        default="zmq",
        help="AsyncClient transports, comma-separated (native,zmq), interleaved run by run",
    )
    args = parser.parse_args()

    procs: list[subprocess.Popen] = []
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    url = args.broker
    try:
        if url is None:
            url = f"tcp://127.0.0.1:{free_port()}"
            if args.target == "raw":
                procs.append(subprocess.Popen([sys.executable, "-c", RAW_ECHO, url], env=env))
                time.sleep(0.5)
            else:
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "mole.broker",
                            "--bind",
                            url,
                            "--log-level",
                            "WARNING",
                        ],
                        env=env,
                        cwd=ROOT,
                    )
                )
                for i in range(args.workers):
                    procs.append(
                        subprocess.Popen(
                            [
                                sys.executable,
                                "-m",
                                "mole.worker.echo",
                                "--broker",
                                url,
                                "--service",
                                args.service,
                                "--slots",
                                str(args.slots),
                                "--worker-id",
                                f"bench-{i}",
                                "--log-level",
                                "WARNING",
                            ],
                            env=env,
                            cwd=ROOT,
                        )
                    )
                wait_registered(url, args.service, args.workers)
        payload = os.urandom(args.payload)
        runners = {"sync": run_sync, "async": run_async}
        target = (
            "raw ROUTER echo"
            if args.target == "raw" and not args.broker
            else (f"broker + {args.workers} echo workers x {args.slots} slots")
        )
        print(
            f"# {target}; {args.payload} B payloads; {args.duration:g} s per run; "
            f"median of {args.repeat}; {os.cpu_count()} CPUs; {args.loop} loop"
        )
        print(
            f"{'client':>6} {'transport':>9} {'K':>4} {'req/s':>9} {'p50 ms':>8} "
            f"{'p99 ms':>8} {'CPU us/req':>11}"
        )
        transports = args.transports.split(",")
        for name in args.clients.split(","):
            kinds = transports if name == "async" else ["-"]
            for k in [int(x) for x in args.k.split(",")]:
                runs: dict[str, list[tuple]] = {kind: [] for kind in kinds}
                for _ in range(args.repeat):  # interleaved: each repeat runs every kind
                    for kind in kinds:
                        runs[kind].append(
                            runners[name](
                                url, args.service, k, args.duration, payload, args.loop, kind
                            )
                        )
                medians = {}
                for kind in kinds:
                    rate = statistics.median(r for r, _, _ in runs[kind])
                    p50 = statistics.median(percentile(lat, 0.50) for _, lat, _ in runs[kind])
                    p99 = statistics.median(percentile(lat, 0.99) for _, lat, _ in runs[kind])
                    cpu = statistics.median(c for _, _, c in runs[kind]) * 1e6
                    medians[kind] = (rate, p99, cpu)
                    print(
                        f"{name:>6} {kind:>9} {k:>4} {rate:>9.0f} {p50 * 1000:>8.2f} "
                        f"{p99 * 1000:>8.2f} {cpu:>11.1f}",
                        flush=True,
                    )
                first = kinds[0]
                for other in kinds[1:]:
                    rate, p99, cpu = (
                        a / b for a, b in zip(medians[first], medians[other], strict=True)
                    )
                    print(
                        f"# K={k} {first} / {other}: throughput x{rate:.2f}, p99 x{p99:.2f}, "
                        f"CPU per request x{cpu:.2f}; load {os.getloadavg()[0]:.1f}",
                        flush=True,
                    )
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
