"""Hugging Face Hub integration for NEAT adapters: push folders, rebuild cards, export merged models.

- [`push_to_hub`] (behind `NeatModel.push_to_hub`; defined in `neat_hf.hub_commit`, the one commit path) and
  [`push_adapter_folder`] (`neat-hub push`, same module) and [`push_folder`] (`neat_hf.hub.push`): one commit with adapter_config.json,
  adapter_model.safetensors and README.md (or a merged model's files).
- [`build_model_card`], [`write_model_card`] (`neat_hf.card`), [`eval_results_from_lm_eval`]
  (`neat_hf.eval_harness.results`), training info (`neat_hf.training_info`): the card (`library_name: peft`,
  `base_model`, NEAT tags, hyperparameters, training setup, usage, `model-index`).
- [`export_merged`] (`neat_hf.hub.merge`): the base model with the adapter merged in, as a plain transformers checkpoint,
  with its card (`neat_hf.hub.card`).
- [`export_lora`] (`neat_hf.hub.export`): load a base and a NEAT adapter and write the adapter as an exact LoRA
  (`NeatModel.save_as_lora`) for LoRA-only servers (vLLM, SGLang, TGI).
- `neat-hub` (`neat_hf.hub.cli:main`): `push`, `card`, `merge`, `export-lora` from the command line.

Loading by repo id is `NeatModel.from_pretrained(base, "user/repo", revision=...)` (core library).
"""

from typing import TYPE_CHECKING

from neat_hf.errors import HubError
from neat_hf.lazy_imports import lazy_getattr
from neat_hf.constants import TRAINING_INFO_NAME

if TYPE_CHECKING:
    from neat_hf.card import build_model_card, merge_eval_results, write_model_card
    from neat_hf.eval_harness.results import eval_results_from_lm_eval
    from neat_hf.hub_commit import push_adapter_folder, push_to_hub
    from neat_hf.training_info import load_training_info, save_training_info

    from .export import export_lora
    from .merge import export_merged
    from .push import push_folder

__all__ = [
    "TRAINING_INFO_NAME",
    "HubError",
    "build_model_card",
    "eval_results_from_lm_eval",
    "export_lora",
    "export_merged",
    "load_training_info",
    "merge_eval_results",
    "push_adapter_folder",
    "push_folder",
    "push_to_hub",
    "save_training_info",
    "write_model_card",
]

#: Loaded on first use (PEP 562): `neat-hub` names a bad argument before importing transformers and peft.
_LAZY = {
    "build_model_card": "neat_hf.card", "merge_eval_results": "neat_hf.card", "write_model_card": "neat_hf.card",
    "eval_results_from_lm_eval": "neat_hf.eval_harness.results", "push_adapter_folder": "neat_hf.hub_commit",
    "push_to_hub": "neat_hf.hub_commit", "load_training_info": "neat_hf.training_info",
    "save_training_info": "neat_hf.training_info", "export_lora": "neat_hf.hub.export",
    "export_merged": "neat_hf.hub.merge", "push_folder": "neat_hf.hub.push",
}

__getattr__ = lazy_getattr(__name__, _LAZY, globals())
