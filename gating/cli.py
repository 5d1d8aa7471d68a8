"""``mole gating``: train and try the gating models.

Subcommands::

    mole gating train [--data FILE.jsonl] [--heldout FILE.jsonl] [--out DIR]
                      [--out-of-scope FILE] [--calibrate-in FILE --calibrate-out FILE]
    mole gating route --text T [--description D] [--task T] [--language L] [--json]
    mole gating feedback --description D --task TASK --reward 1 [--router DIR]
    mole gating feedback --description D --out-of-scope [--router DIR]
    mole gating train-domain --data FILE.jsonl --encoder DIR --out DIR

Errors are printed as ``error [code]: message`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

from mole.gating.errors import GatingError, InvalidInput, TaskNotServed
from mole.gating.scope import MAX_IN_SCOPE_REFUSED
from mole.gating.settings import (
    DEFAULT_HELDOUT_DATA,
    DEFAULT_IN_SCOPE_CALIBRATION,
    DEFAULT_OUT_OF_SCOPE_CALIBRATION,
    DEFAULT_OUT_OF_SCOPE_TRAIN,
    DEFAULT_TRAIN_DATA,
)
from mole.protocol.errors import MoleError


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="gating_command", metavar="SUBCOMMAND", required=True)

    train = sub.add_parser("train", help="train the hashed Q-learning task router")
    train.add_argument(
        "--data",
        default=str(DEFAULT_TRAIN_DATA),
        help="JSON lines {description, domain, task} (default: %(default)s)",
    )
    train.add_argument(
        "--heldout",
        action="append",
        default=None,
        metavar="FILE",
        help="held-out JSON lines to report accuracy on, repeatable (default: "
        "the shipped heldout*.jsonl when --data is the shipped "
        "train.jsonl, else a 10%% split of --data)",
    )
    train.add_argument(
        "--out",
        default=None,
        help="router directory to write (default: the gating settings' "
        "router path, configs/gating/task_router)",
    )
    train.add_argument("--registry", default=None, help="experts registry (default: configs/)")
    train.add_argument("--epochs", type=int, default=60)
    train.add_argument("--lr", type=float, default=0.3)
    train.add_argument("--seed", type=int, default=13)
    train.add_argument(
        "--out-of-scope",
        default=None,
        metavar="FILE",
        help="JSON lines {description} of tasks nobody serves, to learn refusal from "
        "(default: the shipped out_of_scope_train.jsonl when --data is the shipped file)",
    )
    train.add_argument(
        "--calibrate-in",
        default=None,
        metavar="FILE",
        help="held-out served descriptions the refusal threshold is chosen on (default: "
        "the shipped heldout.jsonl when --data is the shipped file)",
    )
    train.add_argument(
        "--calibrate-out",
        default=None,
        metavar="FILE",
        help="held-out unserved descriptions the refusal threshold is chosen on (default: "
        "the shipped out_of_scope_calibration.jsonl when --data is the shipped file)",
    )
    train.add_argument(
        "--max-in-scope-refused",
        type=float,
        default=MAX_IN_SCOPE_REFUSED,
        help="the threshold refuses at most this share of --calibrate-in (default %(default)s)",
    )
    train.add_argument(
        "--min-accuracy",
        type=float,
        default=None,
        help="exit 1 (and do not save) when held-out accuracy is below this",
    )

    route = sub.add_parser("route", help="route one request and print the result")
    route.add_argument("--text", required=True)
    route.add_argument("--description", default=None, help="required unless --task is given")
    route.add_argument("--registry", default=None)
    route.add_argument("--router", default=None, help="router directory (default: settings)")
    route.add_argument("--task", default=None, help="skip task routing: rating or finance/rating")
    route.add_argument("--language", default=None, help="skip detection: a code or a name")
    route.add_argument(
        "--candidates", action="store_true", help="on refusal, list the router's best tasks"
    )
    route.add_argument("--json", action="store_true", help="print the full result as JSON")

    fb = sub.add_parser("feedback", help="reward the router for one routing and save it")
    fb.add_argument("--description", required=True)
    what = fb.add_mutually_exclusive_group(required=True)
    what.add_argument("--task", help="task name (rating) or key (finance/rating)")
    what.add_argument(
        "--out-of-scope",
        action="store_true",
        help="no served task fits the description: learn to refuse it (and choose the "
        "refusal threshold again)",
    )
    fb.add_argument("--reward", type=float, default=None, help="with --task: 1 right, 0 wrong")
    fb.add_argument("--router", default=None, help="router directory (default: settings)")

    dom = sub.add_parser("train-domain", help="train the XLM-R domain classifier")
    dom.add_argument(
        "--data", required=True, help="JSON lines {text, domain} (optionally description)"
    )
    dom.add_argument("--encoder", required=True, help="local XLM-R model directory")
    dom.add_argument("--out", required=True, help="directory to write domain_cls.pt into")
    dom.add_argument("--epochs", type=int, default=30)
    dom.add_argument(
        "--model-name",
        default=None,
        help="model_name recorded in the artifact (default: the encoder path)",
    )


def _shown(path: str | Path) -> str:
    """A path relative to the working directory when it lies under it (for artifacts)."""
    p = Path(path).resolve()
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def _progress(row: dict[str, Any]) -> None:
    parts = [f"{k}={v}" for k, v in row.items() if k not in ("epoch", "epochs")]
    print(f"  epoch {row['epoch']:>3}/{row['epochs']}  " + "  ".join(parts), flush=True)


def _train(args: argparse.Namespace) -> int:
    from mole.gating.router import QRouter, TrainConfig, read_examples
    from mole.gating.scope import read_out_of_scope
    from mole.gating.settings import load_settings
    from mole.protocol.registry import load_registry

    registry = load_registry(args.registry)
    examples = read_examples(args.data)
    heldout_paths = args.heldout
    shipped = str(args.data) == str(DEFAULT_TRAIN_DATA)
    if heldout_paths is None and shipped:
        heldout_paths = [str(p) for p in DEFAULT_HELDOUT_DATA]
    oos_path = args.out_of_scope or (DEFAULT_OUT_OF_SCOPE_TRAIN if shipped else None)
    cal_in = args.calibrate_in or (DEFAULT_IN_SCOPE_CALIBRATION if shipped else None)
    cal_out = args.calibrate_out or (DEFAULT_OUT_OF_SCOPE_CALIBRATION if shipped else None)
    if (cal_in is None) != (cal_out is None) or (cal_in is not None and oos_path is None):
        raise InvalidInput(
            "refusal needs all three of --out-of-scope, --calibrate-in and --calibrate-out "
            "(or none: a router that never refuses)"
        )
    out_of_scope = [o.description for o in read_out_of_scope(oos_path)] if oos_path else []
    if heldout_paths:
        train = examples
        heldout = [ex for path in heldout_paths for ex in read_examples(path)]
        source = ", ".join(_shown(p) for p in heldout_paths)
    elif len(examples) >= 20:
        shuffled = examples[:]
        random.Random(args.seed).shuffle(shuffled)
        n = len(shuffled) // 10
        heldout, train = shuffled[:n], shuffled[n:]
        source = f"10% split of {_shown(args.data)}"
    else:
        train, heldout, source = examples, [], "none (fewer than 20 examples)"
    domains = {d: [t.name for t in registry.tasks_of_domain(d)] for d in registry.domains}
    router = QRouter(domains, config=TrainConfig(epochs=args.epochs, lr=args.lr, seed=args.seed))
    print(
        f"training on {len(train)} descriptions ({args.data}); held out: {len(heldout)} "
        f"({source}); domains: {domains}",
        flush=True,
    )
    report = router.train(train, validation=heldout, out_of_scope=out_of_scope, progress=_progress)
    report["data"] = _shown(args.data)
    report["data_sha256"] = hashlib.sha256(Path(args.data).read_bytes()).hexdigest()
    report["heldout"] = source
    if oos_path is not None:
        report["out_of_scope_data"] = _shown(oos_path)
    acc = report.get("validation_accuracy")
    shown = f"{acc:.4f} ({len(heldout)} descriptions)" if acc is not None else "n/a"
    print(
        f"train accuracy {report['train_accuracy']:.4f}; held-out accuracy {shown}; "
        f"{report['seconds']} s"
    )
    if cal_in is not None and cal_out is not None:
        choice = router.calibrate(
            read_examples(cal_in),
            [o.description for o in read_out_of_scope(cal_out)],
            max_in_scope_refused=args.max_in_scope_refused,
        )
        report["refusal_calibration"] = {
            "in_scope": _shown(cal_in),
            "out_of_scope": _shown(cal_out),
        }
        print(
            f"refusal threshold {choice.threshold:.4f}: refuses "
            f"{choice.out_of_scope_refused:.1%} of {choice.n_out_of_scope} unserved and "
            f"{choice.in_scope_refused:.1%} of {choice.n_in_scope} served descriptions "
            f"({_shown(cal_out)}, {_shown(cal_in)})"
        )
    else:
        print("no out-of-scope data: this router will never refuse a description")
    router.report = report
    if args.min_accuracy is not None and (acc is None or acc < args.min_accuracy):
        print(f"held-out accuracy {shown} is under {args.min_accuracy}: not saved", file=sys.stderr)
        return 1
    out = args.out or load_settings().router_path
    path = router.save(out)
    print(f"saved router to {path}")
    return 0


def _route(args: argparse.Namespace) -> int:
    from mole.gating.pipeline import GatingPipeline

    pipeline = GatingPipeline.load(args.registry, router=args.router)
    try:
        result = pipeline.route(
            args.text,
            args.description,
            task=args.task,
            language=args.language,
            candidates=args.candidates,
        )
    except TaskNotServed as err:
        print(f"error [{err.code}]: {err.message}", file=sys.stderr)
        for c in err.candidates or ():
            print(f"  candidate {c['task']}  Q={c['q']:.3f}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        e = result.expert
        print(result.routing_path)
        print(
            f"  language  {result.language.name} ({result.language.code}) "
            f"p={result.language_confidence:.3f}"
        )
        if result.task_scores:
            print(
                f"  task      {result.task_key}  Q={result.task_scores[result.task]:.3f}  "
                f"scope={result.scope_score:.3f}"
            )
        else:
            print(f"  task      {result.task_key}  (given)")
        print(f"  expert    {e.base_model_key}  adapter {e.adapter_name} ({e.adapter_path})")
        print("  timings   " + "  ".join(f"{k}={v:.3f}" for k, v in result.timings.items()))
    return 0


def _feedback(args: argparse.Namespace) -> int:
    from mole.gating.router import QRouter
    from mole.gating.settings import load_settings

    path = args.router or load_settings().router_path
    router = QRouter.load(path)
    if args.out_of_scope:
        if args.reward is not None:
            raise InvalidInput("--reward goes with --task, not with --out-of-scope")
        before = router.scope_score(args.description)
        choice = router.feedback_out_of_scope(args.description)
        after = router.scope_score(args.description)
        router.save(path)
        if choice is None:
            verdict = "no threshold data, so no threshold"
        else:
            refused = "refused" if after < choice.threshold else "still served"
            verdict = (
                f"threshold {choice.threshold:.4f} (refuses {choice.out_of_scope_refused:.1%}"
                f" of {choice.n_out_of_scope} unserved, {choice.in_scope_refused:.1%} of "
                f"{choice.n_in_scope} served); this description is {refused}"
            )
        print(f"scope score {before:.3f} -> {after:.3f}; {verdict}; saved {path}")
        return 0
    if args.reward is None:
        raise InvalidInput("--task needs --reward (1 = right, 0 = wrong)")
    domain, task = args.task.split("/", 1) if "/" in args.task else (None, args.task)
    q_before = router.route(args.description, domain).q_values.get(task)
    router.feedback(args.description, task, args.reward, domain)
    q_after = router.route(args.description, domain).q_values.get(task)
    router.save(path)
    print(f"Q({task}) {q_before:.3f} -> {q_after:.3f}; saved {path}")
    return 0


def _train_domain(args: argparse.Namespace) -> int:
    from mole.gating.domain import routing_prompt, train_domain_classifier

    pairs = []
    with open(args.data, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                text, domain = obj["text"], obj["domain"]
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise InvalidInput(
                    f"{args.data}:{n}: need an object with text and domain ({err})"
                ) from None
            desc = obj.get("description")
            pairs.append((routing_prompt(desc, text) if desc else text, domain))
    report = train_domain_classifier(
        pairs,
        encoder_dir=args.encoder,
        out_dir=args.out,
        epochs=args.epochs,
        model_name=args.model_name,
        progress=_progress,
    )
    print(json.dumps(report, indent=2))
    return 0


def run(args: argparse.Namespace) -> int:
    handlers = {
        "train": _train,
        "route": _route,
        "feedback": _feedback,
        "train-domain": _train_domain,
    }
    try:
        return handlers[args.gating_command](args)
    except GatingError as err:
        print(f"error [{err.code}]: {err.message}", file=sys.stderr)
        return 2
    except MoleError as err:  # RegistryError and friends
        print(f"error: {err}", file=sys.stderr)
        return 2
