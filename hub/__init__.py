"""Hugging Face Hub integration for NEAT adapters: push with complete model cards, rebuild cards, merge.

- [`push_to_hub`] (behind `NeatModel.push_to_hub`) and [`push_adapter_folder`]: one commit with adapter_config.json,
  adapter_model.safetensors and README.md.
- [`build_model_card`], [`write_model_card`], [`eval_results_from_lm_eval`]: the card (`library_name: peft`,
  `base_model`, NEAT tags, hyperparameters, training setup, usage, `model-index`).
- [`merge_adapter`]: the base model with the adapter merged in, as a plain transformers checkpoint.
- `neat-hub` (`neat_hf.hub.cli:main`): `push`, `card`, `merge` from the command line.

Loading by repo id is `NeatModel.from_pretrained(base, "user/repo", revision=...)` (core library).
"""

from .card import (
    TRAINING_INFO_NAME,
    build_model_card,
    eval_results_from_lm_eval,
    load_training_info,
    merge_eval_results,
    save_training_info,
    write_model_card,
)
from .merge import merge_adapter
from .push import HubError, push_adapter_folder, push_folder, push_to_hub

__all__ = [
    "TRAINING_INFO_NAME",
    "HubError",
    "build_model_card",
    "eval_results_from_lm_eval",
    "load_training_info",
    "merge_adapter",
    "merge_eval_results",
    "push_adapter_folder",
    "push_folder",
    "push_to_hub",
    "save_training_info",
    "write_model_card",
]
