"""The label rule of `neat-train`: with `--num_labels N` (N > 1) every label of every split is an integer in
0..N-1 (integral floats such as 2.0 count, and are cast to int); 1.5, NaN, inf, 2**70 or a string is refused by file,
row and column before tokenizing. Without `--num_labels`, a float label column trains as a regression, with a warning,
and a target whose squared error overflows float32 (2**70) is refused the same way. Before, a float label made any classification silently a regression, and NaN or 2**70 gave tracebacks."""

from __future__ import annotations

import json
import logging

import pytest
from train_cli_helpers import SST2_ROWS, save_tiny_bert, write_jsonl

from neat_hf.cli.train import data as data_lib
from neat_hf.cli.train import data_sources
from neat_hf.cli.train.job import prepare
from neat_hf.cli.train.main import cli, parse_args
from neat_hf.cli.train.script_args import DataArguments
from neat_hf.errors import DatasetError


def _rows(labels: list) -> list[dict]:
    return [{"sentence": row["sentence"], "label": label} for row, label in zip(SST2_ROWS, labels)]


def _resolve(tmp_path, labels: list, num_labels: int | None, *, valid: list | None = None):
    train = write_jsonl(tmp_path / "train.jsonl", _rows(labels))
    dev = write_jsonl(tmp_path / "dev.jsonl", _rows(valid)) if valid is not None else None
    args = DataArguments(train_file=train, validation_file=dev)
    raw = data_sources.load_raw_datasets(args)
    data_lib.check_values(raw, "text-classification", args, sources=data_sources.split_sources(args))
    return data_lib.resolve_labels(raw, "label", num_labels=num_labels, sources=data_sources.split_sources(args))


def test_integral_float_labels_are_classes_when_num_labels_is_given(tmp_path):
    raw, labels = _resolve(tmp_path, [0.0, 1.0, 2.0, 0, 1, 2], 3, valid=[2.0, 0.0])
    assert labels == data_lib.Labels(3, None, False)
    assert list(raw["train"]["label"]) == [0, 1, 2, 0, 1, 2] and list(raw["validation"]["label"]) == [2, 0]
    assert all(type(v) is int for split in raw.values() for v in split["label"])
    assert str(raw["train"].features["label"].dtype) == "int64"


@pytest.mark.parametrize(
    ("bad", "shown"),
    [(1.5, "1.5"), (2**70, "1.1805916207174113e+21"), (3.0, "3.0"), (-1.0, "-1.0"), (10**400, None), (float("nan"), "nan"),
     (float("inf"), "inf"), ("pos", "'pos'")],
)
def test_a_label_that_is_not_a_class_is_refused_by_file_row_and_column(tmp_path, bad, shown):
    """10**400 is read as inf by `datasets`; NaN/inf/strings are refused by `check_values` with the same naming."""
    with pytest.raises(DatasetError) as info:
        _resolve(tmp_path, [0, 1, 0, bad, 1, 0], 3)
    message = str(info.value)
    assert "\n" not in message and "train.jsonl" in message and "row 4" in message and "'label'" in message, message
    assert "integers 0..N-1" in message or "integers 0..2" in message, message
    if shown:
        assert f"label {shown}" in message, message


def test_a_non_integral_validation_label_is_refused(tmp_path):
    with pytest.raises(DatasetError) as info:
        _resolve(tmp_path, [0.0, 1.0, 0.0, 1.0, 1.0, 0.0], 2, valid=[0, 0.5])
    message = str(info.value)
    assert "'validation' split (" in message and "dev.jsonl" in message and "row 2" in message, message
    # Integer train labels: `datasets` reads the validation file with the train file's int64 schema and refuses 0.5
    # itself, in one line naming the files (not the row).
    with pytest.raises(DatasetError, match="dev.jsonl.*truncated converting to int64"):
        _resolve(tmp_path, [0, 1, 0, 1, 1, 0], 2, valid=[0, 0.5])


def test_float_labels_without_num_labels_are_a_regression_with_a_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="neat_hf.cli.train.data"):
        raw, labels = _resolve(tmp_path, [0.5, 1, 2.25, 0, 1, 0], None)
    assert labels == data_lib.Labels(1, None, True) and raw["train"]["label"][0] == 0.5
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "\n" not in warning and "regression" in warning and "--num_labels N" in warning and "row 1" in warning
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="neat_hf.cli.train.data"):  # asked for one output: no warning
        assert _resolve(tmp_path, [0.5, 1, 2.25, 0, 1, 0], 1)[1] == data_lib.Labels(1, None, True)
    assert not caplog.records


def test_a_regression_target_beyond_float32_is_refused_by_row(tmp_path):
    """2**70 (read as a float) would give an infinite MSE from the first step: refused by split, row and column."""
    with pytest.raises(DatasetError, match=r"'train' split.*row 3 has label 1\.18.*e\+21 in column 'label'.*float32"):
        _resolve(tmp_path, [0.5, 1.0, 2**70, 0.0, 1.0, 0.0], None)
    assert _resolve(tmp_path, [0.5, 1.0, -1e9, 0.0, 1.0, 0.0], None)[1] == data_lib.Labels(1, None, True)


def test_integer_labels_keep_their_rule(tmp_path):
    assert _resolve(tmp_path, [0, 1, 2, 0, 1, 2], None)[1] == data_lib.Labels(3, None, False)
    assert _resolve(tmp_path, [0, 2, 0, 2, 0, 2], 3)[1] == data_lib.Labels(3, None, False)  # class 1 has no row
    with pytest.raises(DatasetError, match="--num_labels N when some classes"):
        _resolve(tmp_path, [0, 2, 0, 2, 0, 2], None)


def test_an_integer_beyond_64_bits_in_a_csv_is_refused_by_line_and_column(tmp_path):
    """`datasets` could not read it ("Python int too large to convert to C long", no row named)."""
    path = tmp_path / "train.csv"
    path.write_text("sentence,label\ngood,1\nbad,0\nodd,1180591620717411303424\n")
    with pytest.raises(DatasetError) as info:
        data_sources.load_raw_datasets(DataArguments(train_file=str(path)))
    message = str(info.value)
    assert "train.csv' line 4 column 'label' holds the integer 1180591620717411303424" in message, message
    path.write_text("sentence,label\n1180591620717411303424,1\nwords,0\n")  # a text column: read as text, accepted
    assert data_sources.load_raw_datasets(DataArguments(train_file=str(path)))["train"]["label"] == [1, 0]


def _argv(base, train, out, *extra):
    return ["--model_name_or_path", base, "--task", "sequence-classification", "--dataset_format", "text-classification",
            "--train_file", train, "--max_steps", "1", "--output_dir", str(out), *extra]


@pytest.mark.parametrize("bad", [1.5, 2**70, float("nan")])
def test_neat_train_refuses_a_non_integer_label_with_num_labels_in_one_line(tmp_path, capsys, bad):
    base = save_tiny_bert(tmp_path / "bert")
    train = write_jsonl(tmp_path / "train.jsonl", _rows([0, 1, bad, 1, 0, 1]))
    out = tmp_path / "out"
    capsys.readouterr()
    assert cli(_argv(base, train, out, "--num_labels", "2")) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "examples/s" not in line]
    assert len(err) == 1 and err[0].startswith("neat-train: error: "), err
    assert "train.jsonl" in err[0] and "row 3" in err[0] and "'label'" in err[0], err
    assert "integers 0..1" in err[0] or "finite numbers (integers 0..N-1" in err[0], err  # NaN: `check_values`
    assert not out.exists() or not any(out.iterdir())


def test_neat_train_builds_a_classifier_from_integral_float_labels(tmp_path):
    """Labels 0.0/1.0/2.0 with --num_labels 3: a 3-class head with cross-entropy on int labels (it was an MSE
    regression with 3 outputs)."""
    base = save_tiny_bert(tmp_path / "bert")
    train = write_jsonl(tmp_path / "train.jsonl", _rows([0.0, 1.0, 2.0, 1.0, 0.0, 2.0]))
    args, recipe = parse_args(_argv(base, train, tmp_path / "out", "--num_labels", "3"))
    job = prepare(*args, recipe=recipe)
    config = job.trainer.model.get_base_model().config
    assert config.num_labels == 3 and config.problem_type != "regression"
    assert list(job.trainer.train_dataset["labels"]) == [0, 1, 2, 1, 0, 2]


def test_neat_train_trains_float_labels_as_a_regression_and_says_so(tmp_path, caplog):
    base = save_tiny_bert(tmp_path / "bert")
    train = write_jsonl(tmp_path / "train.jsonl", _rows([0.5, 1.0, 2.5, 1.0, 0.0, 4.0]))
    args, recipe = parse_args(_argv(base, train, tmp_path / "out"))
    with caplog.at_level(logging.WARNING, logger="neat_hf.cli.train.data"):
        job = prepare(*args, recipe=recipe)
    config = job.trainer.model.get_base_model().config
    assert config.num_labels == 1 and config.problem_type == "regression"
    assert any("regression" in r.getMessage() and "--num_labels" in r.getMessage() for r in caplog.records)
    assert json.dumps(list(job.trainer.train_dataset["labels"])) == "[0.5, 1.0, 2.5, 1.0, 0.0, 4.0]"
