"""Training data checked before the first step: bad files, null fields and out-of-range labels get one line naming the
file, the row and the column (issue 16, item 6)."""

from __future__ import annotations

import pytest
from train_cli_helpers import COMMONSENSE_ROWS, SST2_ROWS, save_tiny_bert, write_jsonl

from neat_hf.errors import DatasetError
from neat_hf.trainers import data as data_lib
from neat_hf.trainers.script_args import DataArguments
from neat_hf.trainers.train import cli


def _load(path, **kwargs):
    return data_lib.load_raw_datasets(DataArguments(train_file=str(path), **kwargs))


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
    ],
)
def test_null_and_mistyped_fields_are_named(tmp_path, rows, fmt, fragments):
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    args = DataArguments(train_file=path)
    loaded = data_lib.load_raw_datasets(args)
    with pytest.raises(DatasetError) as info:
        data_lib.check_values(loaded, fmt, args, sources=data_lib.split_sources(args))
    message = str(info.value)
    assert "train.jsonl" in message and "'train' split" in message, message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("bad", [2, -1])
def test_labels_are_checked_in_every_split_against_num_labels(tmp_path, bad):
    train = write_jsonl(tmp_path / "train.jsonl", SST2_ROWS)
    valid = write_jsonl(tmp_path / "dev.jsonl", [*SST2_ROWS[:3], {"sentence": "odd", "label": bad}])
    args = DataArguments(train_file=train, validation_file=valid)
    loaded = data_lib.load_raw_datasets(args)
    if bad == 2:
        data_lib.check_labels(loaded, "label", 3)  # in range once there are three classes
    with pytest.raises(DatasetError) as info:
        data_lib.check_labels(loaded, "label", 2, sources=data_lib.split_sources(args))
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
