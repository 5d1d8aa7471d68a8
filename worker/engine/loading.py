"""Loading a base model, its tokenizer and every LoRA adapter the registry assigns to it.

Failures are raised as :class:`ModelLoadError` naming the missing model, file or adapter,
so ``mole worker`` fails fast with a message an operator can act on. An adapter directory
shared by several (task, language) experts is loaded once; every adapter name that shares
it resolves to that one loaded adapter.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mole.protocol.registry import BaseModelSpec, ExpertSpec, ExpertsRegistry
from mole.worker.engine.checkpoint import hf_cache_snapshot, inspect_checkpoint
from mole.worker.engine.errors import ModelLoadError
from mole.worker.engine.settings import EngineSettings
from mole.worker.engine.templates import load_template

if TYPE_CHECKING:
    import torch
    from transformers import BitsAndBytesConfig

log = logging.getLogger("mole.worker.engine")

TINY_MARKER = "mole_tiny.json"
_DTYPES = {
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float32": "float32",
    "fp32": "float32",
    "auto": "auto",
}


@dataclass(slots=True)
class LoadedModel:
    """A model ready for inference, and how it was loaded."""

    model: Any  # a PeftModel when adapters are loaded, else the transformers model
    tokenizer: Any
    source: str  # local directory or HF name it came from
    device: str
    dtype: str
    quantized: bool
    tiny: bool
    adapter_names: dict[str, str] = field(default_factory=dict)  # registry name -> loaded name
    adapter_dirs: dict[str, Path] = field(default_factory=dict)  # loaded name -> directory
    load_seconds: float = 0.0


def resolve_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"device {setting!r} asked for, but CUDA is not available")
    return setting


def resolve_model_source(spec: BaseModelSpec, settings: EngineSettings) -> tuple[str, bool]:
    """Where to load ``spec`` from: (path or HF name, is_local_directory).

    ``MOLE_MODELS_DIR/<key>`` first, then ``hf_name`` as a local directory, then the
    snapshot of ``hf_name`` in the local HF cache (``HF_HUB_CACHE``; never the network).
    """
    if settings.models_dir is not None:
        candidate = settings.models_dir / spec.key
        if candidate.is_dir():
            return str(candidate), True
    if Path(spec.hf_name).expanduser().is_dir():
        return str(Path(spec.hf_name).expanduser()), True
    snapshot = hf_cache_snapshot(spec.hf_name)
    if snapshot is not None:
        return str(snapshot), True
    return spec.hf_name, False


def _not_found(spec: BaseModelSpec, source: str) -> ModelLoadError:
    return ModelLoadError(
        f"base model {spec.key!r}: {source!r} is not a local directory and is not in the "
        f"local Hugging Face cache (nothing is downloaded at run time): put a copy in "
        f"MOLE_MODELS_DIR/{spec.key}/ or pre-download {source!r}"
    )


def preflight(
    base_model_key: str, registry: ExpertsRegistry, settings: EngineSettings
) -> tuple[BaseModelSpec, list[ExpertSpec]]:
    """Check everything about ``base_model_key`` that needs no torch: the key is in the
    registry and serves some task, the model's files are on this machine, every adapter
    directory exists, every prompt template file has an entry for this model. Returns the
    model's spec and its experts.

    Why a separate step: importing torch and transformers takes seconds (a minute on a busy
    machine), and a worker started with a wrong key or without its files should say so at
    once, before paying for them (``mole worker`` runs this first).

    Raises:
        ModelLoadError: naming the key, the model source or the adapter that is missing.
    """
    if base_model_key not in registry.base_models:
        raise ModelLoadError(
            f"base model {base_model_key!r} is not in the registry's base_models "
            f"({', '.join(registry.base_models)})"
        )
    experts = registry.experts_for_base_model(base_model_key)
    if not experts:
        raise ModelLoadError(f"no task of the registry uses base model {base_model_key!r}")
    spec = registry.base_models[base_model_key]
    source, local = resolve_model_source(spec, settings)
    if not local:
        raise _not_found(spec, source)
    check_adapters(experts, settings)
    for expert in experts:  # a missing or wrong template would fail after the model loads
        load_template(expert.template_path, base_model_key, spec.family)
    return spec, experts


def _torch_dtype(name: str, device: str, settings: EngineSettings) -> tuple[torch.dtype | str, str]:
    import torch

    key = _DTYPES.get(name.lower())
    if key is None:
        raise ModelLoadError(f"unknown dtype {name!r} (float16, bfloat16, float32 or auto)")
    if key == "auto":
        return "auto", "auto"
    if device == "cpu" and key == "float16" and not settings.keep_dtype:
        log.info(
            "dtype float16 configured but running on CPU: using float32 "
            "(MOLE_KEEP_DTYPE=1 keeps float16)"
        )
        key = "float32"
    dtype: torch.dtype = getattr(torch, key)
    return dtype, key


def _quantization(
    spec: BaseModelSpec, device: str, settings: EngineSettings, dtype: torch.dtype | str
) -> BitsAndBytesConfig | None:
    """A BitsAndBytesConfig for nf4 when configured (CUDA) or forced (CPU tests); else None."""
    want = settings.force_4bit or (spec.load_in_4bit and device.startswith("cuda"))
    if spec.load_in_4bit and not want:
        log.info(
            "load_in_4bit configured but no CUDA: loading unquantized "
            "(--load-in-4bit / MOLE_FORCE_4BIT=1 forces nf4 on CPU)"
        )
    if not want:
        return None
    try:
        import bitsandbytes  # noqa: F401 - imported only to fail early, with our message
        from transformers import BitsAndBytesConfig
    except ImportError as err:
        raise ModelLoadError(f"4-bit loading needs bitsandbytes: {err}") from err
    import torch

    compute = dtype if isinstance(dtype, torch.dtype) else torch.float32
    if device == "cpu" and compute == torch.float16:
        compute = torch.float32
    # transformers leaves BitsAndBytesConfig.__init__ unannotated
    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def _adapter_key(adapter_path: str, index: int) -> str:
    """A peft-safe adapter name for a directory (peft names may not contain dots)."""
    tail = adapter_path.strip("/").split("/")[-1]
    safe = "".join(c if c.isalnum() else "_" for c in tail)
    return f"a{index}_{safe}"


def load_base_model(
    spec: BaseModelSpec, experts: list[ExpertSpec], settings: EngineSettings
) -> LoadedModel:
    """Load the tokenizer, the model and every adapter of ``experts``; log each step.

    Raises:
        ModelLoadError: naming the model, file or adapter that could not be loaded.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # unannotated upstream
    t_start = time.perf_counter()
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    source, local = resolve_model_source(spec, settings)
    if not local:
        raise _not_found(spec, source)
    tiny = local and (Path(source) / TINY_MARKER).is_file()
    checkpoint = inspect_checkpoint(spec.key, Path(source)) if local else None
    prequantized = checkpoint is not None and checkpoint.prequantized_4bit
    log.info(
        "loading base model %s from %s%s on %s",
        spec.key,
        source,
        " (tiny random-weight model: predictions mean nothing)" if tiny else "",
        device,
    )

    check_adapters(experts, settings)  # fail before spending minutes on the base model
    t0 = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"base model {spec.key!r}: cannot load the tokenizer from {source}: {err}"
        ) from err
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    log.info("tokenizer loaded (%d tokens) in %.2f s", len(tokenizer), time.perf_counter() - t0)

    dtype, dtype_name = _torch_dtype(spec.dtype, device, settings)
    # a checkpoint saved in 4 bits carries its own quantization_config: load it as it is
    quant = None if prequantized else _quantization(spec, device, settings, dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": True, "low_cpu_mem_usage": True}
    if quant is not None:
        kwargs["quantization_config"] = quant
    if quant is not None or prequantized:
        kwargs["device_map"] = (
            "cpu"
            if device == "cpu"
            else (spec.device_map if spec.device_map and device == "cuda" else device)
        )
    t0 = time.perf_counter()
    try:
        # typed as a torch module: transformers annotates PreTrainedModel.to through a
        # decorator that drops ``self`` and leaves eval unannotated; torch.nn.Module's are exact
        model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"base model {spec.key!r}: cannot load {source!r}: {err}") from err
    quantized = quant is not None or prequantized
    if not quantized:
        model = model.to(device)
    model.eval()
    log.info(
        "base model loaded (%s%s, %.1f M parameters) in %.2f s",
        dtype_name,
        ", nf4 as saved" if prequantized else ", nf4" if quant is not None else "",
        sum(p.numel() for p in model.parameters()) / 1e6,
        time.perf_counter() - t0,
    )

    loaded = LoadedModel(model, tokenizer, source, device, dtype_name, quantized, tiny)
    _load_adapters(loaded, experts, settings)
    loaded.model.eval()
    loaded.load_seconds = time.perf_counter() - t_start
    return loaded


def _adapters_by_path(experts: list[ExpertSpec]) -> dict[str, list[str]]:
    by_path: dict[str, list[str]] = {}
    for expert in experts:
        by_path.setdefault(expert.adapter_path, []).append(expert.adapter_name)
    return by_path


def check_adapters(experts: list[ExpertSpec], settings: EngineSettings) -> None:
    """Raise ModelLoadError naming the first adapter whose directory is missing."""
    by_path = _adapters_by_path(experts)
    if not by_path:
        return
    adapters_dir = _adapters_dir(settings, by_path)
    for adapter_path, names in sorted(by_path.items()):
        config = adapters_dir / adapter_path / "adapter_config.json"
        if not config.is_file():
            raise ModelLoadError(
                f"adapter {adapter_path!r} (for {', '.join(sorted(set(names)))}): "
                f"{config} not found"
            )


def _adapters_dir(settings: EngineSettings, by_path: dict[str, list[str]]) -> Path:
    """The adapters directory, which must be set when ``by_path`` names adapters."""
    if settings.adapters_dir is None:
        raise ModelLoadError(
            f"adapters {', '.join(sorted(by_path))} are needed but no adapters directory is "
            "set (MOLE_ADAPTERS_DIR or --adapters-dir)"
        )
    return settings.adapters_dir


def _load_adapters(
    loaded: LoadedModel, experts: list[ExpertSpec], settings: EngineSettings
) -> None:
    from peft import PeftModel

    by_path = _adapters_by_path(experts)
    if not by_path:
        return
    check_adapters(experts, settings)
    adapters_dir = _adapters_dir(settings, by_path)
    model = loaded.model
    for index, (adapter_path, names) in enumerate(sorted(by_path.items())):
        directory = adapters_dir / adapter_path
        key = _adapter_key(adapter_path, index)
        t0 = time.perf_counter()
        try:
            if index == 0:
                model = PeftModel.from_pretrained(
                    model, str(directory), adapter_name=key, is_trainable=False
                )
            else:
                model.load_adapter(str(directory), adapter_name=key, is_trainable=False)
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise ModelLoadError(
                f"adapter {adapter_path!r}: cannot load {directory}: {err}"
            ) from err
        loaded.adapter_dirs[key] = directory
        for name in names:
            loaded.adapter_names[name] = key
        log.info(
            "adapter %s loaded once for %s in %.2f s",
            adapter_path,
            ", ".join(sorted(set(names))),
            time.perf_counter() - t0,
        )
    loaded.model = model
