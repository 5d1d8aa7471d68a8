"""Throughput and latency of the broker against a logic-free forwarder, and its cost at scale.

Everything runs as separate processes on loopback: ``python -m broker``, raw echo workers
(4 by default, 16 slots each), client processes each keeping K requests of 1 KiB in flight
(a DEALER socket speaking MDP/0.2 with our two-frame envelope). The same clients and
workers then run through ``forwarder.py`` (a logic-free ROUTER-to-ROUTER forwarder), so the
ratio shows what the broker's bookkeeping costs. Prints req/s, p50, p99 and errors per run
and the medians over ``--repeat`` runs (broker and forwarder runs interleaved), then:

* latency at 1 client x 1 in flight;
* 1,000 idle registered workers on 1,000 other services: the broker's CPU for heartbeats,
  and dispatch latency/throughput with them registered versus without.

The machine is shared, so it also prints the load average before and after.

    .venv/bin/python tests/benchmarks/bench_bus.py --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import zmq

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve()
PYTHON = sys.executable

C_HDR, C_REQUEST, C_FINAL = b"MDPC02", b"\x01", b"\x03"
W_HDR, W_READY, W_REQUEST, W_FINAL, W_HEARTBEAT, W_DISCONNECT = (
    b"MDPW02", b"\x01", b"\x02", b"\x04", b"\x05", b"\x06")
SNDMORE, NOBLOCK = zmq.SNDMORE, zmq.NOBLOCK
SERVICE = b"bench-echo"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _spawn(*args: str, stdout=subprocess.DEVNULL) -> subprocess.Popen:
    return subprocess.Popen([PYTHON, *args], cwd=ROOT, env=_env(), stdout=stdout,
                            stderr=subprocess.DEVNULL)


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --------------------------------------------------------------------------- roles


def role_worker(endpoint: str, slots: int, heartbeat: float) -> None:
    """A minimal echo worker: the request's header and payload frames go straight back."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    sock.send_multipart([W_HDR, W_READY, SERVICE, msgpack.packb({"slots": slots,
                                                                  "worker_id": "bench"})])
    send = sock.send
    next_beat = time.monotonic() + heartbeat
    while True:
        sock.poll(int(heartbeat * 1000))
        while True:
            try:
                frames = sock.recv_multipart(NOBLOCK, copy=False)
            except zmq.Again:
                break
            if frames[1].bytes == W_REQUEST:  # [MDPW02, REQUEST, client, "", body...]
                send(W_HDR, SNDMORE)
                send(W_FINAL, SNDMORE)
                last = len(frames) - 1
                for i in range(2, last):
                    send(frames[i], SNDMORE, copy=False)
                send(frames[last], copy=False)
        now = time.monotonic()
        if now >= next_beat:
            sock.send_multipart([W_HDR, W_HEARTBEAT])
            next_beat = now + heartbeat


def role_client(endpoint: str, inflight: int, payload_size: int, warmup: float,
                duration: float) -> None:
    """Keep ``inflight`` requests outstanding; print JSON {count, errors, latencies_us}."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    payload = b"x" * payload_size
    send = sock.send
    sent: dict[int, float] = {}
    seq = 0
    clock = time.perf_counter
    packb, unpackb = msgpack.packb, msgpack.unpackb

    def send_one() -> None:
        nonlocal seq
        seq += 1
        send(C_HDR, SNDMORE)
        send(C_REQUEST, SNDMORE)
        send(SERVICE, SNDMORE)
        send(packb({"v": 1, "id": seq, "ttl": 30_000}), SNDMORE)
        send(payload)
        sent[seq] = clock()

    time.sleep(0.2)
    for _ in range(inflight):
        send_one()
    start = clock()
    measure_from = start + warmup
    end = measure_from + duration
    latencies: list[int] = []
    errors = count = total = 0
    while True:
        if not sock.poll(5000):
            errors += len(sent)  # nothing came back for 5 s: count what is outstanding
            break
        frames = sock.recv_multipart()
        now = clock()
        header = unpackb(frames[3], raw=False)
        t0 = sent.pop(header["id"], None)
        total += 1
        if now >= end:
            break
        if now >= measure_from:
            if frames[1] != C_FINAL or header.get("ok") is False or t0 is None:
                errors += 1
            else:
                count += 1
                latencies.append(int((now - t0) * 1e6))
        send_one()
    print(json.dumps({"count": count, "errors": errors, "total": total,
                      "latencies_us": latencies}))


def role_idle(endpoint: str, count: int, heartbeat: float) -> None:
    """``count`` idle workers, each of its own service, in one process; heartbeats only."""
    _raise_fd_limit()
    ctx = zmq.Context()
    ctx.setsockopt(zmq.MAX_SOCKETS, count + 64)
    socks = []
    for i in range(count):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        sock.send_multipart([W_HDR, W_READY, f"idle-{i:04d}".encode(),
                             msgpack.packb({"slots": 1, "worker_id": f"idle-{i:04d}"})])
        socks.append(sock)
    print("idle ready", flush=True)
    step = heartbeat / max(1, count)
    i = 0
    while True:  # one heartbeat per socket per interval, spread out; drain what arrives
        sock = socks[i]
        sock.send_multipart([W_HDR, W_HEARTBEAT])
        while True:
            try:
                sock.recv_multipart(NOBLOCK)
            except zmq.Again:
                break
        i = (i + 1) % count
        time.sleep(step)


# --------------------------------------------------------------------------- runs


class Target:
    """A broker or forwarder process with its echo workers."""

    def __init__(self, kind: str, workers: int, slots: int) -> None:
        self.kind = kind
        self.procs: list[subprocess.Popen] = []
        port = _free_port()
        self.client_url = f"tcp://127.0.0.1:{port}"
        if kind == "broker":
            self.server = _spawn("-m", "broker", "--bind", self.client_url,
                                 "--log-level", "WARNING")
            self.worker_url = self.client_url
        else:
            back = _free_port()
            self.worker_url = f"tcp://127.0.0.1:{back}"
            self.server = _spawn(str(HERE.parent / "forwarder.py"), "--frontend",
                                 self.client_url, "--backend", self.worker_url)
        self.procs.append(self.server)
        time.sleep(0.5)
        for _ in range(workers):
            self.procs.append(_spawn(str(HERE), "_worker", "--endpoint", self.worker_url,
                                     "--slots", str(slots)))
        time.sleep(1.0 + 0.1 * workers)

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait(10)


def run_clients(url: str, clients: int, inflight: int, payload: int, warmup: float,
                duration: float, server_pid: int | None = None) -> dict:
    cpu0 = _cpu_seconds(server_pid) if server_pid else 0.0
    procs = [_spawn(str(HERE), "_client", "--endpoint", url, "--inflight", str(inflight),
                    "--payload", str(payload), "--warmup", str(warmup), "--duration",
                    str(duration), stdout=subprocess.PIPE) for _ in range(clients)]
    results = [json.loads(p.communicate(timeout=duration + warmup + 60)[0]) for p in procs]
    cpu = _cpu_seconds(server_pid) - cpu0 if server_pid else 0.0
    latencies = sorted(x for r in results for x in r["latencies_us"])
    count = sum(r["count"] for r in results)
    errors = sum(r["errors"] for r in results)

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000 if (
            latencies) else float("nan")

    # server CPU per request over the whole run (warm-up included): less sensitive to
    # the machine's load than req/s
    carried = sum(r["total"] for r in results)
    return {"rps": count / duration, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "errors": errors, "count": count,
            "cpu_us": 1e6 * cpu / carried if server_pid and carried else float("nan")}


def _line(label: str, r: dict) -> str:
    return (f"  {label:<34} {r['rps']:>9,.0f} req/s   p50 {r['p50_ms']:6.3f} ms   "
            f"p99 {r['p99_ms']:6.3f} ms   errors {r['errors']}   "
            f"server CPU {r['cpu_us']:5.1f} us/req")


def _median(results: list[dict]) -> dict:
    keys = ("rps", "p50_ms", "p99_ms", "cpu_us")
    return {k: statistics.median(r[k] for r in results) for k in keys} | {
        "errors": sum(r["errors"] for r in results)}


def bench_throughput(args) -> None:
    print(f"\n== throughput: {args.workers} workers x {args.slots} slots, {args.clients} "
          f"clients x {args.inflight} in flight, {args.payload} B payloads, "
          f"{args.duration:g} s per run")
    runs: dict[str, list[dict]] = {"broker": [], "forwarder": []}
    for i in range(args.repeat):
        for kind in ("broker", "forwarder"):
            target = Target(kind, args.workers, args.slots)
            try:
                r = run_clients(target.client_url, args.clients, args.inflight, args.payload,
                                args.warmup, args.duration, target.server.pid)
            finally:
                target.close()
            runs[kind].append(r)
            print(_line(f"run {i + 1} {kind}", r), flush=True)
    b, f = _median(runs["broker"]), _median(runs["forwarder"])
    print(_line("median broker", b))
    print(_line("median forwarder", f))
    print(f"  broker / forwarder throughput: {b['rps'] / f['rps']:.0%}")


def bench_latency(args) -> None:
    print(f"\n== latency: 1 client x 1 in flight, {args.payload} B, {args.duration:g} s")
    for kind in ("broker", "forwarder"):
        target = Target(kind, 1, 1)
        try:
            r = run_clients(target.client_url, 1, 1, args.payload, args.warmup, args.duration,
                            target.server.pid)
        finally:
            target.close()
        print(_line(kind, r), flush=True)


def bench_idle(args) -> None:
    n = args.idle_workers
    print(f"\n== {n} idle registered workers (each its own service), default 2.5 s heartbeats")
    target = Target("broker", args.workers, args.slots)
    idle = None
    try:
        before = run_clients(target.client_url, 1, 1, args.payload, args.warmup,
                             args.duration)
        before_tp = run_clients(target.client_url, args.clients, args.inflight, args.payload,
                                args.warmup, args.duration)
        idle = _spawn(str(HERE), "_idle", "--endpoint", target.client_url, "--count", str(n),
                      stdout=subprocess.PIPE)
        idle.stdout.readline()
        ctx = zmq.Context.instance()
        probe = ctx.socket(zmq.DEALER)
        probe.setsockopt(zmq.LINGER, 0)
        probe.connect(target.client_url)
        deadline = time.monotonic() + 60
        registered = 0
        while time.monotonic() < deadline:
            probe.send_multipart([C_HDR, C_REQUEST, b"mmi.status", b""])
            if probe.poll(5000):
                status = msgpack.unpackb(probe.recv_multipart()[3], raw=False)
                registered = len(status["workers"])
                if registered >= n + args.workers:
                    break
            time.sleep(0.5)
        probe.close(0)
        print(f"  registered workers: {registered}, services: {len(status['services'])}")
        time.sleep(3)  # let registration settle into the heartbeat rhythm
        cpu0, t0 = _cpu_seconds(target.server.pid), time.monotonic()
        time.sleep(args.idle_seconds)
        cpu1, t1 = _cpu_seconds(target.server.pid), time.monotonic()
        print(f"  broker CPU with {n} idle workers: {100 * (cpu1 - cpu0) / (t1 - t0):.2f}% of "
              f"one core ({(cpu1 - cpu0) * 1000 / (t1 - t0):.1f} ms per second; "
              f"{2 * n / 2.5:.0f} heartbeat messages/s in and out)")
        after = run_clients(target.client_url, 1, 1, args.payload, args.warmup, args.duration)
        after_tp = run_clients(target.client_url, args.clients, args.inflight, args.payload,
                               args.warmup, args.duration)
        print(_line("1x1 without idle workers", before))
        print(_line(f"1x1 with {n} idle workers", after))
        print(_line(f"{args.clients}x{args.inflight} without idle workers", before_tp))
        print(_line(f"{args.clients}x{args.inflight} with {n} idle workers", after_tp))
    finally:
        if idle is not None:
            idle.kill()
            idle.wait(10)
        target.close()


def bench_dispatch(args) -> None:
    """The broker's own per-request Python work, in-process with a no-op socket.

    Registers N workers (spread over services, or all on one service), then times request
    + reply cycles through the same handlers the loop calls. Flat numbers across N show
    that dispatch is O(1) in the number of workers and services.
    """
    sys.path.insert(0, str(ROOT))
    from broker.core import Broker
    from broker.settings import BrokerSettings

    print("\n== dispatch cost in-process (no sockets): request + reply handling per cycle")
    payload = b"x" * args.payload
    cycles = 30_000

    def one(workers: int, services: int) -> float:
        broker = Broker(BrokerSettings(bind="inproc://unused"))
        broker._sendf = lambda data, flags=0: None
        for i in range(workers):
            frames = [W_HDR, W_READY, f"svc-{i % services}".encode(),
                      msgpack.packb({"slots": 4})]
            broker._on_worker(f"w{i}".encode(), frames, None)
        service = b"svc-0"
        client = b"client"
        t0 = time.process_time()
        for n in range(cycles):
            header = msgpack.packb({"v": 1, "id": n, "ttl": 30_000})
            broker._on_client(client, [C_HDR, C_REQUEST, service, header, payload])
            ticket = broker._ticket_prefix + broker._ticket_seq.to_bytes(8, "big")
            worker = broker.requests[ticket].worker
            broker._on_worker(worker.identity, [W_HDR, W_FINAL, ticket, b"", header, payload],
                              None)
            if n % 100 == 0:
                broker._run_timers(time.monotonic())
        elapsed = time.process_time() - t0
        broker._ctx.term()
        return 1e6 * elapsed / cycles

    for workers, services in ((1, 1), (1000, 1), (1000, 1000), (10_000, 10_000)):
        best = min(one(workers, services) for _ in range(3))
        print(f"  {workers:>6} workers on {services:>6} service(s): {best:5.2f} us per cycle")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role")
    w = sub.add_parser("_worker")
    w.add_argument("--endpoint", required=True)
    w.add_argument("--slots", type=int, default=16)
    w.add_argument("--heartbeat", type=float, default=2.5)
    c = sub.add_parser("_client")
    c.add_argument("--endpoint", required=True)
    c.add_argument("--inflight", type=int, default=16)
    c.add_argument("--payload", type=int, default=1024)
    c.add_argument("--warmup", type=float, default=1.0)
    c.add_argument("--duration", type=float, default=5.0)
    i = sub.add_parser("_idle")
    i.add_argument("--endpoint", required=True)
    i.add_argument("--count", type=int, default=1000)
    i.add_argument("--heartbeat", type=float, default=2.5)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--inflight", type=int, default=16)
    parser.add_argument("--payload", type=int, default=1024)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--idle-workers", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--only", choices=["throughput", "latency", "idle", "dispatch"],
                        default=None)
    args = parser.parse_args(argv)
    if args.role == "_worker":
        role_worker(args.endpoint, args.slots, args.heartbeat)
        return 0
    if args.role == "_client":
        role_client(args.endpoint, args.inflight, args.payload, args.warmup, args.duration)
        return 0
    if args.role == "_idle":
        role_idle(args.endpoint, args.count, args.heartbeat)
        return 0
    print(f"bench_bus: {os.cpu_count()} CPUs, load average before: {_load()}")
    if args.only in (None, "throughput"):
        bench_throughput(args)
    if args.only in (None, "latency"):
        bench_latency(args)
    if args.only in (None, "idle"):
        bench_idle(args)
    if args.only in (None, "dispatch"):
        bench_dispatch(args)
    print(f"\nload average after: {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
