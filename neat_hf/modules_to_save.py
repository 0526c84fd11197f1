"""Fully trained extra modules (e.g. a classification head) saved with the adapter: PEFT's `modules_to_save`.

The wrapper keeps the original module untouched and trains a copy, so disabling or unloading the adapter gives back
the exact base model. Parameter names match PEFT's `ModulesToSaveWrapper`
(`<path>.original_module.*`, `<path>.modules_to_save.<adapter>.*`).
"""

from __future__ import annotations

import copy
from typing import Any

from torch import nn

from .mixed_batch import modules_to_save_mixed_forward


class ModulesToSaveWrapper(nn.Module):
    """Holds `original_module` (frozen) and one trainable copy per adapter; the active copy runs in forward."""

    def __init__(self, module: nn.Module, adapter_name: str) -> None:
        super().__init__()
        self.original_module = module
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter = adapter_name
        self.disable_adapters = False
        self.add_adapter(adapter_name)

    def add_adapter(self, adapter_name: str) -> None:
        """Create the trainable copy for `adapter_name` from the original module."""
        trained = copy.deepcopy(self.original_module)
        trained.requires_grad_(True)
        self.modules_to_save[adapter_name] = trained
        self.original_module.requires_grad_(False)

    @property
    def active_module(self) -> nn.Module:
        if self.disable_adapters or self.active_adapter not in self.modules_to_save:
            return self.original_module
        return self.modules_to_save[self.active_adapter]

    def forward(self, *args: Any, adapter_names: list[str] | None = None, **kwargs: Any) -> Any:
        if adapter_names is not None:  # one adapter's copy per row, see mixed_batch.py
            return modules_to_save_mixed_forward(self, adapter_names, *args, **kwargs)
        return self.active_module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Attribute reads such as `model.classifier.weight` or `lm_head.out_features` reach the active module.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("original_module", "modules_to_save"):
                raise
            return getattr(self.active_module, name)
