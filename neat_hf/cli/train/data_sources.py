"""Where `neat-train`'s rows come from: `--train_file`/`--validation_file`, `--dataset_name` as a data file, a local
folder or a Hub dataset (the files `datasets` resolves), or a built-in task; and the train/eval splits taken from them.

Every JSON/CSV/TSV/Parquet file is checked by [`check_data_file`] (`data_files.py`) before `datasets` reads it, and
whatever `datasets` still refuses becomes one line too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from datasets import Dataset, DatasetDict, DownloadConfig, DownloadManager, load_dataset_builder
from datasets.builder import DatasetBuilder
from datasets.exceptions import DatasetGenerationError
from datasets.packaged_modules.csv.csv import CsvConfig
from datasets.packaged_modules.json.json import JsonConfig
from datasets.packaged_modules.parquet.parquet import ParquetConfig
from datasets.utils.info_utils import is_small_dataset

from neat_hf.cli.train import default_job
from neat_hf.cli.train.data_files import check_data_file
from neat_hf.cli.train.script_args import DataArguments
from neat_hf.errors import DatasetError, TrainingArgumentError
from neat_hf.io import not_regular_reason

_EXTENSION_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
#: Data files [`check_data_file`] reads, by the `datasets` builder config that will read them (Parquet: its footer
#: only); other files (compressed, Arrow, images) are left to `datasets`, whose errors still become one line.
_CHECKED_SUFFIXES: dict[type, tuple[str, ...]] = {
    JsonConfig: (".json", ".jsonl", ".ndjson"),
    CsvConfig: (".csv", ".tsv"),
    ParquetConfig: (".parquet",),
}
_EVAL_SPLIT_CANDIDATES = ("validation", "validation_matched", "valid", "dev")


def split_sources(data_args: DataArguments) -> dict[str, str]:
    """{split: where its rows come from} for messages (the file, or the dataset name)."""
    if data_args.train_file:
        sources = {"train": data_args.train_file}
        if data_args.validation_file:
            sources["validation"] = data_args.validation_file
        return sources
    name = data_args.dataset_name or "the dataset"
    return {"train": name, "validation": name}


def _data_file_builder(path: str) -> tuple[str, dict[str, Any]]:
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in _EXTENSION_BUILDERS:
        raise DatasetError(
            f"Cannot tell the format of data file {path!r}: use one of {sorted(_EXTENSION_BUILDERS)} "
            "(JSON lines or a JSON list, CSV with a header, TSV with a header or --column_names, Parquet)."
        )
    kwargs: dict[str, Any] = {"delimiter": "\t"} if suffix == ".tsv" else {}
    return _EXTENSION_BUILDERS[suffix], kwargs


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
            raise DatasetError(f"--{'train' if split == 'train' else 'validation'}_file {path!r} does not exist.")
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
