"""``mole worker``: load one base model and its adapters, warm up, then serve via the broker.

The worker registers only after everything loaded and warmed up, so the broker never
routes to a worker that cannot answer. Anything that cannot be loaded ends the process at
once with exit code 2 and a message naming the model, file or adapter.

Environment: ``WORKER_MODEL_KEY``, ``WORKER_ID``, ``MOLE_BROKER_URL``,
``EXPERT_REGISTRY_PATH``, ``MOLE_MODELS_DIR``, ``MOLE_ADAPTERS_DIR``, ``MOLE_DEVICE``,
``MOLE_FORCE_4BIT``, ``MOLE_KEEP_DTYPE``, ``MOLE_MAX_BATCH``, ``MOLE_BATCH_WAIT_MS``,
``MOLE_MAX_INPUT_TOKENS``, ``MOLE_TORCH_THREADS``, ``MOLE_WORKER_STUCK_LIMIT``,
``MOLE_WORKER_DRAIN_TIMEOUT``; flags override them.

SIGTERM drains the worker (no new work, in-flight answered, then DISCONNECT; a second
SIGTERM stops it at once), so ``systemctl stop`` or ``docker stop`` loses no request.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mole.worker.runtime import DEFAULT_DRAIN_TIMEOUT_S, DEFAULT_STUCK_LIMIT_S

if TYPE_CHECKING:
    from mole.worker.engine.settings import EngineSettings

log = logging.getLogger("mole.worker")

DEFAULT_BROKER_URL = "tcp://127.0.0.1:5555"


def configure(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    parser.add_argument(
        "--model-key",
        default=env("WORKER_MODEL_KEY"),
        help="base_model_key to serve (env WORKER_MODEL_KEY)",
    )
    parser.add_argument(
        "--broker",
        default=env("MOLE_BROKER_URL", DEFAULT_BROKER_URL),
        help=f"broker address (env MOLE_BROKER_URL, default {DEFAULT_BROKER_URL})",
    )
    parser.add_argument(
        "--registry", default=None, help="experts registry file (env EXPERT_REGISTRY_PATH)"
    )
    parser.add_argument(
        "--worker-id",
        default=env("WORKER_ID"),
        help="id shown by `mole status` (env WORKER_ID, default HOST-PID)",
    )
    parser.add_argument(
        "--models-dir",
        default=None,
        help="local base models by key (env MOLE_MODELS_DIR; default: the registry's "
        "hf_name through the local HF cache)",
    )
    parser.add_argument(
        "--adapters-dir",
        default=None,
        help="root of the registry's adapter paths (env MOLE_ADAPTERS_DIR)",
    )
    parser.add_argument(
        "--device", default=None, help="auto, cpu or cuda[:n] (env MOLE_DEVICE, default auto)"
    )
    parser.add_argument(
        "--load-in-4bit",
        action="store_true",
        default=None,
        help="load nf4 even on CPU (env MOLE_FORCE_4BIT, default off: nf4 only where the "
        "registry asks for it and CUDA is present)",
    )
    parser.add_argument(
        "--keep-dtype",
        action="store_true",
        default=None,
        help="keep float16 on CPU instead of float32 (env MOLE_KEEP_DTYPE, default off)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=None,
        help="requests per forward pass (env MOLE_MAX_BATCH, default 16)",
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=float,
        default=None,
        help="batching window (env MOLE_BATCH_WAIT_MS, default 5)",
    )
    parser.add_argument(
        "--max-input-tokens",
        type=int,
        default=None,
        help="prompt limit in tokens (env MOLE_MAX_INPUT_TOKENS, default 1024)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (env MOLE_TORCH_THREADS, default: torch's choice)",
    )
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the warm-up requests (default: warm up every task before registering)",
    )
    parser.add_argument(
        "--heartbeat-interval",
        type=float,
        default=float(env("MOLE_HEARTBEAT_INTERVAL", "2.5")),
        help="seconds; must match the broker's (env MOLE_HEARTBEAT_INTERVAL, default 2.5)",
    )
    parser.add_argument(
        "--liveness",
        type=int,
        default=int(env("MOLE_HEARTBEAT_LIVENESS", "3")),
        help="heartbeats missed before the broker counts as lost "
        "(env MOLE_HEARTBEAT_LIVENESS, default 3)",
    )
    parser.add_argument(
        "--stuck-limit",
        type=float,
        default=float(env("MOLE_WORKER_STUCK_LIMIT", str(DEFAULT_STUCK_LIMIT_S))),
        metavar="SECONDS",
        help="when the model holds requests and answers none for this long, stop "
        "heartbeating so the broker purges this worker and re-dispatches its work; it "
        "registers again once the model answers (env MOLE_WORKER_STUCK_LIMIT, default "
        f"{DEFAULT_STUCK_LIMIT_S:.0f}; 0 turns it off)",
    )
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=float(env("MOLE_WORKER_DRAIN_TIMEOUT", str(DEFAULT_DRAIN_TIMEOUT_S))),
        metavar="SECONDS",
        help="on SIGTERM, how long to finish in-flight requests before DISCONNECT "
        f"(env MOLE_WORKER_DRAIN_TIMEOUT, default {DEFAULT_DRAIN_TIMEOUT_S:.0f})",
    )
    parser.add_argument(
        "--log-level",
        default=env("MOLE_LOG_LEVEL", "INFO").upper(),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log level (env MOLE_LOG_LEVEL, default INFO)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(env("MOLE_WORKER_METRICS_PORT", "0")) or None,
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (env "
        "MOLE_WORKER_METRICS_PORT; default off)",
    )
    parser.add_argument(
        "--metrics-host",
        default=env("MOLE_WORKER_METRICS_HOST", "127.0.0.1"),
        help="address the metrics endpoint binds (env MOLE_WORKER_METRICS_HOST, default 127.0.0.1)",
    )


def apply_model_flags(settings: EngineSettings, args: argparse.Namespace) -> None:
    """The flags `mole worker` and `mole models check` share: where the models and adapters
    are, the device, and forced 4-bit loading; each overrides the environment when given."""
    if args.models_dir:
        settings.models_dir = Path(args.models_dir).expanduser()
    if args.adapters_dir:
        settings.adapters_dir = Path(args.adapters_dir).expanduser()
    if args.device:
        settings.device = args.device
    if args.load_in_4bit:
        settings.force_4bit = True


def settings_from_args(args: argparse.Namespace) -> EngineSettings:
    """EngineSettings from the environment, overridden by the flags that were given."""
    from mole.worker.engine.settings import EngineSettings

    settings = EngineSettings()
    apply_model_flags(settings, args)
    if args.keep_dtype:
        settings.keep_dtype = True
    for name in ("max_batch", "batch_wait_ms", "max_input_tokens"):
        value = getattr(args, name)
        if value is not None:
            setattr(settings, name, value)
    if args.threads:
        settings.torch_threads = args.threads
    if args.no_warmup:
        settings.warmup = False
    return settings


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=str(args.log_level).upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.model_key:
        print("mole worker: --model-key (or WORKER_MODEL_KEY) is required", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download weights at run time
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from mole.worker.quiet import silence_third_party_noise

    silence_third_party_noise()  # before torch, transformers, peft, bitsandbytes import
    from mole.protocol.curve import CurveKeyError, CurveKeys
    from mole.protocol.registry import RegistryError, load_registry
    from mole.worker.engine.errors import ModelLoadError
    from mole.worker.engine.loading import preflight
    from mole.worker.runtime import WorkerRuntime, default_worker_id, stop_on_signals

    try:  # before loading the model: a key problem must not cost a minute of loading
        curve = CurveKeys.from_env()
    except CurveKeyError as err:
        print(f"mole worker: {err}", file=sys.stderr)
        return 2
    worker_id = args.worker_id or default_worker_id(args.model_key)
    metrics = None
    if args.metrics_port:
        from mole.worker.metrics import WorkerMetrics

        metrics = WorkerMetrics(args.model_key)
        try:  # before loading: a port in use must not cost a minute of loading
            port = metrics.serve(args.metrics_port, args.metrics_host)
        except OSError as err:
            print(
                f"mole worker: cannot serve metrics on {args.metrics_host}:"
                f"{args.metrics_port}: {err}",
                file=sys.stderr,
            )
            return 2
        log.info("metrics on http://%s:%d/metrics", args.metrics_host, port)
    t0 = time.perf_counter()
    try:
        registry = load_registry(args.registry)
        settings = settings_from_args(args)
        preflight(args.model_key, registry, settings)  # before torch is imported: seconds
        from mole.worker.engine.batching import BatchingHandler
        from mole.worker.engine.engine import Engine

        engine = Engine.load(args.model_key, registry, settings, worker_id=worker_id)
    except (ModelLoadError, RegistryError) as err:
        log.error("cannot start worker for %s: %s", args.model_key, err)
        return 2
    if metrics is not None:
        metrics.observe_load(time.perf_counter() - t0)
    if engine.tiny:
        log.warning("serving a TINY random-weight model: its predictions mean nothing")
    log.info(
        "ready in %.2f s: %s serves %s",
        time.perf_counter() - t0,
        args.model_key,
        ", ".join(engine.metadata()["tasks"]),
    )
    handler = BatchingHandler(engine, metrics=metrics)
    runtime = WorkerRuntime(
        args.broker,
        args.model_key,
        handler,
        worker_id=worker_id,
        heartbeat_interval=args.heartbeat_interval,
        liveness=args.liveness,
        curve=curve,
        stuck_limit=args.stuck_limit if args.stuck_limit > 0 else None,
        drain_timeout=args.drain_timeout,
    )
    stop_on_signals(runtime)
    log.info("worker %s registering %r with %s", worker_id, args.model_key, args.broker)
    runtime.run()
    return 0
