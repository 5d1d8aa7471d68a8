"""What CURVE costs on the bus: the same load through a plain broker and a CURVE broker.

``mole up`` now runs its bus under CURVE (#16), so this measures the price. Each round
starts ``python -m mole.broker`` (plain, or with a secret key, an allow-list and an ACL as
``mole up`` sets them), one echo worker process (``python -m mole.worker.echo``, 64 slots,
with the worker key under CURVE) and, in this process, one raw MDP/0.2 DEALER client (with
the operator key under CURVE) that

* sends requests one at a time (round-trip latency: p50, p99), then
* keeps ``--window`` requests of 1 KiB in flight (throughput).

Plain and CURVE rounds alternate, ``--repeat`` times each, and the medians and the ratios
are printed side by side. The machine is shared: the load average is printed too.

    .venv/bin/python tests/benchmarks/bench_curve.py --repeat 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import msgpack
import zmq
import zmq.auth

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.procs import free_port

ROOT = Path(__file__).resolve().parents[2]
SERVICE = "bench"
CLIENT, REQUEST, FINAL = b"MDPC02", b"\x01", b"\x03"


def make_keys(directory: Path) -> dict[str, Path]:
    from mole.cli.stack_keys import ensure_stack_keys

    keys, _ = ensure_stack_keys(directory)
    return {
        "broker_public": keys.broker_public,
        "broker_secret": keys.broker_secret,
        "allow": keys.allow_dir,
        "acl": keys.acl,
        "worker": keys.secret("worker"),
        "operator": keys.secret("operator"),
    }


class Round:
    """One broker + one echo worker, plain or under CURVE."""

    def __init__(self, curve: dict[str, Path] | None, logs: Path) -> None:
        self.url = f"tcp://127.0.0.1:{free_port()}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOLE_")}
        broker_env, worker_env = dict(env), dict(env)
        if curve is not None:
            broker_env.update(
                MOLE_BROKER_CURVE_SECRET=str(curve["broker_secret"]),
                MOLE_BROKER_CURVE_ALLOW=str(curve["allow"]),
                MOLE_BROKER_CURVE_ACL=str(curve["acl"]),
            )
            worker_env.update(
                MOLE_CURVE_SERVER_KEY=str(curve["broker_public"]),
                MOLE_CURVE_SECRET_KEY=str(curve["worker"]),
            )
        tag = "curve" if curve else "plain"
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-m", "mole.broker", "--bind", self.url, "--log-level", "WARNING"],
                cwd=ROOT,
                env=broker_env,
                stdout=open(logs / f"broker-{tag}.log", "ab"),
                stderr=subprocess.STDOUT,
            ),
            subprocess.Popen(
                [sys.executable, "-m", "mole.worker.echo", "--broker", self.url,
                 "--service", SERVICE, "--slots", "64", "--log-level", "WARNING"],
                cwd=ROOT,
                env=worker_env,
                stdout=open(logs / f"worker-{tag}.log", "ab"),
                stderr=subprocess.STDOUT,
            ),
        ]  # fmt: skip
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            server, _ = zmq.auth.load_certificate(str(curve["broker_public"]))
            public, secret = zmq.auth.load_certificate(str(curve["operator"]))
            self.sock.curve_serverkey, self.sock.curve_publickey = server, public
            self.sock.curve_secretkey = secret
        self.sock.connect(self.url)
        self.payload = msgpack.packb({"blob": b"x" * 1024}, use_bin_type=True)
        self._wait_for_worker()

    def _frames(self) -> list[bytes]:
        header = msgpack.packb({"v": 1, "id": uuid.uuid4().hex, "ttl": 30_000})
        return [CLIENT, REQUEST, SERVICE.encode(), header, self.payload]

    def _wait_for_worker(self) -> None:
        end = time.monotonic() + 60
        while time.monotonic() < end:
            self.sock.send_multipart([CLIENT, REQUEST, b"mmi.service", SERVICE.encode()])
            if self.sock.poll(1000) and self.sock.recv_multipart()[-1] == b"200":
                return
            time.sleep(0.2)
        raise RuntimeError(f"no worker registered at {self.url}")

    def _recv_final(self) -> None:
        while True:
            frames = self.sock.recv_multipart()
            if frames[1] == FINAL:
                return

    def latency(self, n: int) -> list[float]:
        times = []
        for _ in range(n):
            started = time.perf_counter()
            self.sock.send_multipart(self._frames())
            self._recv_final()
            times.append(time.perf_counter() - started)
        return times

    def throughput(self, n: int, window: int) -> float:
        sent = done = 0
        started = time.perf_counter()
        while done < n:
            while sent < n and sent - done < window:
                self.sock.send_multipart(self._frames())
                sent += 1
            self._recv_final()
            done += 1
        return n / (time.perf_counter() - started)

    def close(self) -> None:
        self.sock.close(0)
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds of each (default 3)")
    parser.add_argument("--latency-n", type=int, default=2000, help="sequential requests")
    parser.add_argument("--throughput-n", type=int, default=20000, help="windowed requests")
    parser.add_argument("--window", type=int, default=64, help="requests in flight")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-curve-"))
    curve = make_keys(work)
    results: dict[str, dict[str, list[float]]] = {
        "plain": {"p50": [], "p99": [], "rps": []},
        "curve": {"p50": [], "p99": [], "rps": []},
    }
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    for index in range(args.repeat):
        for tag, keys in (("plain", None), ("curve", curve)):
            round_ = Round(keys, work)
            try:
                round_.latency(200)  # warm-up
                times = sorted(round_.latency(args.latency_n))
                rps = round_.throughput(args.throughput_n, args.window)
            finally:
                round_.close()
            p50 = times[len(times) // 2] * 1e6
            p99 = times[int(len(times) * 0.99)] * 1e6
            results[tag]["p50"].append(p50)
            results[tag]["p99"].append(p99)
            results[tag]["rps"].append(rps)
            print(
                f"round {index + 1} {tag:<5}: 1 in flight p50 {p50:7.0f} us  p99 {p99:7.0f} us;"
                f"  {args.window} in flight {rps:8.0f} req/s"
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    med = {t: {k: statistics.median(v) for k, v in r.items()} for t, r in results.items()}
    print(f"\nmedians over {args.repeat} rounds       plain       CURVE   CURVE/plain")
    print(
        f"latency p50 (us)          {med['plain']['p50']:9.0f}   {med['curve']['p50']:9.0f}"
        f"   {med['curve']['p50'] / med['plain']['p50']:8.2f}x"
    )
    print(
        f"latency p99 (us)          {med['plain']['p99']:9.0f}   {med['curve']['p99']:9.0f}"
        f"   {med['curve']['p99'] / med['plain']['p99']:8.2f}x"
    )
    print(
        f"throughput (req/s)        {med['plain']['rps']:9.0f}   {med['curve']['rps']:9.0f}"
        f"   {med['curve']['rps'] / med['plain']['rps']:8.2f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
