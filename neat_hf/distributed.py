"""DeepSpeed ZeRO-3 helpers: make the frozen W0 readable wherever NEAT needs it.

Under ZeRO-3 every rank holds only a 0-element placeholder of a partitioned parameter outside the forward of the
module that owns it. NEAT reads the base layer's W0 in its *own* forward (H = σ(W0ᵀAᵀ)) and backward, and in merge.
Registering W0 as an external parameter of the NEAT layer makes DeepSpeed gather it once when the NEAT layer's
forward starts (the base layer's forward, which runs inside, then finds it already present) and again for backward.
Merging gathers explicitly with `GatheredParameters`. Without DeepSpeed, or for parameters DeepSpeed does not
partition, every helper is a no-op, and deepspeed is never imported.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from typing import Optional

import torch


def is_zero3_partitioned(param: torch.Tensor) -> bool:
    """Whether `param` is managed (partitioned) by DeepSpeed ZeRO-3."""
    return hasattr(param, "ds_id")


def register_external_weight(module: torch.nn.Module, param: torch.nn.Parameter) -> None:
    """Let DeepSpeed gather `param` for `module`'s forward and backward (no-op unless ZeRO-3 partitions it)."""
    if is_zero3_partitioned(param):
        import deepspeed

        deepspeed.zero.register_external_parameter(module, param)


def register_external_weights(model: torch.nn.Module) -> int:
    """Register W0 of every NEAT layer of `model` (call after `deepspeed.initialize` partitioned a model that was
    built without `zero.Init`). Returns how many layers were registered."""
    from .layer import NeatLayer

    count = 0
    for module in model.modules():
        if isinstance(module, NeatLayer) and is_zero3_partitioned(module.base_layer.weight):
            register_external_weight(module, module.base_layer.weight)
            count += 1
    return count


@contextlib.contextmanager
def gathered(params: Iterable[torch.Tensor], modifier_rank: Optional[int] = None) -> Iterator[None]:
    """Gather ZeRO-3-partitioned `params` for the duration of the block (a no-op for ordinary tensors).

    With `modifier_rank` set, changes made on that rank are scattered back to all ranks on exit (used by merge).
    """
    params = [p for p in params if is_zero3_partitioned(p)]
    if not params or "deepspeed" not in sys.modules:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield
