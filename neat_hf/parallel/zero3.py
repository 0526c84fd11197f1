"""DeepSpeed ZeRO-3 helpers: make the frozen W0 (and the adapter weights) readable wherever NEAT needs them.

Under ZeRO-3 every rank holds only a 0-element placeholder of a partitioned parameter, except while the module that
owns it runs (DeepSpeed gathers a module's own parameters in a forward pre-hook and frees them afterwards). NEAT breaks
that assumption twice: the NEAT layer reads the base layer's W0 in its *own* forward and backward (H = σ(W0ᵀAᵀ)), and
it reads the weights of its `peanut_A`/`peanut_B`/encoder/decoder `nn.Linear`s directly, without calling them.

[`register_zero3_parameters`] registers all of these as *external parameters* of the NEAT layer
(`deepspeed.zero.register_external_parameter`, through [`register_external_weight`]), so DeepSpeed gathers them, together, once when the NEAT layer's
forward starts (the base layer's forward, which runs inside, then finds W0 present) and once for its backward.
Measured with DeepSpeed 0.19.8 (tests/ds_driver.py): exactly one gather of each of these weights per forward and one
per backward. DeepSpeed also discovers such accesses on its own during the engine's forward, but only after the
first access has already missed (an extra gather of W0 in the first step), and never outside the engine's forward.

Merging and saving gather explicitly with [`gathered`]. Without DeepSpeed, or for parameters DeepSpeed does not
partition, every helper is a no-op, and deepspeed is never imported (it is an optional heavy dependency, so it is
imported inside the helpers that only run when ZeRO-3 partitions a parameter). This module knows nothing of NEAT
layers (a layer names its parameters in `zero3_external_parameters()`): `neat_hf.layer` builds on it, never the other
way round.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
import torch


def is_zero3_partitioned(param: torch.Tensor) -> bool:
    """Whether `param` is managed (partitioned) by DeepSpeed ZeRO-3."""
    return hasattr(param, "ds_id")


def _is_gathered(param: torch.Tensor) -> bool:
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus  # optional heavy dependency

    return param.ds_status != ZeroParamStatus.NOT_AVAILABLE


def register_external_weight(module: torch.nn.Module, param: torch.nn.Parameter) -> None:
    """Let DeepSpeed gather `param` for `module`'s forward and backward (no-op unless ZeRO-3 partitions it)."""
    if is_zero3_partitioned(param):
        import deepspeed  # lazy: optional heavy dependency, only reached for a ZeRO-3-partitioned parameter

        deepspeed.zero.register_external_parameter(module, param)


@contextlib.contextmanager
def gathered(params: Iterable[torch.Tensor], modifier_rank: int | None = None) -> Iterator[None]:
    """Gather ZeRO-3-partitioned `params` for the duration of the block (a no-op for ordinary tensors).

    Only parameters that are not already gathered are gathered (and released on exit), so the helper can be nested,
    or used inside a forward, without freeing weights someone else is using. With `modifier_rank` set, changes made
    on that rank are broadcast to all ranks on exit (used by merge). Collective: every rank must enter the block.
    """
    params = [p for p in params if is_zero3_partitioned(p)]
    if params and "deepspeed" in sys.modules:
        params = [p for p in params if not _is_gathered(p)]
    if not params or "deepspeed" not in sys.modules:
        yield
        return
    import deepspeed  # lazy: optional heavy dependency, only reached for ZeRO-3-partitioned parameters

    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield


def register_zero3_parameters(model: torch.nn.Module) -> int:
    """Register, for every NEAT layer of `model` (every module with a `zero3_external_parameters()` method), W0 and
    the adapter weights as external parameters of that layer (see the module docstring for why).

    Call it once DeepSpeed has partitioned the model (after `deepspeed.initialize`, or after `zero.Init` plus
    adapter injection); `NeatTrainer` does. Idempotent. Returns the number of NEAT layers registered (0 when the
    model is not partitioned by ZeRO-3).
    """
    count = 0
    for module in model.modules():
        external = getattr(module, "zero3_external_parameters", None)
        if not callable(external):
            continue
        params = [p for p in external() if is_zero3_partitioned(p)]
        for param in params:
            register_external_weight(module, param)
        count += bool(params)
    return count
