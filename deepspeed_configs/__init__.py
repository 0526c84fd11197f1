"""DeepSpeed configs for NEAT training, shipped as package data, and the checks run on any config before training.

Pass one to [`NeatTrainingArguments`] (or `neat-train`) as `deepspeed="zero3"` (a bundled name) or as a path:

- `zero2.json`: ZeRO stage 2. Optimizer states and gradients are partitioned across ranks; every rank keeps the full
  (frozen) base weights. The simplest multi-GPU setup when the base model fits on one GPU.
- `zero3.json`: ZeRO stage 3. The base weights are partitioned too, so a model larger than one GPU trains. NEAT
  gathers each layer's W0 once per forward (it needs the full W0 to compute H = σ(W0ᵀAᵀ)), and the adapter is saved
  as full tensors by gathering the adapter weights only, never the base weights
  (`stage3_gather_16bit_weights_on_model_save` stays `false`).
- `zero3_offload.json`: ZeRO-3 with parameters and optimizer states offloaded to CPU memory, for the largest models
  on few GPUs (slower). The Trainer's AdamW is swapped for DeepSpeed's CPU Adam by `accelerate`, keeping NEAT's
  learning-rate groups.

None of them has an `"optimizer"` or `"scheduler"` section: the Trainer builds both, which is what keeps the separate
NEAT/head learning rates ([`NeatTrainingArguments.neat_learning_rate`]) and every `--lr_scheduler_type` working. Values
set to `"auto"` (batch sizes, gradient accumulation and clipping, bf16/fp16, bucket sizes) are filled in from the
training arguments by `transformers`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from neat_hf.errors import DeepSpeedConfigError

#: Folder holding the bundled JSON files.
CONFIG_DIR = Path(__file__).resolve().parent
#: Names accepted by [`get_deepspeed_config_path`] (file names without `.json`).
BUNDLED_CONFIGS = ("zero2", "zero3", "zero3_offload")

_OFFLOAD_DEVICES = ("none", "cpu", "nvme")


def get_deepspeed_config_path(name: str) -> str:
    """Path of a bundled config, e.g. `get_deepspeed_config_path("zero3")` (a trailing `.json` is accepted).

    Raises:
        DeepSpeedConfigError: `name` is not a bundled config; the message lists the bundled names.
    """
    stem = name[: -len(".json")] if name.endswith(".json") else name
    if stem not in BUNDLED_CONFIGS:
        raise DeepSpeedConfigError(f"No bundled DeepSpeed config named {name!r}. Bundled configs: {list(BUNDLED_CONFIGS)}.")
    return str(CONFIG_DIR / f"{stem}.json")


def resolve_deepspeed_config(value: str | os.PathLike | dict) -> str | dict:
    """Turn a `deepspeed=` value into what `TrainingArguments` accepts: an existing file path or a dict.

    Accepts a dict, an inline JSON object string (`'{"zero_optimization": ...}'`), a path to a JSON file, or the name
    of a bundled config (`"zero2"`, `"zero3"`, `"zero3_offload"`). A file that exists wins over a bundled name.
    The result is checked with [`validate_deepspeed_config`].

    Raises:
        DeepSpeedConfigError: the file does not exist, is not a JSON object, or fails validation.
    """
    if isinstance(value, dict):
        validate_deepspeed_config(value, source="the deepspeed dict")
        return value
    text = os.fspath(value)
    if text.lstrip().startswith("{"):
        config = _parse_json(text, source="the inline deepspeed JSON")
        validate_deepspeed_config(config, source="the inline deepspeed JSON")
        return config
    path = os.path.expanduser(text)
    if not os.path.isfile(path):
        stem = text[: -len(".json")] if text.endswith(".json") else text
        if stem in BUNDLED_CONFIGS:
            path = get_deepspeed_config_path(stem)
        else:
            raise DeepSpeedConfigError(
                f"DeepSpeed config {text!r} not found: pass the path of a JSON file, or one of the bundled configs "
                f"{list(BUNDLED_CONFIGS)}."
            )
    load_deepspeed_config(path)  # validates
    return path


def load_deepspeed_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a DeepSpeed JSON config file.

    Raises:
        DeepSpeedConfigError: the file cannot be read, is not a JSON object, or fails [`validate_deepspeed_config`].
    """
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as err:
        raise DeepSpeedConfigError(f"Cannot read DeepSpeed config {os.fspath(path)!r}: {err}") from err
    config = _parse_json(text, source=repr(os.fspath(path)))
    validate_deepspeed_config(config, source=repr(os.fspath(path)))
    return config


def _parse_json(text: str, *, source: str) -> dict[str, Any]:
    try:
        config = json.loads(text)
    except json.JSONDecodeError as err:
        raise DeepSpeedConfigError(
            f"DeepSpeed config {source} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}."
        ) from err
    if not isinstance(config, dict):
        raise DeepSpeedConfigError(f"DeepSpeed config {source} must be a JSON object, got {type(config).__name__}.")
    return config


def validate_deepspeed_config(config: dict[str, Any], *, source: str = "DeepSpeed config") -> None:
    """Check the parts of a DeepSpeed config that would otherwise fail only once training starts.

    Checks `zero_optimization.stage` (0-3), the offload devices, and that `"auto"` is the only string used where
    DeepSpeed expects a number.

    Raises:
        DeepSpeedConfigError: naming the key, the value found and what is accepted.
    """
    zero = config.get("zero_optimization", {})
    if not isinstance(zero, dict):
        raise DeepSpeedConfigError(f"{source}: zero_optimization must be an object, got {zero!r}.")
    stage = zero.get("stage", 0)
    if isinstance(stage, bool) or stage not in (0, 1, 2, 3):
        raise DeepSpeedConfigError(f"{source}: zero_optimization.stage must be 0, 1, 2 or 3, got {stage!r}.")
    for key in ("offload_optimizer", "offload_param"):
        offload = zero.get(key)
        if offload is None:
            continue
        device = offload.get("device", "none") if isinstance(offload, dict) else offload
        if device not in _OFFLOAD_DEVICES:
            raise DeepSpeedConfigError(
                f"{source}: zero_optimization.{key}.device must be one of {list(_OFFLOAD_DEVICES)}, got {device!r}."
            )
    if zero.get("offload_param") and stage != 3:
        raise DeepSpeedConfigError(f"{source}: zero_optimization.offload_param needs stage 3, but stage is {stage}.")
    numeric = {
        "train_batch_size": config.get("train_batch_size"),
        "train_micro_batch_size_per_gpu": config.get("train_micro_batch_size_per_gpu"),
        "gradient_accumulation_steps": config.get("gradient_accumulation_steps"),
        "gradient_clipping": config.get("gradient_clipping"),
        **{f"zero_optimization.{k}": v for k, v in zero.items() if k.endswith(("_size", "_threshold", "_parameters", "_distance"))},
    }
    for key, value in numeric.items():
        if isinstance(value, str) and value != "auto":
            raise DeepSpeedConfigError(f"{source}: {key} must be a number or \"auto\", got {value!r}.")


def has_optimizer_section(config: str | os.PathLike | dict) -> bool:
    """Whether a (resolved) DeepSpeed config defines its own optimizer, which replaces the Trainer's parameter groups."""
    data = config if isinstance(config, dict) else load_deepspeed_config(config)
    return "optimizer" in data


def zero_stage(config: str | os.PathLike | dict) -> int:
    """The ZeRO stage of a (resolved) DeepSpeed config (0 when it has no `zero_optimization`)."""
    data = config if isinstance(config, dict) else load_deepspeed_config(config)
    return int(data.get("zero_optimization", {}).get("stage", 0))


__all__ = [
    "BUNDLED_CONFIGS",
    "CONFIG_DIR",
    "DeepSpeedConfigError",
    "get_deepspeed_config_path",
    "has_optimizer_section",
    "load_deepspeed_config",
    "resolve_deepspeed_config",
    "validate_deepspeed_config",
    "zero_stage",
]
