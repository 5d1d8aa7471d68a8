"""The original MoLE task router: fine-tuned XLM-R encoder + per-domain Q-network.

Reads the original artifacts from one directory:

* ``encoder.pth``: a state_dict whose keys are the encoder's, prefixed ``model.``;
* ``router_<domain>.pth``: ``net.0.*``, ``net.2.*`` of
  ``Sequential(Linear(H, H), ReLU, Linear(H, n_tasks))``, actions in registry order;
* optionally ``qrouter_config.json`` (``{"encoder_name": ...}``, informational).

The encoder's config and tokenizer come from a local directory (``encoder_dir``); nothing
is fetched from the hub. Both files are read with ``torch.load(weights_only=True)``.
Routing is argmax Q, like the original. :meth:`EncoderQRouter.feedback` updates the
Q-network head (not the encoder) with one MSE step toward the reward; :meth:`save` writes
the heads back in the same format.

It never refuses (every :class:`Route` it returns has ``refused=False``), and that is
deliberate, not an oversight:

* a refuse score has to be learned against descriptions of unserved tasks, and this router
  only *reads* the original project's artifacts (``encoder.pth``, ``router_<domain>.pth``,
  trained elsewhere with no out-of-scope data); nothing here trains the encoder router;
* the threshold must be chosen from data (served and unserved held-out descriptions), and
  no real XLM-R weights can be had in this project's environment (tests build a tiny random
  one), so neither a threshold nor its refusal rates could be measured: a threshold shipped
  unmeasured would refuse at random.

What it would take, for whoever has the trained artifacts: a ``Linear(H, 1)`` refuse head
fitted on the frozen CLS embeddings (ridge regression to 1 on
``configs/router_data/out_of_scope_train.jsonl`` and 0 on ``train.jsonl``), the scope
score ``max_a Q(a) - Q(refuse)`` as in :mod:`gating.router`, the threshold chosen by
:func:`gating.scope.choose_threshold` on the two calibration files and saved beside the
heads, and :meth:`feedback_out_of_scope` stepping that head toward 1.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mole.gating.errors import (
    ArtifactError,
    GatingError,
    InvalidInput,
    UnknownDomain,
    UnknownTask,
)
from mole.gating.router import Route
from mole.gating.xlmr import (
    cls_embeddings,
    find_encoder_dir,
    import_torch,
    load_encoder,
    load_tokenizer,
)

if TYPE_CHECKING:  # annotations only: torch is imported lazily
    from torch import Tensor
    from torch.nn import Module
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ENCODER_FILE = "encoder.pth"


def _router_file(domain: str) -> str:
    return f"router_{domain}.pth"


def _load_weights(path: Path) -> dict[str, Any]:
    """A state_dict read weights-only; its values are checked by the caller."""
    torch, _ = import_torch()
    if not path.is_file():
        raise ArtifactError(f"missing router artifact: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ArtifactError(f"{path}: not a weights-only state_dict ({err})") from err
    if not isinstance(state, dict):
        raise ArtifactError(f"{path}: expected a state_dict, got {type(state).__name__}")
    weights: dict[str, Any] = state
    return weights


class EncoderQRouter:
    """XLM-R CLS -> Linear(H,H)-ReLU-Linear(H,n_tasks) per domain; argmax Q."""

    def __init__(
        self,
        encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        heads: dict[str, Module],
        domains: dict[str, list[str]],
        *,
        max_len: int = 128,
        online_lr: float = 1e-3,
        directory: Path | None = None,
    ) -> None:
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.heads = heads
        self._domains = domains
        self.max_len = max_len
        self.online_lr = online_lr
        self.path = directory
        self.feedback_count = 0
        self._lock = threading.RLock()

    @property
    def domains(self) -> dict[str, list[str]]:
        return {d: list(t) for d, t in self._domains.items()}

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        domains: Mapping[str, Sequence[str]],
        *,
        encoder_dir: str | os.PathLike[str] | None = None,
        max_len: int = 128,
    ) -> EncoderQRouter:
        """Load ``encoder.pth`` and one ``router_<domain>.pth`` per domain of ``domains``.

        Args:
            domains: domain -> task names in registry order (the Q-network's actions).
        """
        torch, _ = import_torch()
        d = Path(directory)
        state = _load_weights(d / ENCODER_FILE)
        if not state or not all(k.startswith("model.") for k in state):
            bad = next((k for k in state if not k.startswith("model.")), None)
            raise ArtifactError(
                f"{d / ENCODER_FILE}: keys must be prefixed 'model.' (found {bad!r})"
            )
        enc_dir = find_encoder_dir(encoder_dir, d / "encoder", d)
        encoder = load_encoder(enc_dir, {k[len("model.") :]: v for k, v in state.items()})
        tokenizer = load_tokenizer(enc_dir)
        hidden = encoder.config.hidden_size
        heads: dict[str, Module] = {}
        for domain, tasks in domains.items():
            path = d / _router_file(domain)
            sd = _load_weights(path)
            need = ("net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias")
            missing = [k for k in need if k not in sd]
            if missing:
                raise ArtifactError(f"{path}: missing {missing}")
            n_out = sd["net.2.weight"].shape[0]
            if (
                tuple(sd["net.0.weight"].shape) != (hidden, hidden)
                or sd["net.2.weight"].shape[1] != hidden
            ):
                raise ArtifactError(
                    f"{path}: net.0.weight {tuple(sd['net.0.weight'].shape)} / net.2.weight "
                    f"{tuple(sd['net.2.weight'].shape)} do not fit hidden size {hidden}"
                )
            if n_out != len(tasks):
                raise ArtifactError(
                    f"{path}: {n_out} actions, but the registry's domain {domain!r} has "
                    f"{len(tasks)} tasks ({', '.join(tasks)}); retrain the router"
                )
            net = torch.nn.Sequential(
                torch.nn.Linear(hidden, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n_out)
            )
            net.load_state_dict({k[len("net.") :]: sd[k].float() for k in need})
            net.eval()
            heads[domain] = net
        return cls(
            encoder,
            tokenizer,
            heads,
            {k: list(v) for k, v in domains.items()},
            max_len=max_len,
            directory=d,
        )

    def _domain(self, domain: str | None) -> str:
        if domain is None and len(self.heads) == 1:
            return next(iter(self.heads))
        if domain is None or domain not in self.heads:
            raise UnknownDomain(
                f"the encoder router has no domain {domain!r}",
                domain=str(domain),
                known=sorted(self.heads),
            )
        return domain

    def q_values(self, descriptions: list[str], domain: str | None = None) -> tuple[str, Tensor]:
        """The domain routed in and its Q-values, [N, n_tasks]."""
        torch, _ = import_torch()
        name = self._domain(domain)
        h = cls_embeddings(self.encoder, self.tokenizer, descriptions, self.max_len)
        with self._lock, torch.inference_mode():
            q: Tensor = self.heads[name](h)
            return name, q

    def route_batch(self, descriptions: Sequence[str], domain: str | None = None) -> list[Route]:
        for desc in descriptions:
            if not isinstance(desc, str) or not desc.strip():
                raise InvalidInput("description must be a non-empty string")
        if not descriptions:
            return []
        domain, q = self.q_values(list(descriptions), domain)
        tasks = self._domains[domain]
        out = []
        for row in q.tolist():
            best = max(range(len(row)), key=row.__getitem__)
            out.append(Route(domain, tasks[best], dict(zip(tasks, row, strict=True))))
        return out

    def route(self, description: str, domain: str | None = None) -> Route:
        return self.route_batch([description], domain)[0]

    def feedback(
        self, description: str, task: str, reward: float, domain: str | None = None
    ) -> float:
        """One MSE step of Q(s, task) toward ``reward`` on the head (encoder frozen)."""
        torch, _ = import_torch()
        if not isinstance(description, str) or not description.strip():
            raise InvalidInput("description must be a non-empty string")
        domain = self._domain(domain)
        tasks = self._domains[domain]
        if task not in tasks:
            raise UnknownTask(f"domain {domain!r} has no task {task!r}", task=task, known=tasks)
        h = cls_embeddings(self.encoder, self.tokenizer, [description], self.max_len)
        with self._lock:
            net = self.heads[domain]
            with torch.enable_grad():
                q = net(h)[0, tasks.index(task)]
                loss = (q - float(reward)) ** 2
                net.zero_grad()
                loss.backward()
                with torch.no_grad():
                    for p in net.parameters():
                        if p.grad is not None:  # every head parameter gets one from the loss
                            p.sub_(self.online_lr * p.grad)  # in place, as -= was
            self.feedback_count += 1
        return float(reward) - float(q.detach())

    def feedback_out_of_scope(self, description: str) -> None:
        """The encoder router has no refuse head, so it cannot learn a refusal.

        Raises:
            GatingError: always; the hashed router (:mod:`gating.router`) learns refusals.
        """
        raise GatingError(
            "the encoder task router has no refuse head and never refuses; use the hashed "
            "router (`mole gating train`) to learn refusals"
        )

    def save(self, directory: str | os.PathLike[str] | None = None) -> Path:
        """Write ``router_<domain>.pth`` files (the encoder is unchanged by feedback)."""
        torch, _ = import_torch()
        target = Path(directory) if directory is not None else self.path
        if target is None:
            raise ValueError("save() needs a directory")
        target.mkdir(parents=True, exist_ok=True)
        with self._lock:
            for domain, net in self.heads.items():
                tmp = target / (_router_file(domain) + ".tmp")
                state = {f"net.{k}": v.detach().clone() for k, v in net.state_dict().items()}
                torch.save(state, tmp)
                os.replace(tmp, target / _router_file(domain))
        return target
