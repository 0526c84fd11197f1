"""FSDP2 for [`NeatTrainer`]: read the request, shard the model, checkpoint the optimizer.

A run asks for FSDP2 in either of the two ways Trainer users know:

- `TrainingArguments(fsdp="full_shard auto_wrap", fsdp_config={"version": 2, ...})` (or `--fsdp` on `neat-train`);
- `accelerate launch --config_file <neat_hf/trainers/accelerate_configs/fsdp2.yaml>` (or `--use_fsdp --fsdp_version 2`),
  which sets the `ACCELERATE_USE_FSDP` / `FSDP_*` environment variables.

`NeatTrainer` then applies `fully_shard` itself ([`neat_hf.parallel.fsdp.fully_shard_neat_model`]: one unit per decoder layer,
whose NEAT layers sit in the same unit as their W0, plus the root), and hands the Trainer a model that is already
sharded. Two reasons: accelerate 1.x turns FSDP into plain DDP on CPU-only machines (the state becomes `MULTI_CPU`,
nothing is sharded, no warning), so the Trainer's own path would silently replicate the model there, and CI could not
test the real thing; and on GPUs the unit layout is what keeps W0 readable inside the NEAT layer, so it is built in one
place for both. The Trainer's "sharded at load time" mode (`is_distributed_loading_by_transformers`) is exactly
"the model owns its placement and gradient reduction": no DDP wrapper, no second sharding.

Checkpoints stay adapter-only: the adapter weights are gathered (never the base), the optimizer state is written as one
full, rank-independent state dict keyed by parameter name (adapter-sized), and resuming shards it again.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, register_fsdp_forward_method
from transformers import TrainingArguments
from transformers.training_args import ParallelMode

from neat_hf.errors import FsdpConfigError
from neat_hf.parallel.fsdp import check_shardable, fully_shard_neat_model

#: The bundled accelerate config (package data), for `accelerate launch --config_file`.
ACCELERATE_FSDP2_CONFIG = os.path.join(os.path.dirname(__file__), "accelerate_configs", "fsdp2.yaml")
#: Optimizer state file of a checkpoint (the Trainer's OPTIMIZER_NAME): one full state dict, written by rank 0.
OPTIMIZER_NAME = "optimizer.pt"

_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class FsdpPlan:
    """How to shard: what was asked for, resolved once from the arguments or the accelerate launcher."""

    #: Classes that each become an FSDP unit; None: the base model's `_no_split_modules`.
    layer_classes: tuple[str, ...] | None
    #: FSDP2 `reshard_after_forward` for the decoder-layer units (`full_shard`: True, `shard_grad_op`: False).
    reshard_after_forward: bool
    #: Where the request came from, for messages.
    source: str


def fsdp_plan(args: TrainingArguments) -> FsdpPlan | None:
    """The FSDP2 plan requested by `args` or by `accelerate launch`, or None when FSDP is not requested.

    Raises:
        FsdpConfigError: FSDP1, a size-based or unknown wrap policy, parameter offloading or FSDP's own activation
            checkpointing is asked for, or the run is not distributed.
    """
    if args.fsdp:
        plugin: dict[str, Any] = dict(args.fsdp_plugin_args or {})
        source = "TrainingArguments.fsdp / fsdp_config"
        version = int(plugin.get("fsdp_version", 1))
        policy = plugin.get("auto_wrap_policy", "TRANSFORMER_BASED_WRAP")
        classes = plugin.get("transformer_cls_names_to_wrap")
        reshard = plugin.get("reshard_after_forward", True)
        offload = bool(plugin.get("cpu_offload", False))
        own_checkpointing = bool(plugin.get("activation_checkpointing", False))
    elif os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in _TRUE:
        source = "accelerate launch (ACCELERATE_USE_FSDP)"
        version = int(os.environ.get("FSDP_VERSION", "1"))
        policy = os.environ.get("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
        classes = os.environ.get("FSDP_TRANSFORMER_CLS_TO_WRAP")
        reshard = os.environ.get("FSDP_RESHARD_AFTER_FORWARD", "true")
        offload = os.environ.get("FSDP_OFFLOAD_PARAMS", "false").lower() in _TRUE
        own_checkpointing = os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "false").lower() in _TRUE
    else:
        return None
    if version != 2:
        raise FsdpConfigError(
            f"NeatTrainer trains with FSDP2 only, got FSDP version {version} from {source}. Use FSDP2: "
            "fsdp_config={'version': 2} (the transformers default), or accelerate launch --config_file "
            f"{ACCELERATE_FSDP2_CONFIG} (fsdp_version: 2)."
        )
    if policy not in ("TRANSFORMER_BASED_WRAP", "NO_WRAP"):
        raise FsdpConfigError(
            f"auto_wrap_policy={policy!r} ({source}) may put a NEAT layer's W0 in another FSDP unit than the layer; use "
            "TRANSFORMER_BASED_WRAP (one unit per decoder layer, the default) or NO_WRAP (the whole model in one unit)."
        )
    if offload:
        raise FsdpConfigError(
            f"FSDP parameter offloading ({source}) is not supported by NeatTrainer yet; drop cpu_offload / "
            "--fsdp_offload_params, or use DeepSpeed ZeRO-3 with deepspeed='zero3_offload'."
        )
    if own_checkpointing:
        raise FsdpConfigError(
            f"FSDP's own activation checkpointing ({source}) is not supported by NeatTrainer; set it off and use the "
            "training argument activation checkpointing (gradient_checkpointing=True) instead."
        )
    if args.parallel_mode != ParallelMode.DISTRIBUTED:
        raise FsdpConfigError(
            f"FSDP2 was requested ({source}) but this is a single process; launch the script with "
            "`torchrun --nproc_per_node N` or `accelerate launch --config_file ...fsdp2.yaml`."
        )
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    if isinstance(reshard, str):
        reshard = reshard.lower() in _TRUE
    layer_classes = () if policy == "NO_WRAP" else (tuple(classes) if classes else None)
    return FsdpPlan(layer_classes=layer_classes, reshard_after_forward=bool(reshard), source=source)


def check_model_for_fsdp(model: nn.Module) -> None:
    """Refuse what FSDP2 cannot shard for NEAT (a quantized base), before anything is changed."""
    check_shardable(model)


def mixed_precision_policy(args: TrainingArguments) -> MixedPrecisionPolicy:
    """bf16/fp16 runs compute with the parameters cast to that dtype (the sharded parameters, which the optimizer
    updates, keep their own dtype: fp32 adapter master weights), and reduce gradients in fp32, as DeepSpeed does."""
    if args.bf16:
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if args.fp16:
        return MixedPrecisionPolicy(param_dtype=torch.float16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard(model: nn.Module, plan: FsdpPlan, args: TrainingArguments) -> nn.Module:
    """Move `model` to this rank's device and apply FSDP2 to it (in place); returns it."""
    model.to(args.device)
    fully_shard_neat_model(
        model,
        layer_classes=plan.layer_classes if plan.layer_classes is None else list(plan.layer_classes),
        mp_policy=mixed_precision_policy(args),
        reshard_after_forward=plan.reshard_after_forward,
    )
    # `generate` calls the wrapped model without the root's forward hooks; have FSDP unshard around it too (what the
    # Trainer does for models it shards itself).
    register_fsdp_forward_method(model, "generate")
    return model


def reshard(model: nn.Module) -> None:
    """Put every unit back to its sharded state (a forward without backward, e.g. evaluation, leaves the root
    unsharded), so that reading or writing parameters sees the sharded `DTensor`s the optimizer owns."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


@contextlib.contextmanager
def accelerator_without_fsdp(args: TrainingArguments) -> Iterator[None]:
    """Build the Trainer's `Accelerator` as a plain multi-process one: NeatTrainer shards the model itself, so
    accelerate must neither shard it again (GPU) nor wrap it in DDP (CPU). Restores the arguments and environment."""
    plugin_args = args.fsdp_plugin_args
    env = os.environ.pop("ACCELERATE_USE_FSDP", None)
    args.fsdp_plugin_args = None
    try:
        yield
    finally:
        args.fsdp_plugin_args = plugin_args
        if env is not None:
            os.environ["ACCELERATE_USE_FSDP"] = env


def _inner_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one


def save_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, output_dir: str, should_save: bool) -> None:
    """Write the optimizer state as one full state dict keyed by parameter name (collective; rank 0 writes)."""
    state = get_optimizer_state_dict(
        model, _inner_optimizer(optimizer), options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if should_save:
        torch.save(state, os.path.join(output_dir, OPTIMIZER_NAME))


def load_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, checkpoint: str) -> None:
    """Load a state dict written by [`save_optimizer`] and shard it over the ranks (any world size)."""
    state = torch.load(os.path.join(checkpoint, OPTIMIZER_NAME), map_location="cpu", weights_only=True)
    set_optimizer_state_dict(
        model, _inner_optimizer(optimizer), optim_state_dict=state, options=StateDictOptions(full_state_dict=True)
    )


__all__ = [
    "ACCELERATE_FSDP2_CONFIG",
    "FsdpPlan",
    "accelerator_without_fsdp",
    "check_model_for_fsdp",
    "fsdp_plan",
    "load_optimizer",
    "mixed_precision_policy",
    "reshard",
    "save_optimizer",
    "shard",
]
