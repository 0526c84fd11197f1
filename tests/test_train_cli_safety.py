"""`neat-train` never loses work and answers careless input with one line (issue 14, items 1 and 4).

The refusals must come before any data or model is loaded: each test makes loading fail loudly to prove it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
from huggingface_hub import constants as hub_constants

from neat_hf import NeatConfig, get_neat_model
from neat_hf.constants import ADAPTER_WEIGHTS_NAME
from neat_hf.errors import NeatError
from neat_hf.trainers import NeatTrainer, NeatTrainingArguments
from neat_hf.cli.train.main import cli

from conftest import lm_dataset, tiny_llama
from train_cli_helpers import COMMONSENSE_ROWS, save_tiny_llama, write_jsonl


SHRINK = ["--max_train_samples", "64", "--max_eval_samples", "16", "--logging_steps", "1"]


@pytest.fixture
def no_loading(monkeypatch):
    """Data or model loading fails the test: the checks under test must come first."""
    def fail(*args, **kwargs):
        raise AssertionError("data or model was loaded before the check")
    monkeypatch.setattr("neat_hf.cli.train.job.data_sources.load_raw_datasets", fail)
    monkeypatch.setattr("neat_hf.cli.train.job._load_tokenizer_and_model", fail)


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("neat-train:")]
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------------------------ never lose work
@pytest.mark.parametrize("kind", ["adapter", "checkpoint"])
def test_new_run_into_trained_work_is_refused_before_loading(tmp_path, capsys, no_loading, kind):
    out = tmp_path / "out"
    folder = out if kind == "adapter" else out / "checkpoint-500"
    # Same base as the run: replacing it would still lose the earlier training.
    get_neat_model(tiny_llama(), NeatConfig(r=4, base_model_name_or_path="builtin:tiny-llama")).save_pretrained(folder)
    before = {p: (folder / p).read_bytes() for p in os.listdir(folder)}
    assert cli(["--max_steps", "5", "--output_dir", str(out)]) == 2
    line = _one_error_line(capsys)
    assert "already holds trained work" in line and "--resume_from_checkpoint" in line
    assert "--overwrite_output_dir" in line
    assert {p: (folder / p).read_bytes() for p in os.listdir(folder)} == before


def test_resume_with_nothing_to_resume_fails_before_loading(tmp_path, capsys, no_loading):
    assert cli(["--output_dir", str(tmp_path / "empty"), "--resume_from_checkpoint", "true"]) == 2
    assert "holds no checkpoint-* folder" in _one_error_line(capsys)
    assert cli(["--output_dir", str(tmp_path / "o"), "--resume_from_checkpoint", str(tmp_path / "nope")]) == 2
    assert "no such folder" in _one_error_line(capsys)
    assert not (tmp_path / "empty").exists()


def test_resume_after_a_kill_during_the_first_checkpoint_is_refused_before_loading_and_the_advice_works(
        tmp_path, capsys, monkeypatch):
    from neat_hf.trainers.checkpoints import MARKER

    out = tmp_path / "out"
    first = out / "checkpoint-2"  # what a kill during the first checkpoint's save leaves
    first.mkdir(parents=True)
    (first / MARKER).write_text("")
    (first / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    argv = ["--max_steps", "2", "--save_steps", "2", "--output_dir", str(out), *SHRINK]
    with monkeypatch.context() as patch:
        def fail(*args, **kwargs):
            raise AssertionError("data or model was loaded before the check")
        patch.setattr("neat_hf.cli.train.job.data_sources.load_raw_datasets", fail)
        patch.setattr("neat_hf.cli.train.job._load_tokenizer_and_model", fail)
        assert cli([*argv, "--resume_from_checkpoint", "true"]) == 2
        line = _one_error_line(capsys)
        assert "no complete checkpoint" in line and "checkpoint-2" in line
        assert "without --resume_from_checkpoint" in line
        assert cli([*argv, "--resume_from_checkpoint", str(first)]) == 2
        assert "incomplete" in _one_error_line(capsys)
    # The advice: the same command without --resume_from_checkpoint trains, replacing the interrupted checkpoint.
    assert cli(argv) == 0
    assert not (first / MARKER).exists()
    assert json.loads((first / "trainer_state.json").read_text())["global_step"] == 2


def test_resume_line_never_prints_the_hub_token():
    from neat_hf.cli.train.main import _resume_line

    stopped = {"signal": "SIGTERM", "step": 3, "max_steps": 10, "checkpoint": "out/checkpoint-3"}
    for argv in (["--push_to_hub", "--hub_token", "hf_SeCrEt123", "--max_steps", "10"],
                 ["--push_to_hub", "--hub_token=hf_SeCrEt123", "--max_steps", "10"],
                 ["--push_to_hub", "--hub-token", "hf_SeCrEt123", "--max_steps", "10"]):
        line = _resume_line(stopped, [*argv, "--resume_from_checkpoint", "true"])
        assert "hf_SeCrEt123" not in line
        command = line.split("Resume with: ", 1)[1].split(" (", 1)[0].split()
        assert command == ["neat-train", "--push_to_hub", "--max_steps", "10", "--resume_from_checkpoint",
                           "out/checkpoint-3"]
        assert "HF_TOKEN" in line  # says where the token comes from instead
    assert "HF_TOKEN" not in _resume_line(stopped, ["--max_steps", "10"])


def test_neat_trainer_refuses_to_train_over_earlier_work(tmp_path):
    args = NeatTrainingArguments(str(tmp_path), max_steps=1, use_cpu=True, report_to="none", save_strategy="no")
    get_neat_model(tiny_llama(), NeatConfig(r=4)).save_pretrained(tmp_path)
    weights = (tmp_path / ADAPTER_WEIGHTS_NAME).read_bytes()
    trainer = NeatTrainer(tiny_llama(), args, neat_config=NeatConfig(r=4), train_dataset=lm_dataset(8))
    with pytest.raises(NeatError, match="already holds trained work.*overwrite_output_dir"):
        trainer.train()
    assert (tmp_path / ADAPTER_WEIGHTS_NAME).read_bytes() == weights
    # overwrite_output_dir allows it; a trainer whose folder was empty may train (and save) repeatedly.
    args = NeatTrainingArguments(str(tmp_path), max_steps=1, use_cpu=True, report_to="none", save_strategy="no",
                                 overwrite_output_dir=True)
    NeatTrainer(tiny_llama(), args, neat_config=NeatConfig(r=4), train_dataset=lm_dataset(8)).train()
    fresh = NeatTrainingArguments(str(tmp_path / "fresh"), max_steps=1, use_cpu=True, report_to="none")
    trainer = NeatTrainer(tiny_llama(), fresh, neat_config=NeatConfig(r=4), train_dataset=lm_dataset(8))
    trainer.train()
    trainer.train()


def _start(argv: list[str], cwd) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "neat_hf.cli.train.main", *argv], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_training_saves_a_checkpoint_that_resumes(tmp_path, signum, code):
    out = tmp_path / "out"
    argv = ["--max_steps", "100000", "--output_dir", str(out), *SHRINK]
    proc = _start(argv, tmp_path)
    # Wait until training runs: the training progress bar (on stderr) has counted a step.
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: proc.stderr.read(64), "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 240
    while " 1/100000 [" not in "".join(seen):
        assert time.monotonic() < deadline and proc.poll() is None, "".join(seen)[-2000:]
        time.sleep(0.2)
    proc.send_signal(signum)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    stderr = "".join(seen)
    assert proc.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("neat-train: stopped by")]
    assert len(lines) == 1, stderr[-3000:]
    checkpoints = sorted(out.glob("checkpoint-*"))
    assert len(checkpoints) == 1 and str(checkpoints[0]) in lines[0]
    step = int(checkpoints[0].name.split("-")[1])
    assert 1 <= step < 100000
    assert not (out / ADAPTER_WEIGHTS_NAME).exists()  # no half-trained "final" adapter
    assert (checkpoints[0] / "optimizer.pt").is_file() and (checkpoints[0] / ADAPTER_WEIGHTS_NAME).is_file()
    # The printed command resumes from there (shortened to two more steps).
    command = lines[0].split("Resume with: ", 1)[1].split()
    assert command[0] == "neat-train" and command[-2:] == ["--resume_from_checkpoint", str(checkpoints[0])]
    assert cli([*command[1:], "--max_steps", str(step + 2)]) == 0
    state = json.loads((out / f"checkpoint-{step + 2}" / "trainer_state.json").read_text())
    assert state["global_step"] == step + 2
    assert (out / ADAPTER_WEIGHTS_NAME).is_file()


# ------------------------------------------------------------------------------------ careless input
def test_user_data_with_the_builtin_model_is_refused(tmp_path, capsys, no_loading):
    train = write_jsonl(tmp_path / "mydata.jsonl", COMMONSENSE_ROWS)
    # The input mistake is reported, not the output folder it would also have met (the main job's neat-output).
    get_neat_model(tiny_llama(), NeatConfig(r=4, base_model_name_or_path="builtin:tiny-llama")).save_pretrained(tmp_path / "o")
    assert cli(["--train_file", train, "--output_dir", str(tmp_path / "o")]) == 2
    line = _one_error_line(capsys)
    assert f"--train_file {train!r}" in line and "builtin:tiny-llama" in line and "--model_name_or_path" in line
    assert cli(["--dataset_name", "someone/their-data", "--output_dir", str(tmp_path / "p")]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("neat-train: error: --dataset_name 'someone/their-data' without --model_name_or_path"), line


@pytest.mark.parametrize("name", ["./no-such-model", "models/llama/7b", "~/no-such-model-14"])
def test_missing_model_path_says_no_such_folder(tmp_path, capsys, no_loading, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    assert cli(["--model_name_or_path", name, "--train_file", "d.json", "--output_dir", "o"]) == 2
    assert "no such folder" in _one_error_line(capsys)


def test_empty_or_incomplete_model_folder_names_missing_files(tmp_path, capsys, no_loading):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(["--model_name_or_path", str(empty), "--train_file", "d.json", "--output_dir", "o"]) == 2
    line = _one_error_line(capsys)
    assert "empty model folder" in line and "config.json" in line and "weights" in line and "tokenizer" in line
    full = save_tiny_llama(tmp_path / "llama")
    os.remove(os.path.join(full, "model.safetensors"))
    assert cli(["--model_name_or_path", full, "--train_file", "d.json", "--output_dir", "o"]) == 2
    line = _one_error_line(capsys)
    assert "incomplete model folder" in line and "model.safetensors" in line
    assert "config.json;" not in line and "tokenizer files" not in line


def test_unreachable_hub_fails_within_seconds_with_the_offline_hint(tmp_path, capsys, no_loading, monkeypatch):
    monkeypatch.setattr(hub_constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    start = time.monotonic()
    assert cli(["--model_name_or_path", "some-org/some-model", "--train_file", "d.json", "--output_dir", "o"]) == 2
    assert time.monotonic() - start < 10
    line = _one_error_line(capsys)
    assert "some-org/some-model" in line and "HF_HUB_OFFLINE=1" in line and "local model folder" in line


# ------------------------------------------------------------------------------------ help that helps
def test_neat_train_help_leads_with_recipes_and_the_common_flags(capsys):
    with pytest.raises(SystemExit) as stop:
        cli(["--help"])
    assert stop.value.code == 0
    short = capsys.readouterr().out
    assert short.index("--recipe") < short.index("--config") < short.index("--model_name_or_path")
    assert "--list" in short and "--help-all" in short and "--resume_from_checkpoint" in short
    assert "--adam_beta1" not in short and len(short.splitlines()) < 150
    with pytest.raises(SystemExit):
        cli(["--help-all"])
    full = capsys.readouterr().out
    assert "--adam_beta1" in full and len(full.splitlines()) > 3 * len(short.splitlines())


def test_neat_lm_eval_help_leads_with_the_neat_backend(capsys):
    from neat_hf.eval_harness.cli import main as lm_eval_main

    with pytest.raises(SystemExit):
        lm_eval_main(["--help"])
    out = capsys.readouterr().out
    first = out[: out.index("usage: lm-eval")]
    for needle in ("--model neat", "pretrained=", "adapter=", "merge=", "--update_card", "neat_commonsense_gen",
                   "neat_math_gen", "neat_gsm8k_gen"):
        assert needle in first, needle
