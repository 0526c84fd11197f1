"""Rows into model inputs for `neat-train`: the dataset formats, the column, value and label checks, tokenization and
collators (loading the rows: `data_sources.py`; checking the files: `data_files.py`; metrics: `metrics.py`).

Four formats cover the paper's setups (`DataArguments.dataset_format`):

| format | columns | used by |
|---|---|---|
| `instruction` | `instruction`, `output` (`input`, `answer` optional) | Commonsense170K (LLM-Adapters), `builtin:number-words` |
| `metamathqa` | `query`, `response` | MetaMathQA |
| `text-classification` | `--text_column` [, `--text_pair_column`], `--label_column` | GLUE |
| `image-classification` | `--image_column`, `--label_column` | ViT (CIFAR, …) |

Instruction data is rendered with the LLM-Adapters (Alpaca) template, and the loss is computed on the response only:
prompt tokens get the label -100 (`train_on_inputs=False` in LLM-Adapters). Sequences are cut at `cutoff_len` tokens.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Callable, NamedTuple

import torch
from datasets import Dataset, DatasetDict, Value

from neat_hf.cli.train.script_args import DATASET_FORMATS, TASKS, DataArguments
from neat_hf.errors import DatasetError, MissingColumnsError, TrainingArgumentError
from neat_hf.trainers.prompts import PROMPT_TEMPLATES, format_instruction_prompt


logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
#: Largest regression target accepted: the squared error of a larger one overflows float32 (an infinite loss from the
#: first step). A JSON integer beyond 64 bits, such as 2**70, is read as a float and lands here.
MAX_REGRESSION_LABEL = math.sqrt(torch.finfo(torch.float32).max) / 2

_TASK_FORMATS = {
    "causal-lm": ("instruction", "metamathqa"),
    "sequence-classification": ("text-classification",),
    "image-classification": ("image-classification",),
}

#: Text columns of the GLUE tasks (`nyu-mll/glue` configs), used when `--text_column` is not given.
GLUE_TASK_COLUMNS: dict[str, tuple[str, str | None]] = {
    "cola": ("sentence", None),
    "sst2": ("sentence", None),
    "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "stsb": ("sentence1", "sentence2"),
    "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}



def resolve_dataset_format(task: str, dataset_format: str | None) -> str:
    """Returns the dataset format, checking it suits the task; `None` picks the task's first format."""
    if task not in _TASK_FORMATS:
        raise TrainingArgumentError(f"Unknown task {task!r}. Use one of {list(TASKS)}.")
    if dataset_format is None:
        return _TASK_FORMATS[task][0]
    if dataset_format not in DATASET_FORMATS:
        raise TrainingArgumentError(f"Unknown dataset_format {dataset_format!r}. Use one of {list(DATASET_FORMATS)}.")
    if dataset_format not in _TASK_FORMATS[task]:
        raise TrainingArgumentError(
            f"dataset_format={dataset_format!r} does not fit task={task!r}; that task takes {list(_TASK_FORMATS[task])}."
        )
    return dataset_format


def text_columns(data_args: DataArguments) -> tuple[str, str | None]:
    """The text (and optional pair) columns for text classification: flags first, then the GLUE table, then `sentence`."""
    glue = GLUE_TASK_COLUMNS.get((data_args.dataset_config_name or "").lower())
    text = data_args.text_column or (glue[0] if glue else "sentence")
    pair = data_args.text_pair_column if data_args.text_column else (glue[1] if glue else data_args.text_pair_column)
    return text, pair


def required_columns(dataset_format: str, data_args: DataArguments) -> list[str]:
    """Columns a dataset must have for `dataset_format` (with the column flags of `data_args` applied)."""
    if dataset_format == "instruction":
        return ["instruction", "output"]
    if dataset_format == "metamathqa":
        return ["query", "response"]
    if dataset_format == "text-classification":
        text, pair = text_columns(data_args)
        return [c for c in (text, pair, data_args.label_column) if c]
    return [data_args.image_column, data_args.label_column]


def check_columns(
    datasets: DatasetDict, dataset_format: str, data_args: DataArguments, *, recipe: str | None = None
) -> None:
    """Raises [`MissingColumnsError`] naming every column a split lacks, before any preprocessing.

    Raises:
        MissingColumnsError: a split lacks a required column; the message names it, the columns present and the fix.
    """
    needed = required_columns(dataset_format, data_args)
    for split, dataset in datasets.items():
        missing = [c for c in needed if c not in dataset.column_names]
        if not missing:
            continue
        origin = f"recipe {recipe!r} (dataset_format={dataset_format!r})" if recipe else f"dataset_format={dataset_format!r}"
        hint = {
            "instruction": "Commonsense170K rows have instruction/input/output/answer.",
            "metamathqa": "MetaMathQA rows have query/response; use --dataset_format instruction for instruction/output data.",
            "text-classification": "Name the columns with --text_column, --text_pair_column and --label_column.",
            "image-classification": "Name the columns with --image_column and --label_column.",
        }[dataset_format]
        raise MissingColumnsError(
            f"The {split!r} split is missing column(s) {missing} needed by {origin}. "
            f"It has {sorted(dataset.column_names)}. {hint}"
        )


def check_values(
    datasets: DatasetDict, dataset_format: str, data_args: DataArguments, *, sources: Mapping[str, str] | None = None
) -> None:
    """Raises [`DatasetError`] at the first row of any split whose required column is null or missing (JSON rows
    without the key load as null), naming the split, its file, the row and the column.

    Image columns are not read here (that would decode every image).
    """
    columns = required_columns(dataset_format, data_args)
    if dataset_format == "image-classification":
        columns = [data_args.label_column]
    for split, dataset in datasets.items():
        for column in columns:
            for index, value in enumerate(dataset[column]):
                if value is None:
                    raise DatasetError(
                        f"{_where(split, sources)} row {index + 1} has no value in column {column!r} (null or "
                        f"missing); every row needs {columns}."
                    )
                if column == data_args.label_column:
                    if isinstance(value, float) and not math.isfinite(value):
                        raise DatasetError(
                            f"{_where(split, sources)} row {index + 1} has label {value!r} in column {column!r}; "
                            "labels must be finite numbers (integers 0..N-1, or floats for regression)."
                        )
                    if isinstance(value, bool) or not isinstance(value, (int, float)):
                        raise DatasetError(
                            f"{_where(split, sources)} row {index + 1} has label {str(value)[:50]!r} in column "
                            f"{column!r}; labels must be integers 0..N-1 (or floats for regression), not "
                            f"{type(value).__name__}."
                        )
                elif not isinstance(value, str):
                    raise DatasetError(
                        f"{_where(split, sources)} row {index + 1}: column {column!r} holds a "
                        f"{type(value).__name__} ({str(value)[:50]!r}), not text."
                    )


def _where(split: str, sources: Mapping[str, str] | None) -> str:
    source = (sources or {}).get(split)
    return f"The {split!r} split ({source})" if source else f"The {split!r} split"


# ---------------------------------------------------------------------------------------------------------------
# Causal LM: template, prompt masking, cutoff


#: Characters kept per token of the cutoff before tokenizing: no tokenizer neat-hf trains with makes tokens this long,
#: so the first `cutoff_len` tokens of the cut text are those of the whole text, while one huge row (a 50 MB line)
#: costs memory in proportion to `cutoff_len`, not to the row.
MAX_CHARS_PER_TOKEN = 64


def cut_for_tokenizing(text: str, cutoff_len: int) -> str:
    """`text` cut to `cutoff_len * MAX_CHARS_PER_TOKEN` characters, before the tokenizer sees it."""
    return text[: cutoff_len * MAX_CHARS_PER_TOKEN] if isinstance(text, str) else text


def _prompt_and_response(example: Mapping[str, Any], dataset_format: str, template: str) -> tuple[str, str]:
    if dataset_format == "metamathqa":
        return format_instruction_prompt(example["query"], template=template), example["response"]
    return format_instruction_prompt(example["instruction"], example.get("input"), template=template), example["output"]


def tokenize_prompt_response(
    prompt: str, response: str, tokenizer: Any, *, cutoff_len: int, train_on_inputs: bool = False
) -> dict[str, list[int]]:
    """Tokenizes `prompt + response` (+ EOS), cut at `cutoff_len` tokens, with labels -100 on the prompt.

    With a fast tokenizer the prompt/response boundary comes from character offsets, so it is exact whatever the
    tokenizer merges; a slow tokenizer falls back on the length of the tokenized prompt (LLM-Adapters' method).
    EOS is appended when it fits, as LLM-Adapters does.

    Returns:
        `dict` with `input_ids`, `attention_mask` and `labels` (lists of the same length).
    """
    prompt = cut_for_tokenizing(prompt, cutoff_len)  # memory in proportion to cutoff_len, not to the row
    response = response[: max(cutoff_len * MAX_CHARS_PER_TOKEN - len(prompt), 0)]
    text = prompt + response
    use_offsets = getattr(tokenizer, "is_fast", False)
    encoded = tokenizer(text, truncation=True, max_length=cutoff_len, return_offsets_mapping=use_offsets)
    input_ids = list(encoded["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and len(input_ids) < cutoff_len and (not input_ids or input_ids[-1] != eos):
        input_ids.append(eos)
        response_start = [False] * (len(input_ids) - 1) + [True]
    else:
        response_start = [False] * len(input_ids)
    if train_on_inputs:
        labels = list(input_ids)
    else:
        if use_offsets:
            in_response = [start >= len(prompt) and end > start for start, end in encoded["offset_mapping"]]
        else:
            prompt_len = len(tokenizer(prompt, truncation=True, max_length=cutoff_len)["input_ids"])
            in_response = [i >= prompt_len for i in range(len(encoded["input_ids"]))]
        keep = [a or b for a, b in zip(in_response + [False] * (len(input_ids) - len(in_response)), response_start)]
        labels = [tok if k else IGNORE_INDEX for tok, k in zip(input_ids, keep)]
    return {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}


def preprocess_causal_lm(
    datasets: DatasetDict,
    tokenizer: Any,
    *,
    dataset_format: str,
    cutoff_len: int,
    train_on_inputs: bool = False,
    prompt_template: str = "llm-adapters",
    num_proc: int | None = None,
) -> DatasetDict:
    """Applies the template and [`tokenize_prompt_response`] to every split; drops rows left with no response token."""
    if prompt_template not in PROMPT_TEMPLATES:
        raise TrainingArgumentError(f"Unknown prompt_template {prompt_template!r}. Use one of {sorted(PROMPT_TEMPLATES)}.")

    def tokenize_batch(batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        out: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
        rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
        for row in rows:
            prompt, response = _prompt_and_response(row, dataset_format, prompt_template)
            encoded = tokenize_prompt_response(
                prompt, response, tokenizer, cutoff_len=cutoff_len, train_on_inputs=train_on_inputs
            )
            for key in out:
                out[key].append(encoded[key])
        return out

    processed = {}
    for split, dataset in datasets.items():
        tokenized = dataset.map(
            tokenize_batch, batched=True, remove_columns=dataset.column_names, num_proc=num_proc, desc=f"Tokenizing {split}"
        )
        before = len(tokenized)
        tokenized = tokenized.filter(lambda row: any(label != IGNORE_INDEX for label in row["labels"]))
        if len(tokenized) < before:
            logger.warning(
                "%d of %d %s rows had no response token left after the %d-token cutoff and were dropped; "
                "raise --cutoff_len to keep them.",
                before - len(tokenized),
                before,
                split,
                cutoff_len,
            )
        if len(tokenized) == 0:
            raise DatasetError(f"No {split} row keeps a response token within cutoff_len={cutoff_len}; raise --cutoff_len.")
        processed[split] = tokenized
    return type(datasets)(processed)


# ---------------------------------------------------------------------------------------------------------------
# Classification


class Labels(NamedTuple):
    """What the label column makes of a classifier: its outputs, its class names (a ClassLabel's), and whether it is a
    regression (one output, MSE loss) rather than a classification."""

    num_labels: int
    names: list[str] | None
    regression: bool


def resolve_labels(
    datasets: DatasetDict, label_column: str, *, num_labels: int | None = None, sources: Mapping[str, str] | None = None
) -> tuple[DatasetDict, Labels]:
    """The label rule of `neat-train` (text and image classification), applied to every split before tokenizing.

    - A ClassLabel column is a classification over its names.
    - A float column (a JSON `1.5` or `2.0`; an integer beyond 64 bits, which `datasets` reads as a float) is a
      regression with one output, unless `num_labels` (`--num_labels N`, N > 1) asks for a classification. Without
      `--num_labels` a warning says so, and how to get a classification instead.
    - Otherwise (integers) a classification; `num_labels` defaults to the number of classes, which must then be
      0..N-1 without a gap.

    For a classification every label of every split must be an integer in 0..num_labels-1 ([`check_labels`]);
    integral floats (`2.0`) count as integers and float columns are cast to int64: transformers takes float labels
    with `num_labels > 1` for a multi-label (BCE) target.

    Returns:
        The splits (float label columns of a classification cast to int64) and their [`Labels`].

    Raises:
        DatasetError: the first label that is not an accepted class, naming the split, its file, the row and column.
    """
    feature = datasets["train"].features[label_column]
    names = getattr(feature, "names", None)
    floats = str(getattr(feature, "dtype", "")).startswith("float")
    if names:
        labels = Labels(num_labels or len(names), list(names), False)
    elif floats and (num_labels or 1) == 1:
        if num_labels is None:
            values = datasets["train"][label_column]
            row = next((i for i, v in enumerate(values) if isinstance(v, float) and not v.is_integer()), 0)
            example = f" ({values[row]!r} in row {row + 1})" if len(values) else ""
            logger.warning(
                "%s holds floats in column %r%s, so it trains as a regression with one output (MSE loss); for a "
                "classification pass --num_labels N, and every label must then be an integer 0..N-1.",
                _where("train", sources), label_column, example,
            )
        _check_regression_targets(datasets, label_column, sources)
        return datasets, Labels(1, None, True)
    elif floats:
        labels = Labels(num_labels, None, False)
    else:
        labels = Labels(num_labels or _count_classes(datasets["train"], label_column), None, False)
    check_labels(datasets, label_column, labels.num_labels, sources=sources)
    return _integer_labels(datasets, label_column), labels


def _check_regression_targets(datasets: DatasetDict, label_column: str, sources: Mapping[str, str] | None) -> None:
    """Raises [`DatasetError`] at the first regression target beyond [`MAX_REGRESSION_LABEL`] (any split)."""
    for split, dataset in datasets.items():
        for index, value in enumerate(dataset[label_column]):
            if isinstance(value, (int, float)) and abs(value) > MAX_REGRESSION_LABEL:
                raise DatasetError(
                    f"{_where(split, sources)} row {index + 1} has label {value!r} in column {label_column!r}: a "
                    f"regression target must be within ±{MAX_REGRESSION_LABEL:.3g} (its squared error overflows "
                    "float32 beyond); rescale the column, or pass --num_labels N for integer classes 0..N-1."
                )


def check_labels(
    datasets: DatasetDict, label_column: str, num_labels: int, *, sources: Mapping[str, str] | None = None
) -> None:
    """Raises [`DatasetError`] at the first label (any split, validation included) that is not an integer in
    0..num_labels-1 (an integral float such as `2.0` counts as one), before the first training step.

    Raises:
        DatasetError: naming the split, its file, the row, the value and the accepted range.
    """
    for split, dataset in datasets.items():
        for index, value in enumerate(dataset[label_column]):
            if not _is_class(value, num_labels):
                shown = repr(value) if isinstance(value, (int, float)) else repr(str(value)[:50])
                raise DatasetError(
                    f"{_where(split, sources)} row {index + 1} has label {shown} in column {label_column!r}; with "
                    f"num_labels={num_labels} labels must be integers 0..{num_labels - 1} (2.0 counts as 2). Fix the "
                    "row or set --num_labels."
                )


def _is_class(value: Any, num_labels: int) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        return False
    return 0 <= value < num_labels


def _count_classes(dataset: Dataset, label_column: str) -> int:
    """The number of classes of an integer label column: its labels must be 0..N-1 without a gap (N at least 2)."""
    values = sorted({v for v in dataset[label_column] if v is not None and v >= 0})
    if values and values != list(range(len(values))):
        raise DatasetError(
            f"Labels in column {label_column!r} must be 0..N-1 integers or a ClassLabel; found {values[:10]}. Pass "
            "--num_labels N when some classes have no training row."
        )
    return max(len(values), 2)


def _integer_labels(datasets: DatasetDict, label_column: str) -> DatasetDict:
    """The splits with a float label column cast to int64 (their labels were checked to be integral)."""
    return type(datasets)({
        split: dataset.cast_column(label_column, Value("int64"))
        if str(getattr(dataset.features[label_column], "dtype", "")).startswith("float") else dataset
        for split, dataset in datasets.items()
    })


def preprocess_text_classification(
    datasets: DatasetDict, tokenizer: Any, data_args: DataArguments, *, num_proc: int | None = None
) -> DatasetDict:
    """Tokenizes sentence or sentence-pair rows (truncated at `cutoff_len`) and renames the label column `labels`."""
    text, pair = text_columns(data_args)
    label = data_args.label_column

    def tokenize_batch(batch: dict[str, list[Any]]) -> dict[str, Any]:
        args = tuple(
            [cut_for_tokenizing(value, data_args.cutoff_len) for value in batch[column]]
            for column in ((text,) if pair is None else (text, pair))
        )
        encoded = tokenizer(*args, truncation=True, max_length=data_args.cutoff_len)
        encoded["labels"] = batch[label]
        return encoded

    processed = {}
    for split, dataset in datasets.items():
        processed[split] = dataset.map(
            tokenize_batch, batched=True, remove_columns=dataset.column_names, num_proc=num_proc, desc=f"Tokenizing {split}"
        )
    return type(datasets)(processed)


def image_transform(image_processor: Any, image_column: str, label_column: str, *, train: bool) -> Callable:
    """Returns a `set_transform` function: RGB conversion, the model's resize/normalize, and a random horizontal flip
    on training images (the research code's RandomResizedCrop needs torchvision, which neat-hf does not require)."""

    def transform(batch: dict[str, list[Any]]) -> dict[str, Any]:
        images = [image.convert("RGB") for image in batch[image_column]]
        pixel_values = image_processor(images=images, return_tensors="pt")["pixel_values"]
        if train:
            flip = torch.rand(pixel_values.shape[0]) < 0.5
            pixel_values[flip] = pixel_values[flip].flip(-1)
        return {"pixel_values": pixel_values, "labels": torch.as_tensor(batch[label_column])}

    return transform


def collate_images(examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Stacks `pixel_values` and `labels` of transformed image rows."""
    return {
        "pixel_values": torch.stack([torch.as_tensor(e["pixel_values"]) for e in examples]),
        "labels": torch.as_tensor([int(e["labels"]) for e in examples]),
    }
