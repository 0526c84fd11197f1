"""Training data checked before the first step: bad files, null fields and out-of-range labels get one line naming the
file, the row and the column (issue 16, item 6). Files are checked however they are given: `--train_file`, or
`--dataset_name` as a file, a local folder or a Hub dataset (served by the loopback Hub of `hub_server.py`, so
`datasets` runs its real resolution and download code)."""

from __future__ import annotations

import os

import datasets.config
import pytest
from huggingface_hub import HfApi, constants
from hub_fixtures import hub_server  # noqa: F401  (pytest finds fixtures imported into a test module)
from train_cli_helpers import COMMONSENSE_ROWS, SST2_ROWS, save_tiny_bert, write_jsonl

from neat_hf.errors import DatasetError
from neat_hf.cli.train import data as data_lib
from neat_hf.cli.train import data_sources
from neat_hf.cli.train.script_args import DataArguments
from neat_hf.cli.train.main import cli


def _load(path, **kwargs):
    return data_sources.load_raw_datasets(DataArguments(train_file=str(path), **kwargs))


@pytest.mark.parametrize(
    ("name", "content", "fragments"),
    [
        ("empty.jsonl", b"", ["is empty"]),
        ("blank.jsonl", b"\n  \n", ["is empty"]),
        ("bad.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n', ["line 2", "not valid JSON"]),
        ("list.jsonl", b'{"instruction": "a", "output": "b"}\n[1, 2]\n', ["line 2", "not an object"]),
        ("bad.json", b'[{"instruction": "a", "output": "b"},\n {"instruction": }]', ["not valid JSON", "line 2"]),
        ("latin1.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "b"}\n'.encode("latin-1"), ["not UTF-8", "line 2", "\\xe9"]),
        ("ragged.csv", b"sentence,label\ngood,1\nbad,0,extra\n", ["line 3", "3 fields", "header has 2"]),
        ("header_only.csv", b"sentence,label\n", ["no data rows"]),
        ("bytes.csv", b"sentence,label\n\xff\xfe,1\n", ["not UTF-8", "line 2"]),
        # issue 25: each was a traceback (_csv.Error, RecursionError)
        ("long_field.csv", b"sentence,label\ngood,1\n" + b"x" * 200_000 + b",0\n",
         ["line 3", "column 'sentence'", "200,000 characters", "at most 131,072"]),
        ("deep.jsonl", b'{"instruction": "a", "output": "b"}\n' + b"[" * 100_000 + b"\n", ["line 2", "nested too deeply"]),
        ("deep.json", b"[" * 100_000, ["nested too deeply"]),
    ],
)
def test_bad_files_get_one_line_naming_file_and_line(tmp_path, name, content, fragments):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DatasetError) as info:
        _load(path)
    message = str(info.value)
    assert name in message and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    ("rows", "fmt", "fragments"),
    [
        ([*COMMONSENSE_ROWS[:2], {"instruction": "q", "output": None}], "instruction", ["row 3", "'output'", "null or missing"]),
        ([*COMMONSENSE_ROWS[:2], {"instruction": "q"}], "instruction", ["row 3", "'output'"]),
        ([*COMMONSENSE_ROWS[:1], {"instruction": 5, "output": "a"}], "instruction", ["row 2", "'instruction'", "not text"]),
        ([*SST2_ROWS[:2], {"sentence": "x", "label": None}], "text-classification", ["row 3", "'label'"]),
        ([*SST2_ROWS[:2], {"sentence": "x", "label": "pos"}], "text-classification", ["row 3", "'pos'", "integers"]),
        ([*SST2_ROWS[:2], {"sentence": "x", "label": float("nan")}], "text-classification", ["row 3", "nan", "finite"]),
    ],
)
def test_null_and_mistyped_fields_are_named(tmp_path, rows, fmt, fragments):
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    args = DataArguments(train_file=path)
    loaded = data_sources.load_raw_datasets(args)
    with pytest.raises(DatasetError) as info:
        data_lib.check_values(loaded, fmt, args, sources=data_sources.split_sources(args))
    message = str(info.value)
    assert "train.jsonl" in message and "'train' split" in message, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "directory"])
def test_a_train_file_that_is_not_a_regular_file_is_named_as_such(tmp_path, kind):
    """A FIFO (blocked the reader), a symlink to /dev/zero (never ends) or a folder was called "does not exist"."""
    path = tmp_path / "train.jsonl"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    with pytest.raises(DatasetError) as info:
        _load(path)
    message = str(info.value)
    assert "not a regular file" in message and "does not exist" not in message and "train.jsonl" in message
    assert {"fifo": "named pipe", "dev_zero": "character device", "directory": "a directory"}[kind] in message


def test_one_huge_row_is_cut_before_tokenizing():
    """A 50 MB line cost memory in proportion to the line while tokenizing (RSS past 6 GB): the text is cut to
    cutoff_len * MAX_CHARS_PER_TOKEN characters first, with the same first cutoff_len tokens."""
    from transformers import PreTrainedTokenizerFast

    from neat_hf.cli.train.default_job import build_default_tokenizer

    tokenizer = build_default_tokenizer()
    seen = []
    original = PreTrainedTokenizerFast.__call__

    def spy(self, text, *args, **kwargs):
        seen.append(len(text) if isinstance(text, str) else max(len(t) for t in text))
        return original(self, text, *args, **kwargs)

    huge = "one two three " * 400_000  # 5.6 MB
    PreTrainedTokenizerFast.__call__ = spy
    try:
        cut = data_lib.tokenize_prompt_response("count: ", huge, tokenizer, cutoff_len=32)
    finally:
        PreTrainedTokenizerFast.__call__ = original
    full = data_lib.tokenize_prompt_response("count: ", huge[:10_000], tokenizer, cutoff_len=32)
    assert max(seen) <= 32 * data_lib.MAX_CHARS_PER_TOKEN
    assert cut == full


@pytest.mark.parametrize("bad", [2, -1])
def test_labels_are_checked_in_every_split_against_num_labels(tmp_path, bad):
    train = write_jsonl(tmp_path / "train.jsonl", SST2_ROWS)
    valid = write_jsonl(tmp_path / "dev.jsonl", [*SST2_ROWS[:3], {"sentence": "odd", "label": bad}])
    args = DataArguments(train_file=train, validation_file=valid)
    loaded = data_sources.load_raw_datasets(args)
    if bad == 2:
        data_lib.check_labels(loaded, "label", 3)  # in range once there are three classes
    with pytest.raises(DatasetError) as info:
        data_lib.check_labels(loaded, "label", 2, sources=data_sources.split_sources(args))
    message = str(info.value)
    assert "'validation' split" in message and "dev.jsonl" in message and "row 4" in message, message
    assert f"label {bad}" in message and "0..1" in message


@pytest.mark.slow
def test_neat_train_refuses_a_bad_validation_label_before_training(tmp_path, capsys):
    """--num_labels 2 with label 2 only in the validation split: exit status 2 and one line, before any step (the
    output folder gets no checkpoint, adapter or state)."""
    base = save_tiny_bert(tmp_path / "bert")
    train = write_jsonl(tmp_path / "train.jsonl", SST2_ROWS)
    valid = write_jsonl(tmp_path / "dev.jsonl", [*SST2_ROWS[:2], {"sentence": "odd", "label": 2}])
    out = tmp_path / "out"
    argv = [
        "--model_name_or_path", base, "--task", "sequence-classification", "--dataset_format", "text-classification",
        "--train_file", train, "--validation_file", valid, "--num_labels", "2", "--max_steps", "2",
        "--output_dir", str(out),
    ]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("dev.jsonl" in line and "row 3" in line and "label 2" in line for line in err), err
    assert not out.exists() or not any(out.iterdir())


# ---------------------------------------------------------------------------------------------------------------
# Folder and Hub datasets (--dataset_name): the files `datasets` resolves get the same checks

GOOD_JSONL = b'{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n'


def _write_folder(folder, files: dict[str, bytes]) -> str:
    for name, content in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return str(folder)


def _load_name(name, tmp_path, **kwargs):
    return data_sources.load_raw_datasets(DataArguments(dataset_name=name, **kwargs), cache_dir=str(tmp_path / "cache"))


def _one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message, message
    return message


@pytest.mark.parametrize(
    ("bad", "content", "fragments"),
    [
        ("validation.jsonl", b'{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n', ["line 2", "not valid JSON"]),
        ("train.jsonl", '{"instruction": "a", "output": "b"}\n{"instruction": "caf\xe9", "output": "b"}\n'.encode("latin-1"), ["not UTF-8", "line 2", "\\xe9"]),
        ("validation.jsonl", b"", ["is empty"]),
    ],
)
def test_bad_file_of_a_folder_dataset_is_named(tmp_path, bad, content, fragments):
    files = {"train.jsonl": GOOD_JSONL, "validation.jsonl": GOOD_JSONL, bad: content}
    folder = _write_folder(tmp_path / "data", files)
    with pytest.raises(DatasetError) as info:
        _load_name(folder, tmp_path)
    message = _one_line(info)
    assert str(tmp_path / "data" / bad) in message, message
    assert ({"train.jsonl", "validation.jsonl"} - {bad}).pop() not in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_bad_row_in_a_folder_of_csv_files_is_named(tmp_path):
    folder = _write_folder(
        tmp_path / "glue",
        {"train.csv": b"sentence,label\ngood,1\nbad,0,extra\n", "validation.csv": b"sentence,label\nfine,0\n"},
    )
    with pytest.raises(DatasetError) as info:
        _load_name(folder, tmp_path)
    message = _one_line(info)
    assert "train.csv" in message and "line 3" in message and "3 fields" in message and "header has 2" in message


def test_good_folders_load_with_the_splits_and_delimiter_datasets_resolves(tmp_path):
    folder = _write_folder(tmp_path / "jsonl", {"train.jsonl": GOOD_JSONL, "validation.jsonl": GOOD_JSONL[:36]})
    loaded = _load_name(folder, tmp_path)
    assert {split: len(rows) for split, rows in loaded.items()} == {"train": 2, "validation": 1}
    assert loaded["train"]["output"] == ["b", "d"]
    # .tsv in a folder: `datasets` reads it with sep="\t", so the check must too (a comma inside a field is fine)
    folder = _write_folder(tmp_path / "tsv", {"data/train.tsv": b"sentence\tlabel\nyes, really\t1\nno\t0\n"})
    loaded = _load_name(folder, tmp_path)
    assert loaded["train"]["sentence"] == ["yes, really", "no"] and loaded["train"]["label"] == [1, 0]


@pytest.mark.parametrize(
    ("files", "kwargs", "fragments"),
    [
        ({"train.parquet": b"not a parquet file"}, {}, ["train.parquet", "not a readable Parquet file"]),
        ({"train.jsonl": GOOD_JSONL}, {"dataset_config_name": "nope"}, ["config 'nope'", "BuilderConfig 'nope' not found"]),
        ({"README.md": b"no data here\n"}, {}, ["doesn't contain any data files"]),
    ],
)
def test_what_datasets_refuses_for_a_folder_is_one_line(tmp_path, files, kwargs, fragments):
    folder = _write_folder(tmp_path / "data", files)
    with pytest.raises(DatasetError) as info:
        _load_name(folder, tmp_path, **kwargs)
    message = _one_line(info)
    for fragment in fragments:
        assert fragment in message, message


@pytest.fixture
def dataset_hub(hub_server, monkeypatch):
    """The loopback Hub, also for `datasets` (which copied `HF_ENDPOINT` into `datasets.config` at import)."""
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", hub_server.endpoint)
    url = hub_server.endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"
    monkeypatch.setattr(datasets.config, "HUB_DATASETS_URL", url)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    return hub_server


def _hub_dataset(server, name: str, files: dict[str, bytes]) -> str:
    repo_id = f"neat-tester/{name}"
    HfApi(endpoint=server.endpoint, token=server.token).create_repo(repo_id, repo_type="dataset")
    for path, content in files.items():
        server.add_file(repo_id, path, content, repo_type="dataset")
    return repo_id


def test_bad_file_of_a_hub_dataset_is_named_by_repo_and_path(dataset_hub, tmp_path):
    repo_id = _hub_dataset(
        dataset_hub,
        "bad-data",
        {"data/train.jsonl": GOOD_JSONL, "data/validation.jsonl": b'{"instruction": "a", "output": "b"}\n{"output": \n'},
    )
    with pytest.raises(DatasetError) as info:
        _load_name(repo_id, tmp_path)
    message = _one_line(info)
    assert "'hf://datasets/neat-tester/bad-data/data/validation.jsonl' line 2" in message, message
    assert dataset_hub.cache_dir not in message  # named as the user knows it, not by its copy in the cache


def test_good_hub_dataset_loads_and_each_file_is_downloaded_once(dataset_hub, tmp_path):
    repo_id = _hub_dataset(
        dataset_hub, "good-data", {"train.csv": b"sentence,label\nup,1\ndown,0\n", "validation.csv": b"sentence,label\nx,1\n"}
    )
    commit = dataset_hub.branches(repo_id, repo_type="dataset")["main"]
    dataset_hub.add_file(repo_id, "train.csv", b"sentence,label\nbroken,1,2\n", repo_type="dataset")  # on main only
    loaded = _load_name(repo_id, tmp_path, dataset_revision=commit)
    assert loaded["train"]["sentence"] == ["up", "down"] and loaded["validation"]["label"] == [1]
    downloads = [r["path"] for r in dataset_hub.requests if r["method"] == "GET" and r["path"].endswith(".csv")]
    assert sorted(downloads) == sorted(f"/datasets/{repo_id}/resolve/{commit}/{f}" for f in ("train.csv", "validation.csv"))
    with pytest.raises(DatasetError) as info:  # main holds the broken file
        _load_name(repo_id, tmp_path)
    assert "'hf://datasets/neat-tester/good-data/train.csv' line 2 has 3 fields" in _one_line(info)


def test_unknown_or_unreachable_hub_dataset_is_one_line(dataset_hub, tmp_path, monkeypatch):
    with pytest.raises(DatasetError) as info:
        _load_name("neat-tester/no-such-data", tmp_path)
    message = _one_line(info)
    assert "dataset 'neat-tester/no-such-data'" in message and "doesn't exist" in message, message

    repo_id = _hub_dataset(dataset_hub, "never-fetched", {"train.jsonl": GOOD_JSONL})
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetError) as info:  # offline, and neither datasets' cache nor the Hub cache holds it
        _load_name(repo_id, tmp_path)
    message = _one_line(info)
    assert f"dataset {repo_id!r}" in message and "Couldn't reach" in message, message


def test_neat_train_refuses_a_bad_folder_dataset_before_training(tmp_path, capsys):
    """--dataset_name <folder> with a malformed JSONL line: exit status 2, one line naming the file and the line,
    nothing written to output_dir."""
    base = save_tiny_bert(tmp_path / "bert")
    folder = tmp_path / "sst2"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", SST2_ROWS)
    (folder / "validation.jsonl").write_text('{"sentence": "ok", "label": 1}\n{"sentence": "cut off", "lab\n')
    out = tmp_path / "out"
    argv = [
        "--model_name_or_path", base, "--task", "sequence-classification", "--dataset_format", "text-classification",
        "--dataset_name", str(folder), "--max_steps", "2", "--output_dir", str(out), "--cache_dir", str(tmp_path / "cache"),
    ]
    capsys.readouterr()  # the tiny model's save progress
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("neat-train: error: ") and "validation.jsonl' line 2 is not valid JSON" in err[0], err
    assert not out.exists() or not any(out.iterdir())
