"""`neat_number_words`: the main job's held-out examples as an lm-eval task, built locally (no download).

The rows are exactly the 256 evaluation examples `neat-train` (no arguments) holds out: `builtin:number-words`
drawn by `neat_hf.cli.train.default_job.generate_number_words` with the default recipe's sizes and seed, so the task
never needs the Hub and never overlaps the training rows. Prompts use the LLM-Adapters template the job trains with.
"""

from __future__ import annotations

from typing import Any

import datasets

from neat_hf.cli.train.default_job import generate_number_words
from neat_hf.trainers.prompts import format_instruction_prompt

#: The default recipe's values (neat_hf/cli/train/recipes/default.yaml: max_train_samples, max_eval_samples, seed).
NUM_TRAIN, NUM_EVAL, SEED = 2048, 256, 42


def load_number_words(**kwargs: Any) -> dict[str, Any]:
    """lm-eval's `custom_dataset`: {"test": the held-out rows}."""
    _, held_out = generate_number_words(num_train=NUM_TRAIN, num_eval=NUM_EVAL, seed=SEED)
    return {"test": datasets.Dataset.from_list(held_out)}


def doc_to_text(doc: dict) -> str:
    return format_instruction_prompt(doc["instruction"], doc["input"] or None, template="llm-adapters")


def strip_responses(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    """Greedy responses with surrounding whitespace removed (the word-level tokenizer decodes with spaces)."""
    return [[" ".join(r.split()) for r in rs] for rs in resps]
