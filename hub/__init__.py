"""The Hub: downloads (`download`), the one commit path for uploads (`commit`: [`push_adapter_folder`], and
`NeatModel.push_to_hub` through it), merged-model folders (`push`: [`push_folder`]) and the translation of
huggingface_hub's errors into one line (`error_translation`).

Cards are built in `neat_hf.cards`, merged and LoRA exports in `neat_hf.export`. The names below that live there
(`build_model_card`, `write_model_card`, `merge_eval_results`, `export_lora`, `export_merged`, `load_training_info`,
`save_training_info`, `eval_results_from_lm_eval`) stay importable from `neat_hf.hub` as aliases, resolved when first
used; new code imports them from their homes.
"""

from typing import TYPE_CHECKING

from neat_hf.constants import TRAINING_INFO_NAME
from neat_hf.errors import HubError
from neat_hf.lazy_imports import lazy_getattr

if TYPE_CHECKING:
    from neat_hf.hub.commit import push_adapter_folder
    from neat_hf.hub.push import push_folder

__all__ = ["TRAINING_INFO_NAME", "HubError", "push_adapter_folder", "push_folder"]

#: Loaded on first use (PEP 562): `neat-hub` names a bad argument before importing transformers and peft.
_LAZY = {"push_adapter_folder": "neat_hf.hub.commit", "push_folder": "neat_hf.hub.push"}
#: Aliases of names that live elsewhere (see above).
_ALIASES = {
    "build_model_card": "neat_hf.cards.adapter_card", "merge_eval_results": "neat_hf.cards.adapter_card",
    "write_model_card": "neat_hf.cards.adapter_card", "export_lora": "neat_hf.export.saved_adapter",
    "export_merged": "neat_hf.export.merged", "load_training_info": "neat_hf.training_info",
    "save_training_info": "neat_hf.training_info", "eval_results_from_lm_eval": "neat_hf.eval_harness.results",
}

__getattr__ = lazy_getattr(__name__, {**_LAZY, **_ALIASES}, globals())
