"""`neat-train`: argument parsing, recipes, config files and the errors raised before any training starts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from neat_hf.errors import NeatError, TrainingArgumentError
from neat_hf.cli.train.recipe_registry import UnknownRecipeError, list_recipes, load_recipe, resolve_recipe
from neat_hf.cli.train.main import cli, make_parser, parse_args
from neat_hf.trainers.training_args import RENAMED_FIELDS

EXPECTED_RECIPES = {
    "default",
    "commonsense/llama2-7b",
    "commonsense/llama3-8b",
    "commonsense/llama3-8b-4bit",
    "math/llama2-7b",
    "math/llama3-8b",
    "glue/roberta-base_neat-s",
    "glue/roberta-base_neat-l",
    "vit/vit-base_cifar10",
}
# The GPU recipes ask for bf16, which TrainingArguments refuses on a CPU-only machine unless use_cpu is set.
CPU = ["--use_cpu"]


def test_shipped_recipes_are_listed():
    assert set(list_recipes()) == EXPECTED_RECIPES
    assert list_recipes()[0] == "default"


def test_list_flag_prints_every_recipe(capsys):
    assert cli(["--list"]) == 0
    out = capsys.readouterr().out
    for name in EXPECTED_RECIPES:
        assert name in out
    assert "Table 10" in out and "Table 11" in out and "Table 6" in out


@pytest.mark.parametrize("name", sorted(EXPECTED_RECIPES))
def test_recipe_header_and_parse(name):
    text = resolve_recipe(name).read_text(encoding="utf-8")
    header = [line for line in text.splitlines() if line.startswith("#")]
    joined = "\n".join(header)
    assert f"neat-train --recipe {name}" in joined or (name == "default" and "neat-train\n" in joined + "\n")
    assert "Expected runtime" in joined
    if name != "default":
        assert re.search(r"Tables? \d", header[0]), header[0]
    (model_args, data_args, neat_args, training_args), recipe = parse_args(["--recipe", name, *CPU])
    assert recipe == name
    values = load_recipe(name)
    # Every value of the file reached its dataclass, with the parser's type (YAML reads 3e-4 as a string).
    for key, value in values.items():
        key = key if hasattr(training_args, key) else RENAMED_FIELDS.get(key, key)  # transformers < 5.23 names
        for obj in (model_args, data_args, neat_args, training_args):
            if hasattr(obj, key):
                got = getattr(obj, key)
                got = getattr(got, "value", got)  # enums of TrainingArguments
                if key == "report_to":  # TrainingArguments turns "none" into []
                    got = got or "none"
                assert got == value or got == [value] or str(got) == str(value), (key, got, value)
                break
        else:
            pytest.fail(f"{key} of {name} reached no dataclass")


def test_paper_hyperparameters_of_the_commonsense_recipe():
    (model_args, data_args, neat_args, training_args), _ = parse_args(["--recipe", "commonsense/llama2-7b", *CPU])
    assert (neat_args.neat_r, neat_args.neat_scaling, neat_args.neat_dropout) == (32, 1.0, 0.05)
    assert neat_args.neat_target_modules == ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"]
    assert training_args.learning_rate == pytest.approx(3e-4)
    assert training_args.warmup_steps == 100 and training_args.num_train_epochs == 1
    assert training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps == 16
    assert data_args.cutoff_len == 256 and data_args.train_on_inputs is False
    assert data_args.dataset_format == "instruction"


def test_paper_hyperparameters_of_the_math_and_glue_recipes():
    (_, data_args, neat_args, training_args), _ = parse_args(["--recipe", "math/llama3-8b", *CPU])
    assert neat_args.neat_r == 64 and training_args.num_train_epochs == 3 and data_args.cutoff_len == 2048
    assert data_args.dataset_format == "metamathqa"
    (_, _, small, small_args), _ = parse_args(["--recipe", "glue/roberta-base_neat-s"])
    (_, _, large, _), _ = parse_args(["--recipe", "glue/roberta-base_neat-l"])
    assert small.neat_r == 1 and small.neat_layers_to_transform == list(range(4, 12))
    assert large.neat_r == 8 and large.neat_layers_to_transform is None
    assert small.neat_modules_to_save == ["classifier"]
    assert small_args.head_learning_rate == pytest.approx(5e-3) and small_args.neat_learning_rate == pytest.approx(5e-3)


def test_command_line_beats_config_beats_recipe(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("recipe: commonsense/llama2-7b\nlearning_rate: 1e-4\nneat_r: 8\n", encoding="utf-8")
    (_, _, neat_args, training_args), recipe = parse_args(["--config", str(config), *CPU])
    assert recipe == "commonsense/llama2-7b"
    assert training_args.learning_rate == pytest.approx(1e-4)  # YAML "1e-4" is a string: converted like a flag
    assert neat_args.neat_r == 8 and neat_args.neat_dropout == 0.05  # the rest comes from the recipe
    (_, _, neat_args, training_args), _ = parse_args(["--config", str(config), "--neat_r", "4", *CPU])
    assert neat_args.neat_r == 4


def test_json_config_and_explicit_recipe(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"neat_depth": 1, "neat_act_fn": "gelu", "max_steps": 7}), encoding="utf-8")
    (_, _, neat_args, training_args), recipe = parse_args(["--recipe", "default", "--config", str(config)])
    assert recipe == "default"
    assert (neat_args.neat_depth, neat_args.neat_act_fn, training_args.max_steps) == (1, "gelu", 7)


def test_default_recipe_applies_only_without_model_recipe_or_config():
    (model_args, data_args, neat_args, training_args), recipe = parse_args([])
    assert recipe == "default"
    assert model_args.model_name_or_path == "builtin:tiny-llama"
    assert data_args.dataset_name == "builtin:number-words"
    assert training_args.output_dir == "neat-output"
    (model_args, data_args, _, training_args), recipe = parse_args(["--model_name_or_path", "some/model"])
    assert recipe is None and data_args.dataset_name is None
    assert training_args.output_dir == "neat-output"


def test_regex_target_modules_and_launcher_flags():
    (_, _, neat_args, training_args), _ = parse_args(
        ["--neat_target_modules", r".*\.(q|v)_proj", "--local_rank=0", "--max_steps", "3"]
    )
    assert neat_args.to_neat_config().target_modules == r".*\.(q|v)_proj"
    assert training_args.max_steps == 3
    (_, _, neat_args, _), _ = parse_args(["--neat_target_modules", "q_proj", "v_proj"])
    assert neat_args.to_neat_config().target_modules == ["q_proj", "v_proj"]


def test_parser_has_every_dataclass_flag():
    parser = make_parser()
    flags = {option for action in parser._actions for option in action.option_strings}
    for flag in ("--recipe", "--config", "--list", "--neat_r", "--neat_learning_rate", "--head_learning_rate",
                 "--cutoff_len", "--torch_dtype", "--trust_remote_code", "--deepspeed", "--output_dir"):
        assert flag in flags


# ----------------------------------------------------------------------------------------------- bad input


def test_unknown_recipe_lists_the_known_ones(capsys):
    with pytest.raises(UnknownRecipeError) as info:
        parse_args(["--recipe", "commonsense/llama2-7"])
    message = str(info.value)
    assert "commonsense/llama2-7b" in message and "Did you mean" in message
    for name in EXPECTED_RECIPES:
        assert name in message
    assert cli(["--recipe", "nope"]) == 2
    assert "Unknown recipe 'nope'" in capsys.readouterr().err


def test_unknown_key_in_config_is_named(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("learning_rat: 1e-4\n", encoding="utf-8")
    with pytest.raises(ValueError, match="learning_rat.*did you mean 'learning_rate'"):
        parse_args(["--config", str(config)])


def test_bad_value_in_config_is_named(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("neat_r: many\n", encoding="utf-8")
    with pytest.raises(ValueError, match="neat_r"):
        parse_args(["--config", str(config)])


def test_config_file_must_exist_and_be_a_mapping(tmp_path):
    with pytest.raises(TrainingArgumentError, match="does not exist"):
        parse_args(["--config", str(tmp_path / "missing.yaml")])
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ValueError, match="flat mapping"):
        parse_args(["--config", str(listed)])


def test_unreadable_config_files_are_one_line(tmp_path, capsys):
    """A YAML syntax error (yaml's message spans lines) and bytes that are not UTF-8: one line, exit status 2."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("learning_rate: [1e-4\n", encoding="utf-8")
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    for path, match in ((broken, "is not valid YAML"), (binary, "cannot be read as UTF-8")):
        with pytest.raises(TrainingArgumentError, match=match):
            parse_args(["--config", str(path)])
        assert cli(["--config", str(path), "--output_dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("neat-train: error: ") and err.count("\n") == 1, err


def test_transformers_own_argument_checks_are_one_line(tmp_path, capsys):
    """`TrainingArguments.__post_init__` refuses some combinations with a ValueError of several lines; neat-train
    reports it as a `TrainingArgumentError` line (exit status 2), not as the traceback of a bug."""
    argv = ["--load_best_model_at_end", "--eval_strategy", "steps", "--save_strategy", "epoch",
            "--output_dir", str(tmp_path / "out")]
    with pytest.raises(TrainingArgumentError, match="requires the save and eval strategy to match"):
        parse_args(argv)
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("neat-train: error: Invalid training arguments: ") and err.count("\n") == 1, err


def test_an_unexpected_error_keeps_its_traceback(tmp_path, monkeypatch):
    """Only neat-hf's own errors are reported as careless input (one line, exit status 2): a bare ValueError from a
    bug inside the job propagates, so `python -m neat_hf.cli.train` ends with its traceback and status 1."""
    import neat_hf.cli.train.job as job

    def buggy_prepare(*args, **kwargs):
        raise ValueError("a bug inside the job, not the user's input")

    monkeypatch.setattr(job, "prepare", buggy_prepare)
    argv = ["--max_steps", "1", "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match="a bug inside the job"):
        cli(argv)
    probe = (
        "import sys\n"
        "import neat_hf.cli.train.job as job\n"
        "def buggy_prepare(*args, **kwargs):\n"
        "    raise ValueError('a bug inside the job')\n"
        "job.prepare = buggy_prepare\n"
        "from neat_hf.cli.train.main import cli\n"
        f"sys.exit(cli({argv!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback (most recent call last)" in result.stderr and "ValueError: a bug inside the job" in result.stderr
    assert "neat-train: error:" not in result.stderr


def test_unknown_flag_gets_a_suggestion(capsys):
    with pytest.raises(ValueError, match="--neat_rank.*did you mean --neat_r"):
        parse_args(["--neat_rank", "4"])
    assert cli(["--neat_rank", "4"]) == 2
    assert "Unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize("flag, suggestion", [
    ("--r", "--neat_r"),  # the issue's `--r 0`: a NeatConfig name without the neat_ prefix
    ("--target_modules", "--neat_target_modules"),
    ("--lr", "--learning_rate"),
    ("--learning-rat", "--learning_rate"),
])
def test_unknown_flag_suggests_the_flag_meant(flag, suggestion):
    with pytest.raises(ValueError, match=rf"{flag} \(did you mean {suggestion}\?\)"):
        parse_args([flag, "1"])


def test_unknown_flag_without_a_close_one_names_the_help(capsys):
    assert cli(["--xyzzy", "1"]) == 2
    err = capsys.readouterr().err
    assert "did you mean" not in err and "--help-all" in err and err.count("--xyzzy") == 1


def test_missing_deepspeed_config_fails_while_parsing(tmp_path, capsys):
    with pytest.raises(NeatError, match="not found"):
        parse_args(["--max_steps", "1", "--deepspeed", str(tmp_path / "nope.json")])
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json", encoding="utf-8")
    with pytest.raises(NeatError):
        parse_args(["--max_steps", "1", "--deepspeed", str(broken)])
    assert cli(["--max_steps", "1", "--deepspeed", str(broken), "--output_dir", str(tmp_path / "out")]) == 2
    assert "neat-train: error:" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out")


def test_invalid_choices_are_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse_args(["--model_name_or_path", "x", "--task", "translation"])
    assert "invalid choice: 'translation'" in capsys.readouterr().err
    config = tmp_path / "bad.yaml"
    config.write_text("prompt_template: chatml\n", encoding="utf-8")  # values from files skip argparse's check
    with pytest.raises(ValueError, match="prompt_template='chatml' is not supported"):
        parse_args(["--config", str(config)])


def test_image_tasks_keep_the_raw_image_column(tmp_path):
    base = ["--model_name_or_path", str(tmp_path / "no-model"), "--task", "image-classification",
            "--output_dir", str(tmp_path / "out")]
    (_, _, _, training_args), _ = parse_args(base)
    assert training_args.remove_unused_columns is False
    args, recipe = parse_args([*base, "--remove_unused_columns", "true"])
    assert args[3].remove_unused_columns is True
    from neat_hf.cli.train.job import prepare

    with pytest.raises(ValueError, match="--remove_unused_columns false"):  # refused before the model is looked up
        prepare(*args, recipe=recipe)


def test_task_types_are_the_cores():
    """`--task` maps onto PEFT task types, which are defined once, in `neat_hf.constants.TASK_TYPES`."""
    from neat_hf.constants import TASK_TYPES
    from neat_hf.cli.train.script_args import TASK_TYPE_OF_TASK, TASKS

    assert set(TASKS) == set(TASK_TYPE_OF_TASK)
    assert {t for t in TASK_TYPE_OF_TASK.values() if t is not None} <= TASK_TYPES

