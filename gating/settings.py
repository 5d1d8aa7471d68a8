"""Gating settings: ``configs/gating/settings.json``, then ``MOLE_GATING_*`` variables.

One small function reads the environment; everything else takes plain values, so tests
and the frontend can build a pipeline without touching either.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from mole.configs import config_path
from mole.gating.errors import ArtifactError

CONFIGS_GATING = config_path("gating")
DEFAULT_SETTINGS_PATH = CONFIGS_GATING / "settings.json"
DEFAULT_ROUTER_DIR = CONFIGS_GATING / "task_router"
DEFAULT_TRAIN_DATA = CONFIGS_GATING.parent / "router_data" / "train.jsonl"
ROUTER_DATA = CONFIGS_GATING.parent / "router_data"
#: written separately from train.jsonl and never used for training
DEFAULT_HELDOUT_DATA = (
    ROUTER_DATA / "heldout.jsonl",
    ROUTER_DATA / "heldout_fresh.jsonl",
    ROUTER_DATA / "heldout_short.jsonl",  # task names of 1-5 words ("Sentiment analysis")
)
#: descriptions of tasks nobody serves, in the 12 served languages, in three disjoint sets:
#: trained on (the refuse head), the threshold is chosen on (with heldout.jsonl), and
#: only measured on (with heldout_fresh.jsonl; see tests/gating/test_refusal.py)
DEFAULT_OUT_OF_SCOPE_TRAIN = ROUTER_DATA / "out_of_scope_train.jsonl"
DEFAULT_OUT_OF_SCOPE_CALIBRATION = ROUTER_DATA / "out_of_scope_calibration.jsonl"
DEFAULT_OUT_OF_SCOPE_HELDOUT = ROUTER_DATA / "out_of_scope_heldout.jsonl"
#: the served descriptions the threshold is chosen on (the other held-out file is kept
#: for measuring)
DEFAULT_IN_SCOPE_CALIBRATION = ROUTER_DATA / "heldout.jsonl"


@dataclass(slots=True)
class GatingSettings:
    language_floor: float = 0.3
    language_top_k: int = 10
    language_short_chars: int = 31
    language_description_weight: float = 0.5
    #: "lingua": a second opinion on short texts when the package is installed; "none"
    language_short_text_model: str = "lingua"
    language_model_path: Path | None = None
    router_path: Path = DEFAULT_ROUTER_DIR
    domain_model_dir: Path | None = None
    encoder_router_dir: Path | None = None
    encoder_dir: Path | None = None


def _resolve(value: str, base: Path) -> Path:
    """``value`` with ``~`` expanded; a relative path is taken relative to ``base``."""
    p = Path(os.path.expanduser(value))
    return p if p.is_absolute() else base / p


def _path(value: object, base: Path) -> Path | None:
    """A settings-file value as a path; None or "" (not set) gives None."""
    if value in (None, ""):
        return None
    return _resolve(str(value), base)


def load_settings(
    path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None
) -> GatingSettings:
    """Read the settings file (default configs/gating/settings.json) and apply ``env``.

    Raises:
        ArtifactError: the file is unreadable or a value has the wrong type.
    """
    p = Path(path) if path is not None else DEFAULT_SETTINGS_PATH
    environ: Mapping[str, str] = os.environ if env is None else env
    try:
        raw = json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}
    except (OSError, json.JSONDecodeError) as err:
        raise ArtifactError(f"gating settings {p}: unreadable ({err})") from err
    base = p.parent
    lang = raw.get("language", {})
    try:
        s = GatingSettings(
            language_floor=float(lang.get("floor", 0.3)),
            language_top_k=int(lang.get("top_k", 10)),
            language_short_chars=int(lang.get("short_chars", 31)),
            language_description_weight=float(lang.get("description_weight", 0.5)),
            language_short_text_model=str(lang.get("short_text_model", "lingua")),
            language_model_path=_path(lang.get("model_path"), base),
            router_path=_path(raw.get("router", {}).get("path"), base) or DEFAULT_ROUTER_DIR,
            domain_model_dir=_path(raw.get("domain", {}).get("model_dir"), base),
            encoder_router_dir=_path(raw.get("encoder_router", {}).get("dir"), base),
            encoder_dir=_path(raw.get("encoder_dir"), base),
        )
        cwd = Path.cwd()
        if environ.get("MOLE_GATING_LANGUAGE_FLOOR"):
            s.language_floor = float(environ["MOLE_GATING_LANGUAGE_FLOOR"])
        if environ.get("MOLE_GATING_ROUTER"):
            s.router_path = _resolve(environ["MOLE_GATING_ROUTER"], cwd)
        if environ.get("MOLE_GATING_DOMAIN_DIR"):
            s.domain_model_dir = _resolve(environ["MOLE_GATING_DOMAIN_DIR"], cwd)
        if environ.get("MOLE_GATING_ENCODER_ROUTER_DIR"):
            s.encoder_router_dir = _resolve(environ["MOLE_GATING_ENCODER_ROUTER_DIR"], cwd)
        if environ.get("MOLE_GATING_ENCODER_DIR"):
            s.encoder_dir = _resolve(environ["MOLE_GATING_ENCODER_DIR"], cwd)
    except (TypeError, ValueError, AttributeError) as err:
        raise ArtifactError(f"gating settings {p}: bad value ({err})") from err
    if not 0.0 <= s.language_floor < 1.0:
        raise ArtifactError(f"gating settings: language floor {s.language_floor} not in [0, 1)")
    if s.language_short_text_model not in ("lingua", "none"):
        raise ArtifactError(
            f"gating settings: language short_text_model {s.language_short_text_model!r} "
            "must be 'lingua' or 'none'"
        )
    if not 0.0 <= s.language_description_weight < 1.0:
        raise ArtifactError(
            f"gating settings: language description_weight {s.language_description_weight} "
            "not in [0, 1)"
        )
    return s
