"""Adapters out of neat-hf's format: an exact LoRA for LoRA-only servers (`lora`: `NeatModel.save_as_lora`; `serving`:
the servers' limits; `saved_adapter`: [`export_lora`] of a saved adapter) and a merged, plain transformers model
(`merged`: [`export_merged`]). `neat-hub merge` and `neat-hub export-lora` run these.
"""

from typing import TYPE_CHECKING

from neat_hf.lazy_imports import lazy_getattr

if TYPE_CHECKING:
    from neat_hf.export.merged import export_merged
    from neat_hf.export.saved_adapter import export_lora

__all__ = ["export_lora", "export_merged"]

_LAZY = {"export_lora": "saved_adapter", "export_merged": "merged"}

__getattr__ = lazy_getattr(__name__, _LAZY, globals())
