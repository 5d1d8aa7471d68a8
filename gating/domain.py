"""Domain classification: which of the registry's domains a request belongs to.

With one domain (the shipped registry has only ``finance``) there is nothing to learn and
no model is loaded. With several, an XLM-RoBERTa classifier reads the original MoLE
artifact ``domain_cls.pt`` (format_version 2)::

    {format_version: 2, model_name, domains, classifier: {"1.weight", "1.bias"},
     prototypes_t: [C x H], max_len, alpha_proto, proto_temp, is_ready}

    p = (1 - alpha) * softmax(head(CLS)) + alpha * softmax(proto_temp * cos(CLS, prototypes))

The file is read with ``torch.load(weights_only=True)`` only (never unpickling code), and
:func:`train_domain_classifier` writes the same format. torch/transformers are imported
lazily, inside the XLM-R path.

A predicted domain that has no task in the registry raises :class:`DomainWithoutTasks`
(the original crashed with a KeyError there).
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mole.gating.errors import ArtifactError, DomainWithoutTasks, InvalidInput
from mole.gating.xlmr import (
    cls_embeddings,
    find_encoder_dir,
    import_torch,
    load_encoder,
    load_tokenizer,
)

if TYPE_CHECKING:  # annotations only: torch is imported lazily
    from torch import Tensor
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ARTIFACT_FILE = "domain_cls.pt"
FORMAT_VERSION = 2


@dataclass(frozen=True, slots=True)
class DomainPrediction:
    domain: str
    confidence: float
    probabilities: dict[str, float]


def routing_prompt(description: str, text: str) -> str:
    """What the domain classifier reads, as in the original: description, blank line, text."""
    return f"{description}\n\n{text}"


class SingleDomain:
    """The registry has one domain: every request belongs to it, no model needed."""

    def __init__(self, domain: str) -> None:
        self.domain = domain
        self.domains = [domain]

    def predict(self, description: str, text: str) -> DomainPrediction:
        return DomainPrediction(self.domain, 1.0, {self.domain: 1.0})

    def predict_batch(self, pairs: Sequence[tuple[str, str]]) -> list[DomainPrediction]:
        return [self.predict(d, t) for d, t in pairs]


class XLMRDomainClassifier:
    """CLS of a frozen XLM-R encoder -> linear head blended with class prototypes."""

    def __init__(
        self,
        *,
        encoder: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        artifact: dict[str, Any],
        source: Path,
    ) -> None:
        torch, _ = import_torch()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.source = source
        self.domains: list[str] = list(artifact["domains"])
        self.model_name = str(artifact.get("model_name", ""))
        self.max_len = int(artifact["max_len"])
        self.alpha = float(artifact["alpha_proto"])
        self.proto_temp = float(artifact["proto_temp"])
        self.is_ready = bool(artifact.get("is_ready", True))
        self._weight: Tensor = artifact["classifier"]["1.weight"].float()
        self._bias: Tensor = artifact["classifier"]["1.bias"].float()
        protos = artifact["prototypes_t"].float()
        self._protos: Tensor = torch.nn.functional.normalize(protos, dim=-1)

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        *,
        encoder_dir: str | os.PathLike[str] | None = None,
    ) -> XLMRDomainClassifier:
        """Load ``directory/domain_cls.pt`` and a local encoder.

        The encoder is looked for in ``encoder_dir``, ``directory/encoder``, ``directory``
        and the artifact's ``model_name`` when that is a local path — never the hub.
        """
        torch, _ = import_torch()
        d = Path(directory)
        path = d / ARTIFACT_FILE if d.is_dir() else d
        if not path.is_file():
            raise ArtifactError(f"domain classifier not found: {path}")
        try:
            artifact = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # UnpicklingError for anything but plain tensors/containers
            raise ArtifactError(
                f"{path}: not a weights-only domain_cls.pt ({type(err).__name__}: {err})"
            ) from err
        base = path.parent
        encoder_path = find_encoder_dir(
            encoder_dir,
            base / "encoder",
            base,
            artifact.get("model_name") if isinstance(artifact, dict) else None,
        )
        encoder = load_encoder(encoder_path)
        _validate(artifact, path, encoder.config.hidden_size)
        tokenizer = load_tokenizer(encoder_path)
        return cls(encoder=encoder, tokenizer=tokenizer, artifact=artifact, source=path)

    def probabilities(self, texts: list[str]) -> Tensor:
        """[N, C] blended probabilities."""
        torch, _ = import_torch()
        h = cls_embeddings(self.encoder, self.tokenizer, texts, self.max_len)
        head = torch.softmax(h @ self._weight.T + self._bias, dim=-1)
        cos = torch.nn.functional.normalize(h, dim=-1) @ self._protos.T
        proto = torch.softmax(self.proto_temp * cos, dim=-1)
        blended: Tensor = (1.0 - self.alpha) * head + self.alpha * proto
        return blended

    def predict_batch(self, pairs: Sequence[tuple[str, str]]) -> list[DomainPrediction]:
        if not pairs:
            return []
        probs = self.probabilities([routing_prompt(d, t) for d, t in pairs]).tolist()
        out = []
        for row in probs:
            best = max(range(len(row)), key=row.__getitem__)
            out.append(
                DomainPrediction(
                    self.domains[best], row[best], dict(zip(self.domains, row, strict=True))
                )
            )
        return out

    def predict(self, description: str, text: str) -> DomainPrediction:
        return self.predict_batch([(description, text)])[0]


def _validate(artifact: object, path: Path, hidden: int) -> None:
    """Refuse an artifact that is not format 2 or does not fit the encoder, naming the key."""
    torch, _ = import_torch()
    if not isinstance(artifact, dict):
        raise ArtifactError(f"{path}: expected a dict, got {type(artifact).__name__}")
    if artifact.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: format_version {artifact.get('format_version')!r}, expected {FORMAT_VERSION}"
        )
    for key in ("domains", "classifier", "prototypes_t", "max_len", "alpha_proto", "proto_temp"):
        if key not in artifact:
            raise ArtifactError(f"{path}: missing key {key!r}")
    domains = artifact["domains"]
    if (
        not isinstance(domains, list | tuple)
        or not domains
        or not all(isinstance(x, str) for x in domains)
    ):
        raise ArtifactError(f"{path}: 'domains' must be a non-empty list of names")
    c = len(domains)
    protos = artifact["prototypes_t"]
    if isinstance(protos, torch.Tensor) and tuple(protos.shape) == (hidden, c) and c != hidden:
        artifact["prototypes_t"] = protos.T.contiguous()  # tolerate a transposed [H x C] save
    head = artifact["classifier"]
    if not isinstance(head, dict) or "1.weight" not in head or "1.bias" not in head:
        raise ArtifactError(f"{path}: 'classifier' must hold '1.weight' and '1.bias'")
    expect = {
        "classifier['1.weight']": (head["1.weight"], (c, hidden)),
        "classifier['1.bias']": (head["1.bias"], (c,)),
        "prototypes_t": (artifact["prototypes_t"], (c, hidden)),
    }
    for name, (tensor, shape) in expect.items():
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != shape:
            got = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor)
            raise ArtifactError(f"{path}: {name} has shape {got}, expected {shape}")
    if not 0.0 <= float(artifact["alpha_proto"]) <= 1.0:
        raise ArtifactError(f"{path}: alpha_proto must be in [0, 1]")
    if artifact.get("is_ready") is False:
        raise ArtifactError(f"{path}: is_ready is false (training did not finish)")


def check_domain(prediction: DomainPrediction, served_domains: list[str]) -> None:
    """Raise DomainWithoutTasks when the classifier's domain has no task in the registry."""
    if prediction.domain not in served_domains:
        raise DomainWithoutTasks(
            f"the request looks like domain {prediction.domain!r} "
            f"(p={prediction.confidence:.2f}), which has no task in the registry; "
            f"served domains: {', '.join(served_domains)}",
            domain=prediction.domain,
            served_domains=list(served_domains),
        )


def train_domain_classifier(
    examples: Sequence[tuple[str, str]],
    *,
    encoder_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    model_name: str | None = None,
    epochs: int = 30,
    lr: float = 1e-2,
    max_len: int = 128,
    alpha_proto: float = 0.3,
    proto_temp: float = 10.0,
    validation_split: float = 0.1,
    seed: int = 13,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train the head and prototypes on a frozen encoder and write ``domain_cls.pt`` (v2).

    Args:
        examples: (text, domain) pairs; the text is what the classifier will read
            (description, blank line, request text).

    As in the original: frozen encoder, CLS features, AdamW, cross-entropy with
    inverse-frequency class weights, gradient clipping at 1, per-class mean CLS as
    prototypes. The CLS features are computed once (the encoder is frozen).
    """
    torch, _ = import_torch()
    if not examples:
        raise InvalidInput("no training examples for the domain classifier")
    domains = sorted({d for _, d in examples})
    if len(domains) < 2:
        raise InvalidInput(f"a domain classifier needs at least two domains, got {domains}")
    index = {d: i for i, d in enumerate(domains)}
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    n_val = int(len(order) * validation_split) if len(order) >= 20 else 0
    val_idx, train_idx = order[:n_val], order[n_val:]

    encoder_path = find_encoder_dir(encoder_dir)
    encoder = load_encoder(encoder_path)
    tokenizer = load_tokenizer(encoder_path)
    t0 = time.perf_counter()
    feats = cls_embeddings(encoder, tokenizer, [t for t, _ in examples], max_len)
    labels = torch.tensor([index[d] for _, d in examples])
    hidden = feats.shape[1]
    torch.manual_seed(seed)
    head = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(hidden, len(domains)))
    counts = torch.bincount(labels[train_idx], minlength=len(domains)).float().clamp(min=1)
    weights = counts.sum() / (len(domains) * counts)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    opt = torch.optim.AdamW(head.parameters(), lr=lr)
    xt, yt = feats[train_idx], labels[train_idx]

    def prototypes(idx: list[int]) -> Tensor:
        protos: Tensor = torch.zeros(len(domains), hidden)
        for c in range(len(domains)):
            rows = feats[[i for i in idx if labels[i] == c]]
            protos[c] = rows.mean(0) if len(rows) else 0.0
        return protos

    def accuracy(idx: list[int], protos: Tensor) -> float:
        if not idx:
            return math.nan
        head.eval()
        with torch.no_grad():
            h = feats[idx]
            p_head = torch.softmax(head(h), -1)
            cos = (
                torch.nn.functional.normalize(h, dim=-1)
                @ torch.nn.functional.normalize(protos, dim=-1).T
            )
            p = (1 - alpha_proto) * p_head + alpha_proto * torch.softmax(proto_temp * cos, -1)
        head.train()
        return float((p.argmax(-1) == labels[idx]).float().mean())

    protos = prototypes(train_idx)
    # (validation accuracy, head weights, prototypes) of the best epoch so far
    best: tuple[float, dict[str, Tensor] | None, Tensor | None] = (-1.0, None, None)
    for epoch in range(1, epochs + 1):
        head.train()
        perm = torch.randperm(len(train_idx))
        total = 0.0
        for i in range(0, len(perm), 32):
            b = perm[i : i + 32]
            opt.zero_grad()
            loss = loss_fn(head(xt[b]), yt[b])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            opt.step()
            total += float(loss.detach()) * len(b)
        score = accuracy(val_idx or train_idx, protos)
        if score > best[0]:  # prototypes are refreshed when validation improves
            protos = prototypes(train_idx)
            best = (score, {k: v.clone() for k, v in head.state_dict().items()}, protos)
        if progress:
            progress(
                {
                    "epoch": epoch,
                    "epochs": epochs,
                    "loss": round(total / len(perm), 4),
                    "validation_accuracy": round(score, 4),
                }
            )
    _, state, best_protos = best
    if state is None or best_protos is None:
        raise InvalidInput(f"the domain classifier needs at least one epoch, got {epochs}")
    protos = best_protos
    artifact = {
        "format_version": FORMAT_VERSION,
        "model_name": model_name or str(encoder_path),
        "domains": domains,
        "classifier": {"1.weight": state["1.weight"], "1.bias": state["1.bias"]},
        "prototypes_t": protos,
        "max_len": max_len,
        "alpha_proto": alpha_proto,
        "proto_temp": proto_temp,
        "is_ready": True,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (ARTIFACT_FILE + ".tmp")
    torch.save(artifact, tmp)
    os.replace(tmp, out / ARTIFACT_FILE)
    head.load_state_dict(state)
    return {
        "domains": domains,
        "examples": len(examples),
        "validation_examples": len(val_idx),
        "validation_accuracy": round(accuracy(val_idx, protos), 4) if val_idx else None,
        "train_accuracy": round(accuracy(train_idx, protos), 4),
        "seconds": round(time.perf_counter() - t0, 3),
        "path": str(out / ARTIFACT_FILE),
    }
