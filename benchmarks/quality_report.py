"""The report of `quality.py`: per-method summaries over seeds and learning rates, the NEAT-vs-LoRA reading, the
merge of shard files into one report, and its markdown table and chart.

Not an installed module: `quality.py` imports it from this folder (as it does `common.py`).
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import format_env, import_pyplot, markdown_table, save_figure


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


def merge_reports(paths: list[Path], command: str, *, method_order: Sequence[str],
                  task_metrics: dict[str, str]) -> dict[str, Any]:
    """Combine result files of one sweep split into shards (by task, method or seed) into one report.

    The shards must share the settings in `MERGE_KEYS`; a (task, method, lr, seed) run may appear only once. Runs at
    seeds that not every method finished are left out of the summary (listed under `dropped_runs`). Methods are
    reported in `method_order`; `task_metrics` names the metric of a built-in task whose shards did not record it.
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
    order = {m: i for i, m in enumerate(method_order)}
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
            "metric": t["metric"] or ref["config"].get("metric") or task_metrics.get(name, "?"),
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
