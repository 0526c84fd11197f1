"""Mixed-adapter batches: one adapter per row (`adapter_names=[...]`), several NEAT adapters in one forward.

Follows PEFT's design (`peft/tuners/tuners_utils.py::BaseTuner._enable_peft_forward_hooks` and
`peft/tuners/lora/layer.py::LoraLayer._mixed_batch_forward`): for the duration of one `forward`/`generate` call,
forward pre-hooks inject `adapter_names` into every NEAT layer and every `modules_to_save` wrapper; each layer runs
the frozen base once on the whole batch, then adds each adapter's factored output (x·s·Hᵀ)·Bᵀ to its own rows only,
grouping the rows per adapter (one pair of thin matmuls per adapter present, never a dense ΔW). `"__base__"` marks a
row that gets no adapter. Like PEFT, it is refused in training mode and while an adapter is merged.

`generate` repeats each prompt row for beams / `num_return_sequences` (`repeat_interleave`); the hook expands the
names the same way when the batch is a multiple of their number.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import NeatError

if TYPE_CHECKING:
    from .layer import NeatLayer

#: Name standing for "no adapter" in `adapter_names` (PEFT's).
BASE_ADAPTER = "__base__"


def _hooked_modules(root: nn.Module) -> list[nn.Module]:
    """The modules that take `adapter_names`: NEAT layers and `modules_to_save` wrappers (found by what they hold, so
    this module needs neither class)."""
    return [m for m in root.modules() if hasattr(m, "peanut_A") or (hasattr(m, "modules_to_save") and hasattr(m, "original_module"))]


def check_adapter_names(root: nn.Module, adapter_names: Sequence[str], known: Iterable[str]) -> list[str]:
    """Validate `adapter_names` for the model `root` whose adapters are `known` (PEFT's rules); return them as a list.

    Raises:
        NeatError: not a list of strings, the model is training, an adapter is merged, or a name is unknown.
    """
    if isinstance(adapter_names, str) or not all(isinstance(n, str) for n in adapter_names):
        raise NeatError(f"adapter_names must be a list of adapter names, one per batch row, got {adapter_names!r}.")
    names = list(adapter_names)
    if root.training:
        raise NeatError("adapter_names (mixed-adapter batches) is for inference; call model.eval() first.")
    if any(getattr(m, "merged", False) for m in _hooked_modules(root)):
        raise NeatError("adapter_names cannot be used while an adapter is merged; call unmerge_adapter() first.")
    unknown = sorted({n for n in names if n != BASE_ADAPTER} - set(known))
    if unknown:
        raise NeatError(
            f"adapter_names holds unknown adapters {unknown}; adapters: {sorted(known)} "
            f"(use {BASE_ADAPTER!r} for rows without an adapter)."
        )
    return names


@contextlib.contextmanager
def adapter_names_hooks(
    root: nn.Module, adapter_names: Sequence[str] | None, known: Iterable[str], *, expand: bool = False
) -> Iterator[None]:
    """Inject `adapter_names` into every NEAT layer and `modules_to_save` wrapper under `root` inside the block
    (`known`: the model's adapter names).

    A no-op when `adapter_names` is None. With `expand=True` (generate), a batch that is a multiple of the names (beams,
    `num_return_sequences`) gets each name repeated per row; otherwise the batch must have one row per name.
    """
    if adapter_names is None:
        yield
        return
    names = check_adapter_names(root, adapter_names, known)

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        first = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        batch = first.shape[0]
        kwargs["adapter_names"] = _expand(names, batch) if expand else names
        return args, kwargs

    handles = [module.register_forward_pre_hook(pre_hook, with_kwargs=True) for module in _hooked_modules(root)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _expand(names: list[str], batch: int) -> list[str]:
    """`names` for a batch of `batch` rows: as is, or each name repeated when generate expanded the rows."""
    if batch == len(names):
        return names
    if batch % len(names) == 0:
        return [n for n in names for _ in range(batch // len(names))]
    raise NeatError(f"adapter_names has {len(names)} entries but the batch has {batch} rows; pass one name per row.")


def row_groups(adapter_names: Sequence[str], device: torch.device) -> dict[str, torch.Tensor]:
    """{adapter: index tensor of its rows}, in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(adapter_names):
        groups.setdefault(name, []).append(i)
    return {name: torch.tensor(rows, device=device) for name, rows in groups.items()}


def neat_mixed_forward(layer: NeatLayer, x: torch.Tensor, adapter_names: Sequence[str], *args: Any, **kwargs: Any) -> torch.Tensor:
    """A NEAT layer's forward with one adapter per row of `x` (PEFT's `_mixed_batch_forward`, factored)."""
    result = layer.base_layer(x, *args, **kwargs)
    if layer.disable_adapters:
        return result
    if x.shape[0] != len(adapter_names):
        raise NeatError(f"adapter_names has {len(adapter_names)} entries but the batch has {x.shape[0]} rows.")
    in_place = not torch.is_grad_enabled() or layer._can_add_in_place(result)
    for name, rows in row_groups(adapter_names, x.device).items():
        if name == BASE_ADAPTER or name not in layer.peanut_A:
            continue
        h_t = (layer._cached_hidden_t(name) if not torch.is_grad_enabled() else layer.hidden_t(name)).to(x.dtype)
        sub = layer.peanut_dropout[name](x.index_select(0, rows))
        delta = F.linear(F.linear(sub, h_t), layer.peanut_B[name].weight.to(x.dtype)).to(result.dtype)
        result = result.index_add_(0, rows, delta) if in_place else result.index_add(0, rows, delta)
    return result


def modules_to_save_mixed_forward(wrapper: nn.Module, adapter_names: Sequence[str], x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """A `modules_to_save` wrapper's forward with one adapter's trained copy per row (PEFT's
    `AuxiliaryTrainingWrapper._mixed_batch_forward`); rows of `"__base__"` or of an adapter without a copy get the
    original module."""
    if x.shape[0] != len(adapter_names):
        raise NeatError(f"adapter_names has {len(adapter_names)} entries but the batch has {x.shape[0]} rows.")
    out = None
    for name, rows in row_groups(adapter_names, x.device).items():
        module = wrapper.modules_to_save[name] if name in wrapper.modules_to_save and not wrapper.disable_adapters else wrapper.original_module
        part = module(x.index_select(0, rows), *args, **kwargs)
        if out is None:
            out = part.new_empty((x.shape[0], *part.shape[1:]))
        out[rows] = part
    return out
