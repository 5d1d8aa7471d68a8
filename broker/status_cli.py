"""``mole status``: the broker's services and workers, as a table or JSON.

It sends one raw MDP/0.2 request to ``mmi.status`` from a DEALER socket, so it depends on
nothing but the wire format and works against any broker that serves that service.
Exit status: 0 when the broker answered, 1 when it did not answer within ``--timeout``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from typing import Any, TextIO

import msgpack
import zmq

from mole.cli.interrupt import let_ctrl_c_interrupt
from mole.protocol import mdp
from mole.protocol.curve import ENV_SECRET_KEY, ENV_SERVER_KEY, CurveKeyError, CurveKeys
from mole.protocol.envelope import pack

DEFAULT_BROKER_URL = "tcp://127.0.0.1:5555"


class BrokerUnavailable(Exception):
    """The broker did not answer ``mmi.status`` in time (or answered garbage)."""


def fetch_status(
    url: str,
    timeout: float = 3.0,
    *,
    context: zmq.Context[zmq.Socket[bytes]] | None = None,
    curve: CurveKeys | None = None,
) -> dict[str, Any]:
    """Ask the broker at ``url`` for its ``mmi.status`` document.

    Raises:
        BrokerUnavailable: no answer within ``timeout`` seconds, or an unreadable one.
    """
    ctx = context or zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        if curve is not None:
            curve.apply(sock)
        sock.connect(url)
        request_id = uuid.uuid4().hex
        header = pack({"v": 1, "id": request_id, "ttl": max(1, int(timeout * 1000))})
        sock.send_multipart(
            [mdp.CLIENT_HEADER, mdp.CLIENT_REQUEST, mdp.MMI_STATUS.encode(), header, pack({})]
        )
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0 or not sock.poll(int(left * 1000) + 1):
                raise BrokerUnavailable(
                    f"no answer from the broker at {url} within {timeout:g}s; is `mole broker` "
                    "running there? (set --broker or MOLE_BROKER_URL, or raise --timeout; "
                    "a broker with CURVE on answers only allow-listed keys: see "
                    "--curve-server-key/--curve-secret-key)"
                )
            frames = sock.recv_multipart()
            status = _parse_reply(frames, request_id)
            if status is not None:
                return status
    except zmq.ZMQError as err:
        raise BrokerUnavailable(f"cannot reach the broker at {url}: {err}") from err
    finally:
        sock.close(0)


def _parse_reply(frames: list[bytes], request_id: str) -> dict[str, Any] | None:
    """The status dict from a reply to our request; None for a reply to something else."""
    if len(frames) < 5 or frames[0] != mdp.CLIENT_HEADER or frames[1] != mdp.CLIENT_FINAL:
        return None
    try:
        header = msgpack.unpackb(frames[3], raw=False)
    except Exception:
        return None
    if not isinstance(header, dict) or header.get("id") != request_id:
        return None
    if not header.get("ok", True):
        raise BrokerUnavailable(
            f"the broker answered mmi.status with an error: "
            f"{header.get('code')}: {header.get('msg')}"
        )
    try:
        status = msgpack.unpackb(frames[4], raw=False, strict_map_key=False)
    except Exception as err:
        raise BrokerUnavailable("the broker's mmi.status reply is not msgpack") from err
    if not isinstance(status, dict):
        raise BrokerUnavailable("the broker's mmi.status reply is not a map")
    return status


# --------------------------------------------------------------------------- rendering


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def _metadata_text(metadata: Any, width: int = 60) -> str:
    if not isinstance(metadata, dict) or not metadata:
        return "-"
    skip = {"worker_id", "service", "slots"}
    parts = []
    for key, value in metadata.items():
        if key in skip:
            continue
        if isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, dict):
            value = ",".join(f"{k}={v}" for k, v in value.items())
        parts.append(f"{key}={value}")
    text = " ".join(parts) or "-"
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(headers: list[str], rows: list[list[str]]) -> list[str]:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return lines


def render_table(status: dict[str, Any]) -> str:
    """A person-readable view of an ``mmi.status`` document."""
    broker = status.get("broker", {})
    counters = status.get("counters", {})
    lines = [
        f"broker {broker.get('id', '?')} v{broker.get('version', '?')} at "
        f"{broker.get('endpoint', '?')}, up {_duration(broker.get('uptime_s', 0))}, "
        f"heartbeat {broker.get('heartbeat_interval_s', '?')}s x {broker.get('liveness', '?')}, "
        f"queue limit {broker.get('queue_limit', '?')}",
    ]
    errors = counters.get("errors_by_code") or {}
    error_text = ", ".join(f"{k}={v}" for k, v in sorted(errors.items())) or "none"
    lines.append(
        f"requests {counters.get('requests', 0)}, replies {counters.get('replies', 0)}, "
        f"malformed {counters.get('malformed', 0)}, redispatched "
        f"{counters.get('redispatched', 0)}, errors: {error_text}"
    )
    lines.append("")
    services = status.get("services", {})
    if services:
        rows = [
            [
                name,
                str(s.get("workers", 0)),
                str(s.get("slots", 0)),
                str(s.get("in_flight", 0)),
                str(s.get("queue_depth", 0)),
                str(s.get("served", 0)),
                str(s.get("errors", 0)),
            ]
            for name, s in sorted(services.items())
        ]
        lines += _table(
            ["SERVICE", "WORKERS", "SLOTS", "IN FLIGHT", "QUEUED", "SERVED", "ERRORS"], rows
        )
    else:
        lines.append("no services (no worker has registered)")
    lines.append("")
    workers = status.get("workers", [])
    if workers:
        rows = [
            [
                str(w.get("id", "?")),
                str(w.get("service", "?")),
                worker_state(w),
                str(w.get("address") or "-"),
                str(w.get("slots", 0)),
                str(w.get("in_flight", 0)),
                str(w.get("served", 0)),
                f"{float(w.get('last_heartbeat_s', 0)):.1f}s ago",
                _metadata_text(w.get("metadata")),
            ]
            for w in sorted(workers, key=lambda w: (str(w.get("service")), str(w.get("id"))))
        ]
        lines += _table(
            [
                "WORKER",
                "SERVICE",
                "STATE",
                "ADDRESS",
                "SLOTS",
                "IN FLIGHT",
                "SERVED",
                "HEARD",
                "METADATA",
            ],
            rows,
        )
    else:
        lines.append("no workers")
    away = [d for d in status.get("drained", []) if not d.get("registered")]
    if away:
        names = ", ".join(f"{d.get('worker')} ({d.get('service')})" for d in away)
        lines.append(f"drained, not connected (until `mole drain --resume ID`): {names}")
    return "\n".join(lines)


def worker_state(worker: dict[str, Any]) -> str:
    """A worker row's state: ``serving``, ``suspect``, ``draining`` (drained by the
    operator, requests still in flight) or ``drained`` (drained and idle)."""
    if worker.get("draining"):
        return "draining" if worker.get("in_flight") else "drained"
    return "suspect" if worker.get("suspect") else "serving"


# --------------------------------------------------------------------------- command


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``mole status``'s flags to ``parser``."""
    parser.add_argument(
        "--broker",
        default=os.environ.get("MOLE_BROKER_URL", DEFAULT_BROKER_URL),
        help=f"broker endpoint (env MOLE_BROKER_URL, default {DEFAULT_BROKER_URL})",
    )
    parser.add_argument("--json", action="store_true", help="print the raw status as JSON")
    parser.add_argument(
        "--watch", action="store_true", help="refresh every --interval seconds until Ctrl-C"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="refresh interval for --watch (default 2)",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="how long to wait for the broker's answer (default 3)",
    )
    parser.add_argument(
        "--curve-server-key",
        default=os.environ.get(ENV_SERVER_KEY),
        metavar="FILE",
        help=f"the broker's public .key file when it uses CURVE (env {ENV_SERVER_KEY})",
    )
    parser.add_argument(
        "--curve-secret-key",
        default=os.environ.get(ENV_SECRET_KEY),
        metavar="FILE",
        help=f"this client's .key_secret file (env {ENV_SECRET_KEY})",
    )


def _show(status: dict[str, Any], as_json: bool, out: TextIO) -> None:
    if as_json:
        out.write(json.dumps(status, indent=2, sort_keys=True, default=str) + "\n")
    else:
        out.write(render_table(status) + "\n")
    out.flush()


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Print the status once (or repeatedly with --watch); 1 when the broker is silent."""
    out = out or sys.stdout
    err = err or sys.stderr
    if args.timeout <= 0 or args.interval <= 0:
        err.write("mole status: --timeout and --interval must be > 0\n")
        return 2
    try:
        curve = CurveKeys.from_env(
            {
                ENV_SERVER_KEY: args.curve_server_key or "",
                ENV_SECRET_KEY: args.curve_secret_key or "",
            }
        )
    except CurveKeyError as exc:
        err.write(f"mole status: {exc} (flags --curve-server-key/--curve-secret-key)\n")
        return 2
    if not args.watch:
        try:
            status = fetch_status(args.broker, args.timeout, curve=curve)
        except BrokerUnavailable as exc:
            err.write(f"mole status: {exc}\n")
            return 1
        _show(status, args.json, out)
        return 0
    clear = "\x1b[H\x1b[2J" if out.isatty() and not args.json else ""
    let_ctrl_c_interrupt()  # even when started with SIGINT ignored
    try:
        while True:
            started = time.monotonic()
            try:
                status = fetch_status(args.broker, args.timeout, curve=curve)
                out.write(clear)
                _show(status, args.json, out)
            except BrokerUnavailable as exc:
                out.write(clear)
                out.write(f"mole status: {exc} (retrying every {args.interval:g}s)\n")
                out.flush()
            time.sleep(max(0.0, args.interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mole status", description=__doc__.splitlines()[0])
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
