"""Document mapping and answer filters of the `neat_*_gen` commonsense tasks (the NEAT paper's Table 1 protocol).

Each `process_*` turns one row of the standard Hub dataset into the LLM-Adapters instruction and label (`instruction`,
`answer` columns added next to the original ones). The instruction texts reproduce LLM-Adapters' test files
(`dataset/<name>/test.json`), which NEAT, DoRA and MiLoRA evaluate on. The prompt and the extractors live in
`neat_hf.eval_harness.protocol`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from neat_hf.eval_harness.protocol import alpaca_prompt, apply_to_responses, extract_commonsense_answer

if TYPE_CHECKING:
    import datasets


def doc_to_text(doc: dict) -> str:
    return alpaca_prompt(doc["instruction"])


def _numbered(word: str, texts: list[str], sep: str) -> tuple[str, str]:
    """`Answer1: a Answer2: b ...` and the matching `answer1/answer2/...` answer format."""
    listed = sep.join(f"{word.capitalize()}{i}: {text}" for i, text in enumerate(texts, start=1))
    return listed, "/".join(f"{word}{i}" for i in range(1, len(texts) + 1))


def boolq_doc(doc: dict) -> dict:
    # aps/super_glue, boolq: question, passage, idx, label (0 = False, 1 = True). LLM-Adapters drops the passage.
    return {
        "instruction": "Please answer the following question with true or false, question: "
        f"{doc['question']}?\n\nAnswer format: true/false",
        "answer": "true" if int(doc["label"]) == 1 else "false",
    }


def piqa_doc(doc: dict) -> dict:
    # baber/piqa: goal, sol1, sol2, label (0/1)
    listed, answer_format = _numbered("solution", [doc["sol1"], doc["sol2"]], "\n\n")
    return {
        "instruction": f"Please choose the correct solution to the question: {doc['goal']}\n\n{listed}\n\n"
        f"Answer format: {answer_format}",
        "answer": f"solution{int(doc['label']) + 1}",
    }


def social_iqa_doc(doc: dict) -> dict:
    # lighteval/siqa: context, question, answerA, answerB, answerC, label ("1".."3")
    listed, answer_format = _numbered("answer", [doc["answerA"], doc["answerB"], doc["answerC"]], " ")
    return {
        "instruction": f"Please choose the correct answer to the question: {doc['context']} {doc['question']}\n\n"
        f"{listed}\n\nAnswer format: {answer_format}",
        "answer": f"answer{int(doc['label'])}",
    }


def hellaswag_doc(doc: dict) -> dict:
    # Rowan/hellaswag: activity_label, ctx (raw: "[header]" markers kept, as in LLM-Adapters), endings, label ("0".."3")
    listed, answer_format = _numbered("ending", list(doc["endings"]), " ")
    return {
        "instruction": "Please choose the correct ending to complete the given sentence: "
        f"{doc['activity_label']}: {doc['ctx']}\n\n{listed}\n\nAnswer format: {answer_format}",
        "answer": f"ending{int(doc['label']) + 1}",
    }


def winogrande_doc(doc: dict) -> dict:
    # allenai/winogrande: sentence, option1, option2, answer ("1"/"2"). No blank line before the answer format here.
    listed, answer_format = _numbered("option", [doc["option1"], doc["option2"]], " ")
    return {
        "instruction": "Please choose the correct answer to fill in the blank to complete the given sentence: "
        f"{doc['sentence']}\n\n{listed} Answer format: {answer_format}",
        "answer": f"option{int(doc['answer'])}",
    }


def _multiple_choice_doc(question: str, choices: dict, answer_key: str) -> dict:
    # allenai/ai2_arc and allenai/openbookqa: choices = {"text": [...], "label": ["A", "B", ...] or ["1", "2", ...]}
    listed, answer_format = _numbered("answer", list(choices["text"]), " ")
    return {
        "instruction": f"Please choose the correct answer to the question: {question}\n\n{listed}\n\n"
        f"Answer format: {answer_format}",
        "answer": f"answer{list(choices['label']).index(answer_key.strip()) + 1}",
    }


def arc_doc(doc: dict) -> dict:
    return _multiple_choice_doc(doc["question"], doc["choices"], doc["answerKey"])


def openbookqa_doc(doc: dict) -> dict:
    return _multiple_choice_doc(doc["question_stem"], doc["choices"], doc["answerKey"])


def process_boolq(dataset: datasets.Dataset) -> datasets.Dataset:
    return dataset.map(boolq_doc)


def process_piqa(dataset: datasets.Dataset) -> datasets.Dataset:
    return dataset.map(piqa_doc)


def process_social_iqa(dataset: datasets.Dataset) -> datasets.Dataset:
    return dataset.map(social_iqa_doc)


def process_hellaswag(dataset: datasets.Dataset) -> datasets.Dataset:
    return dataset.map(hellaswag_doc)


def process_winogrande(dataset: datasets.Dataset) -> datasets.Dataset:
    return dataset.map(winogrande_doc)


def process_arc(dataset: datasets.Dataset) -> datasets.Dataset:
    return dataset.map(arc_doc)


def process_openbookqa(dataset: datasets.Dataset) -> datasets.Dataset:
    return dataset.map(openbookqa_doc)


# lm-eval `custom` filters: responses -> the first answer label of the dataset's kind ("" when there is none).


def filter_true_false(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    return apply_to_responses(resps, lambda r: extract_commonsense_answer(r, "true_false"))


def filter_solution(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    return apply_to_responses(resps, lambda r: extract_commonsense_answer(r, "solution"))


def filter_answer(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    return apply_to_responses(resps, lambda r: extract_commonsense_answer(r, "answer"))


def filter_ending(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    return apply_to_responses(resps, lambda r: extract_commonsense_answer(r, "ending"))


def filter_option(resps: list[list[str]], docs: list[dict]) -> list[list[str]]:
    return apply_to_responses(resps, lambda r: extract_commonsense_answer(r, "option"))
