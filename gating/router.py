"""The task router: a Q-learning contextual bandit over hashed description features.

As in the original MoLE, each domain has its own router whose actions are the domain's
tasks in registry order; the reward is 1 when the routed task is the right one and 0
otherwise; exploration is epsilon-greedy (epsilon decays linearly); and Q(s, a) is
regressed to the reward (a one-step bandit, no bootstrapping). Unlike the original, the
state is a sparse hashed n-gram vector (:mod:`gating.features`) and Q is linear per
action, so routing costs tens of microseconds on the CPU and needs no torch.

Refusal: beside the tasks, the router learns a *refuse* head, regressed to 1 on
descriptions of tasks nobody serves ("Translate this into French") and to 0 on served
ones; an out-of-scope training example also regresses every task's Q to 0 (no task is
right for it, so no exploration is needed to learn that). A description's scope score is
``max_a Q(a) - Q(refuse)``; under the threshold chosen by :meth:`QRouter.calibrate`
(:mod:`gating.scope`) the route is marked ``refused``. A router never calibrated has no
threshold and refuses nothing.

Online learning: :meth:`QRouter.feedback` applies one update for a routed request's
reward; :meth:`QRouter.feedback_out_of_scope` teaches a refusal; both add the description
to the threshold's data and choose the threshold again. :meth:`QRouter.save` persists it.

Clients send the same task description with many texts, so the last ``ROUTE_CACHE_SIZE``
routes are kept per (domain, description) and reused until the weights change (any
feedback or training clears them). Featurizing a description was a seventh of a
frontend process's Python time under load.

Artifact: a directory holding ``meta.json`` (format, feature spec, domains and their
tasks, hyper-parameters, training report, the refusal threshold and how it was chosen),
``weights.npz`` (per domain: the non-zero rows of the weight matrix and the bias; the
refuse head likewise) and ``scope.json`` (the descriptions the threshold was chosen
from), a few hundred KB.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mole.gating.errors import ArtifactError, InvalidInput, UnknownDomain, UnknownTask
from mole.gating.features import FeatureSpec, Featurizer
from mole.gating.scope import ScopeData, ThresholdChoice, choose_threshold

#: a description's hashed feature indices and their values (see :class:`Featurizer`)
Indices = NDArray[np.int64]
Floats = NDArray[np.float32]  # feature values, weights, biases

FORMAT = "mole-hashed-qrouter"
#: v2 added the refuse head and the refusal threshold (v1 routers must be retrained)
FORMAT_VERSION = 2
META_FILE = "meta.json"
WEIGHTS_FILE = "weights.npz"
SCOPE_FILE = "scope.json"
#: Routes remembered per (domain, description); descriptions are cut at 2000 characters.
ROUTE_CACHE_SIZE = 1024


@dataclass(frozen=True, slots=True)
class Example:
    description: str
    domain: str
    task: str


@dataclass(slots=True)
class TrainConfig:
    epochs: int = 60
    lr: float = 0.3
    eps_start: float = 0.2
    eps_end: float = 0.01
    optimistic_init: float = 1.0  # Q starts at 1 so untried actions get tried
    seed: int = 13

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": self.epochs,
            "lr": self.lr,
            "eps_start": self.eps_start,
            "eps_end": self.eps_end,
            "optimistic_init": self.optimistic_init,
            "seed": self.seed,
        }


@dataclass(frozen=True, slots=True)
class Route:
    """A routing decision: the task and the Q-value of every action.

    ``scope`` is the scope score (best task's Q minus the refuse head's; None for a
    router without one) and ``refused`` whether it is under the router's threshold.
    """

    domain: str
    task: str
    q_values: dict[str, float]
    scope: float | None = None
    refused: bool = False
    threshold: float | None = None  # the threshold ``refused`` was decided with

    @property
    def confidence(self) -> float:
        return self.q_values[self.task]


@dataclass(slots=True)
class _DomainQ:
    tasks: list[str]
    weights: Floats  # float32 [dim, n_tasks]
    bias: Floats  # float32 [n_tasks]
    index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = {t: i for i, t in enumerate(self.tasks)}

    def q(self, idx: Indices, val: Floats) -> Floats:
        return val @ self.weights[idx] + self.bias

    def update(self, idx: Indices, val: Floats, action: int, reward: float, lr: float) -> float:
        err = reward - float(val @ self.weights[idx, action] + self.bias[action])
        # np.add.at: a hashed index may repeat within one description
        np.add.at(self.weights[:, action], idx, lr * err * val)
        self.bias[action] += lr * err
        return err


@dataclass(slots=True)
class _RefuseHead:
    """Q(refuse): a linear regression to 1 for unserved descriptions, 0 for served ones."""

    weights: Floats  # float32 [dim]
    bias: float = 0.0

    def q(self, idx: Indices, val: Floats) -> float:
        return float(val @ self.weights[idx]) + self.bias

    def update(self, idx: Indices, val: Floats, target: float, lr: float) -> float:
        err = target - self.q(idx, val)
        np.add.at(self.weights, idx, lr * err * val)
        self.bias += lr * err
        return err


class QRouter:
    """Per-domain linear Q-routers over one shared featurizer. Thread-safe."""

    def __init__(
        self,
        domains: Mapping[str, Sequence[str]],
        *,
        spec: FeatureSpec | None = None,
        config: TrainConfig | None = None,
        online_lr: float = 0.1,
    ) -> None:
        if not domains:
            raise ValueError("a router needs at least one domain")
        self.spec = spec or FeatureSpec()
        self.config = config or TrainConfig()
        self.online_lr = online_lr
        self.featurize = Featurizer(self.spec)
        self._q: dict[str, _DomainQ] = {}
        for domain, tasks in domains.items():
            tasks = list(tasks)
            if not tasks or len(set(tasks)) != len(tasks):
                raise ValueError(f"domain {domain!r}: tasks must be non-empty and distinct")
            self._q[domain] = _DomainQ(
                tasks,
                np.zeros((self.spec.dim, len(tasks)), dtype=np.float32),
                np.full(len(tasks), self.config.optimistic_init, dtype=np.float32),
            )
        self._refuse = _RefuseHead(np.zeros(self.spec.dim, dtype=np.float32))
        #: scope score under which a route is refused; None: never calibrated, never refuses
        self.threshold: float | None = None
        self.threshold_choice: ThresholdChoice | None = None
        self.scope_data: ScopeData | None = None
        self.report: dict[str, Any] = {}
        self.path: Path | None = None
        self.feedback_count = 0
        self._lock = threading.RLock()
        self._routes: OrderedDict[tuple[str, str], Route] = OrderedDict()
        self._generation = 0  # bumped (under the lock) whenever weights change

    # -- queries ---------------------------------------------------------------------
    @property
    def domains(self) -> dict[str, list[str]]:
        return {d: list(q.tasks) for d, q in self._q.items()}

    def _domain(self, domain: str | None) -> tuple[str, _DomainQ]:
        if domain is None:
            if len(self._q) != 1:
                raise UnknownDomain(
                    "this router has several domains; name one",
                    domain="",
                    known=sorted(self._q),
                )
            domain = next(iter(self._q))
        q = self._q.get(domain)
        if q is None:
            raise UnknownDomain(
                f"the task router has no domain {domain!r}; known: {', '.join(sorted(self._q))}",
                domain=domain,
                known=sorted(self._q),
            )
        return domain, q

    def route(self, description: str, domain: str | None = None) -> Route:
        """The task with the highest Q for this description (argmax, no exploration)."""
        if not isinstance(description, str) or not description.strip():
            raise InvalidInput("description must be a non-empty string")
        domain, q = self._domain(domain)
        key = (domain, description)
        with self._lock:
            cached = self._routes.get(key)
            if cached is not None:
                self._routes.move_to_end(key)
                return Route(
                    domain,
                    cached.task,
                    dict(cached.q_values),
                    cached.scope,
                    cached.refused,
                    cached.threshold,
                )
        idx, val = self.featurize(description)
        with self._lock:
            values = q.q(idx, val)
            refuse_q = self._refuse.q(idx, val)
            threshold = self.threshold
            generation = self._generation
        best = int(np.argmax(values))
        scores = {t: float(v) for t, v in zip(q.tasks, values, strict=True)}
        scope = float(values[best]) - refuse_q
        refused = threshold is not None and scope < threshold
        with self._lock:
            if generation == self._generation:  # no update since: still this router's answer
                self._routes[key] = Route(
                    domain, q.tasks[best], dict(scores), scope, refused, threshold
                )
                if len(self._routes) > ROUTE_CACHE_SIZE:
                    self._routes.popitem(last=False)
        return Route(domain, q.tasks[best], scores, scope, refused, threshold)

    def _weights_changed(self) -> None:
        """Forget remembered routes; call with the lock held, after changing weights."""
        self._generation += 1
        self._routes.clear()

    # -- learning ----------------------------------------------------------------------
    def feedback(
        self, description: str, task: str, reward: float, domain: str | None = None
    ) -> float:
        """Learn from a routed request: ``reward`` (1 right, 0 wrong) for choosing ``task``.

        Returns the prediction error before the update. Call :meth:`save` to persist.
        """
        if not isinstance(description, str) or not description.strip():
            raise InvalidInput("description must be a non-empty string")
        if not isinstance(reward, int | float) or not 0.0 <= float(reward) <= 1.0:
            raise InvalidInput(f"reward must be a number in [0, 1], got {reward!r}")
        if domain is None:
            owners = [d for d, q in self._q.items() if task in q.index]
            if len(owners) == 1:
                domain = owners[0]
        domain, q = self._domain(domain)
        if task not in q.index:
            raise UnknownTask(
                f"domain {domain!r} has no task {task!r}; known: {', '.join(q.tasks)}",
                task=task,
                known=list(q.tasks),
            )
        idx, val = self.featurize(description)
        with self._lock:
            err = q.update(idx, val, q.index[task], float(reward), self.online_lr)
            if float(reward) >= 0.5:
                # a served task was right, so the description is in scope: it joins the
                # threshold's data (a wrong task says nothing about scope)
                self._refuse.update(idx, val, 0.0, self.online_lr)
                if self.scope_data is not None:
                    self.scope_data.add_in_scope(description, domain)
            self.feedback_count += 1
            self._weights_changed()
            if self.scope_data is not None:
                self._recalibrate()
        return err

    def feedback_out_of_scope(self, description: str) -> ThresholdChoice | None:
        """Learn that no served task fits ``description`` (a refusal the router should
        have made, or one it made rightly): every task's Q in every domain is regressed
        to 0 and the refuse head to 1, the description joins the threshold's data, and
        the threshold is chosen again. Returns the new choice (None when the router has
        no threshold data). Call :meth:`save` to persist.
        """
        if not isinstance(description, str) or not description.strip():
            raise InvalidInput("description must be a non-empty string")
        idx, val = self.featurize(description)
        with self._lock:
            self._learn_out_of_scope(idx, val, self.online_lr)
            if self.scope_data is not None:
                self.scope_data.add_out_of_scope(description)
            self.feedback_count += 1
            self._weights_changed()
            if self.scope_data is not None:
                self._recalibrate()
            return self.threshold_choice

    def _learn_out_of_scope(self, idx: Indices, val: Floats, lr: float) -> None:
        for q in self._q.values():
            for action in range(len(q.tasks)):
                q.update(idx, val, action, 0.0, lr)
        self._refuse.update(idx, val, 1.0, lr)

    # -- refusal threshold -----------------------------------------------------------
    def scope_score(self, description: str, domain: str | None = None) -> float:
        """``max_a Q(a) - Q(refuse)`` in ``domain``; with no domain, the highest over all
        domains (an unserved description must be out of every domain's scope)."""
        idx, val = self.featurize(description)
        with self._lock:
            return self._scope_score(idx, val, domain)

    def scope_parts(self, description: str, domain: str | None = None) -> tuple[float, float]:
        """The two Q-values a scope score is the difference of: the best task's (in
        ``domain``, or over all domains) and the refuse head's. For analyses that weigh
        them otherwise (tests/benchmarks/bench_refusal_cv.py)."""
        idx, val = self.featurize(description)
        with self._lock:
            return self._scope_parts(idx, val, domain)

    def _scope_parts(self, idx: Indices, val: Floats, domain: str | None) -> tuple[float, float]:
        qs = [self._domain(domain)[1]] if domain is not None else list(self._q.values())
        return max(float(np.max(q.q(idx, val))) for q in qs), self._refuse.q(idx, val)

    def _scope_score(self, idx: Indices, val: Floats, domain: str | None) -> float:
        best, refuse = self._scope_parts(idx, val, domain)
        return best - refuse

    def calibrate(
        self,
        in_scope: Sequence[Example],
        out_of_scope: Sequence[str],
        *,
        max_in_scope_refused: float | None = None,
    ) -> ThresholdChoice:
        """Choose the refusal threshold from served and unserved descriptions (use ones
        kept out of training) and keep them as the threshold's data.

        Raises:
            InvalidInput: either side is empty; UnknownDomain: an example's domain.
        """
        data = ScopeData()
        if max_in_scope_refused is not None:
            data.max_in_scope_refused = max_in_scope_refused
        for ex in in_scope:
            self._domain(ex.domain)
            data.add_in_scope(ex.description, ex.domain)
        for description in out_of_scope:
            data.add_out_of_scope(description)
        with self._lock:
            self.scope_data = data
            choice = self._recalibrate()
            self._weights_changed()
        return choice

    def _recalibrate(self) -> ThresholdChoice:
        """Score the threshold's data with the current weights and choose again; call
        with the lock held."""
        data = self.scope_data
        assert data is not None
        ins: list[float] = []
        for e in data.in_scope:
            idx, val = self.featurize(e.description)
            ins.append(self._scope_score(idx, val, e.domain))
        outs: list[float] = []
        for d in data.out_of_scope:
            idx, val = self.featurize(d)
            outs.append(self._scope_score(idx, val, None))
        choice = choose_threshold(ins, outs, max_in_scope_refused=data.max_in_scope_refused)
        self.threshold_choice = choice
        self.threshold = choice.threshold
        # cached routes carry the old threshold's verdict, and a route being worked out
        # right now read it: neither may be served from the cache
        self._generation += 1
        self._routes.clear()
        return choice

    def train(
        self,
        examples: Sequence[Example],
        *,
        validation: Sequence[Example] = (),
        out_of_scope: Sequence[str] = (),
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Epsilon-greedy bandit training: one action per example, reward 1 if correct.

        ``out_of_scope`` descriptions (of tasks nobody serves) are shuffled in with the
        examples; each regresses every task's Q to 0 and the refuse head to 1, while a
        served example regresses the refuse head to 0. Returns a report with the final
        training and validation accuracy.
        """
        cfg = self.config
        rng = random.Random(cfg.seed)
        if not examples:
            raise InvalidInput("no training examples")
        for ex in list(examples) + list(validation):
            self._check_example(ex)
        for description in out_of_scope:
            if not isinstance(description, str) or not description.strip():
                raise InvalidInput("out-of-scope descriptions must be non-empty strings")
        eps = cfg.eps_start
        feats = [self.featurize(ex.description) for ex in examples]
        oos_feats = [self.featurize(d) for d in out_of_scope]
        n = len(examples)
        order = list(range(n + len(oos_feats)))
        total = max(1, cfg.epochs * len(examples))
        step = 0
        history = []
        t0 = time.perf_counter()
        for epoch in range(1, cfg.epochs + 1):
            rng.shuffle(order)
            rewards = 0.0
            for i in order:
                if i >= n:
                    oos_idx, oos_val = oos_feats[i - n]
                    with self._lock:
                        self._learn_out_of_scope(oos_idx, oos_val, cfg.lr)
                        self._weights_changed()
                    continue
                ex = examples[i]
                q = self._q[ex.domain]
                idx, val = feats[i]
                eps = cfg.eps_start + (cfg.eps_end - cfg.eps_start) * min(1.0, step / total)
                with self._lock:
                    if out_of_scope:
                        self._refuse.update(idx, val, 0.0, cfg.lr)
                    if rng.random() < eps:
                        action = rng.randrange(len(q.tasks))
                    else:
                        values = q.q(idx, val)
                        top = np.flatnonzero(values == values.max())
                        action = int(top[rng.randrange(len(top))])
                    reward = 1.0 if q.tasks[action] == ex.task else 0.0
                    q.update(idx, val, action, reward, cfg.lr)
                    self._weights_changed()
                rewards += reward
                step += 1
            row = {
                "epoch": epoch,
                "epochs": cfg.epochs,
                "epsilon": round(eps, 4),
                "mean_reward": round(rewards / max(1, len(examples)), 4),
            }
            if validation and (epoch == cfg.epochs or epoch % 5 == 0):
                row["validation_accuracy"] = round(self.accuracy(validation), 4)
            history.append(row)
            if progress:
                progress(row)
        report = {
            "examples": len(examples),
            "out_of_scope_examples": len(out_of_scope),
            "train_accuracy": round(self.accuracy(examples), 4),
            "seconds": round(time.perf_counter() - t0, 3),
            "config": cfg.to_dict(),
        }
        if validation:
            report["validation_examples"] = len(validation)
            report["validation_accuracy"] = round(self.accuracy(validation), 4)
        if self.scope_data is not None:
            with self._lock:
                self._recalibrate()  # the weights moved under the old threshold
        self.report = report
        return report

    def _check_example(self, ex: Example) -> None:
        if ex.domain not in self._q:
            raise UnknownDomain(
                f"training example for unknown domain {ex.domain!r}: {ex.description[:60]!r}",
                domain=ex.domain,
                known=sorted(self._q),
            )
        if ex.task not in self._q[ex.domain].index:
            raise UnknownTask(
                f"training example for unknown task {ex.domain}/{ex.task}: {ex.description[:60]!r}",
                task=ex.task,
                known=self._q[ex.domain].tasks,
            )

    def accuracy(self, examples: Iterable[Example]) -> float:
        examples = list(examples)
        if not examples:
            return 0.0
        hits = sum(self.route(ex.description, ex.domain).task == ex.task for ex in examples)
        return hits / len(examples)

    # -- persistence -------------------------------------------------------------------
    def save(self, directory: str | os.PathLike[str] | None = None) -> Path:
        """Write ``meta.json``, ``weights.npz`` and ``scope.json`` (each tmp + rename)."""
        target = Path(directory) if directory is not None else self.path
        if target is None:
            raise ValueError("save() needs a directory for a router that was not loaded")
        target.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, NDArray[Any]] = {}
        with self._lock:
            for i, (_domain, q) in enumerate(self._q.items()):
                rows = np.flatnonzero(np.any(q.weights != 0, axis=1)).astype(np.int32)
                arrays[f"rows_{i}"] = rows
                arrays[f"values_{i}"] = q.weights[rows].astype(np.float16)
                arrays[f"bias_{i}"] = q.bias.copy()
            rows = np.flatnonzero(self._refuse.weights).astype(np.int32)
            arrays["refuse_rows"] = rows
            arrays["refuse_values"] = self._refuse.weights[rows].astype(np.float16)
            arrays["refuse_bias"] = np.asarray([self._refuse.bias], dtype=np.float32)
            choice = self.threshold_choice
            meta = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "features": self.spec.to_dict(),
                "domains": [{"name": d, "tasks": q.tasks} for d, q in self._q.items()],
                "online_lr": self.online_lr,
                "feedback_count": self.feedback_count,
                "train": self.config.to_dict(),
                "report": self.report,
                "refusal": {
                    "threshold": self.threshold,
                    "choice": choice.to_dict() if choice is not None else None,
                    "data": SCOPE_FILE if self.scope_data is not None else None,
                },
            }
            scope = self.scope_data.to_dict() if self.scope_data is not None else None
        tmp_w = target / (WEIGHTS_FILE + ".tmp.npz")
        # the keys are rows_*/values_*/bias_*/refuse_*, never numpy's own keyword
        # ``allow_pickle``, which is what the stub's overload fears a ``**`` dict might hold
        np.savez_compressed(tmp_w, **arrays)  # type: ignore[arg-type]
        tmp_m = target / (META_FILE + ".tmp")
        tmp_m.write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        if scope is not None:
            tmp_s = target / (SCOPE_FILE + ".tmp")
            tmp_s.write_text(json.dumps(scope, indent=1, ensure_ascii=False) + "\n", "utf-8")
            os.replace(tmp_s, target / SCOPE_FILE)
        os.replace(tmp_w, target / WEIGHTS_FILE)
        os.replace(tmp_m, target / META_FILE)
        self.path = target
        return target

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> QRouter:
        """Read a router directory written by :meth:`save`.

        Raises:
            ArtifactError: missing files or a format this code does not read.
        """
        d = Path(directory)
        try:
            meta = json.loads((d / META_FILE).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ArtifactError(
                f"task router not found: {d / META_FILE} (train one with `mole gating train`)"
            ) from None
        except (OSError, json.JSONDecodeError) as err:
            raise ArtifactError(f"{d / META_FILE}: unreadable ({err})") from err
        if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{d / META_FILE}: format {meta.get('format')!r} v{meta.get('format_version')}"
                f" is not {FORMAT!r} v{FORMAT_VERSION}; retrain it with `mole gating train`"
            )
        try:
            spec = FeatureSpec.from_dict(meta["features"])
            domains = {e["name"]: list(e["tasks"]) for e in meta["domains"]}
            cfg = TrainConfig(**meta.get("train", {}))
            router = cls(domains, spec=spec, config=cfg, online_lr=float(meta["online_lr"]))
            with np.load(d / WEIGHTS_FILE) as npz:
                for i, q in enumerate(router._q.values()):
                    rows, values = npz[f"rows_{i}"], npz[f"values_{i}"]
                    if values.shape != (len(rows), len(q.tasks)) or (
                        len(rows) and rows.max() >= spec.dim
                    ):
                        raise ArtifactError(f"{d / WEIGHTS_FILE}: arrays of domain {i} mismatch")
                    q.weights[rows] = values.astype(np.float32)
                    q.bias[:] = npz[f"bias_{i}"]
                rows, values = npz["refuse_rows"], npz["refuse_values"]
                if values.shape != rows.shape or (len(rows) and rows.max() >= spec.dim):
                    raise ArtifactError(f"{d / WEIGHTS_FILE}: refuse head arrays mismatch")
                router._refuse.weights[rows] = values.astype(np.float32)
                router._refuse.bias = float(npz["refuse_bias"][0])
            refusal = meta["refusal"]
            if refusal["threshold"] is not None:
                router.threshold = float(refusal["threshold"])
            if refusal.get("choice"):
                router.threshold_choice = ThresholdChoice(**refusal["choice"])
            if refusal.get("data"):
                raw = json.loads((d / str(refusal["data"])).read_text(encoding="utf-8"))
                router.scope_data = ScopeData.from_dict(raw)
        except ArtifactError:
            raise
        except (KeyError, TypeError, ValueError, OSError) as err:
            raise ArtifactError(f"{d}: not a valid task router ({err!r})") from err
        router.report = meta.get("report", {})
        router.feedback_count = int(meta.get("feedback_count", 0))
        router.path = d
        return router


def read_examples(path: str | os.PathLike[str]) -> list[Example]:
    """Read training examples; errors name the line (or item).

    Formats: JSON lines ``{description, domain, task}`` (ours), or the original MoLE's
    ``train_combined.json``, a JSON array of ``{prompt, domain, task, language?}``
    (``prompt`` is read as the description).
    """
    p = Path(path)
    try:
        content = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InvalidInput(f"data file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInput(f"{p}: unreadable ({err})") from None
    rows: list[tuple[str, object]] = []
    if content.lstrip().startswith("["):
        try:
            items = json.loads(content)
        except json.JSONDecodeError as err:
            raise InvalidInput(f"{p}: not valid JSON ({err.msg} at line {err.lineno})") from None
        rows = [(f"{p}[{i}]", item) for i, item in enumerate(items)]
    else:
        for n, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((f"{p}:{n}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise InvalidInput(f"{p}:{n}: not valid JSON ({err.msg})") from None
    out: list[Example] = []
    for where, obj in rows:
        if not isinstance(obj, dict):
            raise InvalidInput(f"{where}: expected an object with description, domain, task")
        if "description" not in obj and "prompt" in obj:
            obj = {**obj, "description": obj["prompt"]}
        for key in ("description", "domain", "task"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise InvalidInput(f"{where}: {key!r} must be a non-empty string")
        out.append(Example(obj["description"], obj["domain"], obj["task"]))
    if not out:
        raise InvalidInput(f"{p}: no examples")
    return out
