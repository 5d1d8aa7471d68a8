"""Throughput and latency of the broker against a logic-free forwarder, and its cost at scale.

Over TCP on loopback: ``python -m broker`` in its own process, and a load process holding
raw echo worker sockets (4 by default, 16 slots each) and client sockets each keeping K
requests of 1 KiB in flight (DEALERs speaking MDP/0.2 with our two-frame envelope), each
socket its own connection (``--layout split|spread`` spreads them over more processes).
The same load then runs through ``forwarder.py`` (a logic-free ROUTER-to-ROUTER forwarder
with the broker's socket habits), so the ratio shows what the broker's bookkeeping costs.
Prints req/s, p50, p99 and errors per run and the medians over ``--repeat`` runs (broker
and forwarder runs interleaved), then:

* latency at 1 client x 1 in flight;
* 1,000 idle registered workers on 1,000 other services: the broker's CPU for heartbeats,
  and dispatch latency/throughput with them registered versus without;
* the broker core's per-request Python work in-process (``--only dispatch``), flat from 1
  to 10,000 workers.

``--plain-ready`` makes the echo workers plain RFC 18 workers (READY without metadata, one
slot each). ``--baseline GIT_REV`` also runs that revision's broker, interleaved with
today's and the forwarder (and, for ``dispatch``, its core's handlers), so a change is
compared within one run. The machine is shared, so it also prints the load average before
and after.

    .venv/bin/python tests/benchmarks/bench_bus.py --repeat 3
    .venv/bin/python tests/benchmarks/bench_bus.py --only throughput --baseline 79f3420
    .venv/bin/python tests/benchmarks/bench_bus.py --only throughput --workers 64 \
        --slots 1 --plain-ready --baseline 79f3420
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import zmq
import zmq.backend
from forwarder import recv_message as _recv_message  # the same receive loop as the reference

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve()
sys.path.insert(0, str(ROOT))

from tests.support.procs import free_port

PYTHON = sys.executable

C_HDR, C_REQUEST, C_FINAL = b"MDPC02", b"\x01", b"\x03"
W_HDR, W_READY, W_REQUEST, W_FINAL, W_HEARTBEAT, W_DISCONNECT = (
    b"MDPW02",
    b"\x01",
    b"\x02",
    b"\x04",
    b"\x05",
    b"\x06",
)
SNDMORE, NOBLOCK = zmq.SNDMORE, zmq.NOBLOCK
SERVICE = b"bench-echo"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _spawn(*args: str, stdout=subprocess.DEVNULL, tree: Path | None = None) -> subprocess.Popen:
    env = _env()
    if tree is not None:  # the baseline's sources first: python -m finds its mole package
        env["PYTHONPATH"] = str(tree)
    return subprocess.Popen(
        [PYTHON, *args], cwd=tree or ROOT, env=env, stdout=stdout, stderr=subprocess.DEVNULL
    )


def baseline_tree(rev: str) -> Path:
    """The broker and protocol of git revision ``rev``, laid out as an importable ``mole``
    package in a temporary directory, so the bench can run it beside today's broker."""
    tree = Path(tempfile.mkdtemp(prefix="bench-bus-baseline-"))
    atexit.register(shutil.rmtree, tree, ignore_errors=True)
    src = tree / "src"
    src.mkdir()
    archive = subprocess.run(
        ["git", "archive", rev, "broker", "protocol", "mole", "configs"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    shutil.copytree(src / "mole", tree / "mole")
    for part in ("broker", "protocol", "configs"):
        (tree / "mole" / part).symlink_to(src / part)
    return tree


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
#
# The load processes call pyzmq's compiled backend methods with int flags and receive
# frames as zmq.Frame objects (their ``more`` flag ends the loop): measured here,
# ``recv_multipart`` costs 7-16 us per six-frame message against 3.5 us for this loop,
# and the pure-Python ``Socket.send`` wrapper with enum flags about 0.7 us more per frame.
# With the wrappers the load generator, not the broker, was the ceiling (10k req/s).

_send = zmq.backend.Socket.send
MORE = int(zmq.SNDMORE)


def _dealer(ctx: zmq.Context, endpoint: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


class EchoWorkers:
    """Minimal MDP echo workers: each request's header and payload frames go straight back."""

    def __init__(
        self,
        ctx: zmq.Context,
        endpoint: str,
        count: int,
        slots: int,
        heartbeat: float,
        plain: bool = False,
    ) -> None:
        self.sockets = [_dealer(ctx, endpoint) for _ in range(count)]
        for i, sock in enumerate(self.sockets):
            if plain:  # a plain RFC 18 READY: no metadata frame, so one slot
                sock.send_multipart([W_HDR, W_READY, SERVICE])
                continue
            sock.send_multipart(
                [
                    W_HDR,
                    W_READY,
                    SERVICE,
                    msgpack.packb({"slots": slots, "worker_id": f"bench-{os.getpid()}-{i}"}),
                ]
            )
        self.heartbeat = heartbeat
        self.next_beat = time.monotonic() + heartbeat

    def serve(self, sock: zmq.Socket) -> None:
        """Answer everything waiting on ``sock``: [MDPW02, REQUEST, client, "", body...]."""
        while (frames := _recv_message(sock)) is not None:
            if frames[1].bytes == W_REQUEST:
                _send(sock, W_HDR, MORE)
                _send(sock, W_FINAL, MORE)
                last = len(frames) - 1
                for i in range(2, last):
                    _send(sock, frames[i], MORE, False)
                _send(sock, frames[last], 0, False)

    def beat(self) -> None:
        now = time.monotonic()
        if now >= self.next_beat:
            for sock in self.sockets:
                sock.send_multipart([W_HDR, W_HEARTBEAT])
            self.next_beat = now + self.heartbeat


class LoadClients:
    """Client sockets each keeping ``inflight`` requests outstanding; they record latency.

    Request headers are packed once up front (ids cycle through 65,536, far more than are
    ever outstanding); a reply is matched to its send time by its echoed header bytes.
    """

    def __init__(
        self, ctx: zmq.Context, endpoint: str, count: int, inflight: int, payload_size: int
    ) -> None:
        self.sockets = [_dealer(ctx, endpoint) for _ in range(count)]
        self.inflight = inflight
        self.payload = b"x" * payload_size
        self.headers = [msgpack.packb({"v": 1, "id": i, "ttl": 30_000}) for i in range(1 << 16)]
        self.seq = 0
        self.sent: dict[bytes, float] = {}
        self.latencies: list[int] = []
        self.count = self.errors = self.total = 0

    def send_one(self, sock: zmq.Socket) -> None:
        self.seq = (self.seq + 1) & 0xFFFF
        header = self.headers[self.seq]
        _send(sock, C_HDR, MORE)
        _send(sock, C_REQUEST, MORE)
        _send(sock, SERVICE, MORE)
        _send(sock, header, MORE)
        _send(sock, self.payload, 0)
        self.sent[header] = time.perf_counter()

    def start(self) -> None:
        for sock in self.sockets:
            for _ in range(self.inflight):
                self.send_one(sock)

    def collect(self, sock: zmq.Socket, measure_from: float, end: float) -> bool:
        """Take the replies waiting on ``sock``, send one new request per reply.

        Returns False once the run is over.
        """
        clock = time.perf_counter
        sent, latencies = self.sent, self.latencies
        while (frames := _recv_message(sock)) is not None:
            now = clock()
            t0 = sent.pop(frames[3].bytes, None) if len(frames) > 3 else None
            self.total += 1
            if now >= end:
                return False
            if now >= measure_from:
                if frames[1].bytes != C_FINAL or t0 is None:
                    self.errors += 1
                else:
                    self.count += 1
                    latencies.append(int((now - t0) * 1e6))
            self.send_one(sock)
        return True

    def result(self) -> dict:
        return {
            "count": self.count,
            "errors": self.errors,
            "total": self.total,
            "latencies_us": self.latencies,
        }


def role_peers(args) -> None:
    """One load process: ``--workers`` echo worker sockets and ``--clients`` client sockets.

    With clients it runs ``--warmup`` + ``--duration`` seconds and prints JSON
    {count, errors, total, latencies_us}; with workers only it serves until killed.
    """
    ctx = zmq.Context.instance()
    poller = zmq.Poller()
    workers = EchoWorkers(
        ctx,
        args.worker_endpoint or args.endpoint,
        args.workers,
        args.slots,
        args.heartbeat,
        plain=args.plain_ready,
    )
    for sock in workers.sockets:
        poller.register(sock, zmq.POLLIN)
    worker_sockets = set(workers.sockets)
    clients = None
    if args.clients:
        time.sleep(args.settle)  # let the workers register before the first request
        clients = LoadClients(ctx, args.endpoint, args.clients, args.inflight, args.payload)
        for sock in clients.sockets:
            poller.register(sock, zmq.POLLIN)
        time.sleep(0.2)
        clients.start()
    measure_from = time.perf_counter() + args.warmup
    end = measure_from + args.duration
    running = True
    while running:
        events = poller.poll(5000 if clients else int(args.heartbeat * 1000))
        if clients and not events:  # nothing came back for 5 s: count what is outstanding
            clients.errors += len(clients.sent)
            break
        for sock, _ in events:
            if sock in worker_sockets:
                workers.serve(sock)
            elif not clients.collect(sock, measure_from, end):
                running = False
                break
        workers.beat()
    if clients:
        print(json.dumps(clients.result()))


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
        sock.send_multipart(
            [
                W_HDR,
                W_READY,
                f"idle-{i:04d}".encode(),
                msgpack.packb({"slots": 1, "worker_id": f"idle-{i:04d}"}),
            ]
        )
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
    """A broker or forwarder process; load processes bring the echo workers and clients."""

    def __init__(self, kind: str, tree: Path | None = None) -> None:
        self.kind = kind
        port = free_port()
        self.client_url = f"tcp://127.0.0.1:{port}"
        if kind in ("broker", "baseline"):
            self.server = _spawn(
                "-m",
                "mole.broker",
                "--bind",
                self.client_url,
                "--log-level",
                "WARNING",
                tree=tree if kind == "baseline" else None,
            )
            self.worker_url = self.client_url
        else:
            back = free_port()
            self.worker_url = f"tcp://127.0.0.1:{back}"
            self.server = _spawn(
                str(HERE.parent / "forwarder.py"),
                "--frontend",
                self.client_url,
                "--backend",
                self.worker_url,
            )
        time.sleep(0.5)

    def close(self) -> None:
        self.server.kill()
        self.server.wait(10)


#: How the load's sockets are spread over processes. "shared": one process holds every
#: worker and client socket (each its own TCP connection), so on 2 cores the broker gets
#: one core and the load the other. "split": one process of workers, one of clients.
#: "spread": a process per worker and per client socket.
LAYOUTS = ("shared", "split", "spread")


def run_load(
    target: Target,
    workers: int,
    slots: int,
    clients: int,
    inflight: int,
    payload: int,
    warmup: float,
    duration: float,
    layout: str = "shared",
    measure_server: bool = True,
    plain_ready: bool = False,
) -> dict:
    """Run echo workers and clients against ``target``; req/s, p50/p99, errors, server CPU."""
    common = (
        *(["--plain-ready"] if plain_ready else []),
        "--endpoint",
        target.client_url,
        "--worker-endpoint",
        target.worker_url,
        "--slots",
        str(slots),
        "--inflight",
        str(inflight),
        "--payload",
        str(payload),
        "--warmup",
        str(warmup),
        "--duration",
        str(duration),
    )

    def peers(n_workers: int, n_clients: int, settle: float = 0.5) -> subprocess.Popen:
        return _spawn(
            str(HERE),
            "_peers",
            *common,
            "--workers",
            str(n_workers),
            "--clients",
            str(n_clients),
            "--settle",
            str(settle),
            stdout=subprocess.PIPE if n_clients else subprocess.DEVNULL,
        )

    background: list[subprocess.Popen] = []
    if layout == "shared":
        loads = [peers(workers, clients)]
    else:
        background = (
            [peers(workers, 0)] if layout == "split" else [peers(1, 0) for _ in range(workers)]
        )
        time.sleep(0.5 + 0.05 * len(background))
        loads = (
            [peers(0, clients, 0.0)]
            if layout == "split"
            else [peers(0, 1, 0.0) for _ in range(clients)]
        )
    pid = target.server.pid if measure_server else None
    cpu0 = _cpu_seconds(pid) if pid else 0.0
    try:
        results = [json.loads(p.communicate(timeout=duration + warmup + 60)[0]) for p in loads]
    finally:
        for proc in background:
            proc.kill()
            proc.wait(10)
    cpu = _cpu_seconds(pid) - cpu0 if pid else 0.0
    latencies = sorted(x for r in results for x in r["latencies_us"])
    count = sum(r["count"] for r in results)
    errors = sum(r["errors"] for r in results)

    def pct(q: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000
            if (latencies)
            else float("nan")
        )

    # server CPU per request over the whole run (warm-up included): less sensitive to
    # the machine's load than req/s
    carried = sum(r["total"] for r in results)
    return {
        "rps": count / duration,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "errors": errors,
        "count": count,
        "cpu_us": 1e6 * cpu / carried if pid and carried else float("nan"),
    }


def _line(label: str, r: dict) -> str:
    return (
        f"  {label:<34} {r['rps']:>9,.0f} req/s   p50 {r['p50_ms']:6.3f} ms   "
        f"p99 {r['p99_ms']:6.3f} ms   errors {r['errors']}   "
        f"server CPU {r['cpu_us']:5.1f} us/req"
    )


def _median(results: list[dict]) -> dict:
    keys = ("rps", "p50_ms", "p99_ms", "cpu_us")
    return {k: statistics.median(r[k] for r in results) for k in keys} | {
        "errors": sum(r["errors"] for r in results)
    }


def bench_throughput(args) -> None:
    kind_of_worker = "plain RFC 18 (READY without metadata)" if args.plain_ready else "MoLE"
    print(
        f"\n== throughput: {args.workers} {kind_of_worker} workers x {args.slots} slots, "
        f"{args.clients} "
        f"clients x {args.inflight} in flight, {args.payload} B payloads, "
        f"{args.duration:g} s per run, load layout {args.layout!r}"
    )
    kinds = ("broker", "forwarder", "baseline") if args.baseline else ("broker", "forwarder")
    tree = baseline_tree(args.baseline) if args.baseline else None
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for i in range(args.repeat):
        for kind in kinds:
            target = Target(kind, tree)
            try:
                r = run_load(
                    target,
                    args.workers,
                    args.slots,
                    args.clients,
                    args.inflight,
                    args.payload,
                    args.warmup,
                    args.duration,
                    args.layout,
                    plain_ready=args.plain_ready,
                )
            finally:
                target.close()
            runs[kind].append(r)
            print(_line(f"run {i + 1} {kind}", r), flush=True)
    b, f = _median(runs["broker"]), _median(runs["forwarder"])
    print(_line("median broker", b))
    print(_line("median forwarder", f))
    print(f"  broker / forwarder throughput: {b['rps'] / f['rps']:.0%}")
    if args.baseline:
        old = _median(runs["baseline"])
        print(_line(f"median baseline {args.baseline[:10]}", old))
        print(f"  baseline / forwarder throughput: {old['rps'] / f['rps']:.0%}")
        print(f"  broker / baseline throughput: {b['rps'] / old['rps']:.0%}")


def bench_latency(args) -> None:
    print(f"\n== latency: 1 client x 1 in flight, {args.payload} B, {args.duration:g} s")
    for kind in ("broker", "forwarder"):
        target = Target(kind)
        try:
            r = run_load(target, 1, 1, 1, 1, args.payload, args.warmup, args.duration, args.layout)
        finally:
            target.close()
        print(_line(kind, r), flush=True)


def bench_idle(args) -> None:
    n = args.idle_workers
    print(f"\n== {n} idle registered workers (each its own service), default 2.5 s heartbeats")
    target = Target("broker")
    idle = None

    def latency() -> dict:
        return run_load(
            target,
            args.workers,
            args.slots,
            1,
            1,
            args.payload,
            args.warmup,
            args.duration,
            args.layout,
        )

    def throughput() -> dict:
        return run_load(
            target,
            args.workers,
            args.slots,
            args.clients,
            args.inflight,
            args.payload,
            args.warmup,
            args.duration,
            args.layout,
        )

    try:
        before, before_tp = latency(), throughput()
        idle = _spawn(
            str(HERE),
            "_idle",
            "--endpoint",
            target.client_url,
            "--count",
            str(n),
            stdout=subprocess.PIPE,
        )
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
                if registered >= n:
                    break
            time.sleep(0.5)
        probe.close(0)
        print(f"  registered workers: {registered}, services: {len(status['services'])}")
        time.sleep(3)  # let registration settle into the heartbeat rhythm
        cpu0, t0 = _cpu_seconds(target.server.pid), time.monotonic()
        time.sleep(args.idle_seconds)
        cpu1, t1 = _cpu_seconds(target.server.pid), time.monotonic()
        print(
            f"  broker CPU with {n} idle workers: {100 * (cpu1 - cpu0) / (t1 - t0):.2f}% of "
            f"one core ({(cpu1 - cpu0) * 1000 / (t1 - t0):.1f} ms per second; "
            f"{2 * n / 2.5:.0f} heartbeat messages/s in and out)"
        )
        after, after_tp = latency(), throughput()
        print(_line("1x1 without idle workers", before))
        print(_line(f"1x1 with {n} idle workers", after))
        print(_line(f"{args.clients}x{args.inflight} without idle workers", before_tp))
        print(_line(f"{args.clients}x{args.inflight} with {n} idle workers", after_tp))
    finally:
        if idle is not None:
            idle.kill()
            idle.wait(10)
        target.close()


DISPATCH_POINTS = ((1, 1), (1000, 1), (1000, 1000), (10_000, 10_000))
#: Simulated time between two request + reply cycles (100,000 requests/s).
DISPATCH_STEP_S = 1e-5


def role_dispatch(
    workers: int, services: int, cycles: int, payload_size: int, tree: str | None
) -> None:
    """Time ``cycles`` request + reply cycles through the ``mole`` package of ``tree`` (a
    :func:`baseline_tree`; today's when None) and print the CPU microseconds per cycle and
    the engine's file (see :func:`bench_dispatch`)."""
    if tree is not None:  # ahead of ROOT, which this module put first on the path
        sys.path.insert(0, tree)
    import mole.broker.engine as engine_module
    import mole.protocol.mdp as mdp
    from mole.broker.engine import BrokerEngine
    from mole.broker.settings import BrokerSettings
    from mole.protocol.envelope import ReplyHeader, RequestHeader

    payload = b"x" * payload_size
    now = time.monotonic()
    engine = BrokerEngine(BrokerSettings(bind="inproc://unused"), now)
    # a baseline from before mdp.read_inbound: its shell decoded each message into an
    # object (mdp.decode_inbound) and called on_client or on_worker with it
    old_api = not hasattr(mdp, "read_inbound")
    for i in range(workers):
        frames = [W_HDR, W_READY, f"svc-{i % services}".encode(), msgpack.packb({"slots": 4})]
        if old_api:
            engine.on_worker(f"w{i}".encode(), mdp.decode_inbound(frames), now)
        else:
            mdp.read_inbound(frames, engine, f"w{i}".encode(), now, None)
    # Every frame and routing id the shell hands over is a new bytes object (Frame.bytes),
    # whose hash is not computed yet and which equals the engine's keys without being
    # them: so are these (made before the clock starts; in the loop for the ticket and the
    # worker's routing id, which the engine makes: those copies are timed apart and their
    # time is taken off).
    services = [_fresh(b"svc-0") for _ in range(cycles)]
    clients = [_fresh(b"client") for _ in range(cycles)]
    # the headers our client library and worker runtime write (string ids, as theirs)
    ids = [f"4d2a1f03c9-{n:x}" for n in range(cycles)]
    headers = [RequestHeader(request_id, 30_000).encode() for request_id in ids]
    replies = [ReplyHeader(request_id).encode() for request_id in ids]
    t0 = time.process_time()
    if old_api:
        _old_api_cycles(mdp, engine, now, cycles, services, clients, headers, replies, payload)
    else:
        read = mdp.read_inbound
        for n in range(cycles):
            now += DISPATCH_STEP_S
            # as broker.shell._drain: the frames to the parser, which calls the engine's
            # handler for the message; the messages it queued taken (the shell takes them
            # once per batch of up to 32, here once per cycle)
            request = [C_HDR, C_REQUEST, services[n], headers[n], payload]
            read(request, engine, clients[n], now, None)
            worker, sent, _req = engine.outgoing[-1]
            final = [W_HDR, W_FINAL, bytes(bytearray(sent[2])), b"", replies[n], payload]
            read(final, engine, bytes(bytearray(worker)), now, None)
            outbox = engine.take_outgoing()
            assert len(outbox) == 2, outbox  # the REQUEST to the worker, the FINAL to the client
            if n % 100 == 0:
                engine.on_tick(now)
                engine.take_outgoing()
    elapsed = time.process_time() - t0
    assert engine.counters["replies"] == cycles
    ticket, worker = bytes(12), b"w0"  # a ticket's size, a worker's routing id
    t0 = time.process_time()
    for _ in range(cycles):  # the two copies of each cycle, alone
        bytes(bytearray(ticket)), bytes(bytearray(worker))
    elapsed -= time.process_time() - t0
    print(json.dumps({"us_per_cycle": 1e6 * elapsed / cycles, "engine": engine_module.__file__}))


def _fresh(data: bytes) -> bytes:
    """A new bytes object equal to ``data``, as ``zmq.Frame.bytes`` gives the shell."""
    return bytes(bytearray(data))


def _old_api_cycles(mdp, engine, now, cycles, services, clients, headers, replies, payload):
    """:func:`role_dispatch`'s loop for a baseline from before ``mdp.read_inbound``, as its
    shell ran: decode into an object, then ``on_client`` or ``on_worker`` with it."""
    outbox: list = []
    for n in range(cycles):
        now += DISPATCH_STEP_S
        msg = mdp.decode_inbound([C_HDR, C_REQUEST, services[n], headers[n], payload])
        assert isinstance(msg, mdp.ClientRequest)
        outbox.extend(engine.on_client(clients[n], msg, now, None))
        [(worker, sent, _req)] = outbox
        frames = [W_HDR, W_FINAL, bytes(bytearray(sent[2])), b"", replies[n], payload]
        final = mdp.decode_inbound(frames)
        assert not isinstance(final, mdp.ClientRequest)
        outbox.extend(engine.on_worker(bytes(bytearray(worker)), final, now, None, None))
        assert len(outbox) == 2, outbox
        outbox.clear()
        if n % 100 == 0:
            outbox.extend(engine.on_tick(now))
            outbox.clear()


def bench_dispatch(args) -> None:
    """The broker core's own per-request Python work, in-process, no sockets.

    Registers N workers (spread over services, or all on one service), then times request
    + reply cycles as the shell runs them: ``mdp.read_inbound`` of the client's frames,
    which calls ``BrokerEngine.on_request``, then of the worker's FINAL (``on_reply``), and
    ``BrokerEngine.take_outgoing`` for the two messages they queued, on a simulated clock
    that advances 10 us per cycle, with the timers run every 100 cycles. Each run is a
    fresh process (``_dispatch`` role); with ``--baseline`` the same role runs on that
    revision's ``mole`` package (its own API), interleaved run by run with today's.
    Flat numbers across N show that dispatch is O(1) in the number of workers and
    services. Prints the median and the best run of each.
    """
    print("\n== dispatch cost in-process (no sockets): request + reply handling per cycle")
    tree = baseline_tree(args.baseline) if args.baseline else None

    engines: dict[str, str] = {}

    def run(workers: int, services: int, on: Path | None) -> float:
        flags = ["--tree", str(on)] if on is not None else []
        proc = _spawn(
            str(HERE),
            "_dispatch",
            "--workers",
            str(workers),
            "--services",
            str(services),
            "--cycles",
            str(args.dispatch_cycles),
            "--payload",
            str(args.payload),
            *flags,
            stdout=subprocess.PIPE,
            tree=on,
        )
        out, _ = proc.communicate(timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"dispatch run failed (exit {proc.returncode})")
        result = json.loads(out)
        engine = str(Path(result["engine"]).resolve())
        # each side must run its own engine (the baseline's lies under its tree)
        assert (on is not None) == engine.startswith(str(on or "/nonexistent")), engine
        engines["baseline" if on is not None else "today"] = engine
        return float(result["us_per_cycle"])

    for workers, services in DISPATCH_POINTS:
        mine, theirs = [], []
        for _ in range(args.dispatch_repeat):  # interleaved run by run
            mine.append(run(workers, services, None))
            if tree is not None:
                theirs.append(run(workers, services, tree))
        line = (
            f"  {workers:>6} workers on {services:>6} service(s): median "
            f"{statistics.median(mine):5.2f} us per cycle (best {min(mine):5.2f})"
        )
        if theirs:
            line += (
                f"   baseline {args.baseline[:10]}: median {statistics.median(theirs):5.2f} "
                f"(best {min(theirs):5.2f}); ratio of medians "
                f"{statistics.median(mine) / statistics.median(theirs):.2f}"
            )
        print(line, flush=True)
    for side, engine in sorted(engines.items()):
        print(f"  {side}'s engine: {engine}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role")
    peers = sub.add_parser("_peers")
    peers.add_argument("--endpoint", required=True)
    peers.add_argument("--worker-endpoint", default=None)
    peers.add_argument("--workers", type=int, default=0)
    peers.add_argument("--clients", type=int, default=0)
    peers.add_argument("--settle", type=float, default=0.5)
    for p in (peers, parser):
        p.add_argument("--slots", type=int, default=16)
        p.add_argument("--inflight", type=int, default=16)
        p.add_argument("--payload", type=int, default=1024)
        p.add_argument("--warmup", type=float, default=1.0)
        p.add_argument("--duration", type=float, default=5.0)
    peers.add_argument("--heartbeat", type=float, default=2.5)
    for p in (peers, parser):
        p.add_argument(
            "--plain-ready",
            action="store_true",
            help="workers send a plain RFC 18 READY (no metadata: one slot each)",
        )
    d = sub.add_parser("_dispatch")
    d.add_argument("--services", type=int, default=1)
    d.add_argument("--cycles", type=int, default=30_000)
    d.add_argument("--payload", type=int, default=1024)
    d.add_argument("--tree", default=None, help="a baseline tree to import mole from")
    i = sub.add_parser("_idle")
    i.add_argument("--endpoint", required=True)
    i.add_argument("--count", type=int, default=1000)
    i.add_argument("--heartbeat", type=float, default=2.5)
    for p in (d, parser):
        p.add_argument("--workers", type=int, default=4)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="shared",
        help="how the load's sockets are spread over processes",
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--dispatch-repeat", type=int, default=5, help="runs per point of the dispatch bench"
    )
    parser.add_argument(
        "--dispatch-cycles", type=int, default=30_000, help="cycles per dispatch run"
    )
    parser.add_argument(
        "--baseline",
        metavar="GIT_REV",
        default=None,
        help="also run the broker of this git revision (throughput: interleaved with the "
        "others; dispatch: its core's handlers, old API), e.g. 79f3420",
    )
    parser.add_argument("--idle-workers", type=int, default=1000)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument(
        "--only", choices=["throughput", "latency", "idle", "dispatch"], default=None
    )
    args = parser.parse_args(argv)
    if args.role == "_peers":
        role_peers(args)
        return 0
    if args.role == "_dispatch":
        role_dispatch(args.workers, args.services, args.cycles, args.payload, args.tree)
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
