"""Model cards: the adapter's (`adapter_card`: [`build_model_card`], [`write_model_card`], [`merge_eval_results`],
[`CardFacts`]: what a run adds to its cards),
its tables (`rows`), the exported LoRA's (`lora_card`) and the merged model's (`merged_card`); templates in
`templates/`. Every card neat-hf writes is built here; `neat_hf.hub` only uploads what these wrote.
"""

from typing import TYPE_CHECKING

from neat_hf.lazy_imports import lazy_getattr

if TYPE_CHECKING:
    from neat_hf.cards.adapter_card import CardFacts, build_model_card, merge_eval_results, write_model_card

__all__ = ["CardFacts", "build_model_card", "merge_eval_results", "write_model_card"]

_LAZY = {
    "CardFacts": "adapter_card", "build_model_card": "adapter_card", "merge_eval_results": "adapter_card",
    "write_model_card": "adapter_card",
}

__getattr__ = lazy_getattr(__name__, _LAZY, globals())
