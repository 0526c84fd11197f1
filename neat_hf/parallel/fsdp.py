"""PyTorch FSDP2 (`fully_shard`) for NEAT: which modules become FSDP units.

Under FSDP2 every parameter is a `DTensor` holding one row block (dim-0 shard) per rank, except while the FSDP unit
that owns it runs: the unit's pre-forward (and pre-backward) hook all-gathers all of its parameters in one collective
and swaps them in as plain tensors, and the unit reshards them afterwards. NEAT reads its base layer's W0 and its own
A/B/encoder/decoder weights directly inside `NeatLayer.forward` (H = σ(W0ᵀAᵀ)), so W0 and the adapter weights must be
owned by the same unit as the NEAT layer, or by a unit around it; a unit *inside* the NEAT layer (e.g. one per
`nn.Linear`) would hand the NEAT layer a sharded W0.

[`fully_shard_neat_model`] builds exactly that layout: one unit per decoder layer (the classes in the model's
`_no_split_modules`, or those given), each holding its NEAT layers with their W0 and adapters, plus the root unit for
everything else (embeddings, norms, heads, NEAT layers outside decoder layers). Each unit is then gathered once in the
forward and once in the backward (the root once per step: FSDP2 keeps it unsharded between forward and backward), and
W0 is never gathered on its own.

Outside a unit's forward the weights are sharded `DTensor`s; `neat_hf.parallel.dtensor` reads them (saving gathers the adapter
weights only, merging changes each rank's own rows of W0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from neat_hf.errors import FsdpConfigError
from neat_hf.layer import NeatLayer


def default_layer_classes(model: nn.Module) -> list[str]:
    """Names of the decoder/encoder layer classes transformers keeps in one piece (`_no_split_modules`)."""
    for module in model.modules():
        names = getattr(module, "_no_split_modules", None)
        if names:
            return list(names)
    return []


def fully_shard_neat_model(
    model: nn.Module,
    *,
    layer_classes: Sequence[str | type] | None = None,
    mesh: Any = None,
    mp_policy: Any = None,
    reshard_after_forward: bool = True,
) -> list[str]:
    """Apply FSDP2's `fully_shard` to a [`NeatModel`]: one unit per decoder layer, then the root.

    Args:
        model ([`NeatModel`]): the model to shard, in place (its class becomes `FSDP<NeatModel>`).
        layer_classes (`list[str | type]`, *optional*): the classes that each become an FSDP unit; defaults to the
            base model's `_no_split_modules` (e.g. `LlamaDecoderLayer`). A NEAT layer must not be, or contain, one.
        mesh (`DeviceMesh`, *optional*): as in `fully_shard` (defaults to all ranks of the default process group).
        mp_policy (`MixedPrecisionPolicy`, *optional*): as in `fully_shard`; the sharded parameters, which the
            optimizer updates, keep their own dtype (fp32 adapters stay fp32 master weights).
        reshard_after_forward (`bool`, defaults to `True`): as in `fully_shard`; False keeps each decoder layer
            unsharded from its forward to its backward (one all-gather per step instead of two, more memory).

    Returns:
        `list[str]`: the names of the decoder-layer units (the root is always one more).

    Raises:
        FsdpConfigError: the model is quantized, `layer_classes` matches no module, or a NEAT layer would end up
            outside the unit of its own weights.
    """
    check_shardable(model)
    wanted = list(default_layer_classes(model) if layer_classes is None else layer_classes)
    if not wanted:
        raise FsdpConfigError(
            f"{type(model).__name__} names no decoder layer class (_no_split_modules) to make FSDP units of; pass the "
            "layer classes, e.g. fsdp_config={'transformer_layer_cls_to_wrap': ['LlamaDecoderLayer']}."
        )
    names = {c if isinstance(c, str) else c.__name__ for c in wanted}
    units = [(name, module) for name, module in model.named_modules() if type(module).__name__ in names]
    if not units:
        found = sorted({type(m).__name__ for m in model.modules()})
        raise FsdpConfigError(
            f"No module of the classes {sorted(names)} (transformer_layer_cls_to_wrap) found in the model; it has e.g. "
            f"{found[:12]}."
        )
    inside_neat = [name for name, module in units if _inside_neat_layer(model, name)]
    if inside_neat:
        raise FsdpConfigError(
            f"FSDP units {inside_neat[:3]} would split a NEAT layer from its own weights (NEAT reads W0 and the adapter "
            "weights in its forward). Wrap the decoder layers instead, e.g. transformer_layer_cls_to_wrap=['LlamaDecoderLayer']."
        )
    kwargs = {"mesh": mesh, "mp_policy": mp_policy or MixedPrecisionPolicy()}
    for _, module in units:
        fully_shard(module, reshard_after_forward=reshard_after_forward, **kwargs)
    fully_shard(model, **kwargs)
    return [name for name, _ in units]


def _inside_neat_layer(model: nn.Module, name: str) -> bool:
    """Whether module `name` is a NEAT layer or lies inside one."""
    parts = name.split(".") if name else []
    return any(isinstance(model.get_submodule(".".join(parts[:i])), NeatLayer) for i in range(1, len(parts) + 1))


def check_shardable(model: nn.Module) -> None:
    """Refuse a quantized base model (checked on the plain or the NEAT model, before anything changes): FSDP2 cannot
    shard packed integer weights (bitsandbytes' default uint8 `quant_storage`), and the QLoRA-FSDP setting (4-bit
    weights stored as bf16, `bnb_4bit_quant_storage`) is not wired up for NEAT's W0ᵀAᵀ yet.

    Raises:
        FsdpConfigError: a module of the model is a bitsandbytes layer or holds quantized weights.
    """
    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        quantized = type(module).__module__.startswith("bitsandbytes") or (
            isinstance(weight, torch.Tensor) and (hasattr(weight, "quant_state") or not (weight.dtype.is_floating_point or weight.dtype.is_complex))
        )
        if quantized:
            raise FsdpConfigError(
                f"FSDP2 with a quantized base model is not supported by NEAT yet ({name or 'the model'} is a "
                f"{type(module).__name__} with {getattr(weight, 'dtype', None)} weights): load the base model in bf16 for "
                "FSDP2 (or DeepSpeed ZeRO-3), or train the quantized model on one GPU."
            )


