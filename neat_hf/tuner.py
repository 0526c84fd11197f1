"""`NeatTuner`: PEFT's PEANuT tuner (`peft.tuners.peanut.PeanutModel`) building neat-hf's factored `NeatLayer`.

PEFT's `BaseTuner` does what it does for every method (target matching, `modules_to_save`, adapter add/set/delete,
disable, merge/unload, state-dict keys); this class only changes which layer it builds, prepares bitsandbytes
4-/8-bit bases for it, and serves mixed-adapter batches (`adapter_names=`). `neat_hf.peft_patch.apply_neat_to_peft`
makes it the tuner behind PEFT's PEANUT type, so `peft.get_peft_model(model, PeanutConfig(...))`, TRL, Axolotl and
transformers' `load_adapter` all build it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from peft.tuners.peanut import PeanutModel
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from neat_hf.layer import NeatLayer
from neat_hf.mixed_batch import adapter_names_hooks
from neat_hf.quantization import check_quantized_model, prepare_quantized_model


class NeatTuner(PeanutModel):
    """PEFT's `PeanutModel` with neat-hf's layer: same files, same outputs, factored cost (`neat_hf.layer`)."""

    tuner_layer_cls = NeatLayer

    def inject_adapter(self, model: nn.Module, adapter_name: str, autocast_adapter_dtype: bool = True, **kwargs: Any) -> None:
        # Remembered for `_create_and_replace`: NeatLayer creates its adapter weights in fp32 on a half-precision
        # base itself (PEFT casts them afterwards, which would allocate them twice).
        self._autocast_adapter_dtype = autocast_adapter_dtype
        super().inject_adapter(model, adapter_name, autocast_adapter_dtype=autocast_adapter_dtype, **kwargs)

    def _pre_injection_hook(self, model: nn.Module, config: Any, adapter_name: str) -> None:
        # A packed-integer base other than bitsandbytes' is refused in one line before any layer is replaced.
        check_quantized_model(model)

    def _post_injection_hook(self, model: nn.Module, config: Any, adapter_name: str) -> None:
        prepare_quantized_model(model)

    def _create_and_replace(
        self,
        peanut_config: Any,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        **optional_kwargs: Any,
    ) -> None:
        autocast = getattr(self, "_autocast_adapter_dtype", True)
        if isinstance(target, NeatLayer):
            target.update_layer(adapter_name, peanut_config, autocast_adapter_dtype=autocast)
            return
        if isinstance(target, BaseTunerLayer):  # another method's layer: NEAT needs the plain frozen weight
            target = target.get_base_layer()
        new_module = NeatLayer(target, adapter_name, peanut_config, autocast_adapter_dtype=autocast)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    @contextlib.contextmanager
    def _enable_peft_forward_hooks(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """`adapter_names=[...]` in `PeftModel.forward`/`generate`: one adapter per batch row (`neat_hf.mixed_batch`).
        `generate` repeats rows for beams and `num_return_sequences`, so the names are expanded the same way."""
        with adapter_names_hooks(self.model, kwargs.pop("adapter_names", None), self.peft_config, expand=True):
            yield

