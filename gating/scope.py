"""Whether a description asks for a served task at all: the refusal threshold and its data.

The task router (:mod:`gating.router`) gives every description a *scope score*: the best
task's Q-value minus the Q-value of refusing (a head regressed to 1 on descriptions of
unserved tasks and to 0 on served ones). A description scoring under the threshold is
refused rather than sent to the least-bad expert.

Why the threshold comes from data rather than a constant: the scores' scale depends on
the training set and the features, and the trade-off (served requests refused against
unserved ones answered) is a product decision the data must show. :func:`choose_threshold`
takes the scores of held-out served descriptions and of descriptions of unserved tasks and
picks the threshold that refuses the most unserved ones while refusing at most
``max_in_scope_refused`` of the served ones. The descriptions themselves are kept with the
router (:class:`ScopeData`), so feedback that marks a description out of scope can add it
and choose again.

Data files of unserved tasks are JSON lines ``{"description", "language"?,
"unserved_task"?}``; see :func:`read_out_of_scope`.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mole.gating.errors import InvalidInput

#: the default ceiling on served descriptions refused when choosing a threshold: half the
#: goal (2%), since a threshold that spends the whole budget on the calibration set
#: refused 10% of short served task names held out from it (0.01: 2%)
MAX_IN_SCOPE_REFUSED = 0.01
#: feedback appends descriptions; the oldest are dropped past this many per side
MAX_SCOPE_EXAMPLES = 5000


@dataclass(frozen=True, slots=True)
class OutOfScope:
    """A description of a task the service does not serve ("Translate this into French")."""

    description: str
    language: str | None = None
    unserved_task: str | None = None


@dataclass(frozen=True, slots=True)
class InScope:
    """A served description with the domain whose router scores it."""

    description: str
    domain: str


@dataclass(frozen=True, slots=True)
class ThresholdChoice:
    """A threshold and what it does on the data it was chosen from."""

    threshold: float
    in_scope_refused: float  # share of served descriptions scoring under the threshold
    out_of_scope_refused: float  # share of unserved descriptions scoring under it
    n_in_scope: int
    n_out_of_scope: int
    max_in_scope_refused: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": round(self.threshold, 6),
            "in_scope_refused": round(self.in_scope_refused, 4),
            "out_of_scope_refused": round(self.out_of_scope_refused, 4),
            "n_in_scope": self.n_in_scope,
            "n_out_of_scope": self.n_out_of_scope,
            "max_in_scope_refused": self.max_in_scope_refused,
        }


@dataclass(slots=True)
class ScopeData:
    """The descriptions a threshold is chosen from; saved with the router."""

    in_scope: list[InScope] = field(default_factory=list)
    out_of_scope: list[str] = field(default_factory=list)
    max_in_scope_refused: float = MAX_IN_SCOPE_REFUSED

    def add_in_scope(self, description: str, domain: str) -> None:
        self.in_scope.append(InScope(description, domain))
        del self.in_scope[:-MAX_SCOPE_EXAMPLES]

    def add_out_of_scope(self, description: str) -> None:
        self.out_of_scope.append(description)
        del self.out_of_scope[:-MAX_SCOPE_EXAMPLES]

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_in_scope_refused": self.max_in_scope_refused,
            "in_scope": [{"description": e.description, "domain": e.domain} for e in self.in_scope],
            "out_of_scope": [{"description": d} for d in self.out_of_scope],
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ScopeData:
        """Raises KeyError/TypeError/ValueError on a malformed dict (the loader wraps them)."""
        data = cls(max_in_scope_refused=float(raw["max_in_scope_refused"]))
        for e in raw["in_scope"]:
            data.in_scope.append(InScope(str(e["description"]), str(e["domain"])))
        for e in raw["out_of_scope"]:
            data.out_of_scope.append(str(e["description"]))
        return data


def choose_threshold(
    in_scope_scores: Sequence[float],
    out_of_scope_scores: Sequence[float],
    *,
    max_in_scope_refused: float = MAX_IN_SCOPE_REFUSED,
) -> ThresholdChoice:
    """The threshold (refuse when score < threshold) that best separates the two sets.

    Candidates are the midpoints between consecutive distinct scores (and one under the
    lowest), so a threshold never sits on a known description's score. Among those that
    refuse at most ``max_in_scope_refused`` of the served descriptions, the one refusing
    the largest share of unserved minus served wins; ties go to the widest gap between
    neighbouring scores (the most margin for descriptions not seen yet).

    Raises:
        InvalidInput: either side is empty, or the ceiling is not in [0, 1).
    """
    if not in_scope_scores or not out_of_scope_scores:
        raise InvalidInput(
            "choosing a refusal threshold needs scores of served descriptions and of "
            f"unserved ones (got {len(in_scope_scores)} and {len(out_of_scope_scores)})"
        )
    if not 0.0 <= max_in_scope_refused < 1.0:
        raise InvalidInput(f"max_in_scope_refused must be in [0, 1), got {max_in_scope_refused}")
    ins = sorted(float(s) for s in in_scope_scores)
    outs = sorted(float(s) for s in out_of_scope_scores)
    points = sorted(set(ins) | set(outs))
    gaps = [(points[0] - 1.0, 1.0)]  # under everything: refuses nothing
    gaps += [((a + b) / 2, b - a) for a, b in itertools.pairwise(points)]
    gaps.append((points[-1] + 1.0, 1.0))  # over everything: refuses everything
    best: tuple[float, float, float] | None = None  # (gain, width, threshold)
    for threshold, width in gaps:
        fin = _share_under(ins, threshold)
        if fin > max_in_scope_refused:
            continue
        gain = _share_under(outs, threshold) - fin
        if best is None or (gain, width) > best[:2]:
            best = (gain, width, threshold)
    assert best is not None  # the lowest candidate refuses nothing, so it is feasible
    threshold = best[2]
    return ThresholdChoice(
        threshold=threshold,
        in_scope_refused=_share_under(ins, threshold),
        out_of_scope_refused=_share_under(outs, threshold),
        n_in_scope=len(ins),
        n_out_of_scope=len(outs),
        max_in_scope_refused=max_in_scope_refused,
    )


def _share_under(sorted_scores: list[float], threshold: float) -> float:
    return bisect.bisect_left(sorted_scores, threshold) / len(sorted_scores)


def read_out_of_scope(path: str | os.PathLike[str]) -> list[OutOfScope]:
    """Read descriptions of unserved tasks; errors name the line.

    Raises:
        InvalidInput: the file is missing, unreadable, empty, or a line is malformed.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InvalidInput(f"data file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidInput(f"{p}: unreadable ({err})") from None
    out: list[OutOfScope] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise InvalidInput(f"{p}:{n}: not valid JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise InvalidInput(f"{p}:{n}: expected an object with a description")
        desc = obj.get("description")
        if not isinstance(desc, str) or not desc.strip():
            raise InvalidInput(f"{p}:{n}: 'description' must be a non-empty string")
        lang, kind = obj.get("language"), obj.get("unserved_task")
        out.append(
            OutOfScope(
                desc,
                lang if isinstance(lang, str) else None,
                kind if isinstance(kind, str) else None,
            )
        )
    if not out:
        raise InvalidInput(f"{p}: no descriptions")
    return out
