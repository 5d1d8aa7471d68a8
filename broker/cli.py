"""``mole broker``: run the Majordomo broker in the foreground.

Settings come from defaults, then ``MOLE_*`` environment variables (see
``broker.settings.ENV_VARS``), then these flags. SIGTERM or SIGINT stops it cleanly: new
requests are refused while the ones queued or in flight are served (``--drain-timeout``),
then workers get DISCONNECT, what is left gets an error reply, and the process exits 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from types import FrameType

from mole.broker.bind_policy import check_bind
from mole.broker.settings import DEFAULT_BIND, SettingsError, settings_from_env, with_overrides


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``mole broker``'s flags to ``parser``."""
    parser.add_argument(
        "--bind",
        default=None,
        help=f"ZeroMQ endpoint to bind (env MOLE_BROKER_BIND, default "
        f"{DEFAULT_BIND}); tcp://127.0.0.1:* picks a free port",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="heartbeat interval (env MOLE_HEARTBEAT_INTERVAL, default 2.5)",
    )
    parser.add_argument(
        "--liveness",
        type=int,
        default=None,
        metavar="N",
        help="missed heartbeats before a worker is purged (env MOLE_HEARTBEAT_LIVENESS, default 3)",
    )
    parser.add_argument(
        "--queue-limit",
        type=int,
        default=None,
        metavar="N",
        help="waiting requests per service before 'overloaded' "
        "(env MOLE_BROKER_QUEUE_LIMIT, default 1000)",
    )
    parser.add_argument(
        "--total-queue-limit",
        type=int,
        default=None,
        metavar="N",
        help="waiting requests over all services "
        "(env MOLE_BROKER_TOTAL_QUEUE_LIMIT, default 100000)",
    )
    parser.add_argument(
        "--default-deadline",
        type=float,
        default=None,
        metavar="SECONDS",
        help="deadline of requests without a ttl (env MOLE_BROKER_DEFAULT_DEADLINE, default 30)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=None,
        metavar="N",
        help="dispatches per request before 'worker_lost' "
        "(env MOLE_BROKER_MAX_ATTEMPTS, default 3)",
    )
    parser.add_argument(
        "--max-message-bytes",
        type=int,
        default=None,
        metavar="BYTES",
        help="largest accepted message (env MOLE_BROKER_MAX_MESSAGE_BYTES, default 16 MiB)",
    )
    parser.add_argument(
        "--curve-secret",
        default=None,
        metavar="FILE",
        help="the broker's CURVE .key_secret file; turns on encryption "
        "(env MOLE_BROKER_CURVE_SECRET)",
    )
    parser.add_argument(
        "--curve-allow",
        default=None,
        metavar="DIR",
        help="directory of allow-listed public .key files; only these peers "
        "may connect; re-read every heartbeat interval, so removing "
        "a file revokes that key (env MOLE_BROKER_CURVE_ALLOW)",
    )
    parser.add_argument(
        "--curve-acl",
        default=None,
        metavar="FILE",
        help='JSON {"<key stem or z85>": ["service", "prefix*"]}: which keys '
        "may register which services as workers (env "
        "MOLE_BROKER_CURVE_ACL)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="on SIGTERM, serve the requests queued or in flight for at most this long "
        "before exiting; new requests are refused meanwhile "
        "(env MOLE_BROKER_DRAIN_TIMEOUT, default 10; 0 stops at once)",
    )
    parser.add_argument(
        "--attempt-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="a worker holding a request this long makes the broker also give it to another "
        "free worker (first answer wins); 0 derives it from each request's deadline "
        "(env MOLE_BROKER_ATTEMPT_TIMEOUT, default 0)",
    )
    parser.add_argument(
        "--service-attempt-timeouts",
        default=None,
        metavar="NAME=SECONDS,...",
        help="per-service attempt timeouts; NAME may end in '*' "
        "(env MOLE_BROKER_SERVICE_ATTEMPT_TIMEOUTS)",
    )
    parser.add_argument(
        "--suspect-after",
        type=int,
        default=None,
        metavar="N",
        help="attempt timeouts in a row after which a worker gets no new work until it "
        "answers again (env MOLE_BROKER_SUSPECT_AFTER, default 2)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("MOLE_BROKER_METRICS_PORT") or 0) or None,
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (env "
        "MOLE_BROKER_METRICS_PORT; default off)",
    )
    parser.add_argument(
        "--metrics-host",
        default=os.environ.get("MOLE_BROKER_METRICS_HOST", "127.0.0.1"),
        help="address the metrics endpoint binds (env MOLE_BROKER_METRICS_HOST, default "
        "127.0.0.1; 0.0.0.0 for a Prometheus on another machine)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="allow binding a non-loopback address without CURVE and an allow-list: anyone "
        "who reaches the port can pose as a worker (env MOLE_BROKER_INSECURE=1; default off, "
        "the broker refuses such a bind; a warning is logged on every start)",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("MOLE_LOG_LEVEL", "INFO").upper(),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (env MOLE_LOG_LEVEL, default INFO; nothing is logged per message at INFO)",
    )


def run(args: argparse.Namespace) -> int:
    """Run the broker until SIGTERM/SIGINT; 0 on a clean stop, 2 on bad settings."""
    if args.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        print(
            f"mole broker: log level {args.log_level!r} (MOLE_LOG_LEVEL) is not one of "
            "DEBUG, INFO, WARNING, ERROR",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from mole.broker.shell import Broker  # after logging is set up; keeps --help cheap

    try:
        settings = with_overrides(
            settings_from_env(),
            bind=args.bind,
            heartbeat_interval=args.heartbeat_interval,
            liveness=args.liveness,
            queue_limit=args.queue_limit,
            total_queue_limit=args.total_queue_limit,
            default_deadline=args.default_deadline,
            max_attempts=args.max_attempts,
            max_message_bytes=args.max_message_bytes,
            curve_secret=args.curve_secret,
            curve_allow=args.curve_allow,
            curve_acl=args.curve_acl,
            drain_timeout=args.drain_timeout,
            attempt_timeout=args.attempt_timeout,
            service_attempt_timeouts=args.service_attempt_timeouts,
            suspect_after=args.suspect_after,
            insecure=args.insecure,
        ).validated()
    except SettingsError as err:
        print(f"mole broker: {err}", file=sys.stderr)
        return 2
    _raise_open_files_limit()
    snapshot = None
    if args.metrics_port:
        from mole.broker.metrics import MetricsServer, StatusSnapshot

        snapshot = StatusSnapshot()
        try:
            MetricsServer(snapshot, args.metrics_port, args.metrics_host).start()
        except OSError as err:
            print(
                f"mole broker: cannot serve metrics on {args.metrics_host}:{args.metrics_port}:"
                f" {err}",
                file=sys.stderr,
            )
            return 1
    broker = Broker(settings, status_snapshot=snapshot)
    try:
        broker.bind()
    except SettingsError as err:
        print(f"mole broker: {err}", file=sys.stderr)
        broker.close()
        return 2
    except Exception as err:  # zmq.ZMQError: address in use, bad endpoint...
        print(f"mole broker: cannot bind {settings.bind}: {err}", file=sys.stderr)
        broker.close()
        return 1
    # After bind, so an endpoint that cannot be bound at all is reported as such; the
    # broker reads no message before this check, so a refused bind serves nobody.
    try:
        insecure_warning = check_bind(settings)
    except SettingsError as err:
        print(f"mole broker: {err}", file=sys.stderr)
        broker.close()
        return 2
    if insecure_warning is not None:
        logging.getLogger("mole.broker").warning(insecure_warning)

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger("mole.broker").info(
            "%s received: shutting down", signal.Signals(signum).name
        )
        broker.stop()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    broker.run()
    return 0


def _raise_open_files_limit() -> None:
    """Each connected peer costs the broker a file descriptor: allow as many as permitted."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):  # not POSIX, or not allowed: keep the limit
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m broker", description="run the MoLE broker")
    configure(parser)
    return run(parser.parse_args(argv))
