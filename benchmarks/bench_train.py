#!/usr/bin/env python
"""Training-step benchmark: neat-hf NEAT against PEFT LoRA, PEFT PEANuT and the frozen-model floor.

Each method runs in a fresh process on the same random-init LLaMA (same seed, same token batch, AdamW over the
trainable parameters). A step is forward + backward + optimizer step; after warm-up steps the script records the
step times, the peak memory (CUDA: `torch.cuda.max_memory_allocated`; CPU: peak RSS of the child process from
`resource.getrusage`), the trainable parameter count and tokens/s. Methods are run in interleaved rounds (the order
rotates every round) and the report quotes the median over rounds of each round's median step, with the spread.

Outputs `<output-dir>/train_<preset>_<device>_<dtype>.{json,md,png}`.

Examples:

    # ANCHORS' CPU shape (hidden 512, 4 layers, seq 256 x batch 4, r=32), three interleaved rounds
    python benchmarks/bench_train.py --preset cpu --device cpu --dtype fp32 --rounds 3

    # 1.1B and 7B shapes on one GPU in bf16 (adapter weights stay fp32, as PEFT does)
    python benchmarks/bench_train.py --preset 1b --device cuda --dtype bf16 --rounds 2
    python benchmarks/bench_train.py --preset 7b --device cuda --dtype bf16 --rounds 1 --steps 6

    # parameter counts and shapes of the 7B preset without a GPU (meta device, nothing allocated)
    python benchmarks/bench_train.py --preset 7b --dtype bf16 --dry-run

    # smoke run (seconds)
    python benchmarks/bench_train.py --preset tiny --rounds 1 --warmup 1 --steps 2 --output-dir /tmp/bench

    # quantized base (bitsandbytes NF4; `lora` is then QLoRA): NEAT-4bit vs QLoRA vs PEFT PEANuT on the same base
    python benchmarks/bench_train.py --preset cpu --quantize nf4 --methods lora,peanut,neat --rounds 3

A method that fails in its child process (PEFT PEANuT on a 4-bit base: it multiplies by the packed integer weight)
is recorded with its error instead of timings when the base is quantized.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from neat_hf.io import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_models import (  # noqa: E402
    QUANTIZATIONS,
    TRAIN_METHODS,
    apply_method,
    build_llama,
    build_quantized_llama,
    get_preset,
    random_batch,
    save_llama,
)
from common import (  # noqa: E402
    LLAMA_TARGETS,
    RESULTS_DIR,
    atomic_write_json,
    command_line,
    environment,
    fmt_bytes,
    fmt_count,
    format_env,
    import_pyplot,
    interleaved,
    load_average,
    markdown_table,
    peak_rss_bytes,
    resolve_dtype,
    result_stem,
    run_config,
    run_worker,
    save_figure,
    setup_logging,
    summarize,
    write_outputs,
)


logger = logging.getLogger("neat_hf.benchmarks.train")

# Targets of NEAT against LoRA and stock PEANuT (ratios of median step time / peak memory, measured side by side in one
# run).
TARGETS = {
    "neat_vs_lora_time": 1.00,
    "neat_vs_lora_memory": 1.02,
    "neat_vs_peanut_time": {"1b": 0.30, "7b": 0.20},
}
# Targets on a quantized base: NEAT-4bit against QLoRA.
QUANTIZED_TARGETS = {"neat_vs_lora_time": 1.05, "neat_vs_lora_memory": 1.02}
# Target of stock PEFT's PEANuT after `apply_neat_to_peft()`: what neat-hf's NEAT costs, within 5% of LoRA (CPU).
PATCHED_PEANUT_VS_LORA_CPU_TIME = 1.05

OVERRIDE_FIELDS = ("seq_len", "batch_size", "r", "num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size")


# ----------------------------------------------------------------------------------------------------------------
# Child process
# ----------------------------------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the model for `spec["method"]`, run warm-up + measured steps, return the timings (runs in the child)."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device, dtype = spec["device"], resolve_dtype(spec["dtype"])
    preset = get_preset(spec["preset"], **spec.get("overrides", {}))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    if spec.get("quantize"):
        base = build_quantized_llama(spec["checkpoint"], spec["quantize"], device, dtype)
    else:
        base = build_llama(preset, device, dtype, spec["seed"])
    try:
        model = apply_method(base, spec["method"], preset, spec["seed"])
        if spec.get("quantize"):
            model.train()
            model(input_ids=random_batch(preset, device, spec["seed"]))  # fails here if the method cannot run
    except Exception as err:
        if not spec.get("quantize"):
            raise
        # Recorded, not raised: what a method does on a quantized base is part of the result.
        return {"method": spec["method"], "error": f"{type(err).__name__}: {err}"[:500]}
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4) if trainable else None
    step_model = torch.compile(model) if spec.get("compile") else model
    input_ids = random_batch(preset, device, spec["seed"])

    times, cpu_times, losses = [], [], []
    for i in range(spec["warmup"] + spec["steps"]):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step_model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        _sync(device)
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        losses.append(float(loss.detach()))
        if i >= spec["warmup"]:
            times.append(elapsed)
            cpu_times.append(cpu)

    if device.startswith("cuda"):
        peak, peak_kind = torch.cuda.max_memory_allocated(), "cuda_max_memory_allocated"
    else:
        peak, peak_kind = peak_rss_bytes(), "peak_rss"
    return {
        "method": spec["method"],
        "step_times_s": times,
        # CPU time of the child per step (all its threads). On a CPU shared with other jobs it is far less sensitive
        # to contention than wall time, as long as the child runs one thread (with several, OpenMP spin-waits count).
        "step_cpu_times_s": cpu_times,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "trainable_params": sum(p.numel() for p in trainable) if trainable else 0,
        "total_params": sum(p.numel() for p in model.parameters()),
        "peak_memory_bytes": int(peak),
        "peak_memory_kind": peak_kind,
        "tokens_per_step": preset.batch_size * preset.seq_len,
        "torch_threads": torch.get_num_threads(),
    }


# ----------------------------------------------------------------------------------------------------------------
# Parent: interleaved rounds, aggregation, report
# ----------------------------------------------------------------------------------------------------------------


def aggregate(method: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Combine one method's rounds: median of per-round medians, spread over rounds and over all steps."""
    if any("error" in r for r in runs):
        return {"method": method, "error": next(r["error"] for r in runs if "error" in r)}
    round_medians = [summarize(r["step_times_s"])["median"] for r in runs]
    all_steps = [t for r in runs for t in r["step_times_s"]]
    over_rounds = summarize(round_medians)
    step_s = over_rounds["median"]
    cpu_round_medians = [summarize(r["step_cpu_times_s"])["median"] for r in runs]
    cpu_over_rounds = summarize(cpu_round_medians)
    return {
        "step_cpu_s_median": cpu_over_rounds["median"],
        "step_cpu_s_rounds_min": cpu_over_rounds["min"],
        "step_cpu_s_rounds_max": cpu_over_rounds["max"],
        "step_cpu_s_all_steps": summarize([t for r in runs for t in r["step_cpu_times_s"]]),
        "method": method,
        "step_s_median": step_s,
        "step_s_round_medians": round_medians,
        "step_s_rounds_min": over_rounds["min"],
        "step_s_rounds_max": over_rounds["max"],
        "step_s_all_steps": summarize(all_steps),
        "tokens_per_s": runs[0]["tokens_per_step"] / step_s,
        "peak_memory_bytes": max(r["peak_memory_bytes"] for r in runs),
        "peak_memory_kind": runs[0]["peak_memory_kind"],
        "trainable_params": runs[0]["trainable_params"],
        "total_params": runs[0]["total_params"],
        "first_loss": runs[0]["first_loss"],
        "last_loss": runs[0]["last_loss"],
    }


def compare(summary: dict[str, dict[str, Any]], preset: str, quantize: str | None = None) -> dict[str, Any]:
    """Ratios between methods and the targets they are held to (`TARGETS`; also `QUANTIZED_TARGETS` on a quantized
    base)."""
    out: dict[str, Any] = {}
    targets = {**TARGETS, **QUANTIZED_TARGETS} if quantize else TARGETS

    def ratio(a: str, b: str, key: str) -> float | None:
        if a in summary and b in summary and summary[b].get(key) and summary[a].get(key):
            return summary[a][key] / summary[b][key]
        return None

    out["neat_vs_lora_time"] = ratio("neat", "lora", "step_s_median")
    out["neat_vs_lora_cpu_time"] = ratio("neat", "lora", "step_cpu_s_median")
    out["neat_vs_peanut_cpu_time"] = ratio("neat", "peanut", "step_cpu_s_median")
    out["neat_vs_floor_cpu_time"] = ratio("neat", "floor", "step_cpu_s_median")
    out["lora_vs_floor_cpu_time"] = ratio("lora", "floor", "step_cpu_s_median")
    out["neat_vs_lora_memory"] = ratio("neat", "lora", "peak_memory_bytes")
    out["neat_vs_peanut_time"] = ratio("neat", "peanut", "step_s_median")
    out["neat_vs_floor_time"] = ratio("neat", "floor", "step_s_median")
    out["lora_vs_floor_time"] = ratio("lora", "floor", "step_s_median")
    out["peanut_vs_lora_time"] = ratio("peanut", "lora", "step_s_median")
    out["peanut_patched_vs_neat_cpu_time"] = ratio("peanut_patched", "neat", "step_cpu_s_median")
    out["peanut_patched_vs_lora_cpu_time"] = ratio("peanut_patched", "lora", "step_cpu_s_median")
    out["peanut_patched_vs_neat_memory"] = ratio("peanut_patched", "neat", "peak_memory_bytes")
    checks = {}
    if out["peanut_patched_vs_lora_cpu_time"] is not None and summary["peanut_patched"].get("device", "cpu") == "cpu":
        checks[f"peanut_patched_cpu_time_le_{PATCHED_PEANUT_VS_LORA_CPU_TIME:.2f}x_lora"] = (
            out["peanut_patched_vs_lora_cpu_time"] <= PATCHED_PEANUT_VS_LORA_CPU_TIME
        )
    time_target, memory_target = targets["neat_vs_lora_time"], targets["neat_vs_lora_memory"]
    if out["neat_vs_lora_time"] is not None:
        checks[f"neat_time_le_{time_target:.2f}x_lora"] = out["neat_vs_lora_time"] <= time_target
    if out["neat_vs_lora_cpu_time"] is not None and summary["neat"].get("device", "cpu") == "cpu":
        checks[f"neat_cpu_time_le_{time_target:.2f}x_lora"] = out["neat_vs_lora_cpu_time"] <= time_target
    if out["neat_vs_lora_memory"] is not None:
        checks[f"neat_memory_le_{memory_target:.2f}x_lora"] = out["neat_vs_lora_memory"] <= memory_target
    peanut_target = TARGETS["neat_vs_peanut_time"].get(preset)
    if out["neat_vs_peanut_time"] is not None and peanut_target is not None:
        checks[f"neat_time_le_{peanut_target:.2f}x_peanut"] = out["neat_vs_peanut_time"] <= peanut_target
    out["target_checks"] = checks
    return out


def render_markdown(report: dict[str, Any]) -> str:
    cfg = report["config"]
    mem_label = "peak memory (CUDA max allocated)" if cfg["device"].startswith("cuda") else "peak RSS (child)"
    rows = []
    for m in report["methods"]:
        s = report["summary"][m]
        if "error" in s:
            rows.append([m, f"failed: {s['error']}", "", "", "", "", "", ""])
            continue
        rows.append([
            m,
            f"{s['step_s_median'] * 1e3:.1f} ms",
            f"{s['step_s_rounds_min'] * 1e3:.1f}–{s['step_s_rounds_max'] * 1e3:.1f} ms",
            f"{s['step_s_all_steps']['iqr_rel'] * 100:.1f}%",
            f"{s['step_cpu_s_median'] * 1e3:.1f} ms ({s['step_cpu_s_rounds_min'] * 1e3:.0f}–{s['step_cpu_s_rounds_max'] * 1e3:.0f})",
            f"{s['tokens_per_s']:,.0f}",
            fmt_bytes(s["peak_memory_bytes"]),
            fmt_count(s["trainable_params"]),
        ])
    table = markdown_table(
        ["method", "step (median)", "range of round medians", "IQR/median (all steps)",
         "CPU time / step (range over rounds)", "tokens/s", mem_label, "trainable"],
        rows,
    )
    cmp_ = report["comparison"]
    ratios = ", ".join(
        f"{k.replace('_', ' ')} {v:.3f}×" for k, v in cmp_.items() if isinstance(v, float)
    )
    checks = ", ".join(f"{k}: {'PASS' if v else 'FAIL'}" for k, v in cmp_["target_checks"].items())
    p = report["preset"]
    quantized = f", base quantized with bitsandbytes {cfg['quantize']}" if cfg.get("quantize") else ""
    first = next(m for m in report["methods"] if "error" not in report["summary"][m])
    return (
        f"### Training step — preset `{cfg['preset']}` ({p['description']}), {cfg['device']} {cfg['dtype']}{quantized}\n\n"
        f"hidden {p['hidden_size']}, {p['num_hidden_layers']} layers, intermediate {p['intermediate_size']}, "
        f"{p['num_attention_heads']} heads / {p['num_key_value_heads']} kv, vocab {p['vocab_size']}, "
        f"seq {p['seq_len']} × batch {p['batch_size']}, r={p['r']} on {', '.join(report['targets'])}; "
        f"{cfg['rounds']} interleaved round(s) × {cfg['steps']} steps after {cfg['warmup']} warm-up; "
        f"{report['runs'][first][0]['torch_threads']} torch thread(s) per child process.\n\n"
        f"{table}\n"
        f"Ratios (median step / peak memory): {ratios}.\n\n"
        f"Targets: {checks or 'n/a'}.\n\n"
        f"Command: `{report['command']}`\n\n"
        f"Environment: {format_env(report['environment'])}; load average at end "
        f"{report['load_avg_end']}.\n"
    )


def plot(report: dict[str, Any], path: Path) -> None:
    plt = import_pyplot()
    s = report["summary"]
    methods = [m for m in report["methods"] if "error" not in s[m]]
    colors = [{"floor": "#999999", "lora": "#1f77b4", "peanut": "#d62728", "peanut_patched": "#98df8a", "neat": "#2ca02c"}.get(m, "#555555")
              for m in methods]
    panels = [("step_s", "wall step time (ms)")]
    if all("step_cpu_s_median" in s[m] for m in methods):
        panels.append(("step_cpu_s", "CPU time per step (ms)"))
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(5 * (len(panels) + 1), 4))
    for ax, (key, label) in zip(axes, panels):
        med = [s[m][f"{key}_median"] * 1e3 for m in methods]
        lo = [med[i] - s[m][f"{key}_rounds_min"] * 1e3 for i, m in enumerate(methods)]
        hi = [s[m][f"{key}_rounds_max"] * 1e3 - med[i] for i, m in enumerate(methods)]
        ax.bar(methods, med, yerr=[lo, hi], capsize=4, color=colors)
        ax.set_ylabel(label + ", median; bars = range over rounds")
    mem_kind = "" if report["config"]["device"].startswith("cuda") else " — peak RSS"
    axes[-1].bar(methods, [s[m]["peak_memory_bytes"] / 2**30 for m in methods], color=colors)
    axes[-1].set_ylabel(f"peak memory (GiB){mem_kind}")
    cfg = report["config"]
    quantized = f", {cfg['quantize']} base" if cfg.get("quantize") else ""
    fig.suptitle(f"train step, preset {cfg['preset']}, {cfg['device']} {cfg['dtype']}{quantized}")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", help="tiny, cpu, 1b or 7b (see bench_models.PRESETS)")
    parser.add_argument("--methods", default=",".join(TRAIN_METHODS),
                        help=f"comma-separated subset of {','.join(TRAIN_METHODS)}")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"], help="base-model dtype")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (one fresh process per method each)")
    parser.add_argument("--warmup", type=int, default=3, help="steps discarded per process")
    parser.add_argument("--steps", type=int, default=10, help="measured steps per process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads in each child")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in every method")
    parser.add_argument("--quantize", default=None, choices=sorted(QUANTIZATIONS),
                        help="load the base with bitsandbytes (nf4, nf4-dq = double quantization, int8); lora = QLoRA")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--tag", default="", help="suffix for the output file names")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--dry-run", action="store_true",
                        help="build every method on the meta device (no memory, no timing) and report parameter counts")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per child process")
    for field in OVERRIDE_FIELDS:
        parser.add_argument(f"--{field.replace('_', '-')}", type=int, default=None, help=f"override the preset's {field}")
    parser.add_argument("--render", type=Path, default=None, help="rewrite the .md/.png of an existing result JSON")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def dry_run(args: argparse.Namespace, methods: list[str], overrides: dict[str, int]) -> dict[str, Any]:
    """Build each method's model on the meta device: checks shapes, targets and parameter counts of any preset
    (1b/7b included) on a machine without the memory or the GPU to run it."""
    preset = get_preset(args.preset, **overrides)
    dtype = resolve_dtype(args.dtype)
    counts = {}
    for method in methods:
        model = apply_method(build_llama(preset, "meta", dtype, args.seed), method, preset, args.seed)
        trainable = [p for p in model.parameters() if p.requires_grad]
        counts[method] = {
            "trainable_params": sum(p.numel() for p in trainable),
            "total_params": sum(p.numel() for p in model.parameters()),
            "trainable_dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in trainable}),
        }
        del model
    report = {"benchmark": "train_step_dry_run", "preset": {**preset.__dict__}, "dtype": args.dtype, "params": counts}
    rows = [[m, fmt_count(c["trainable_params"]), f"{c['total_params'] / 1e9:.3f} B", ",".join(c["trainable_dtypes"]) or "—"]
            for m, c in counts.items()]
    print(markdown_table(["method", "trainable", "total", "trainable dtype"], rows))
    out = args.output_dir / f"{result_stem('dryrun', args.preset, args.dtype, tag=args.tag)}.json"
    atomic_write_json(out, report)
    return report


def validate(args: argparse.Namespace) -> list[str]:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in TRAIN_METHODS]
    if bad or not methods:
        raise SystemExit(f"--methods {args.methods!r}: unknown {bad}; choose from {','.join(TRAIN_METHODS)}.")
    get_preset(args.preset)  # raises with the accepted names
    if args.rounds < 1 or args.steps < 1 or args.warmup < 0:
        raise SystemExit("--rounds and --steps must be >= 1 and --warmup >= 0.")
    if args.device.startswith("cuda") and not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit(f"--device {args.device} requested but torch.cuda.is_available() is False; use --device cpu.")
    return methods


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = make_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.worker is not None:
        atomic_write_json(args.result_file, measure(json.loads(args.worker)))
        return None

    if args.render is not None:
        report = json.loads(args.render.read_text(encoding="utf-8"))
        report["comparison"] = compare(report["summary"], report["config"]["preset"], report["config"].get("quantize"))
        atomic_write_json(args.render, report)
        atomic_write_text(args.render.with_suffix(".md"), render_markdown(report))
        if not args.no_plot:
            plot(report, args.render.with_suffix(".png"))
        return report
    methods = validate(args)
    overrides = {f: getattr(args, f) for f in OVERRIDE_FIELDS if getattr(args, f) is not None}
    if args.dry_run:
        return dry_run(args, methods, overrides)
    preset = get_preset(args.preset, **overrides)
    env = environment(args.device)
    script = Path(__file__).resolve()
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as checkpoint:
        if args.quantize:  # one random-init checkpoint, loaded quantized by every child
            save_llama(preset, checkpoint, args.seed)
        for rnd, method in interleaved(methods, args.rounds):
            spec = {
                "method": method, "preset": args.preset, "overrides": overrides, "device": args.device,
                "dtype": args.dtype, "seed": args.seed, "warmup": args.warmup, "steps": args.steps,
                "threads": args.threads, "compile": args.compile, "quantize": args.quantize, "checkpoint": checkpoint,
            }
            result = run_worker(script, spec, timeout=args.timeout)
            if "error" in result:
                logger.info("round %d/%d %-7s failed: %s", rnd + 1, args.rounds, method, result["error"])
            else:
                med = summarize(result["step_times_s"])["median"]
                logger.info("round %d/%d %-7s median step %.1f ms", rnd + 1, args.rounds, method, med * 1e3)
            runs[method].append(result)

    summary = {m: {**aggregate(m, runs[m]), "device": args.device} for m in methods}
    report = {
        "benchmark": "train_step",
        "command": command_line("bench_train.py", argv),
        "config": run_config(args),
        "preset": {**preset.__dict__},
        "targets": list(LLAMA_TARGETS),
        "methods": methods,
        "environment": env,
        "load_avg_end": load_average(),
        "summary": summary,
        "comparison": compare(summary, args.preset, args.quantize),
        "runs": runs,
    }
    first_losses = {m: summary[m]["first_loss"] for m in methods if "error" not in summary[m]}
    spread = max(first_losses.values()) - min(first_losses.values())
    report["first_loss_spread"] = spread  # B = 0 at init: every method starts from the same loss
    if spread > 1e-2 * max(1.0, abs(min(first_losses.values()))):
        logger.warning("First-step losses differ across methods: %s", first_losses)

    tag = "_".join(t for t in (args.quantize, args.tag) if t)
    stem = result_stem("train", args.preset, args.device, args.dtype, tag=tag)
    write_outputs(args.output_dir, stem, report, render_markdown(report), None if args.no_plot else plot)
    return report


if __name__ == "__main__":
    main()
