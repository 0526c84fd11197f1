"""Sharded (`DTensor`) parameters, as FSDP2 leaves them outside the forward of the unit that owns them.

Tensor-level helpers used by the NEAT layer and the Trainer; how a model is sharded lives in `neat_hf.parallel.fsdp`. Every
helper is a no-op on ordinary tensors, so callers need no FSDP branch of their own for the unsharded case.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

try:  # torch.distributed may be built without tensor support (some macOS / mobile wheels)
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
except ImportError:  # pragma: no cover
    DTensor = None  # type: ignore[assignment,misc]


def is_dtensor(tensor: Any) -> bool:
    """Whether `tensor` is a `DTensor` (an FSDP2-sharded parameter outside its unit's forward)."""
    return DTensor is not None and isinstance(tensor, DTensor)


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor: all-gathered if it is a `DTensor` (collective: every rank must call it), else `tensor`."""
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


def local_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(this rank's block of rows, index of its first row) of a dim-0-sharded `DTensor`; (tensor, 0) otherwise."""
    if not is_dtensor(tensor):
        return tensor, 0
    _, offset = compute_local_shape_and_global_offset(tensor.shape, tensor.device_mesh, tensor.placements)
    return tensor.to_local(), int(offset[0]) if offset else 0


def copy_into(target: torch.Tensor, full: torch.Tensor) -> None:
    """Copy the whole tensor `full` into `target` (a parameter, sharded or not); each rank copies its own rows,
    without communication."""
    local, start = local_rows(target)
    if is_dtensor(target):
        full = full[start : start + local.shape[0]]
    local.copy_(full.to(device=local.device, dtype=local.dtype))


def local_merge_delta(layer: nn.Module, adapter_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(this rank's rows of W0 as stored, ΔW for exactly those rows in the same layout and dtype) for an FSDP2-sharded
    NEAT layer, outside its unit's forward.

    Only the adapter weights are all-gathered (they are small); W0 stays sharded. For `nn.Linear` (W0 out×in,
    rows = output features) the rank's rows contribute A[:, rows]·W0[rows] to W0ᵀAᵀ, so these r×in partial products
    are all-reduced; for GPT-2's `Conv1D` (stored in×out, rows = input features) the rank's rows give its own columns
    of H directly. Collective: every rank must call it for the same layers in the same order.
    """
    weight = layer.base_layer.weight
    local, start = local_rows(weight)
    rows = slice(start, start + local.shape[0])
    a = full_tensor(layer.peanut_A[adapter_name].weight).detach()
    b = full_tensor(layer.peanut_B[adapter_name].weight).detach()
    network = [full_tensor(m.weight).detach() for attr in ("peanut_encoders", "peanut_decoders") for m in getattr(layer, attr)[adapter_name]]
    depth = len(network) // 2
    with torch.autocast(device_type=local.device.type, enabled=False):
        if layer.fan_in_fan_out:  # stored in×out: local rows are input features, i.e. columns of W0 (out×in)
            projected = (a.to(local.dtype) @ local.t()).to(a.dtype)
        else:  # stored out×in: local rows are output features, summed over in A·W0
            projected = (a[:, rows].to(local.dtype) @ local).to(a.dtype)
            if dist.is_initialized() and is_dtensor(weight):
                dist.all_reduce(projected, group=weight.device_mesh.get_group())
        h_t = layer.weight_network(adapter_name, projected, encoders=network[:depth], decoders=network[depth:])
        delta = (b @ h_t).t() if layer.fan_in_fan_out else b[rows] @ h_t
    return local, delta.to(local.dtype)


def all_ranks_true(flag: bool, tensors: Iterable[torch.Tensor]) -> bool:
    """`flag` and-ed over the ranks that hold `tensors` when any of them is sharded (collective then)."""
    sharded = [t for t in tensors if is_dtensor(t)]
    if not sharded or not dist.is_initialized():
        return flag
    value = torch.tensor([int(flag)], device=sharded[0].to_local().device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN, group=sharded[0].device_mesh.get_group())
    return bool(value.item())
