"""Mixed-adapter batches: one adapter per row (`adapter_names=[...]`), several NEAT adapters in one forward.

Follows PEFT's design (`peft/tuners/tuners_utils.py::BaseTuner._enable_peft_forward_hooks` and
`peft/tuners/lora/layer.py::LoraLayer._mixed_batch_forward`): for the duration of one `forward`/`generate` call,
forward pre-hooks inject `adapter_names` into every NEAT layer and every `modules_to_save` wrapper (PEFT's, which
picks each row's trained copy itself); each layer (`NeatLayer._mixed_batch_forward`) runs
the frozen base once on the whole batch, then adds each adapter's factored output (x·s·Hᵀ)·Bᵀ to its own rows only,
grouping the rows per adapter (one pair of thin matmuls per adapter present, never a dense ΔW). `"__base__"` marks a
row that gets no adapter. Like PEFT, it is refused in training mode and while an adapter is merged.

`generate` repeats each prompt row for beams / `num_return_sequences` (`repeat_interleave`); the hook expands the
names the same way when the batch is a multiple of their number.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence

import torch
from torch import nn

from neat_hf.adapter_names import BASE_ADAPTER
from neat_hf.errors import NeatError


def _hooked_modules(root: nn.Module) -> list[nn.Module]:
    """The modules that take `adapter_names`: NEAT layers and `modules_to_save` wrappers (found by what they hold, so
    this module needs neither class)."""
    return [m for m in root.modules() if hasattr(m, "peanut_A") or (hasattr(m, "modules_to_save") and hasattr(m, "original_module"))]


def check_adapter_names(root: nn.Module, adapter_names: Sequence[str], known: Iterable[str]) -> list[str]:
    """Validate `adapter_names` for the model `root` whose adapters are `known` (PEFT's rules); return them as a list.
    The batch size is checked by the layers, which see it (one line naming both counts).

    Raises:
        NeatError: not a non-empty list (or tuple) of strings, the model is training, an adapter is merged, or a name
            is unknown.
    """
    expected = f"a list of adapter names (str), one per batch row, {BASE_ADAPTER!r} for a row without an adapter"
    if not isinstance(adapter_names, (list, tuple)):
        raise NeatError(f"adapter_names must be {expected}; got {type(adapter_names).__name__} {adapter_names!r:.80}.")
    if not adapter_names:
        raise NeatError(f"adapter_names is empty; it must be {expected}.")
    wrong = [n for n in adapter_names if not isinstance(n, str)]
    if wrong:
        raise NeatError(f"adapter_names must be {expected}; it holds {type(wrong[0]).__name__} {wrong[0]!r:.80}.")
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
