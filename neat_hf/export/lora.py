"""Exact export of a NEAT adapter as a standard PEFT LoRA adapter, for inference servers that only know LoRA.

NEAT's update is ΔW = s·B·Hᵀ with H = σ(W0ᵀAᵀ) (plus the r×r layers) of shape in×r, so for a *fixed* base weight W0
it has rank ≤ r and is exactly a LoRA update:

    lora_B = B            (out×r)
    lora_A = s·Hᵀ         (r×in)
    lora_alpha = r        (LoRA's scale alpha/r = 1)

for every depth and activation. H depends on W0, so the export is exact for the base *as it will be served*: H is
computed from the base weights rounded to the serving dtype (the stored dtype by default), with fp32 accumulation
(W0 is cast to fp32 a slab of columns at a time, never as a whole fp32 copy; the columns of H are independent because
σ is elementwise and the r×r layers act on the left). `adapter_config.json` and `training_info.json` record which
base (id, revision or folder name, dtype) the export is exact for.

The folder is written to a temporary sibling and moved into place, so a failure never leaves half an export; the base
model shapes and module names are checked against the adapter before anything is computed.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from neat_hf.constants import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, FILE_KEY_PREFIX, MODEL_CARD_NAME
from neat_hf.parallel.zero3 import gathered
from neat_hf.errors import NeatError
from neat_hf.io import atomic_save_safetensors, atomic_write_text, remove_stale_staging, staging_directory
from neat_hf.hub.download import is_hub_id
from neat_hf.config import NeatConfig
from neat_hf.layer import NeatLayer
from neat_hf.cards.lora_card import write_lora_card
from neat_hf.export.serving import ServingIssue, check_serving_limits, raise_for_server

logger = logging.getLogger(__name__)

#: `dtype=` names accepted for the serving dtype of the base.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: Files an export folder holds (an existing folder with anything else is not replaced).
EXPORT_FILES = frozenset({ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, MODEL_CARD_NAME, "training_info.json"})
#: Columns of W0 cast to fp32 at a time while computing H (bounds the extra memory to out × 4096 fp32 values).
_COLUMN_SLAB = 4096



class ExportableModel(Protocol):
    """What the export reads of a `NeatModel`: its public API only, so this module (below the model, which calls it
    from `NeatModel.save_as_lora`) needs no import of it."""

    peft_config: dict[str, NeatConfig]
    active_adapter: str
    base_model: nn.Module

    def neat_layers(self) -> Iterator[tuple[str, NeatLayer]]: ...

    def adapter_key_map(self, adapter_name: str) -> dict[str, str]: ...

    def config_for_saving(self, adapter_name: str) -> NeatConfig: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """`None`/`"auto"` (the base's stored dtype), a name in [`DTYPES`] or a floating `torch.dtype`.

    Raises:
        NeatError: anything else (the message lists the accepted names).
    """
    if dtype is None or dtype == "auto":
        return None
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise NeatError(f"dtype must be 'auto' or one of {sorted(DTYPES)} (the dtype the base is served in), got {dtype!r}.")


@torch.no_grad()
def lora_weights(layer: NeatLayer, adapter_name: str, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(lora_A, lora_B) of one NEAT layer in fp32: lora_A = s·Hᵀ (r×in) computed from W0 rounded to `dtype`
    (default: W0's own dtype) with fp32 accumulation, lora_B = B (out×r).

    For a bitsandbytes base layer, W0 is the dequantized copy `NeatLayer.base_weight` returns.
    """
    with gathered(layer.adapter_parameters()), gathered(layer.zero3_external_parameters()):
        weight = layer.base_weight()  # out×in view
        served = weight.dtype if dtype is None else dtype
        slabs = [
            layer.hidden_t(adapter_name, weight[:, start : start + _COLUMN_SLAB].to(served).float()).float()
            for start in range(0, weight.shape[1], _COLUMN_SLAB)
        ]
        lora_a = torch.cat(slabs, dim=1)
        lora_b = layer.peanut_B[adapter_name].weight.detach().float().clone()
    return lora_a, lora_b


def lora_state_dict(model: ExportableModel, adapter_name: str, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """The LoRA tensors of `adapter_name` under PEFT's file keys (`base_model.model.<path>.lora_A.weight`, …), plus the
    adapter's `modules_to_save` copies under PEFT's keys (`base_model.model.<path>.<param>`)."""
    tensors: dict[str, torch.Tensor] = {}
    for path, layer in model.neat_layers():
        if adapter_name not in layer.peanut_A:
            continue
        lora_a, lora_b = lora_weights(layer, adapter_name, dtype)
        tensors[f"{FILE_KEY_PREFIX}{path}.lora_A.weight"] = lora_a
        tensors[f"{FILE_KEY_PREFIX}{path}.lora_B.weight"] = lora_b
    heads = {key: file_key for key, file_key in model.adapter_key_map(adapter_name).items() if ".modules_to_save." in key}
    if heads:
        state = model.state_dict()
        tensors.update({file_key: state[key].detach() for key, file_key in heads.items()})
    return tensors


def lora_config_dict(model: ExportableModel, adapter_name: str, *, base_model: str | None, revision: str | None) -> dict[str, Any]:
    """adapter_config.json of the exported LoRA: PEFT `LoraConfig` keys only (stock PEFT warns on unknown keys).

    Target matching is copied from the NEAT config (`target_modules`, `exclude_modules`, `layers_to_transform`,
    `layers_pattern`): neat-hf matches modules with PEFT's own rule, so the LoRA adapts exactly the NEAT layers.
    """
    config = model.peft_config[adapter_name]
    fan_in_fan_out = {layer.fan_in_fan_out for _, layer in model.neat_layers() if adapter_name in layer.peanut_A}
    if len(fan_in_fan_out) > 1:
        raise NeatError(
            f"Adapter {adapter_name!r} adapts both nn.Linear and Conv1D layers; a PEFT LoRA config has one "
            "fan_in_fan_out for all targets. Export a NEAT adapter on one layer type."
        )
    auto_mapping = model.config_for_saving(adapter_name).auto_mapping
    return {
        "peft_type": "LORA",
        "task_type": config.task_type,
        "base_model_name_or_path": base_model,
        "revision": revision,
        "inference_mode": True,
        "r": config.r,
        "lora_alpha": config.r,
        "lora_dropout": 0.0,
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "fan_in_fan_out": fan_in_fan_out.pop(),
        "target_modules": config.target_modules,
        "exclude_modules": config.exclude_modules,
        "layers_to_transform": config.layers_to_transform,
        "layers_pattern": config.layers_pattern,
        "modules_to_save": config.modules_to_save or None,
        "auto_mapping": auto_mapping,
    }


def base_identity(model: ExportableModel, adapter_name: str, base_model: str | None, revision: str | None) -> tuple[str | None, str | None]:
    """(base id, revision) the export is exact for: the arguments, else the NEAT config / the base's own config.

    A local folder is recorded as given (as PEFT records `base_model_name_or_path`), and the export says it is local
    (`export_base_is_local`), so the card never links a folder name to the Hub. The revision falls back to the commit
    transformers loaded the base from (`config._commit_hash`), when it came from the Hub.
    """
    hf_config = getattr(model.base_model, "config", None)
    name = base_model or model.peft_config[adapter_name].base_model_name_or_path or getattr(hf_config, "name_or_path", None) or None
    if revision is None:
        revision = model.peft_config[adapter_name].revision or getattr(hf_config, "_commit_hash", None)
    return name, revision


def served_dtype(model: ExportableModel, adapter_name: str, dtype: torch.dtype | None) -> str:
    """Name of the dtype H is computed from (the base's stored dtype when `dtype` is None)."""
    if dtype is not None:
        return str(dtype).removeprefix("torch.")
    dtypes = {str(layer.base_layer.weight.dtype).removeprefix("torch.") for _, layer in model.neat_layers() if adapter_name in layer.peanut_A}
    return "/".join(sorted(dtypes))


def report_serving_issues(issues: list[ServingIssue], server: str | None) -> None:
    """Raise for `server`'s errors (when given), warn about every other server's errors, log notes."""
    if server is not None:
        raise_for_server(issues, server)
    for issue in issues:
        if issue.level == "error":
            warnings.warn(f"The exported LoRA will not load in {issue}", UserWarning, stacklevel=4)
        else:
            logger.info("Serving note for %s", issue)


def save_as_lora(
    model: ExportableModel,
    save_directory: str | os.PathLike,
    adapter_name: str | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    server: str | None = None,
    base_model: str | None = None,
    revision: str | None = None,
    exported_from: str | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write `adapter_name` of `model` as a standard PEFT LoRA adapter folder; see [`NeatModel.save_as_lora`]."""
    adapter_name = adapter_name or model.active_adapter
    if adapter_name not in model.peft_config:
        raise NeatError(f"Unknown adapter {adapter_name!r}; adapters: {sorted(model.peft_config)}.")
    if any(layer.merged for _, layer in model.neat_layers()):
        raise NeatError("The adapter is merged into the base weights; call unmerge_adapter() before save_as_lora().")
    torch_dtype = resolve_dtype(dtype)
    out = Path(save_directory)
    if out.exists() and not out.is_dir():
        raise NeatError(f"save_directory {os.fspath(out)!r} is a file; pass a folder.")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in EXPORT_FILES) if out.is_dir() else []
    if foreign:
        raise NeatError(
            f"{os.fspath(out)!r} holds files that are not part of a LoRA export ({foreign[:5]}); pick an empty or new folder."
        )
    base_id, base_revision = base_identity(model, adapter_name, base_model, revision)
    config = lora_config_dict(model, adapter_name, base_model=base_id, revision=base_revision)
    paths = [path for path, layer in model.neat_layers() if adapter_name in layer.peanut_A]
    model_type = getattr(getattr(model.base_model, "config", None), "model_type", None)
    issues = check_serving_limits(r=config["r"], target_paths=paths, modules_to_save=config["modules_to_save"], model_type=model_type)
    report_serving_issues(issues, server)

    tensors = lora_state_dict(model, adapter_name, torch_dtype)
    neat = model.peft_config[adapter_name]
    export_info = {
        "exported_from": exported_from or f"NEAT adapter {adapter_name!r}",
        "export_exact_for_base": base_id,
        "export_base_is_local": bool(base_id) and not is_hub_id(base_id),
        "export_base_revision": base_revision,
        "export_base_dtype": served_dtype(model, adapter_name, torch_dtype),
        "neat_r": neat.r,
        "neat_depth": neat.depth,
        "neat_act_fn": neat.act_fn,
        "neat_scaling": neat.scaling,
    }
    remove_stale_staging(out)
    with staging_directory(out) as staging:
        atomic_save_safetensors(tensors, staging / ADAPTER_WEIGHTS_NAME)
        atomic_write_text(staging / ADAPTER_CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
        write_lora_card(staging, config, export_info, issues=issues, repo_id=repo_id)
    logger.info("Exported %r as a rank-%d LoRA to %s", adapter_name, config["r"], out)
    return out


