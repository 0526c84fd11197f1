"""The model card of a merged model (`neat-hub merge`): the adapter card's facts, for a plain transformers checkpoint.

Adapter cards, which `NeatModel.save_pretrained`, `neat-hub card` and every push write, are built in the core
(`neat_hf.cards.adapter_card`). A merged model is no adapter: its card says `library_name: transformers`, tags it
`merged-adapter` instead of `base_model:adapter:<id>`, and shows how to load it with transformers alone. It is built
by the same [`build_model_card`](neat_hf.cards.adapter_card.build_model_card) from the adapter's config and weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from neat_hf.cards.adapter_card import build_model_card
from neat_hf.constants import MODEL_CARD_NAME
from neat_hf.io import atomic_write_text, count_adapter_parameters
from neat_hf.hub.download import is_hub_id


def write_merged_model_card(
    out_dir: str | os.PathLike,
    adapter_config: dict[str, Any],
    adapter_weights: str | os.PathLike,
    *,
    base: str | os.PathLike,
    repo_id: str | None = None,
    model_name: str | None = None,
) -> Path:
    """Write `README.md` for the merged model in `out_dir` (atomically) and return its path.

    Args:
        out_dir (`str` or `os.PathLike`): folder holding the merged model.
        adapter_config (`dict`): the merged adapter's `adapter_config.json` contents.
        adapter_weights (`str` or `os.PathLike`): its `adapter_model.safetensors` (for the parameter count).
        base (`str` or `os.PathLike`): the base model folder or Hub id (only a Hub id is written into the metadata).
        repo_id (`str`, *optional*): Hub repo the merged model will be pushed to, for the loading snippet.
        model_name (`str`, *optional*): card title; defaults to `repo_id`.
    """
    card = build_model_card(
        adapter_config,
        base_model=os.fspath(base) if is_hub_id(os.fspath(base)) else None,
        repo_id=repo_id,
        model_name=model_name or repo_id,
        num_adapter_parameters=count_adapter_parameters(adapter_weights),
        merged=True,
    )
    path = Path(out_dir) / MODEL_CARD_NAME
    atomic_write_text(path, str(card))
    return path
