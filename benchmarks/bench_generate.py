#!/usr/bin/env python
"""Generation benchmark: greedy decoding tokens/s of the base model, LoRA and NEAT, unmerged and merged, the NEAT
adapter exported as a LoRA in stock PEFT, and mixed batches of 4 adapters (one per row) in neat-hf and in PEFT LoRA.

A merged adapter is folded into W0 (`merge_and_unload`), so merged NEAT should decode at base-model speed; unmerged
NEAT recomputes H = relu(W0ᵀAᵀ) in every forward, unmerged LoRA adds two thin matmuls, unmerged PEANuT builds a dense
ΔW in every forward. Every variant runs in a fresh process on the same random-init LLaMA and the same prompt; the
adapters get a non-zero B (`init_weights=False`) so merged and unmerged models compute a real adapter. The greedy
tokens of the merged and unmerged variants (and of NEAT and its LoRA export) are compared as a sanity check. The
``*_mixed4`` variants decode a batch of 4 rows (one adapter each, ``adapter_names=``) whatever ``--gen-batch-size``.

Outputs `<output-dir>/generate_<preset>_<device>_<dtype>.{json,md,png}`.

Examples:

    python benchmarks/bench_generate.py --preset cpu --device cpu --rounds 3
    python benchmarks/bench_generate.py --preset 1b --device cuda --dtype bf16
    python benchmarks/bench_generate.py --preset tiny --rounds 1 --repeats 1 --output-dir /tmp/bench   # smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from neat_hf.io import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_models import GENERATE_METHODS, MIXED_ADAPTERS, apply_method, build_llama, get_preset, random_batch  # noqa: E402
from common import (  # noqa: E402
    LLAMA_TARGETS,
    RESULTS_DIR,
    atomic_write_json,
    command_line,
    environment,
    fmt_bytes,
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


logger = logging.getLogger("neat_hf.benchmarks.generate")


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Generate `repeats` times after one warm-up call; return tokens/s and the greedy tokens (child process)."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    device, dtype = spec["device"], resolve_dtype(spec["dtype"])
    preset = get_preset(spec["preset"], **spec.get("overrides", {}))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    model = build_llama(preset, device, dtype, spec["seed"])
    model = apply_method(model, spec["method"], preset, spec["seed"], init_weights=False)
    model.eval()
    mixed = spec["method"].endswith("_mixed4")
    batch_size = len(MIXED_ADAPTERS) if mixed else preset.gen_batch_size
    prompt = random_batch(preset, device, spec["seed"], seq_len=preset.prompt_len, batch_size=batch_size)
    gen_kwargs = dict(
        max_new_tokens=preset.new_tokens, min_new_tokens=preset.new_tokens, do_sample=False, use_cache=True,
        pad_token_id=0, eos_token_id=None,
    )
    if mixed:
        gen_kwargs["adapter_names"] = list(MIXED_ADAPTERS)
    attention_mask = torch.ones_like(prompt)
    times, cpu_times, tokens = [], [], None
    with torch.inference_mode():
        for i in range(1 + spec["repeats"]):
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            out = model.generate(input_ids=prompt, attention_mask=attention_mask, **gen_kwargs)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            if i > 0:
                times.append(time.perf_counter() - t0)
                cpu_times.append(time.process_time() - c0)
            tokens = out[:, prompt.shape[1]:].tolist()
    peak = torch.cuda.max_memory_allocated() if device.startswith("cuda") else peak_rss_bytes()
    return {
        "method": spec["method"],
        "generate_times_s": times,
        "generate_cpu_times_s": cpu_times,  # robust to other jobs on a shared CPU when the child runs one thread
        "new_tokens_per_call": preset.new_tokens * batch_size,
        "tokens": tokens,
        "peak_memory_bytes": int(peak),
    }


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", help="tiny, cpu, 1b or 7b (see bench_models.PRESETS)")
    parser.add_argument("--methods", default=",".join(GENERATE_METHODS),
                        help=f"comma-separated subset of {','.join(GENERATE_METHODS)}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (fresh process per variant)")
    parser.add_argument("--repeats", type=int, default=3, help="timed generate() calls per process after 1 warm-up")
    parser.add_argument("--prompt-len", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--gen-batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--tag", default="")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--render", type=Path, default=None, help="rewrite the .md/.png of an existing result JSON")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def render_markdown(report: dict[str, Any]) -> str:
    cfg, p = report["config"], report["preset"]
    base = report["summary"].get("base")
    rows = []
    for m in report["methods"]:
        s = report["summary"][m]
        rel = f"{s['tokens_per_s'] / base['tokens_per_s']:.2f}×" if base else "—"
        rel_cpu = f"{s['tokens_per_cpu_s'] / base['tokens_per_cpu_s']:.2f}×" if base else "—"
        batch = report["runs"][m][0]["new_tokens_per_call"] // p["new_tokens"]
        rows.append([m, batch, f"{s['tokens_per_s']:,.1f}", f"{s['tokens_per_s_rounds_min']:,.1f}–{s['tokens_per_s_rounds_max']:,.1f}",
                     rel, f"{s['tokens_per_cpu_s']:,.1f}", rel_cpu, fmt_bytes(s["peak_memory_bytes"])])
    table = markdown_table(["variant", "batch", "new tokens/s (median)", "range over rounds", "vs base", "new tokens per CPU-s",
                            "vs base (CPU time)", "peak memory"], rows)
    agree = ", ".join(f"{k}: {v:.0%}" for k, v in report["merged_token_agreement"].items()) or "n/a"
    return (
        f"### Generation — preset `{cfg['preset']}`, {cfg['device']} {cfg['dtype']}\n\n"
        f"Greedy decoding, batch {p['gen_batch_size']}, prompt {p['prompt_len']} tokens, {p['new_tokens']} new tokens, "
        f"KV cache on; r={p['r']} on {', '.join(LLAMA_TARGETS)}; {cfg['rounds']} interleaved round(s) × "
        f"{cfg['repeats']} calls after 1 warm-up; torch threads per child: {cfg.get('threads') or 'default'}. "
        f"`*_mixed4`: batch of {len(MIXED_ADAPTERS)} rows, one adapter each (`adapter_names=`).\n\n{table}\n"
        f"Greedy tokens identical (merged vs unmerged, NEAT vs its LoRA export): {agree}.\n\n"
        f"Command: `{report['command']}`\n\nEnvironment: {format_env(report['environment'])}; load average at end "
        f"{report['load_avg_end']}.\n"
    )


def plot(report: dict[str, Any], path: Path) -> None:
    plt = import_pyplot()
    methods = report["methods"]
    vals = [report["summary"][m]["tokens_per_s"] for m in methods]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(methods, vals, color=["#999999" if m == "base" else "#2ca02c" if m.startswith("neat") else
                                 "#d62728" if m.startswith("peanut") else "#1f77b4" for m in methods])
    ax.set_ylabel("new tokens/s (median over rounds)")
    cfg = report["config"]
    ax.set_title(f"greedy generation, preset {cfg['preset']}, {cfg['device']} {cfg['dtype']}")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = make_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.worker is not None:
        atomic_write_json(args.result_file, measure(json.loads(args.worker)))
        return None
    if args.render is not None:
        report = json.loads(args.render.read_text(encoding="utf-8"))
        atomic_write_text(args.render.with_suffix(".md"), render_markdown(report))
        if not args.no_plot:
            plot(report, args.render.with_suffix(".png"))
        return report
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in GENERATE_METHODS]
    if bad or not methods:
        raise SystemExit(f"--methods {args.methods!r}: unknown {bad}; choose from {','.join(GENERATE_METHODS)}.")
    if args.rounds < 1 or args.repeats < 1:
        raise SystemExit("--rounds and --repeats must be >= 1.")
    overrides = {k: getattr(args, k) for k in ("prompt_len", "new_tokens", "gen_batch_size") if getattr(args, k)}
    preset = get_preset(args.preset, **overrides)
    env = environment(args.device)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for rnd, method in interleaved(methods, args.rounds):
        spec = {"method": method, "preset": args.preset, "overrides": overrides, "device": args.device,
                "dtype": args.dtype, "seed": args.seed, "repeats": args.repeats, "threads": args.threads}
        res = run_worker(Path(__file__).resolve(), spec, timeout=args.timeout)
        tps = res["new_tokens_per_call"] / summarize(res["generate_times_s"])["median"]
        logger.info("round %d/%d %-12s %.1f new tokens/s", rnd + 1, args.rounds, method, tps)
        runs[method].append(res)

    summary = {}
    for m in methods:
        per_round = [r["new_tokens_per_call"] / summarize(r["generate_times_s"])["median"] for r in runs[m]]
        st = summarize(per_round)
        per_round_cpu = [r["new_tokens_per_call"] / summarize(r["generate_cpu_times_s"])["median"] for r in runs[m]]
        summary[m] = {"tokens_per_s": st["median"], "tokens_per_s_rounds_min": st["min"],
                      "tokens_per_s_rounds_max": st["max"], "tokens_per_s_rounds": per_round,
                      "tokens_per_cpu_s": summarize(per_round_cpu)["median"],
                      "peak_memory_bytes": max(r["peak_memory_bytes"] for r in runs[m])}
    agreement = {}
    pairs = [(m.removesuffix("_merged"), m) for m in methods if m.endswith("_merged")] + [("neat", "neat_lora")]
    for ref, m in pairs:
        if ref in runs and m in runs:
            a = [t for row in runs[m][0]["tokens"] for t in row]
            b = [t for row in runs[ref][0]["tokens"] for t in row]
            agreement[f"{ref} vs {m}"] = sum(x == y for x, y in zip(a, b)) / max(1, len(a))
    report = {
        "benchmark": "generate",
        "command": command_line("bench_generate.py", argv),
        "config": run_config(args),
        "preset": {**preset.__dict__},
        "methods": methods,
        "environment": env,
        "load_avg_end": load_average(),
        "summary": summary,
        "merged_token_agreement": agreement,
        "runs": runs,
    }
    stem = result_stem("generate", args.preset, args.device, args.dtype, tag=args.tag)
    write_outputs(args.output_dir, stem, report, render_markdown(report), None if args.no_plot else plot)
    return report


if __name__ == "__main__":
    main()
