"""`neat-train` end to end: the recipes on local tiny models and data files, the embedded default, the console script,
errors raised before training, and 2-process launches on CPU (DeepSpeed ZeRO-3 and plain DDP)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from multiprocess_helpers import free_port, launch_env, remove_deepspeed_shm
from train_cli_helpers import (
    COMMONSENSE_ROWS,
    METAMATHQA_ROWS,
    SST2_ROWS,
    save_tiny_bert,
    save_tiny_llama,
    save_tiny_vit,
    write_image_folder,
    write_json_list,
    write_jsonl,
)

from neat_hf import NeatModel
from neat_hf.constants import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME
from neat_hf.errors import NoTargetModulesError
from neat_hf.cli.train.data import IGNORE_INDEX
from neat_hf.cli.train.job import prepare, run
from neat_hf.cli.train.main import cli, main, parse_args

# Recipes written for GPUs, shrunk for a CPU test: fp32, two steps, no checkpoints.
SHRINK = ["--torch_dtype", "float32", "--bf16", "false", "--max_steps", "2", "--per_device_train_batch_size", "2",
          "--gradient_accumulation_steps", "1", "--save_strategy", "no", "--eval_strategy", "no",
          "--dataloader_num_workers", "0", "--warmup_steps", "0", "--logging_steps", "1"]


def _documented_runs():
    """docs/gen_default_job.py, which writes the documented before/after tables of the main job."""
    spec = importlib.util.spec_from_file_location("gen_default_job", Path(__file__).parent.parent / "docs" / "gen_default_job.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _assert_documented(name: str, output_dir: Path) -> None:
    """The run's before/after table is, text for text, the one every page documents (issue 23)."""
    runs = _documented_runs()
    table = runs.render_table(name, *runs.results_of(output_dir))
    shown = runs.documented_tables(name)
    assert shown, f"no page shows the generated table {name!r}"
    stale = {page: text for page, text in shown.items() if text != table}
    assert not stale, (f"`neat-train {' '.join(runs.RUNS[name])}` no longer gives the documented numbers in "
                       f"{sorted(stale)}; if the change is intended, run `python docs/gen_default_job.py --only {name}`. "
                       f"Now:\n{table}")


def _safetensors_keys(folder) -> list[str]:
    from safetensors import safe_open

    with safe_open(os.path.join(folder, ADAPTER_WEIGHTS_NAME), "pt") as handle:
        return list(handle.keys())


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("llama"))


@pytest.mark.slow
def test_commonsense_recipe_on_a_local_llama(tmp_path, llama_dir):
    from transformers import AutoModelForCausalLM

    train = write_json_list(tmp_path / "commonsense_170k.json", COMMONSENSE_ROWS)
    out = tmp_path / "out"
    args, recipe = parse_args(["--recipe", "commonsense/llama2-7b", "--model_name_or_path", llama_dir,
                               "--train_file", train, "--eval_split_size", "2", "--output_dir", str(out), *SHRINK])
    job = prepare(*args, recipe=recipe)
    # The prompt is masked, the response is not (LLM-Adapters' train_on_inputs=False).
    row = job.trainer.train_dataset[0]
    assert row["labels"][0] == IGNORE_INDEX and row["labels"][-1] == job.trainer.processing_class.eos_token_id
    results = run(job)
    assert set(results["after"]) >= {"eval_loss", "eval_token_accuracy", "eval_exact_match"}
    assert results["before"]["eval_loss"] != results["after"]["eval_loss"]
    config = json.loads((out / ADAPTER_CONFIG_NAME).read_text())
    assert (config["peft_type"], config["r"], config["scaling"]) == ("PEANUT", 32, 1.0)
    assert config["base_model_name_or_path"] == llama_dir
    assert sorted(config["target_modules"]) == ["down_proj", "k_proj", "q_proj", "up_proj", "v_proj"]
    keys = _safetensors_keys(out)
    assert keys and all(".peanut_" in key for key in keys)  # adapter only, no base weights

    base = AutoModelForCausalLM.from_pretrained(llama_dir)
    ids = torch.tensor([[1, 5, 9, 12]])
    with torch.no_grad():
        reference = base(input_ids=ids).logits
        adapted = NeatModel.from_pretrained(base, str(out))(input_ids=ids).logits
    assert not torch.allclose(reference, adapted)  # two steps moved B away from zero


@pytest.mark.slow
def test_math_recipe_reads_metamathqa_rows(tmp_path, llama_dir):
    train = write_jsonl(tmp_path / "MetaMathQA.jsonl", METAMATHQA_ROWS)
    out = tmp_path / "out"
    args, recipe = parse_args(["--recipe", "math/llama2-7b", "--model_name_or_path", llama_dir, "--train_file", train,
                               "--output_dir", str(out), "--neat_r", "4", *SHRINK])
    results = main(*args, recipe=recipe)
    assert results["after"] == {} and results["train"]["train_loss"] > 0  # no eval split: nothing to compare
    assert json.loads((out / ADAPTER_CONFIG_NAME).read_text())["r"] == 4


@pytest.mark.slow
def test_glue_recipe_on_a_local_encoder(tmp_path):
    bert_dir = save_tiny_bert(tmp_path / "bert")
    train = write_jsonl(tmp_path / "train.jsonl", SST2_ROWS)
    valid = write_jsonl(tmp_path / "dev.jsonl", SST2_ROWS[:4])
    out = tmp_path / "out"
    # NEAT-S adapts layers 4-11 of RoBERTa-base; the 2-layer test encoder has layers 0-1.
    args, recipe = parse_args(["--recipe", "glue/roberta-base_neat-s", "--model_name_or_path", bert_dir,
                               "--train_file", train, "--validation_file", valid, "--neat_layers_to_transform", "1",
                               "--output_dir", str(out), *SHRINK])
    job = prepare(*args, recipe=recipe)
    lrs = sorted({group["lr"] for group in job.trainer.create_optimizer().param_groups})
    assert lrs == [pytest.approx(5e-3)]
    results = run(job)
    assert {"eval_accuracy", "eval_matthews_correlation"} <= set(results["after"])
    keys = _safetensors_keys(out)
    assert any("classifier" in key for key in keys)  # modules_to_save: the new head
    adapted = {key.split(".attention.")[0] for key in keys if ".peanut_" in key}
    assert adapted == {"base_model.model.bert.encoder.layer.1"}


@pytest.mark.slow
def test_vit_recipe_on_a_local_image_folder(tmp_path):
    vit_dir = save_tiny_vit(tmp_path / "vit")
    images = write_image_folder(tmp_path / "images")
    out = tmp_path / "out"
    args, recipe = parse_args(["--recipe", "vit/vit-base_cifar10", "--model_name_or_path", vit_dir,
                               "--dataset_name", images, "--image_column", "image", "--eval_split", "validation",
                               "--output_dir", str(out), *SHRINK])
    results = main(*args, recipe=recipe)
    assert "eval_accuracy" in results["after"] and "eval_accuracy" in results["before"]
    config = json.loads((out / ADAPTER_CONFIG_NAME).read_text())
    assert config["r"] == 7 and config["modules_to_save"] == ["classifier"]
    adapted = {key.rsplit(".peanut_", 1)[0].rsplit(".", 1)[1] for key in _safetensors_keys(out) if ".peanut_" in key}
    assert adapted in ({"q_proj", "v_proj"}, {"query", "value"})  # transformers 5 / 4 names


@pytest.mark.slow
def test_resume_from_the_last_checkpoint_ends_like_an_uninterrupted_run(tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    def train(out, *extra):
        args, recipe = parse_args(["--max_steps", "6", "--save_strategy", "steps", "--save_steps", "3",
                                   "--max_train_samples", "64", "--max_eval_samples", "16", "--logging_steps", "3",
                                   "--output_dir", str(out), *extra])
        return main(*args, recipe=recipe)

    def final_adapter(out):
        return load_file(out / ADAPTER_WEIGHTS_NAME)

    full = tmp_path / "full"
    train(full)
    # A run killed right after its step-3 checkpoint is the full run's checkpoint-3 alone in its folder.
    resumed, tampered = tmp_path / "resumed", tmp_path / "tampered"
    for folder in (resumed, tampered):
        shutil.copytree(full / "checkpoint-3", folder / "checkpoint-3")
    weights = tampered / "checkpoint-3" / ADAPTER_WEIGHTS_NAME
    save_file({k: v * 2 if "peanut_B" in k else v for k, v in load_file(weights).items()}, weights)

    train(resumed, "--resume_from_checkpoint", "last")
    expected, got = final_adapter(full), final_adapter(resumed)
    assert expected.keys() == got.keys()
    assert max(v.abs().max().item() for k, v in expected.items() if "peanut_B" in k) > 0
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-6)
    # ... and the checkpoint was really used: changing it changes the result.
    train(tampered, "--resume_from_checkpoint", "last")
    changed = final_adapter(tampered)
    assert any(not torch.allclose(changed[k], expected[k]) for k in expected if "peanut_B" in k)


# ------------------------------------------------------------------------------- errors before training


def test_missing_columns_fail_before_the_model_is_loaded(tmp_path, capsys, llama_dir, monkeypatch):
    train = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "a"}])
    out = tmp_path / "out"
    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the column check")
    monkeypatch.setattr("neat_hf.cli.train.job._load_tokenizer_and_model", no_loading)
    code = cli(["--recipe", "commonsense/llama2-7b", "--use_cpu", "--model_name_or_path", llama_dir,
                "--train_file", train, "--output_dir", str(out)])
    assert code == 2
    err = capsys.readouterr().err
    assert "missing column(s) ['instruction', 'output']" in err and "commonsense/llama2-7b" in err
    assert not out.exists()


def test_no_target_module_fails_before_training(tmp_path):
    out = tmp_path / "out"
    args, recipe = parse_args(["--max_steps", "1", "--neat_target_modules", "not_a_layer", "--output_dir", str(out),
                               "--max_train_samples", "8", "--max_eval_samples", "4"])
    with pytest.raises(NoTargetModulesError, match="not_a_layer"):
        prepare(*args, recipe=recipe)
    assert not out.exists()


def test_output_dir_with_another_base_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / ADAPTER_CONFIG_NAME).write_text(json.dumps({"peft_type": "PEANUT", "base_model_name_or_path": "other/base"}))
    argv = ["--max_steps", "1", "--output_dir", str(out), "--max_train_samples", "8", "--max_eval_samples", "4"]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert "other/base" in err and "--overwrite_output_dir" in err
    assert sorted(os.listdir(out)) == [ADAPTER_CONFIG_NAME]  # untouched
    args, recipe = parse_args([*argv, "--overwrite_output_dir"])
    assert prepare(*args, recipe=recipe).trainer is not None


def test_builtin_model_refuses_other_tasks(tmp_path):
    train = write_jsonl(tmp_path / "sst2.jsonl", SST2_ROWS)  # --train_file wins over the default recipe's dataset
    args, recipe = parse_args(["--task", "sequence-classification", "--dataset_format", "text-classification",
                               "--train_file", train, "--output_dir", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="builtin:tiny-llama is a causal LM"):
        prepare(*args, recipe=recipe)


# ------------------------------------------------------------------------------- the embedded default


def _reloaded_metrics(folder, eval_dataset, collator) -> dict[str, float]:
    """Metrics of the saved adapter loaded onto a freshly built base, computed without the Trainer."""
    from neat_hf.cli.train.metrics import causal_lm_metrics
    from neat_hf.cli.train.default_job import build_default_base_model

    model = NeatModel.from_pretrained(build_default_base_model(), str(folder)).eval()
    batch = collator([eval_dataset[i] for i in range(len(eval_dataset))])
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits

    class Prediction:
        predictions = logits.argmax(-1).numpy()
        label_ids = batch["labels"].numpy()

    return causal_lm_metrics(Prediction())


@pytest.mark.slow
def test_embedded_default_job_end_to_end(tmp_path, monkeypatch, capsys):
    """`neat-train` with no arguments: offline, CPU, adapter in ./neat-output, a real before/after improvement."""
    monkeypatch.chdir(tmp_path)
    assert cli([]) == 0
    out = capsys.readouterr().out
    assert "metric" in out and "before" in out and "after" in out and "Adapter saved to" in out
    folder = tmp_path / "neat-output"
    assert {ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, "tokenizer.json"} <= set(os.listdir(folder))
    before = json.loads((folder / "before_results.json").read_text())
    after = json.loads((folder / "eval_results.json").read_text())
    assert before["eval_exact_match"] < 0.05
    assert after["eval_exact_match"] > before["eval_exact_match"] + 0.5
    assert after["eval_token_accuracy"] > 0.9
    assert after["eval_loss"] < 0.1 * before["eval_loss"]
    _assert_documented("default-job", folder)

    # The printed numbers are those of the saved adapter, reloaded onto the rebuilt base.
    args, recipe = parse_args(["--max_steps", "1", "--output_dir", str(tmp_path / "unused")])
    job = prepare(*args, recipe=recipe)
    reloaded = _reloaded_metrics(folder, job.trainer.eval_dataset, job.trainer.data_collator)
    assert reloaded["exact_match"] == pytest.approx(after["eval_exact_match"], abs=1e-6)
    assert reloaded["token_accuracy"] == pytest.approx(after["eval_token_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_shortened_4bit_default_job_gives_the_documented_numbers(tmp_path, capsys):
    """The 4-bit table in the docs is the default job on an NF4 base, shortened to 300 steps so CI can repeat it; the
    printed snippet loads the base quantized, as the adapter was trained (it loaded it in full precision)."""
    pytest.importorskip("bitsandbytes")
    assert cli([*_documented_runs().RUNS["default-job-4bit"], "--output_dir", str(tmp_path / "out")]) == 0
    _assert_documented("default-job-4bit", tmp_path / "out")
    snippet = capsys.readouterr().out.split("Use it from Python:", 1)[1].split("\n\n", 1)[1]
    assert "BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4', bnb_4bit_compute_dtype='float32')" in snippet
    namespace: dict = {}
    exec(snippet.split("\n\nEvaluate", 1)[0], namespace)
    assert any(type(module).__name__ == "Linear4bit" for module in namespace["base"].modules())


@pytest.mark.slow
@pytest.mark.parametrize("optim", ["adamw_torch", "adamw_torch_fused"])
def test_eval_after_training_matches_a_reload(tmp_path, optim):
    """An evaluation before training must not leave anything stale for the one after it (fused AdamW, the
    transformers default, updates parameters in place without bumping their version counters)."""
    out = tmp_path / "out"
    args, recipe = parse_args(["--max_steps", "40", "--optim", optim, "--output_dir", str(out),
                               "--max_train_samples", "256", "--logging_steps", "20"])
    job = prepare(*args, recipe=recipe)
    results = run(job)
    reloaded = _reloaded_metrics(out, job.trainer.eval_dataset, job.trainer.data_collator)
    assert results["after"]["eval_token_accuracy"] != results["before"]["eval_token_accuracy"]
    assert reloaded["token_accuracy"] == pytest.approx(results["after"]["eval_token_accuracy"], abs=1e-6)
    assert reloaded["exact_match"] == pytest.approx(results["after"]["eval_exact_match"], abs=1e-6)


def test_console_script_and_module_entry_points(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    listed = subprocess.run([sys.executable, "-m", "neat_hf.cli.train.main", "--list"], capture_output=True,
                            text=True, env=env, timeout=300)
    assert listed.returncode == 0 and "commonsense/llama2-7b" in listed.stdout
    script = Path(sys.executable).with_name("neat-train")
    if script.exists():
        bad = subprocess.run([str(script), "--recipe", "nope"], capture_output=True, text=True, env=env, timeout=300)
        assert bad.returncode == 2 and "Known recipes" in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stage", [pytest.param("zero3", marks=pytest.mark.deepspeed), None])
def test_torchrun_two_processes_on_cpu(tmp_path, stage):
    """The launch the README documents, on CPU and without any extra flag: DeepSpeed ZeRO-3 over gloo, and plain DDP
    (without `use_cpu`, which neat-train sets, each rank would train alone and print its own summary)."""
    if stage:
        pytest.importorskip("deepspeed")
    out = tmp_path / "out"
    env = launch_env(HF_HUB_OFFLINE="1")
    port = free_port()
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
        "-m", "neat_hf.cli.train.main", "--max_steps", "3", "--output_dir", str(out),
        "--max_train_samples", "64", "--max_eval_samples", "32", *(["--deepspeed", stage] if stage else []),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    finally:
        remove_deepspeed_shm(port)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Adapter saved to" in done.stdout
    assert done.stdout.count("Adapter saved to") == 1  # only rank 0 prints the summary
    assert {ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME} <= set(os.listdir(out))
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["epoch"] == pytest.approx(3 * 2 * 16 / 64)  # 3 steps × 2 ranks × 16 rows: the ranks shared the data


def test_one_cpu_threads_rule_for_a_local_folder_model(tmp_path, llama_dir, monkeypatch):
    """A small model from a local folder trains on one CPU thread like the identical built-in one (issue 23: it ran
    on every core, 8-17x slower on a busy machine); OMP_NUM_THREADS still wins."""
    from neat_hf.cli.train.job import _load_tokenizer_and_model

    if torch.cuda.is_available():
        pytest.skip("the rule is for machines without a GPU")
    (model_args, _, _, _), _ = parse_args(["--model_name_or_path", llama_dir, "--output_dir", str(tmp_path / "o")])
    threads = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        torch.set_num_threads(2)
        _load_tokenizer_and_model(model_args, "causal-lm", None)
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        torch.set_num_threads(2)
        _load_tokenizer_and_model(model_args, "causal-lm", None)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
