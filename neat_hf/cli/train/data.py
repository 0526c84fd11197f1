"""Datasets for `neat-train`: loading, the column check, tokenization and collators (metrics: `metrics.py`).

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

import csv
import io
import json
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import pyarrow
import pyarrow.parquet
import torch
from datasets import Dataset, DatasetDict, DownloadConfig, DownloadManager, load_dataset_builder
from datasets.builder import DatasetBuilder
from datasets.exceptions import DatasetGenerationError
from datasets.packaged_modules.csv.csv import CsvConfig
from datasets.packaged_modules.json.json import JsonConfig
from datasets.packaged_modules.parquet.parquet import ParquetConfig
from datasets.utils.info_utils import is_small_dataset

from neat_hf.errors import DatasetError, MissingColumnsError, TrainingArgumentError
from neat_hf.io import not_regular_reason
from neat_hf.cli.train import default_job
from neat_hf.trainers.prompts import PROMPT_TEMPLATES, format_instruction_prompt
from neat_hf.cli.train.script_args import DATASET_FORMATS, TASKS, DataArguments


logger = logging.getLogger(__name__)

IGNORE_INDEX = -100

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

_EXTENSION_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
#: Data files [`check_data_file`] reads, by the `datasets` builder config that will read them (Parquet: its footer
#: only); other files (compressed, Arrow, images) are left to `datasets`, whose errors still become one line.
_CHECKED_SUFFIXES: dict[type, tuple[str, ...]] = {
    JsonConfig: (".json", ".jsonl", ".ndjson"),
    CsvConfig: (".csv", ".tsv"),
    ParquetConfig: (".parquet",),
}
_EVAL_SPLIT_CANDIDATES = ("validation", "validation_matched", "valid", "dev")


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


def split_sources(data_args: DataArguments) -> dict[str, str]:
    """{split: where its rows come from} for messages (the file, or the dataset name)."""
    if data_args.train_file:
        sources = {"train": data_args.train_file}
        if data_args.validation_file:
            sources["validation"] = data_args.validation_file
        return sources
    name = data_args.dataset_name or "the dataset"
    return {"train": name, "validation": name}


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


def check_labels(
    datasets: DatasetDict, label_column: str, num_labels: int, *, sources: Mapping[str, str] | None = None
) -> None:
    """Raises [`DatasetError`] at the first label (any split, validation included) that is not an integer in
    0..num_labels-1, before the first training step.

    Raises:
        DatasetError: naming the split, its file, the row, the value and the accepted range.
    """
    for split, dataset in datasets.items():
        for index, value in enumerate(dataset[label_column]):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < num_labels:
                raise DatasetError(
                    f"{_where(split, sources)} row {index + 1} has label {value!r} in column {label_column!r}; with "
                    f"num_labels={num_labels} labels must be integers 0..{num_labels - 1}. Fix the row or set "
                    "--num_labels."
                )


def _where(split: str, sources: Mapping[str, str] | None) -> str:
    source = (sources or {}).get(split)
    return f"The {split!r} split ({source})" if source else f"The {split!r} split"


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _data_file_builder(path: str) -> tuple[str, dict[str, Any]]:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in _EXTENSION_BUILDERS:
        raise DatasetError(
            f"Cannot tell the format of data file {path!r}: use one of {sorted(_EXTENSION_BUILDERS)} "
            "(JSON lines or a JSON list, CSV with a header, TSV with a header or --column_names, Parquet)."
        )
    kwargs: dict[str, Any] = {"delimiter": "\t"} if suffix == ".tsv" else {}
    return _EXTENSION_BUILDERS[suffix], kwargs


def check_data_file(path: str, *, delimiter: str = ",", has_header: bool = True, shown_as: str | None = None) -> None:
    """Read a local data file once before `datasets` does, so that a bad file gets one line naming the file and the
    line: empty, not UTF-8, a JSON line that does not parse or is not an object, a CSV/TSV row with another number
    of fields than the header, a Parquet file whose footer does not parse.

    Args:
        path (`str`): the local file (for a Hub dataset, its copy in the Hub cache).
        delimiter (`str`): the CSV/TSV field separator.
        has_header (`bool`): whether the first CSV/TSV row names the columns.
        shown_as (`str`, *optional*): the name the user knows the file by in messages (e.g.
            `hf://datasets/org/name/train.jsonl` for a Hub file); defaults to `path`.

    Raises:
        DatasetError: naming the file, the line (1-based) and what is wrong.
    """
    suffix = os.path.splitext(path)[1].lower()
    shown = shown_as or path
    if suffix == ".parquet":
        if os.path.getsize(path) == 0:
            raise DatasetError(f"Data file {shown!r} is empty.")
        try:  # the footer only: what `datasets` reads first; the rows and their schema are its to check
            pyarrow.parquet.read_metadata(path)
        except (pyarrow.ArrowInvalid, OSError) as err:
            raise DatasetError(f"Data file {shown!r} is not a readable Parquet file: {err}") from None
        return
    with open(path, "rb") as handle:
        raw = handle.read()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DatasetError(
            f"Data file {shown!r} is not UTF-8: line {line} holds the byte {raw[err.start:err.start + 1]!r} "
            f"(offset {err.start}). Re-save it as UTF-8."
        ) from None
    if not text.strip():
        raise DatasetError(f"Data file {shown!r} is empty; it needs at least one row.")
    if suffix in (".json", ".jsonl", ".ndjson"):
        stripped = text.lstrip()
        if suffix == ".json" and stripped.startswith(("[", "{")) and not _is_json_lines(stripped):
            try:
                data = json.loads(stripped)
            except json.JSONDecodeError as err:
                raise DatasetError(f"Data file {shown!r} is not valid JSON: line {err.lineno}, column {err.colno}: {err.msg}.") from None
            except RecursionError:
                raise DatasetError(f"Data file {shown!r} is nested too deeply to be a table of rows.") from None
            rows = data if isinstance(data, list) else data.get("data") if isinstance(data, dict) else None
            if isinstance(rows, list) and not rows:
                raise DatasetError(f"Data file {shown!r} holds no rows.")
            return
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DatasetError(
                    f"Data file {shown!r} line {number} is not valid JSON ({err.msg} at column {err.colno}); every line "
                    "of a JSON-lines file must be one JSON object."
                ) from None
            except RecursionError:
                raise DatasetError(
                    f"Data file {shown!r} line {number} is nested too deeply; every line of a JSON-lines file must be "
                    "one flat JSON object (column: value)."
                ) from None
            if not isinstance(row, dict):
                raise DatasetError(
                    f"Data file {shown!r} line {number} is a JSON {type(row).__name__}, not an object with column names."
                )
        return
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    width = None
    try:
        for row in reader:
            if not row:
                continue
            if width is None:
                width = len(row)
                continue
            if len(row) != width:
                raise DatasetError(
                    f"Data file {shown!r} line {reader.line_num} has {len(row)} fields where the "
                    f"{'header' if has_header else 'first row'} has {width} (delimiter {delimiter!r}); quote fields "
                    "that contain the delimiter."
                )
    except csv.Error as err:  # e.g. a field longer than csv.field_size_limit() (131,072 characters)
        raise DatasetError(_csv_error(shown, text, delimiter, reader.line_num, err)) from None
    if width is None or (has_header and reader.line_num <= 1):
        raise DatasetError(f"Data file {shown!r} holds {'a header but ' if width else ''}no data rows.")


def _csv_error(shown: str, text: str, delimiter: str, line: int, err: csv.Error) -> str:
    """One line for a CSV/TSV file the `csv` reader refuses: the file, the line and, for a field over the reader's
    size limit, the column (found by re-reading with no limit)."""
    limit = csv.field_size_limit()
    if "field larger than field limit" not in str(err):
        return f"Data file {shown!r} line {line} cannot be read as CSV ({err})."
    csv.field_size_limit(sys.maxsize)  # process-wide: restored below
    try:
        reader = csv.reader(io.StringIO(text), delimiter=delimiter)
        header: list[str] = []
        for row in reader:
            header = header or row
            for index, field in enumerate(row):
                if len(field) > limit:
                    column = header[index] if index < len(header) and row is not header else f"#{index + 1}"
                    return (
                        f"Data file {shown!r} line {reader.line_num} column {column!r} holds a field of "
                        f"{len(field):,d} characters; the CSV reader accepts at most {limit:,d}. Shorten it, or "
                        "use a JSON-lines file."
                    )
    finally:
        csv.field_size_limit(limit)
    return f"Data file {shown!r} line {line} has a field longer than {limit:,d} characters ({err})."


def _is_json_lines(text: str) -> bool:
    first = text.split("\n", 1)[0].strip()
    if not first.startswith("{") or "\n" not in text.strip():
        return False
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return False
    return True


def _load_checked(
    path: str,
    name: str | None = None,
    *,
    described: str,
    data_files: Mapping[str, str] | None = None,
    revision: str | None = None,
    cache_dir: str | None = None,
    **config_kwargs: Any,
) -> DatasetDict:
    """`load_dataset(path, name, data_files=, revision=, cache_dir=, **config_kwargs)` in its three documented steps
    (`load_dataset_builder`, `download_and_prepare`, `as_dataset`), with [`check_data_file`] run on every data file
    between the first two: the files are the ones `datasets` resolved for the builder (local files, a local folder's
    files, a Hub dataset's files at the resolved commit), so the checks see exactly what will be read.

    What `datasets` still refuses (a generation error, an unknown dataset or config, a data-file pattern matching
    nothing, a Hub it cannot reach) becomes one line naming `described` and the root cause.

    Raises:
        DatasetError: a data file is bad (file and line named), or `datasets` cannot read the dataset.
    """
    try:
        builder = load_dataset_builder(
            path, name, data_files=data_files, revision=revision, cache_dir=cache_dir, **config_kwargs
        )
        _check_builder_files(builder, revision=revision)
        builder.download_and_prepare()
        return builder.as_dataset(in_memory=is_small_dataset(builder.info.dataset_size))
    except DatasetError:
        raise
    except (DatasetGenerationError, FileNotFoundError, ConnectionError, ValueError, TypeError) as err:
        cause = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        reason = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
        raise DatasetError(f"Could not read {described}: {reason}") from err


def _check_builder_files(builder: DatasetBuilder, *, revision: str | None) -> None:
    """Runs [`check_data_file`] on each JSON/CSV/Parquet data file of `builder`'s config (local paths, or `hf://`
    files of a Hub dataset, fetched with `datasets`' own `DownloadManager` into the Hub cache, where
    `download_and_prepare` finds them again: nothing is downloaded twice). Compressed files, other formats and
    other remote URLs are left to `datasets`."""
    config = builder.config
    suffixes = next((s for config_class, s in _CHECKED_SUFFIXES.items() if isinstance(config, config_class)), ())
    urls = [str(url) for files in (config.data_files or {}).values() for url in files]
    # local files and Hub dataset files only (other URLs would be fetched into another cache than the builder's)
    urls = [
        url for url in urls
        if os.path.splitext(url)[1].lower() in suffixes and ("://" not in url or url.startswith("hf://datasets/"))
    ]
    if not urls:
        return
    csv_kwargs = (
        {"delimiter": config.delimiter or config.sep, "has_header": config.column_names is None and config.names is None}
        if isinstance(config, CsvConfig)
        else {}
    )
    download = DownloadConfig(token=builder.token, storage_options=builder.storage_options)
    local = DownloadManager(download_config=download, record_checksums=False).download(urls)
    for url, local_path in zip(urls, local):
        check_data_file(str(local_path), shown_as=_shown_name(url, builder.repo_id, revision), **csv_kwargs)


def _shown_name(url: str, repo_id: str | None, revision: str | None) -> str:
    """A Hub data file as the user knows it, `hf://datasets/<repo id>[@<revision asked for>]/<path in repo>` (datasets
    pins the resolved commit into the URL); local paths unchanged."""
    prefix = f"hf://datasets/{repo_id}@"
    if not repo_id or not url.startswith(prefix):
        return url
    path_in_repo = url[len(prefix) :].split("/", 1)[-1]
    return f"hf://datasets/{repo_id}{'@' + revision if revision else ''}/{path_in_repo}"


def _load_files(data_args: DataArguments, cache_dir: str | None) -> DatasetDict:
    files = {"train": data_args.train_file}
    if data_args.validation_file:
        files["validation"] = data_args.validation_file
    builders = set()
    kwargs: dict[str, Any] = {}
    for split, path in files.items():
        reason = not_regular_reason(path)
        if reason == "missing":
            raise FileNotFoundError(f"--{'train' if split == 'train' else 'validation'}_file {path!r} does not exist.")
        if reason is not None:  # a FIFO would block the reader, /dev/zero never end
            raise DatasetError(
                f"--{'train' if split == 'train' else 'validation'}_file {path!r} is {reason}, not a regular file; "
                "pass a .json/.jsonl/.csv/.tsv/.parquet file."
            )
        builder, extra = _data_file_builder(path)
        builders.add(builder)
        kwargs.update(extra)
    if len(builders) > 1:
        raise DatasetError(f"train_file and validation_file must have the same format; got {sorted(builders)}.")
    builder = builders.pop()
    if data_args.column_names:
        if builder != "csv":
            raise TrainingArgumentError("--column_names only applies to headerless .csv/.tsv files.")
        kwargs["column_names"] = [c.strip() for c in data_args.column_names.split(",")]
    described = f"{sorted(set(files.values()))} as {builder}"
    return _load_checked(builder, described=described, data_files=files, cache_dir=cache_dir, **kwargs)


def _load_builtin(data_args: DataArguments, seed: int) -> DatasetDict:
    if data_args.dataset_name != default_job.NUMBER_WORDS:
        raise DatasetError(
            f"Unknown built-in dataset {data_args.dataset_name!r}. Built-in datasets: {list(default_job.BUILTIN_DATASETS)}."
        )
    train, evaluation = default_job.generate_number_words(
        num_train=data_args.max_train_samples or 2048, num_eval=data_args.max_eval_samples or 256, seed=seed
    )
    return DatasetDict({"train": Dataset.from_list(train), "validation": Dataset.from_list(evaluation)})


def load_raw_datasets(data_args: DataArguments, *, seed: int = 42, cache_dir: str | None = None) -> DatasetDict:
    """Loads the train (and eval) splits named by `data_args`: local files (`train_file`, which wins over
    `dataset_name`), a built-in task, or a Hub id / local folder / data file.

    The eval split is `--eval_split` when given, else the first of `validation`, `validation_matched`, `valid`, `dev`
    present, else `--eval_split_size` rows held out of the training split (none when 0).

    Returns:
        `DatasetDict` with a `train` split and, when there is one, a `validation` split.
    """
    if data_args.train_file:
        loaded = _load_files(data_args, cache_dir)
    elif default_job.is_builtin(data_args.dataset_name):
        loaded = _load_builtin(data_args, seed)
    elif data_args.dataset_name:
        name = data_args.dataset_name
        if os.path.isfile(name):
            builder, kwargs = _data_file_builder(name)
            described = f"{[name]} as {builder}"
            loaded = _load_checked(builder, described=described, data_files={"train": name}, cache_dir=cache_dir, **kwargs)
        else:
            described = f"dataset {name!r}" + "".join(
                f" ({label} {value!r})"
                for label, value in (("config", data_args.dataset_config_name), ("revision", data_args.dataset_revision))
                if value
            )
            loaded = _load_checked(
                name,
                data_args.dataset_config_name,
                described=described,
                revision=data_args.dataset_revision,
                cache_dir=cache_dir,
            )
    else:
        raise TrainingArgumentError(
            "No training data: pass --dataset_name (a Hub dataset id, a local folder or file, or builtin:number-words) "
            "or --train_file (a .json/.jsonl/.csv/.tsv/.parquet file)."
        )

    if data_args.train_split not in loaded:
        raise DatasetError(f"The dataset has no {data_args.train_split!r} split; it has {list(loaded)}. Set --train_split.")
    splits = {"train": loaded[data_args.train_split]}
    eval_name = data_args.eval_split or next((s for s in _EVAL_SPLIT_CANDIDATES if s in loaded), None)
    if data_args.eval_split and data_args.eval_split not in loaded:
        raise DatasetError(f"The dataset has no {data_args.eval_split!r} split; it has {list(loaded)}. Set --eval_split.")
    if eval_name is not None:
        splits["validation"] = loaded[eval_name]
    elif data_args.eval_split_size:
        size = data_args.eval_split_size
        held_out = splits["train"].train_test_split(test_size=int(size) if size >= 1 else size, seed=seed, shuffle=True)
        splits = {"train": held_out["train"], "validation": held_out["test"]}
    result = DatasetDict(splits)
    if data_args.max_train_samples is not None:
        result["train"] = result["train"].select(range(min(data_args.max_train_samples, len(result["train"]))))
    if data_args.max_eval_samples is not None and "validation" in result:
        result["validation"] = result["validation"].select(
            range(min(data_args.max_eval_samples, len(result["validation"])))
        )
    return result


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


def label_info(dataset: Dataset, label_column: str) -> tuple[int, list[str] | None, bool]:
    """Returns `(num_labels, label_names, is_regression)` read from a ClassLabel feature or the label values."""
    feature = dataset.features[label_column]
    names = getattr(feature, "names", None)
    if names:
        return len(names), list(names), False
    dtype = getattr(feature, "dtype", "")
    if str(dtype).startswith("float"):
        return 1, None, True
    values = sorted({v for v in dataset[label_column] if v is not None and v >= 0})
    if values and values != list(range(len(values))):
        raise DatasetError(
            f"Labels in column {label_column!r} must be 0..N-1 integers or a ClassLabel; found {values[:10]}."
        )
    return max(len(values), 2), None, False


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
