"""Launches that would crash on one rank, or train differently from what was asked, are named before anything loads;
resuming a finished run says so and trains nothing (`neat_hf.cli.train.launch_checks`)."""

from __future__ import annotations

import json

import pytest

from neat_hf.errors import TrainingArgumentError, UnsupportedQuantizationError
from neat_hf.cli.train.launch_checks import check_launch, finished_run_message
from neat_hf.cli.train.main import cli, parse_args

#: What `accelerate launch` puts in the environment of the processes it starts.
ACCELERATE = {"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_DYNAMO_BACKEND": "NO", "ACCELERATE_USE_CPU": "False"}
TORCHRUN_RANK_1 = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def _args(tmp_path, *flags: str):
    (model_args, _, _, training_args), _ = parse_args([*flags, "--output_dir", str(tmp_path / "out")])
    return model_args, training_args


@pytest.mark.parametrize("flags, environ, match", [
    # The crash: rank 1 of a 2-process 4-bit launch of the built-in model failed in transformers.
    (["--load_in_4bit"], TORCHRUN_RANK_1, "built-in model runs in one process; this launch started 2"),
    (["--load_in_4bit", "--deepspeed", "zero3"], {}, "--load_in_4bit with --deepspeed"),  # was transformers' device_map error
    (["--load_in_4bit", "--deepspeed", "zero2"], {}, "--load_in_4bit with --deepspeed"),
    (["--load_in_8bit", "--fsdp", "full_shard auto_wrap"], {}, "--load_in_8bit with --fsdp"),
])
def test_quantized_launches_neat_hf_cannot_run_are_refused(tmp_path, flags, environ, match):
    model_args, training_args = _args(tmp_path, *flags)
    with pytest.raises(UnsupportedQuantizationError, match=match):
        check_launch(model_args, training_args, environ)


def test_accelerate_starting_fewer_processes_than_asked_is_named(tmp_path):
    """`accelerate launch --num_processes 2 -m neat_hf.cli.train` on a machine without GPUs: one process."""
    model_args, training_args = _args(tmp_path)
    with pytest.raises(TrainingArgumentError, match="asked for several processes .* but started one"):
        check_launch(model_args, training_args, {**ACCELERATE, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"})
    check_launch(model_args, training_args, ACCELERATE)  # --num_processes 1: fine
    check_launch(model_args, training_args, {**ACCELERATE, **TORCHRUN_RANK_1})  # accelerate's multi-process launcher


def test_a_deepspeed_config_accelerate_does_not_use_is_named(tmp_path):
    model_args, training_args = _args(tmp_path, "--deepspeed", "zero2")
    with pytest.raises(TrainingArgumentError, match="accelerate launch was not told to use DeepSpeed"):
        check_launch(model_args, training_args, ACCELERATE)
    check_launch(model_args, training_args, {**ACCELERATE, **TORCHRUN_RANK_1, "ACCELERATE_USE_DEEPSPEED": "true"})
    check_launch(model_args, training_args, TORCHRUN_RANK_1)  # torchrun needs no extra flag


def test_plain_launches_pass(tmp_path):
    model_args, training_args = _args(tmp_path)
    check_launch(model_args, training_args, {})
    check_launch(model_args, training_args, TORCHRUN_RANK_1)
    check_launch(*_args(tmp_path, "--load_in_4bit"), {})


def _finished_run(out, step: int, best: str | None = None) -> None:
    checkpoint = out / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    state = {"global_step": step, "max_steps": step, "best_model_checkpoint": best}
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))


def test_resuming_a_finished_run_says_so_and_changes_nothing(tmp_path, capsys):
    out = tmp_path / "out"
    _finished_run(out, 3)
    before = sorted(p.name for p in out.rglob("*"))
    argv = ["--max_steps", "3", "--output_dir", str(out), "--resume_from_checkpoint", "true"]
    assert cli(argv) == 0
    err = capsys.readouterr().err
    assert "the run has finished" in err and "checkpoint-3" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.rglob("*")) == before
    # More steps to go: not finished, the message stays silent.
    _, training_args = _args(tmp_path, "--max_steps", "5", "--resume_from_checkpoint", "true")
    assert finished_run_message(training_args) is None


def test_resuming_a_finished_run_leaves_what_save_total_limit_allows(tmp_path, capsys):
    """checkpoint-4 left beside checkpoint-5 under `--save_total_limit 1` (a kill between checkpoint-5's completion
    and the rotation after it, or a limit given only on the resume): the resume trains nothing and saves nothing, so
    it deletes checkpoint-4 itself, as the run's rotation would have, and says so. The newest checkpoint and the run's
    best one stay; a deletion a kill interrupted is finished."""
    out = tmp_path / "out"
    for step in (3, 4, 5):
        _finished_run(out, step)
    (out / ".deleting-checkpoint-2-0123abcd").mkdir()
    argv = ["--max_steps", "5", "--output_dir", str(out), "--resume_from_checkpoint", "true", "--save_total_limit", "1"]
    assert cli(argv) == 0
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "the run has finished" in err and "beyond --save_total_limit 1 were deleted (checkpoint-3, checkpoint-4)" in err
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-5"]
    assert cli(argv) == 0  # again: nothing left to delete
    assert "nothing was changed" in capsys.readouterr().err

    best_run = tmp_path / "best"
    for step in (3, 4, 5):  # the Trainer records the best checkpoint as a path from the run's working directory
        _finished_run(best_run, step, best="somewhere/else/checkpoint-3")
    assert cli([*argv[:2], "--output_dir", str(best_run), *argv[4:]]) == 0
    assert "(checkpoint-4)" in capsys.readouterr().err
    assert sorted(p.name for p in best_run.iterdir()) == ["checkpoint-3", "checkpoint-5"]

    # A checkpoint named explicitly that is not the newest one: nothing in the folder is touched.
    older = tmp_path / "older"
    for step in (4, 5):
        _finished_run(older, step)
    assert cli(["--max_steps", "4", "--output_dir", str(older), "--resume_from_checkpoint", str(older / "checkpoint-4"),
                "--save_total_limit", "1"]) == 0
    assert "nothing was changed" in capsys.readouterr().err
    assert sorted(p.name for p in older.iterdir()) == ["checkpoint-4", "checkpoint-5"]


def test_the_launcher_is_checked_before_the_arguments_are_built(tmp_path, monkeypatch, capsys):
    """Under accelerate's one-process launcher, building DeepSpeed training arguments waited for ranks that never
    start (the issue's run trained alone instead): neat-train names the launch before parsing."""
    import neat_hf.cli.train.main as train_module

    from neat_hf.cli.train.launch_checks import deepspeed_flag

    assert deepspeed_flag(["--max_steps", "1", "--deepspeed", "zero2"]) == "zero2"
    assert deepspeed_flag(["--deepspeed=zero3"]) == "zero3" and deepspeed_flag(["--max_steps", "1"]) is None
    for name, value in {**ACCELERATE, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(train_module, "parse_args", lambda argv: pytest.fail("parsed before the launch check"))
    assert cli(["--deepspeed", "zero2", "--max_steps", "1", "--output_dir", str(tmp_path / "out")]) == 2
    assert "accelerate launch was asked for several processes" in capsys.readouterr().err
    monkeypatch.delenv("MASTER_ADDR")
    assert cli(["--deepspeed", "zero2", "--output_dir", str(tmp_path / "out")]) == 2
    assert "accelerate launch was not told to use DeepSpeed" in capsys.readouterr().err
