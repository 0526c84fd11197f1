"""The NEAT layer: a frozen linear layer plus a small nonlinear network of its own weight.

Method (arXiv 2410.01870; PEFT >= 0.19 ships it as PEANuT, whose conventions we follow exactly). For a frozen weight
W0 of shape out×in (PyTorch layout):

    H   = σ(W0ᵀ Aᵀ)                                  in×r     A: r×out, kaiming-uniform
    H  ← depth encoder layers (r×r, σ after each), then depth decoder layers, decoder i adding back the input of the
          mirrored encoder level (residuals)
    ΔWᵀ = s · H Bᵀ                                   in×out   B: out×r, zero-initialised
    y   = W0 x + s · (x H) Bᵀ

"Factored" means we never build the dense out×in ΔW (nor an fp32 copy of W0) in forward or backward: ΔW has rank
≤ r, so the adapter path is two thin matmuls on the activations, exactly like LoRA, plus one r×out×in product with
W0 per layer and step that does not depend on the batch size. PEFT's PEANuT instead materialises ΔW (and an fp32
copy of W0) in every forward, which makes it several times slower than LoRA; the dense ΔW is built here only to
merge.

Precision: adapter weights are kept in fp32 by default (PEFT's `autocast_adapter_dtype`). W0ᵀAᵀ is computed in the
base weight's dtype (A is cast down, W0 never up), the small r×in network runs in the adapter dtype, and the
activation-sized products run in the activations' dtype (or autocast's), with the scaling folded into the r×in
matrix instead of the out-sized output.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, Callable

import torch
import torch.nn.functional as F
from peft.tuners.peanut import PeanutConfig, PeanutLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from neat_hf.activations import get_activation
from neat_hf.adapter_names import BASE_ADAPTER
from neat_hf.parallel.zero3 import gathered, is_zero3_partitioned, register_external_weight
from neat_hf.parallel.dtensor import all_ranks_true, is_dtensor, local_merge_delta, local_rows
from neat_hf.errors import NeatError, UnsupportedModuleError, UnsupportedQuantizationError
from neat_hf.mixed_batch import row_groups
from neat_hf.quantization import (
    a_times_w0,
    base_and_a_times_w0,
    can_fuse_base_forward,
    compute_dtype,
    dequantize_weight,
    is_bnb_layer,
    prepare_quantized_layer,
    unsupported_weight_message,
)


def supported_layer_types() -> tuple[type, ...]:
    """Layer classes NEAT can wrap: `nn.Linear` and GPT-2's transposed `Conv1D`."""
    return (nn.Linear, Conv1D)


def layer_features(layer: nn.Module) -> tuple[int, int, bool]:
    """(in_features, out_features, fan_in_fan_out) of a supported layer, read from its attributes, never from the
    weight's shape (under ZeRO-3 the weight is a 0-element placeholder).

    Raises:
        UnsupportedModuleError: the layer is neither `nn.Linear` nor `Conv1D`.
    """
    if isinstance(layer, NeatLayer):
        return layer.in_features, layer.out_features, layer.fan_in_fan_out
    if is_bnb_layer(layer):  # bitsandbytes Linear4bit / Linear8bitLt: read through `neat_hf.quantization`
        return layer.in_features, layer.out_features, False
    if not layer.weight.dtype.is_floating_point:
        # Other quantized layers subclass nn.Linear but hold packed integer weights: W0ᵀAᵀ would be meaningless.
        raise UnsupportedModuleError(unsupported_weight_message(layer))
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features, False
    if isinstance(layer, Conv1D):
        return layer.nx, layer.nf, True
    raise UnsupportedModuleError(
        f"NEAT adapts nn.Linear (and GPT-2's Conv1D) layers only, got {type(layer).__name__}."
    )


class NeatLayer(nn.Module, PeanutLayer):
    """A frozen `nn.Linear` (or `Conv1D`) with one or more NEAT adapters, one of them active.

    A PEFT tuner layer (`PeanutLayer`, hence `BaseTunerLayer`): PEFT's `BaseTuner` injects, switches, disables,
    deletes and merges it like its own PEANuT `Linear`, and the parameter names are PEFT's (`peanut_A.<adapter>.weight`,
    `peanut_encoders.<adapter>.0.weight`, …), so the files are the same. What differs is the computation: factored,
    never the dense ΔW (module docstring), on bitsandbytes 4-/8-bit bases and GPT-2's `Conv1D` too. One adapter is
    active at a time (PEFT lets LoRA sum several; PEANuT's file format does not need it).
    """

    #: Attributes holding trainable adapter weights (one entry per adapter).
    adapter_layer_names: tuple[str, ...] = ("peanut_A", "peanut_B", "peanut_encoders", "peanut_decoders")
    #: Attributes holding other per-adapter settings.
    other_param_names: tuple[str, ...] = ("r", "depth", "scaling", "act_fn", "peanut_dropout")

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: PeanutConfig,
        *,
        autocast_adapter_dtype: bool = True,
    ) -> None:
        nn.Module.__init__(self)  # not PeanutLayer.__init__: it builds PEFT's dense PEANuT state
        self.in_features, self.out_features, self.fan_in_fan_out = layer_features(base_layer)
        self.base_layer = base_layer
        if is_bnb_layer(base_layer):
            prepare_quantized_layer(base_layer)
        self.r: dict[str, int] = {}
        self.depth: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self.act_fn: dict[str, str] = {}
        self.peanut_A = nn.ModuleDict()
        self.peanut_B = nn.ModuleDict()
        self.peanut_encoders = nn.ModuleDict()
        self.peanut_decoders = nn.ModuleDict()
        self.peanut_dropout = nn.ModuleDict()
        self._active_adapter: str = adapter_name
        self._disable_adapters: bool = False
        self.merged_adapters: list[str] = []
        self._weight_before_merge: torch.Tensor | None = None
        self._activations: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        # Inference only: s·Hᵀ per adapter, reused while A, the r×r layers and W0 are unchanged (see `_cached_hidden_t`).
        self._hidden_cache: dict[str, tuple[tuple, torch.Tensor, list[torch.Tensor], torch.Tensor]] = {}
        self.update_layer(adapter_name, config, autocast_adapter_dtype=autocast_adapter_dtype)
        # Under ZeRO-3, have DeepSpeed gather W0 for this layer's forward/backward (once per forward).
        register_external_weight(self, self.base_layer.weight)

    # ------------------------------------------------------------------ construction
    def update_layer(self, adapter_name: str, config: PeanutConfig, *, autocast_adapter_dtype: bool = True) -> None:
        """Create (or re-create) the adapter `adapter_name` from `config`."""
        weight = self.base_layer.weight
        dtype = torch.float32 if autocast_adapter_dtype and weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype
        if not weight.dtype.is_floating_point:
            dtype = torch.float32
        factory = {"device": weight.device, "dtype": dtype}
        r, depth = config.r, config.depth
        self.r[adapter_name] = r
        self.depth[adapter_name] = depth
        self.scaling[adapter_name] = config.scaling
        self.act_fn[adapter_name] = config.act_fn
        self._activations[adapter_name] = get_activation(config.act_fn)
        self._hidden_cache.pop(adapter_name, None)
        self.peanut_A[adapter_name] = nn.Linear(self.out_features, r, bias=False, **factory)
        self.peanut_encoders[adapter_name] = nn.ModuleList(
            nn.Linear(r, r, bias=False, **factory) for _ in range(depth)
        )
        self.peanut_decoders[adapter_name] = nn.ModuleList(
            nn.Linear(r, r, bias=False, **factory) for _ in range(depth)
        )
        self.peanut_B[adapter_name] = nn.Linear(r, self.out_features, bias=False, **factory)
        dropout = getattr(config, "dropout", 0.0)  # a NeatConfig setting; PEFT's own PeanutConfig has none
        self.peanut_dropout[adapter_name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_parameters(adapter_name, init_weights=config.init_weights)

    @torch.no_grad()
    def reset_parameters(self, adapter_name: str, *, init_weights: bool = True) -> None:
        """Kaiming-uniform (a=√5) for A and the r×r layers; B zero (`init_weights=True`) or kaiming-uniform too."""
        modules = [self.peanut_A[adapter_name], *self.peanut_encoders[adapter_name], *self.peanut_decoders[adapter_name]]
        if not init_weights:
            modules.append(self.peanut_B[adapter_name])
        else:
            nn.init.zeros_(self.peanut_B[adapter_name].weight)
        for module in modules:
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))

    def delete_adapter(self, adapter_name: str) -> None:
        """Remove `adapter_name` from this layer (it must not be merged)."""
        if adapter_name in self.merged_adapters:
            raise NeatError(f"Adapter {adapter_name!r} is merged into this layer; unmerge it before deleting it.")
        for attr in self.adapter_layer_names + ("peanut_dropout",):
            container = getattr(self, attr)
            if adapter_name in container:
                del container[adapter_name]
        for attr in ("r", "depth", "scaling", "act_fn", "_activations", "_hidden_cache"):
            getattr(self, attr).pop(adapter_name, None)

    # ------------------------------------------------------------------ PEFT's tuner-layer state
    @property
    def active_adapter(self) -> str:
        """The one active adapter (PEFT's `set_adapter` stores a one-element list)."""
        active = self._active_adapter
        return active[0] if isinstance(active, (list, tuple)) and len(active) == 1 else active

    @active_adapter.setter
    def active_adapter(self, adapter_name: str) -> None:
        self._active_adapter = adapter_name

    @property
    def disable_adapters(self) -> bool:
        return self._disable_adapters

    @disable_adapters.setter
    def disable_adapters(self, disabled: bool) -> None:
        self._disable_adapters = bool(disabled)

    def set_adapter(self, adapter_names: str | list[str], inference_mode: bool = False) -> None:
        """PEFT's `BaseTunerLayer.set_adapter`, for one adapter (the sum of several is LoRA's, not PEANuT's)."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if len(names) != 1:
            raise NeatError(f"NEAT layers run one adapter at a time; got {names}. Pass one adapter name.")
        super().set_adapter(names, inference_mode=inference_mode)
        self._hidden_cache.clear()

    # ------------------------------------------------------------------ the method
    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    @property
    def quantized(self) -> bool:
        """Whether the base layer is a bitsandbytes 4-bit / 8-bit layer (see `neat_hf.quantization`)."""
        return is_bnb_layer(self.base_layer)

    def base_weight(self) -> torch.Tensor:
        """W0 in out×in layout (a view: `Conv1D` stores it transposed; a dequantized copy for a bitsandbytes layer,
        for merging and inspection only)."""
        if self.quantized:
            return dequantize_weight(self.base_layer)
        weight = self.base_layer.weight
        return weight.t() if self.fan_in_fan_out else weight

    def hidden_t(
        self,
        adapter_name: str,
        base_weight: torch.Tensor | None = None,
        *,
        input_dtype: torch.dtype | None = None,
        a_w0: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """s·Hᵀ (r×in) in the adapter dtype: the weight network applied to W0, scaling folded in.

        W0ᵀAᵀ is computed as A·W0 in W0's dtype, outside autocast, so W0 is never copied to another dtype. For a
        bitsandbytes W0 it is computed in the layer's compute dtype (`input_dtype`, the activations', for 8-bit) from
        a dequantized W0 that is recomputed in backward instead of saved (`neat_hf.quantization.a_times_w0`), unless
        the forward already computed A·W0 together with the base output (`a_w0`).
        """
        quantized = base_weight is None and self.quantized
        weight = self.base_layer.weight if quantized else self.base_weight() if base_weight is None else base_weight
        a = self.peanut_A[adapter_name].weight
        with torch.autocast(device_type=weight.device.type, enabled=False):
            if a_w0 is not None:
                projected = a_w0.to(a.dtype)
            elif quantized:
                dtype = compute_dtype(self.base_layer, input_dtype or a.dtype)
                projected = a_times_w0(self.base_layer, a.to(dtype)).to(a.dtype)
            else:
                projected = (a.to(weight.dtype) @ weight).to(a.dtype)
            return self.weight_network(adapter_name, projected)

    def weight_network(
        self,
        adapter_name: str,
        projected: torch.Tensor,
        *,
        encoders: list[torch.Tensor] | None = None,
        decoders: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """s·Hᵀ from the projection A·W0 (r×in, or r×some input columns): σ, the r×r layers with residuals, scaling.

        `encoders`/`decoders` replace the layers' weights (FSDP2 merging passes gathered copies, `neat_hf.parallel.dtensor.local_merge_delta`).
        """
        act = self._activations[adapter_name]
        if encoders is None:
            encoders = [encoder.weight for encoder in self.peanut_encoders[adapter_name]]
        if decoders is None:
            decoders = [decoder.weight for decoder in self.peanut_decoders[adapter_name]]
        h = act(projected)
        residuals = []
        for encoder in encoders:
            residuals.append(h)
            h = act(encoder @ h)
        for decoder in decoders:
            h = act(decoder @ h) + residuals.pop()
        return h * self.scaling[adapter_name]

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        """ΔW (out×in, adapter dtype), computed from the *original* W0 even while merged. Built densely: for merging
        and inspection only, never in forward."""
        # Under ZeRO-3, W0 and the adapter weights are placeholders here: gather them (no-op otherwise, or if gathered).
        with gathered(self.zero3_external_parameters()):
            base = self._weight_before_merge if self._weight_before_merge is not None else self.base_weight()
            if self.fan_in_fan_out and self._weight_before_merge is not None:
                base = base.t()
            base = base.to(device=self.peanut_A[adapter_name].weight.device, dtype=self.peanut_A[adapter_name].weight.dtype)
            with torch.autocast(device_type=base.device.type, enabled=False):
                return self.peanut_B[adapter_name].weight @ self.hidden_t(adapter_name, base)

    def _cached_hidden_t(self, adapter_name: str, input_dtype: torch.dtype | None = None) -> torch.Tensor:
        """`hidden_t` for inference (no autograd): reused across calls, e.g. every step of `generate`.

        The entry is reused only if the weight network's inputs are unchanged: the small adapter weights (A and the
        r×r layers, O(r·out)) are compared by *value* with a copy, because optimizers may update parameters without
        bumping their version counter (torch's fused AdamW, the Trainer's default, does not); W0, which only merge,
        unmerge and storage swaps change, is tracked by storage, version, dtype and device (its storage is pinned by
        the entry, so a freed address cannot be reused and match by accident).
        """
        adapter = [p for attr in self.adapter_layer_names if attr != "peanut_B" for p in getattr(self, attr)[adapter_name].parameters()]
        weight = self.base_layer.weight
        key = (self.scaling[adapter_name], weight.data_ptr(), weight._version, weight.dtype, weight.device, input_dtype)
        cached = self._hidden_cache.get(adapter_name)
        if cached is not None:
            cached_key, h_t, snapshot, _ = cached
            if cached_key == key and all(
                p.dtype == c.dtype and p.device == c.device and torch.equal(p, c) for p, c in zip(adapter, snapshot)
            ):
                return h_t
        h_t = self.hidden_t(adapter_name, input_dtype=input_dtype)
        self._hidden_cache[adapter_name] = (key, h_t, [p.detach().clone() for p in adapter], weight.detach())
        return h_t

    def _apply(self, fn: Callable, *args: Any, **kwargs: Any) -> "NeatLayer":
        # `.to()`, `.half()`, `.cuda()` replace parameter storage: drop cached H (and the old storages it pins).
        self._hidden_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def forward(self, x: torch.Tensor, *args: Any, adapter_names: list[str] | None = None, **kwargs: Any) -> torch.Tensor:
        if adapter_names is not None:  # one adapter per row (NeatModel(..., adapter_names=[...])), see mixed_batch.py
            return self._mixed_batch_forward(x, *args, adapter_names=adapter_names, **kwargs)
        name = self.active_adapter
        active = not (self.disable_adapters or self.merged or name not in self.peanut_A)
        a_w0 = None
        if active and not args and not kwargs and can_fuse_base_forward(self.base_layer):
            # 4-bit training: W0·x and A·W0 from one dequantization of W0 (neat_hf.quantization).
            result, a_w0 = base_and_a_times_w0(self.base_layer, x, self.peanut_A[name].weight)
        else:
            result = self.base_layer(x, *args, **kwargs)
        if not active:
            return result
        compute_dtype = x.dtype
        cacheable = not torch.is_grad_enabled() and not torch.compiler.is_compiling() and not is_zero3_partitioned(self.base_layer.weight)
        h_t = (
            self._cached_hidden_t(name, compute_dtype)
            if cacheable
            else self.hidden_t(name, input_dtype=compute_dtype, a_w0=a_w0)
        ).to(compute_dtype)
        b = self.peanut_B[name].weight.to(compute_dtype)
        x = self.peanut_dropout[name](x)
        delta = F.linear(F.linear(x, h_t), b).to(result.dtype)
        if self._can_add_in_place(result):
            # Saves an out-sized allocation and pass: 2-7% of a layer's forward+backward CPU time, 1% of a training
            # step (benchmarks/README.md, "Performance"); the values are bit-identical to `result + delta`.
            return result.add_(delta)
        return result + delta

    def _mixed_batch_forward(
        self, x: torch.Tensor, *args: Any, adapter_names: Sequence[str], **kwargs: Any
    ) -> torch.Tensor:
        """The forward with one adapter per row of `x` (PEFT's `_mixed_batch_forward`, factored: one pair of thin
        matmuls per adapter present, added to its rows only; `"__base__"` rows get none)."""
        result = self.base_layer(x, *args, **kwargs)
        if self.disable_adapters:
            return result
        if x.shape[0] != len(adapter_names):
            raise NeatError(f"adapter_names has {len(adapter_names)} entries but the batch has {x.shape[0]} rows.")
        in_place = not torch.is_grad_enabled() or self._can_add_in_place(result)
        for name, rows in row_groups(adapter_names, x.device).items():
            if name == BASE_ADAPTER or name not in self.peanut_A:
                continue
            h_t = (self._cached_hidden_t(name) if not torch.is_grad_enabled() else self.hidden_t(name)).to(x.dtype)
            sub = self.peanut_dropout[name](x.index_select(0, rows))
            delta = F.linear(F.linear(sub, h_t), self.peanut_B[name].weight.to(x.dtype)).to(result.dtype)
            result = result.index_add_(0, rows, delta) if in_place else result.index_add(0, rows, delta)
        return result

    def _can_add_in_place(self, result: torch.Tensor) -> bool:
        """Whether the base layer's output is ours to modify: a plain `nn.Linear` (its backward needs its inputs, not
        its output) whose output no forward hook has seen, and not a leaf that requires grad. Anything else (ZeRO-3's
        hooks, Conv1D's view, custom Linear subclasses) takes the out-of-place add."""
        return (
            type(self.base_layer) is nn.Linear
            and not self.base_layer._forward_hooks
            and not nn.modules.module._global_forward_hooks
            and not (result.is_leaf and result.requires_grad)
        )

    # ------------------------------------------------------------------ merging
    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None, *, keep_original: bool = True) -> None:
        """Add the active adapter's ΔW into W0.

        Args:
            adapter_names (`list[str]`, *optional*): PEFT's argument; NEAT merges the active adapter only, so it may
                name that one (or be None).
            safe_merge (`bool`, defaults to `False`): check the merged weight for NaN/inf before writing it (costs a
                copy of the weight).
            keep_original (`bool`, defaults to `True`): keep a CPU copy of W0 so `unmerge` restores it exactly (ΔW is a
                function of W0, so subtracting it back would not be exact). `merge_and_unload` passes False.
        """
        name = self.active_adapter
        if adapter_names is not None and list(adapter_names) not in ([], [name]):
            raise NeatError(f"NEAT merges the active adapter ({name!r}) only, got adapter_names={adapter_names}.")
        if self.quantized:
            raise UnsupportedQuantizationError(
                "An adapter cannot be merged into a bitsandbytes layer in place (the sum would be rounded to the 4/8-bit "
                "grid and could not be unmerged exactly); use NeatModel.merge_and_unload(), which returns a "
                "full-precision model, or merge_and_unload(requantize=True)."
            )
        if self.merged:
            warnings.warn(f"Adapter {self.merged_adapters[0]!r} is already merged; nothing to do.", stacklevel=3)
            return
        if name not in self.peanut_A:
            return
        weight = self.base_layer.weight
        if is_dtensor(weight):  # FSDP2: change this rank's rows of W0 only, from the gathered adapter
            local, delta = local_merge_delta(self, name)
            if safe_merge and not all_ranks_true(bool(torch.isfinite(local + delta).all()), [weight]):
                raise NeatError(f"NaN or inf in the merged weight: adapter {name!r} seems broken; nothing was merged.")
            if keep_original:
                self._weight_before_merge = local.detach().to("cpu", copy=True)
            local.add_(delta)
            self.merged_adapters.append(name)
            return
        with gathered(self.adapter_parameters()), gathered([weight], modifier_rank=0):
            delta = self.delta_weight(name)
            delta = (delta.t() if self.fan_in_fan_out else delta).to(device=weight.device, dtype=weight.dtype)
            if safe_merge and not torch.isfinite(weight.data + delta).all():
                raise NeatError(f"NaN or inf in the merged weight: adapter {name!r} seems broken; nothing was merged.")
            if keep_original:
                self._weight_before_merge = weight.data.detach().to("cpu", copy=True)
            weight.data.add_(delta)
        self.merged_adapters.append(name)

    @torch.no_grad()
    def merged_weight_is_finite(self) -> bool:
        """Whether W0 + ΔW of the active adapter, in W0's dtype, is free of NaN/inf (what `safe_merge` checks)."""
        weight = self.base_layer.weight
        if is_dtensor(weight):  # FSDP2: each rank checks its rows (collective)
            local, delta = local_merge_delta(self, self.active_adapter)
            return all_ranks_true(bool(torch.isfinite(local + delta).all()), [weight])
        with gathered([weight]):
            delta = self.delta_weight(self.active_adapter)
            if self.quantized:  # in the dtype the weights were quantized from (what merge_and_unload writes)
                base = self.base_weight()
                return bool(torch.isfinite(base + delta.to(device=base.device, dtype=base.dtype)).all())
            delta = (delta.t() if self.fan_in_fan_out else delta).to(device=weight.device, dtype=weight.dtype)
            return bool(torch.isfinite(weight.data + delta).all())

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore W0 exactly from the copy kept by `merge`."""
        if not self.merged:
            warnings.warn("Already unmerged; nothing to do.", stacklevel=3)
            return
        if self._weight_before_merge is None:
            raise NeatError("This layer was merged without keeping the original weight; it cannot be unmerged.")
        weight = self.base_layer.weight
        if is_dtensor(weight):  # FSDP2: merge kept this rank's rows
            local = local_rows(weight)[0]
            local.copy_(self._weight_before_merge.to(device=local.device, dtype=local.dtype))
        else:
            with gathered([weight], modifier_rank=0):
                weight.data.copy_(self._weight_before_merge.to(device=weight.device, dtype=weight.dtype))
        self._weight_before_merge = None
        self.merged_adapters.clear()

    def extra_repr(self) -> str:
        name = self.active_adapter
        if name not in self.r:
            return ""
        return (
            f"adapter={name!r}, r={self.r[name]}, depth={self.depth[name]}, act_fn={self.act_fn[name]!r}, "
            f"scaling={self.scaling[name]}"
        )

    def __repr__(self) -> str:
        return "neat." + super().__repr__()

    def adapter_parameters(self) -> list[nn.Parameter]:
        """Every adapter weight of this layer (A, B, encoders, decoders of all adapters)."""
        return [p for attr in self.adapter_layer_names for p in getattr(self, attr).parameters()]

    def zero3_external_parameters(self) -> list[nn.Parameter]:
        """The parameters this layer reads in its own forward without calling their module: W0 and every adapter
        weight (all adapters, so switching the active adapter needs no new registration); DeepSpeed ZeRO-3 must
        gather them for this layer (`neat_hf.parallel.zero3.register_zero3_parameters`)."""
        return [self.base_layer.weight, *self.adapter_parameters()]
