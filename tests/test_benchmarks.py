"""Smoke tests for the benchmark scripts in benchmarks/: each runs end to end on a tiny preset and writes valid
JSON, a markdown table and (where it draws one) a PNG.

These tests check what the scripts compute and write, never how fast anything is: speed goals are measured by the
benchmarks themselves (see benchmarks/README.md), not asserted in timed tests. The scripts run as subprocesses, as a
user runs them; the report helpers are imported directly (from the script's file) to check them on known values.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_script(name: str, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, str(BENCH / name), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def load_outputs(out: Path, stem: str, png: bool = True) -> dict:
    report = json.loads((out / f"{stem}.json").read_text(encoding="utf-8"))
    md = (out / f"{stem}.md").read_text(encoding="utf-8")
    assert md.count("\n|") >= 3, md  # header, separator and at least one row
    assert "Command: `python benchmarks/" in md and "Environment:" in md
    if png:
        assert (out / f"{stem}.png").read_bytes()[:8] == PNG_MAGIC
    return report


@pytest.mark.slow
def test_bench_hostile_runs_and_reports_each_refusal(tmp_path):
    """The script runs end to end (its time and memory bounds are reported, not asserted here)."""
    run_script("bench_hostile.py", "--cases", "float8_weight,config_fifo", "--loaders", "from_pretrained",
               "--output-dir", str(tmp_path), check=False)
    report = load_outputs(tmp_path, "hostile_cpu", png=False)
    assert [(r["case"], r["loader"]) for r in report["results"]] == [("float8_weight", "from_pretrained"),
                                                                     ("config_fifo", "from_pretrained")]
    assert all(r["error"].startswith("AdapterLoadError") and not r["wrote_output"] for r in report["results"])


@pytest.mark.slow
def test_bench_data_check_runs_on_a_tiny_file_of_each_format(tmp_path):
    """The script writes each format, checks it in a fresh process and reports the peak RSS increase (the 100 MiB
    bound is reported, not asserted here)."""
    run_script("bench_data_check.py", "--size-mb", "1", "--formats", "jsonl,json,csv", "--output-dir", str(tmp_path))
    report = load_outputs(tmp_path, "data_check_1mb")
    assert [(r["format"], r["checker"]) for r in report["results"]] == [
        ("jsonl", "streaming"), ("json", "streaming"), ("csv", "streaming")]
    for result in report["results"]:
        assert result["error"] is None and result["size_bytes"] >= 10**6 and result["rows"] > 1000, result
        assert result["peak_rss"] >= result["rss_before"] > 0 and result["seconds"] > 0


@pytest.mark.slow
def test_bench_train_tiny(tmp_path):
    run_script("bench_train.py", "--preset", "tiny", "--rounds", "1", "--warmup", "1", "--steps", "2",
               "--output-dir", str(tmp_path))
    report = load_outputs(tmp_path, "train_tiny_cpu_fp32")
    summary = report["summary"]
    assert set(summary) == {"floor", "lora", "peanut", "peanut_patched", "neat"}
    assert summary["floor"]["trainable_params"] == 0
    # NEAT and PEANuT train the same parameters (A: r×out, B: out×r per target); LoRA's A is r×in.
    assert summary["neat"]["trainable_params"] == summary["peanut"]["trainable_params"] > 0
    assert summary["peanut_patched"]["trainable_params"] == summary["neat"]["trainable_params"]
    assert summary["lora"]["trainable_params"] > 0
    for method, s in summary.items():
        assert s["step_s_median"] > 0 and s["tokens_per_s"] > 0 and s["peak_memory_bytes"] > 0, method
        assert len(report["runs"][method]) == 1 and len(report["runs"][method][0]["step_times_s"]) == 2
    # B = 0 at init and the same base weights and batch everywhere: every method starts from the same loss.
    first = [s["first_loss"] for s in summary.values()]
    assert max(first) - min(first) < 1e-4, first
    assert set(report["comparison"]["target_checks"]) == {
        "neat_time_le_1.00x_lora", "neat_cpu_time_le_1.00x_lora", "neat_memory_le_1.02x_lora",
        "peanut_patched_cpu_time_le_1.05x_lora"}
    assert all(len(r[0]["step_cpu_times_s"]) == 2 for r in report["runs"].values())


@pytest.mark.slow
def test_bench_train_tiny_on_a_4bit_base(tmp_path):
    """The quantized variant: NEAT on an NF4 base vs QLoRA vs PEFT PEANuT (which fails on the packed weight)."""
    pytest.importorskip("bitsandbytes")
    run_script("bench_train.py", "--preset", "tiny", "--quantize", "nf4", "--methods", "lora,peanut,neat", "--rounds", "1",
               "--warmup", "1", "--steps", "2", "--output-dir", str(tmp_path))
    report = load_outputs(tmp_path, "train_tiny_cpu_fp32_nf4")
    assert report["config"]["quantize"] == "nf4"
    summary = report["summary"]
    assert "error" in summary["peanut"] and "mat1 and mat2" in summary["peanut"]["error"]
    for method in ("lora", "neat"):
        assert summary[method]["step_s_median"] > 0 and summary[method]["peak_memory_bytes"] > 0, method
    assert abs(summary["neat"]["first_loss"] - summary["lora"]["first_loss"]) < 1e-4  # same 4-bit base, B = 0
    assert set(report["comparison"]["target_checks"]) == {
        "neat_time_le_1.05x_lora", "neat_cpu_time_le_1.05x_lora", "neat_memory_le_1.02x_lora"}
    md = (tmp_path / "train_tiny_cpu_fp32_nf4.md").read_text(encoding="utf-8")
    assert "base quantized with bitsandbytes nf4" in md and "| peanut | failed: RuntimeError" in md


@pytest.mark.slow
def test_bench_train_bf16_base_fp32_adapters(tmp_path):
    """The CUDA recipe's dtype path (bf16 base, fp32 adapter weights), exercised on CPU with the tiny preset."""
    run_script("bench_train.py", "--preset", "tiny", "--dtype", "bf16", "--methods", "lora,neat", "--rounds", "1",
               "--warmup", "1", "--steps", "1", "--no-plot", "--output-dir", str(tmp_path))
    report = load_outputs(tmp_path, "train_tiny_cpu_bf16", png=False)
    assert report["config"]["dtype"] == "bf16"
    assert all(s["last_loss"] == s["last_loss"] for s in report["summary"].values())  # not NaN


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        # ../shared/ANCHORS.md: 16.9 M (LoRA) and 14.4 M (PEANuT, factored NEAT) at 1.1B; 56.1 M for all at 7B.
        ("1b", {"lora": 16_941_056, "peanut": 14_417_920, "peanut_patched": 14_417_920, "neat": 14_417_920, "floor": 0}),
        ("7b", {"lora": 56_098_816, "peanut": 56_098_816, "peanut_patched": 56_098_816, "neat": 56_098_816, "floor": 0}),
    ],
)
def test_bench_train_gpu_presets_dry_run_match_anchor_shapes(tmp_path, preset, expected):
    """The 1b/7b presets build on the meta device with the ANCHORS parameter counts and fp32 adapters on bf16."""
    run_script("bench_train.py", "--preset", preset, "--dtype", "bf16", "--dry-run", "--output-dir", str(tmp_path))
    report = json.loads((tmp_path / f"dryrun_{preset}_bf16.json").read_text(encoding="utf-8"))
    assert {m: c["trainable_params"] for m, c in report["params"].items()} == expected
    for method in ("lora", "peanut", "peanut_patched", "neat"):
        assert report["params"][method]["trainable_dtypes"] == ["float32"]


@pytest.mark.slow
def test_bench_generate_tiny(tmp_path):
    methods = "base,lora,neat,neat_merged,neat_lora,neat_mixed4,lora_mixed4"
    run_script("bench_generate.py", "--preset", "tiny", "--methods", methods, "--rounds", "1", "--repeats", "1",
               "--output-dir", str(tmp_path))
    report = load_outputs(tmp_path, "generate_tiny_cpu_fp32")
    assert report["methods"] == methods.split(",")
    for method in report["methods"]:
        run = report["runs"][method][0]
        assert report["summary"][method]["tokens_per_s"] > 0
        rows = 4 if method.endswith("_mixed4") else 1  # a mixed batch decodes one row per adapter
        assert len(run["tokens"]) == rows and all(len(t) == report["preset"]["new_tokens"] for t in run["tokens"])
    assert set(report["merged_token_agreement"]) == {"neat vs neat_merged", "neat vs neat_lora"}
    assert report["merged_token_agreement"]["neat vs neat_lora"] == 1.0  # the export is exact: same greedy tokens
    assert "| neat_mixed4 | 4 |" in (tmp_path / "generate_tiny_cpu_fp32.md").read_text()


def test_profile_adapter_tiny(tmp_path):
    run_script("profile_adapter.py", "--preset", "tiny", "--iters", "2", "--output-dir", str(tmp_path))
    report = load_outputs(tmp_path, "profile_tiny_cpu_fp32", png=False)
    assert set(report["timings"]) == {"64x32", "64x64", "64x172", "172x64"}
    for per_shape in report["timings"].values():
        assert set(per_shape) == {"frozen", "lora", "neat", "flops"}
    assert any(row["op"] == "aten::mm" for row in report["profile"])


@pytest.mark.slow
@pytest.mark.deepspeed
def test_bench_zero3_one_w0_gather_per_layer_per_forward(tmp_path):
    """Under ZeRO-3 (2 gloo ranks, every weight released after use) NEAT gathers each W0 once per forward, like LoRA."""
    run_script("bench_zero3.py", "--preset", "tiny", "--settings", "strict", "--rounds", "1", "--warmup", "1",
               "--steps", "1", "--output-dir", str(tmp_path))
    report = load_outputs(tmp_path, "zero3_tiny", png=False)
    for method in ("neat", "lora"):
        s = report["summary"][f"{method}/strict"]
        assert s["n_target_layers"] == 10  # 2 layers × q, k, v, up, down
        assert s["w0_gathers_per_layer"]["forward"] == pytest.approx(1.0), (method, s)
    assert report["runs"]["neat/strict"][0]["registered_external"] == 10


@pytest.mark.slow
@pytest.mark.fsdp
def test_bench_fsdp_gathers_each_unit_once_per_forward_and_backward(tmp_path):
    """FSDP2 (2 gloo ranks): root + 2 decoder-layer units = 1 + 2 × 2 all-gathers per step; each rank holds half."""
    run_script("bench_fsdp.py", "--preset", "tiny", "--engines", "fsdp2", "--methods", "neat", "--rounds", "1",
               "--warmup", "1", "--steps", "1", "--output-dir", str(tmp_path))
    report = load_outputs(tmp_path, "fsdp_tiny", png=False)
    s = report["summary"]["fsdp2/neat"]
    assert s["all_gathers_per_step"] == 5 and s["gathers_by_phase"]["forward"]["collectives"] == 3
    run = report["runs"]["fsdp2/neat"][0]
    assert run["held_param_bytes"] * 2 == pytest.approx(run["model_param_bytes"], rel=0.01)


# ---------------------------------------------------------------------------------------------------------- quality


def _tiny_bert_dir(root: Path) -> Path:
    """A tiny BERT sequence classifier + WordPiece tokenizer saved like a Hub folder (no downloads)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = "good bad great awful fine poor movie film plot acting very not".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    model_dir = root / "tiny-bert"
    model_dir.mkdir()
    (model_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    BertTokenizerFast(vocab_file=str(model_dir / "vocab.txt")).save_pretrained(model_dir)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=64)
    BertForSequenceClassification(config).save_pretrained(model_dir)
    return model_dir


def _tsv(path: Path, n: int, seed: int) -> Path:
    import random

    rng = random.Random(seed)
    pos, neg = ["good", "great", "fine"], ["bad", "awful", "poor"]
    lines = []
    for _ in range(n):
        label = rng.randint(0, 1)
        words = [rng.choice(pos if label else neg), rng.choice(["movie", "film", "plot", "acting"])]
        lines.append(f"{label}\t{' '.join(words)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def tiny_task(tmp_path):
    return _tiny_bert_dir(tmp_path), _tsv(tmp_path / "train.tsv", 48, 0), _tsv(tmp_path / "dev.tsv", 16, 1)


@pytest.mark.slow
def test_quality_tiny(tmp_path, tiny_task):
    model_dir, train, dev = tiny_task
    out = tmp_path / "out"
    methods = "neat,lora,neat_depth1,neat_sin,head"
    run_script("quality.py", "--model", str(model_dir), "--tasks", "toy", "--train-file", str(train), "--dev-file",
               str(dev), "--text-column", "1", "--label-column", "0", "--metric", "matthews_correlation",
               "--methods", methods, "--seeds", "0,1", "--lrs", "1e-3", "--extra-lrs", "2e-3", "--epochs", "2", "--batch-size", "16",
               "--r", "4", "--no-evaluate", "--output-dir", str(out))
    report = load_outputs(out, "quality_toy_tiny-bert")
    assert not (out / "quality_toy_tiny-bert.partial.json").exists()
    task = report["tasks"]["toy"]
    counts = task["param_counts"]
    # r=4 on query,value (32×32) of 2 layers: 2·2·(4·32 + 32·4) = 1,024 for both methods; head 32·2 + 2.
    assert counts["neat"]["adapter"] == counts["lora"]["adapter"] == 1024
    assert counts["neat_sin"]["adapter"] == 1024
    assert counts["neat_depth1"]["adapter"] == 1024 + 4 * 2 * 4 * 4
    assert counts["head"]["adapter"] == 0
    assert {c["head"] for c in counts.values()} == {66}
    assert len(task["runs"]) == 5 * 2  # methods × seeds, one lr each (--lrs for neat/lora, --extra-lrs for the rest)
    for run in task["runs"]:
        assert len(run["curve"]) == 2 and all(-1.0 <= v <= 1.0 for v in run["curve"])
        assert run["final"] == run["curve"][-1] and run["best"] == max(run["curve"])
        expected = "NeatTrainer" if run["method"].startswith("neat") else "Trainer"
        assert run["trainer"].endswith("." + expected), run["trainer"]
    for method in methods.split(","):
        s = task["summary"][method]
        assert s["lr"] == (1e-3 if method in ("neat", "lora") else 2e-3) and len(s["finals"]) == 2
    assert "NEAT − LoRA" in task["reading"]


@pytest.mark.slow
def test_quality_refuses_unequal_parameter_budgets(tmp_path, tiny_task):
    model_dir, train, dev = tiny_task
    proc = run_script("quality.py", "--model", str(model_dir), "--tasks", "toy", "--train-file", str(train),
                      "--dev-file", str(dev), "--text-column", "1", "--label-column", "0", "--methods", "neat,lora",
                      "--target-modules", "intermediate.dense", "--seeds", "0", "--lrs", "1e-3", "--epochs", "1",
                      "--no-evaluate", "--output-dir", str(tmp_path / "out"), check=False)
    assert proc.returncode != 0
    assert "only fair at equal counts" in proc.stderr
    assert not (tmp_path / "out").exists()


def _quality_module():
    spec = importlib.util.spec_from_file_location("neat_bench_quality", BENCH / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quality_metrics_match_known_values():
    from neat_hf.cli.train import metrics as q  # quality.py's metrics are the library's (tests/test_metrics.py)

    labels = [1, 1, 1, 1, 0, 0, 0, 1, 0, 1]
    preds = [1, 1, 0, 1, 0, 1, 0, 1, 0, 0]
    # tp=4, tn=3, fp=1, fn=2: (4·3 − 1·2) / sqrt(5·5·6·4) = 10 / sqrt(600)
    assert q.matthews_correlation_score(labels, preds) == pytest.approx(10 / 600**0.5)
    assert q.matthews_correlation_score([0, 1, 0, 1], [0, 0, 0, 0]) == 0.0  # undefined (constant prediction) → 0
    assert q.matthews_correlation_score([0, 1, 2, 2], [0, 1, 2, 2]) == pytest.approx(1.0)
    assert q.compute_metric("accuracy", labels, preds) == pytest.approx(0.7)
    assert q.compute_metric("f1", labels, preds) == pytest.approx(2 * 4 / (2 * 4 + 1 + 2))
    with pytest.raises(ValueError, match="expected one of"):
        q.compute_metric("auc", labels, preds)


def test_quality_reading_compares_every_neat_row_with_lora():
    q = _quality_module()

    def row(finals, adapter=100):
        mean, std = q._mean_std(finals)
        return {"final_mean": mean, "final_std": std, "finals": finals, "params": {"adapter": adapter}}

    summary = {"neat": row([0.80, 0.81, 0.82]), "lora": row([0.85, 0.86, 0.87]),
               "neat_depth1": row([0.90, 0.91, 0.92], adapter=116), "neat_sin": row([0.84, 0.86, 0.88])}
    text = q.reading(summary, "accuracy")
    # NEAT first: −0.05 against a combined std of hypot(0.01, 0.01) ≈ 0.0141 → LoRA ahead.
    assert text.startswith("NEAT − LoRA (final accuracy, mean of 3 seed(s)) = -0.0500; combined seed std 0.0141 → "
                           "LoRA ahead.")
    # The other NEAT rows follow, with their parameter count where it differs from LoRA's.
    assert "neat_depth1 (+16 adapter parameters) − LoRA = +0.0500; combined seed std 0.0141 → neat_depth1 ahead." in text
    assert "neat_sin − LoRA = +0.0000; combined seed std 0.0224 → a tie within the seed spread." in text
    summary = {"neat": row([0.9]), "lora": row([0.8])}
    assert q.reading(summary, "accuracy").endswith("→ one seed only: no verdict.")
    assert q.reading({"neat": row([0.9])}, "accuracy") == ""


def test_quality_reads_both_tsv_layouts(tmp_path):
    q = _quality_module()
    sst = tmp_path / "sst.tsv"
    sst.write_text("1\ta fine film\n0\tdull\n", encoding="utf-8")
    cola = tmp_path / "cola.tsv"
    cola.write_text('he said "hi" , twice\t1\nthe the\t0\n', encoding="utf-8")
    assert q.read_table(sst, 1, 0, header=False) == {"text": ["a fine film", "dull"], "label": [1, 0]}
    assert q.read_table(cola, 0, 1, header=False) == {"text": ['he said "hi" , twice', "the the"], "label": [1, 0]}


@pytest.mark.slow
def test_quality_merge_of_shards_equals_one_sweep(tmp_path, tiny_task):
    """Shards by method (one cut off, as by a time limit) merge into the table one process would have written."""
    model_dir, train, dev = tiny_task
    out = tmp_path / "out"
    common = ["--model", str(model_dir), "--tasks", "toy", "--train-file", str(train), "--dev-file", str(dev),
              "--text-column", "1", "--label-column", "0", "--lrs", "1e-3", "--epochs", "1", "--batch-size", "16",
              "--r", "4", "--no-evaluate", "--no-plot", "--output-dir", str(out)]
    run_script("quality.py", *common, "--methods", "neat", "--seeds", "0,1", "--tag", "shard_neat")
    run_script("quality.py", *common, "--methods", "lora", "--seeds", "0,1", "--tag", "shard_lora")
    run_script("quality.py", *common, "--methods", "neat,lora", "--seeds", "0,1", "--tag", "whole")
    # A shard cut off after one seed: the merge keeps only the seed every method finished.
    cut = json.loads((out / "quality_toy_tiny-bert_shard_lora.json").read_text(encoding="utf-8"))
    partial = {k: v for k, v in cut.items() if k not in ("tasks", "wall_s", "load_avg_end", "metric_backend")}
    partial["tasks"] = {}
    partial["partial_runs"] = [r for r in cut["tasks"]["toy"]["runs"] if r["seed"] == 0]
    (out / "cut.partial.json").write_text(json.dumps(partial), encoding="utf-8")

    shards = [str(out / "quality_toy_tiny-bert_shard_neat.json"), str(out / "quality_toy_tiny-bert_shard_lora.json")]
    run_script("quality.py", "--merge", *shards, "--tag", "merged", "--output-dir", str(out))
    merged = load_outputs(out, "quality_toy_tiny-bert_merged", png=False)
    whole = json.loads((out / "quality_toy_tiny-bert_whole.json").read_text(encoding="utf-8"))
    assert merged["methods"] == ["neat", "lora"]
    assert [(m["machine"].startswith("CPU"), m["seeds"]) for m in merged["merged_from"]] == [(True, [0, 1])] * 2
    for method in ("neat", "lora"):  # same seeds, same data: the same numbers as the single sweep
        assert merged["tasks"]["toy"]["summary"][method]["finals"] == pytest.approx(
            whole["tasks"]["toy"]["summary"][method]["finals"], abs=1e-6)
    assert merged["tasks"]["toy"]["reading"].startswith("NEAT − LoRA")
    assert "Merged from 2 shard(s)" in (out / "quality_toy_tiny-bert_merged.md").read_text(encoding="utf-8")

    run_script("quality.py", "--merge", shards[0], str(out / "cut.partial.json"), "--tag", "cut",
               "--output-dir", str(out))
    cut_report = json.loads((out / "quality_toy_tiny-bert_cut.json").read_text(encoding="utf-8"))
    assert cut_report["tasks"]["toy"]["seeds"] == [0]
    assert [(r["method"], r["seed"]) for r in cut_report["tasks"]["toy"]["dropped_runs"]] == [("neat", 1)]
    assert all(len(s["finals"]) == 1 for s in cut_report["tasks"]["toy"]["summary"].values())

    # Shards of different settings, or the same run twice, are refused and nothing is written.
    other = json.loads((out / "quality_toy_tiny-bert_shard_lora.json").read_text(encoding="utf-8"))
    other["config"]["epochs"] = 3
    (out / "other.json").write_text(json.dumps(other), encoding="utf-8")
    proc = run_script("quality.py", "--merge", shards[0], str(out / "other.json"), "--tag", "bad",
                      "--output-dir", str(out), check=False)
    assert proc.returncode != 0 and "epochs=3" in proc.stderr
    proc = run_script("quality.py", "--merge", shards[0], shards[0], "--tag", "bad", "--output-dir", str(out),
                      check=False)
    assert proc.returncode != 0 and "is in both" in proc.stderr
    assert not list(out.glob("*_bad.*"))


def test_quality_lr_sweep_table_lists_every_rate_each_method_ran():
    q = _quality_module()
    runs = [{"method": m, "lr": lr, "seed": seed, "final": f, "best": f, "params": {"adapter": 1, "head": 1}}
            for m, lr, seed, f in [("neat", 1e-3, 0, 0.5), ("neat", 1e-3, 1, 0.7), ("neat", 3e-3, 0, 0.9),
                                   ("neat", 3e-3, 1, 0.8), ("lora", 3e-3, 0, 0.6), ("lora", 3e-3, 1, 0.6)]]
    task = {"metric": "accuracy", "summary": q.summarize_task(runs, ["neat", "lora"])}
    table = q.lr_sweep_table(task, ["neat", "lora"])
    assert "| method | lr 0.001 | lr 0.003 |" in table
    assert "| neat | 0.6000 ± 0.1414 | 0.8500 ± 0.0707 |" in table
    assert "| lora | — | 0.6000 ± 0.0000 |" in table
    assert task["summary"]["neat"]["lr"] == 3e-3  # the lr with the best mean final metric
    one_lr = {"metric": "accuracy", "summary": q.summarize_task(runs[-2:], ["lora"])}
    assert q.lr_sweep_table(one_lr, ["lora"]) == ""  # nothing to compare across rates


def test_quality_sweep_files_list_every_run_once():
    """The sweep files that run_cpu_suite.sh / run_gpu_suite.sh run: one job line per (task, method, seed, lr)."""
    gpu = run_script("quality_sweep.py", str(BENCH / "sweeps" / "gpu.yaml"), "--seeds", "0").stdout.splitlines()
    # Per seed: 2 tasks × (neat, lora at 3 lrs + depth1, sin at 2 lrs) = 20 runs, CoLA first, 6 epochs (SST-2 3).
    assert len(gpu) == len(set(gpu)) == 20
    assert gpu[0] == "--tasks cola --methods neat --seeds 0 --lrs 1e-3 --epochs 6 --tag shard_cola_neat_s0_lr1e-3"
    assert gpu[-1] == "--tasks sst2 --methods neat_sin --seeds 0 --lrs 3e-3 --epochs 3 --tag shard_sst2_neat_sin_s0_lr3e-3"
    cpu = [line for name in ("cpu_seeds", "cpu_sweep")
           for line in run_script("quality_sweep.py", str(BENCH / "sweeps" / f"{name}.yaml")).stdout.splitlines()]
    assert len(cpu) == len(set(cpu)) == 20 + 24
    assert len(run_script("quality_sweep.py", str(BENCH / "sweeps" / "gpu.yaml")).stdout.splitlines()) == 3 * 20
