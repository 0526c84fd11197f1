"""Document mapping, answer filters and scoring of the `neat_*_gen` math tasks (the NEAT paper's Table 2 protocol).

GSM8K: the last number of the response, within 1e-3 of the label (LLM-Adapters). MATH: the last boxed expression of
the response equals the boxed answer of the reference solution after the MATH benchmark's normalisation. The prompt
and the extractors live in `neat_hf.eval_harness.protocol`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from neat_hf.eval_harness.protocol import (
    alpaca_prompt,
    apply_to_responses,
    extract_boxed_answer,
    extract_last_number,
    is_equiv_math,
    numbers_match,
)

if TYPE_CHECKING:
    import datasets


def doc_to_text(doc: dict) -> str:
    return alpaca_prompt(doc["instruction"])


def gsm8k_doc(doc: dict) -> dict:
    # openai/gsm8k, main: question, answer ("...reasoning...\n#### 1,234")
    return {"instruction": doc["question"], "target": doc["answer"].split("####")[-1].strip().replace(",", "")}


def hendrycks_math_doc(doc: dict) -> dict:
    # EleutherAI/hendrycks_math: problem, level, type, solution (the final answer is boxed in it)
    return {"instruction": doc["problem"], "target": extract_boxed_answer(doc["solution"]) or ""}


def process_gsm8k(dataset: datasets.Dataset) -> datasets.Dataset:
    return dataset.map(gsm8k_doc)


def process_hendrycks_math(dataset: datasets.Dataset) -> datasets.Dataset:
    return dataset.map(hendrycks_math_doc)


# lm-eval `custom` filters: responses -> the extracted answer ("" when there is none), kept in the logged samples.


def filter_last_number(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    return apply_to_responses(resps, extract_last_number)


def filter_boxed(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    return apply_to_responses(resps, lambda r: extract_boxed_answer(r) or "")


def process_results_gsm8k(doc: dict, results: list[str]) -> dict[str, int]:
    return {"exact_match": int(numbers_match(results[0], doc["target"]))}


def process_results_hendrycks_math(doc: dict, results: list[str]) -> dict[str, int]:
    return {"exact_match": int(bool(results[0]) and is_equiv_math(results[0], doc["target"]))}
