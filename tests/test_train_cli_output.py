"""The embedded default job leads somewhere (issue 14, item 2): its output folder holds the base model, a card with
the real setup and metrics, and the run prints a load-and-generate snippet that works as printed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from neat_hf.cli.hub import main as hub_main
from neat_hf.cli.train.main import cli


@pytest.mark.slow
def test_default_job_output_is_usable(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli(["--max_steps", "40", "--max_train_samples", "256", "--max_eval_samples", "32"]) == 0
    stdout = capsys.readouterr().out
    out = tmp_path / "neat-output"
    # The built-in base is saved as a plain transformers folder next to the adapter.
    assert (out / "base_model" / "config.json").is_file() and (out / "base_model" / "model.safetensors").is_file()
    # The card has the real setup and the before/after metrics, no placeholders.
    card = (out / "README.md").read_text()
    assert "BASE_MODEL_ID_OR_PATH" not in card and "PATH_OR_REPO_ID" not in card
    assert "## Training setup" in card and "| max steps | 40 |" in card and "## Evaluation" in card
    assert "exact match before training" in card and "exact_match" in card
    assert "token accuracy before training" in card  # a metric, not dropped as a credential-like key
    info = json.loads((out / "training_info.json").read_text())
    assert info["global_step"] == 40 and info["learning_rate"] == 0.01 and info["dataset"] == "builtin:number-words"
    # The printed snippet runs as printed, from the folder the user ran neat-train in.
    snippet, evaluate = stdout.split("Use it from Python:", 1)[1].split("\n\nEvaluate it offline", 1)
    snippet = snippet.strip()
    assert "format_instruction_prompt" in snippet and "neat-output/base_model" in snippet
    done = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1].startswith("the correct answer is")
    # The printed lm-eval command runs offline on the bundled task of the job's held-out data (issue 23).
    command = evaluate.strip().splitlines()[-1].split()
    assert command[:2] == ["neat-lm-eval", "--model"] and "neat_number_words" in command
    offline = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    lm_eval = [sys.executable, "-m", "neat_hf.eval_harness.cli"]
    done = subprocess.run([*lm_eval, *command[1:], "--limit", "8"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, env=offline)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "neat_number_words" in done.stdout and "exact_match" in done.stdout
    # A task whose data lives on the Hub ends, offline, in one line naming the dataset (was ~40 traceback lines).
    hub_task = [*command[1:command.index("--tasks")], "--tasks", "neat_boolq_gen", "--device", "cpu", "--limit", "2"]
    done = subprocess.run([*lm_eval, *hub_task], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=offline)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("neat-lm-eval: error: dataset 'aps/super_glue'") and "HF_DATASETS_OFFLINE" in last
    # neat-hub merge takes the saved base.
    assert hub_main(["merge", str(out / "base_model"), str(out), str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "config.json").is_file()


@pytest.mark.slow
def test_report_to_trackio_offline_gives_a_card_with_badge_tag_losses_and_curve(tmp_path, capsys, monkeypatch):
    """`neat-train --report_to trackio`, logged locally: the card links the run as TRL's cards do (badge and
    `trackio:<url>` tag), and shows the final losses and the loss curve, drawn after the final evaluation."""
    from huggingface_hub import ModelCard

    from neat_hf.trainers.trackers import trackio_run_url

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert cli(["--max_steps", "6", "--max_train_samples", "64", "--max_eval_samples", "16", "--logging_steps", "1",
                "--eval_strategy", "steps", "--eval_steps", "3", "--report_to", "trackio", "--project",
                "neat-hf-tests", "--run_name", "cli-run"]) == 0
    capsys.readouterr()
    out = tmp_path / "neat-output"
    info = json.loads((out / "training_info.json").read_text())
    url = trackio_run_url("neat-hf-tests", "cli-run")
    assert info["trackio_url"] == url and info["global_step"] == 6
    final_eval = json.loads((out / "eval_results.json").read_text())["eval_loss"]
    assert info["final_eval_loss"] == pytest.approx(final_eval, abs=1e-6)  # the evaluation after training
    card = ModelCard.load(out / "README.md")
    assert "trackio" in card.data.tags and f"trackio:{url}" in card.data.tags
    assert f"]({url})" in card.text and "Visualize in Trackio" in card.text
    for row in (f"| final training loss | {info['final_train_loss']:g} |",
                f"| final evaluation loss | {info['final_eval_loss']:g} |", "| optimizer steps | 6 |"):
        assert row in card.text, row
    assert "](training_curve.png)" in card.text
    assert (out / "training_curve.png").read_bytes().startswith(b"\x89PNG")
