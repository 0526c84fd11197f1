#!/usr/bin/env python
"""ZeRO-3 overhead of NEAT's W0 reads: 2 CPU ranks (gloo), NEAT against PEFT LoRA, ZeRO-3 against ZeRO-0.

NEAT reads the frozen base weight W0 twice per layer (in the base matmul W0·x and in H = relu(W0ᵀAᵀ)); under ZeRO-3
W0 is partitioned across ranks and must be all-gathered before each use. neat-hf registers W0 (and the adapter
weights) as external parameters of the NEAT layer (`neat_hf.layer.register_zero3_parameters`, which
`NeatTrainer` calls once DeepSpeed has partitioned the model), so DeepSpeed should gather W0 once per layer per forward,
as it does for LoRA, whose adapter never touches W0. The loop here is a bare DeepSpeed engine (no Trainer), so the step
times hold only the model, the gathers and the optimizer. This script measures that:

- it counts every all-gather DeepSpeed issues, per parameter, by wrapping each partitioned parameter's
  `all_gather_coalesced`/`all_gather` (what DeepSpeed's fetch coordinator and `GatheredParameters` call), split by
  phase (forward, backward, optimizer step) and by kind (W0 of a targeted layer, adapter weights, other weights);
- it times the training step (forward, `engine.backward`, `engine.step`) under ZeRO-3 and under ZeRO-0 (plain data
  parallel) for each method; the ZeRO-3 overhead of a method is its ZeRO-3 step minus its ZeRO-0 step, and NEAT's
  extra cost for gathering W0 is its overhead minus LoRA's.

Two ZeRO-3 settings are run: ``shipped`` is `deepspeed_configs/zero3.json` with its "auto" values filled as the
transformers integration fills them (prefetch 0.9·h², persistence threshold 10·h, max live / reuse distance 1e9, so
small models keep most weights gathered between forward and backward), and ``strict`` releases every weight right
after use (persistence threshold 0, max live parameters 0, reuse distance 0, no prefetch): the worst case, where
the gathers per layer are easiest to see.

Outputs `<output-dir>/zero3_<preset>.{json,md}`.

Examples:

    python benchmarks/bench_zero3.py --preset cpu --rounds 2
    python benchmarks/bench_zero3.py --preset tiny --rounds 1 --warmup 1 --steps 2 --output-dir /tmp/bench   # smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from neat_hf.layer import register_zero3_parameters
from neat_hf.io import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_models import apply_method, build_llama, get_preset, random_batch  # noqa: E402
from common import (  # noqa: E402
    REPO_ROOT,
    RESULTS_DIR,
    atomic_write_json,
    command_line,
    environment,
    format_env,
    interleaved,
    load_average,
    markdown_table,
    result_stem,
    run_config,
    run_worker,
    setup_logging,
    summarize,
    write_outputs,
)


logger = logging.getLogger("neat_hf.benchmarks.zero3")

METHODS = ("lora", "neat")
SETTINGS = ("zero0", "shipped", "strict")
PHASES = ("forward", "backward", "step")


def ds_config(setting: str, hidden: int, micro_batch: int, world_size: int) -> dict[str, Any]:
    """The DeepSpeed config for `setting`, with every "auto" filled (as transformers' integration would)."""
    if setting == "zero0":
        zero: dict[str, Any] = {"stage": 0}
    else:
        shipped = json.loads((REPO_ROOT / "deepspeed_configs" / "zero3.json").read_text(encoding="utf-8"))
        zero = dict(shipped["zero_optimization"])
        fill = {"reduce_bucket_size": hidden * hidden, "stage3_prefetch_bucket_size": int(0.9 * hidden * hidden),
                "stage3_param_persistence_threshold": 10 * hidden}
        zero.update({k: v for k, v in fill.items() if zero.get(k) == "auto"})
        if setting == "strict":
            zero.update({"stage3_param_persistence_threshold": 0, "stage3_max_live_parameters": 0,
                         "stage3_max_reuse_distance": 0, "stage3_prefetch_bucket_size": 0})
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "train_batch_size": micro_batch * world_size,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": False},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


class GatherCounter:
    """Counts DeepSpeed all-gathers per parameter and phase by wrapping each partitioned parameter's gather methods."""

    def __init__(self, model: Any) -> None:
        self.phase = "setup"
        self.kind: dict[int, str] = {}
        self.counts: dict[tuple[str, str], int] = {}
        self.numel: dict[tuple[str, str], int] = {}
        for name, p in model.named_parameters():
            if not hasattr(p, "ds_id"):
                continue
            if "lora_" in name or "peanut_" in name:
                kind = "adapter"
            elif name.endswith("base_layer.weight"):
                kind = "W0"
            else:
                kind = "other"
            self.kind[id(p)] = kind
            self._wrap(p)

    def _record(self, params: Any) -> None:
        for p in params:
            key = (self.phase, self.kind.get(id(p), "other"))
            self.counts[key] = self.counts.get(key, 0) + 1
            self.numel[key] = self.numel.get(key, 0) + int(getattr(p, "ds_numel", p.numel()))

    def _wrap(self, p: Any) -> None:
        coalesced, single = p.all_gather_coalesced, p.all_gather

        def all_gather_coalesced(params, *args, **kwargs):
            params = list(params)
            self._record(params)
            return coalesced(params, *args, **kwargs)

        def all_gather(param_list=None, *args, **kwargs):
            self._record(param_list if param_list is not None else [p])
            return single(param_list, *args, **kwargs)

        p.all_gather_coalesced = all_gather_coalesced
        p.all_gather = all_gather

    def reset(self) -> None:
        self.counts.clear()
        self.numel.clear()

    def snapshot(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for (phase, kind), n in self.counts.items():
            out.setdefault(phase, {})[kind] = n
            out[phase][f"{kind}_numel"] = self.numel[(phase, kind)]
        return out


def measure(spec: dict[str, Any]) -> dict[str, Any] | None:
    """One method × setting on every rank of a 2-process gloo group (runs under torch.distributed.run)."""
    import time

    import deepspeed
    import torch
    import torch.distributed as dist

    torch.set_num_threads(int(spec.get("threads") or 1))
    deepspeed.init_distributed(dist_backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    preset = get_preset(spec["preset"], **spec.get("overrides", {}))
    model = apply_method(build_llama(preset, "cpu", torch.float32, spec["seed"]), spec["method"], preset, spec["seed"])
    n_targets = sum(1 for n, _ in model.named_parameters() if n.endswith("base_layer.weight"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    config = ds_config(spec["setting"], preset.hidden_size, preset.batch_size, world)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, model_parameters=params, config=config)
    registered = 0
    if spec["method"] == "neat" and spec["setting"] != "zero0":
        # The model was partitioned by deepspeed.initialize (not built under zero.Init), after the NEAT layers were
        # created: register W0 and the adapter weights with each NEAT layer, as NeatTrainer does after initialize.
        registered = register_zero3_parameters(engine.module)
    counter = GatherCounter(engine.module)
    input_ids = random_batch(preset, "cpu", spec["seed"] + rank)  # each rank its own data, as in data parallel
    times, cpu_times, per_step = [], [], []
    for i in range(spec["warmup"] + spec["steps"]):
        counter.reset()
        dist.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        counter.phase = "forward"
        loss = engine(input_ids=input_ids, labels=input_ids).loss
        counter.phase = "backward"
        engine.backward(loss)
        counter.phase = "step"
        engine.step()
        counter.phase = "idle"
        cpu = time.process_time() - c0
        dist.barrier()
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
            cpu_times.append(cpu)
            per_step.append(counter.snapshot())
    result = {
        "method": spec["method"], "setting": spec["setting"], "world_size": world, "step_times_s": times,
        "step_cpu_times_s": cpu_times,  # rank 0's CPU time (compute + gather work, not waiting)
        "gathers_per_step": per_step, "n_target_layers": n_targets, "registered_external": registered,
        "zero_config": config["zero_optimization"], "threads_per_rank": torch.get_num_threads(),
        "loss": float(loss.detach()),
    }
    dist.barrier()
    return result if rank == 0 else None


def per_layer(result: dict[str, Any], phase: str, kind: str = "W0") -> float:
    """Mean number of gathers of each targeted layer's W0 per step in `phase`."""
    steps = result["gathers_per_step"]
    if not steps or not result["n_target_layers"]:
        return 0.0
    return sum(s.get(phase, {}).get(kind, 0) for s in steps) / len(steps) / result["n_target_layers"]


def extra_cost_lines(summary: dict[str, Any], settings: list[str]) -> list[str]:
    """NEAT's extra ZeRO-3 cost: its (ZeRO-3 − ZeRO-0) step time minus LoRA's, in wall and in rank-0 CPU time."""
    lines = []
    for setting in settings:
        keys = [f"neat/{setting}", f"lora/{setting}", "neat/zero0", "lora/zero0"]
        if setting == "zero0" or not all(k in summary for k in keys):
            continue
        parts = []
        for label, field in (("wall", "step_s_median"), ("rank-0 CPU time", "step_cpu_s_median")):
            n_over = summary[keys[0]][field] - summary[keys[2]][field]
            l_over = summary[keys[1]][field] - summary[keys[3]][field]
            parts.append(
                f"{label}: ZeRO-3 overhead NEAT {n_over * 1e3:+.1f} ms, LoRA {l_over * 1e3:+.1f} ms → NEAT's extra "
                f"cost {(n_over - l_over) * 1e3:+.1f} ms ({(n_over - l_over) / summary[keys[3]][field] * 100:+.1f}% of "
                f"LoRA's ZeRO-0 step)"
            )
        lines.append(
            f"`{setting}`: " + "; ".join(parts) + f"; W0 gathers per layer per forward: NEAT "
            f"{summary[keys[0]]['w0_gathers_per_layer']['forward']:.2f}, LoRA "
            f"{summary[keys[1]]['w0_gathers_per_layer']['forward']:.2f}."
        )
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    rows = []
    s = report["summary"]
    for method in report["methods"]:
        for setting in report["settings"]:
            key = f"{method}/{setting}"
            if key not in s:
                continue
            r = s[key]
            base = s.get(f"{method}/zero0")
            over = (r["step_s_median"] - base["step_s_median"]) * 1e3 if base and setting != "zero0" else None
            rows.append([
                method, setting, f"{r['step_s_median'] * 1e3:.1f} ms",
                f"{r['step_s_rounds_min'] * 1e3:.1f}–{r['step_s_rounds_max'] * 1e3:.1f}",
                "—" if over is None else f"{over:+.1f} ms",
                f"{r['step_cpu_s_median'] * 1e3:.1f} ms",
                "—" if setting == "zero0" else f"{r['w0_gathers_per_layer']['forward']:.2f}",
                "—" if setting == "zero0" else f"{r['w0_gathers_per_layer']['backward']:.2f}",
                "—" if setting == "zero0" else f"{r['gathers_total_per_step']:.0f}",
            ])
    table = markdown_table(
        ["method", "ZeRO setting", "step (median)", "range over rounds (ms)", "ZeRO-3 overhead vs ZeRO-0",
         "rank-0 CPU time / step",
         "W0 gathers / layer / forward", "W0 gathers / layer / backward", "all gathers / step"], rows)
    extra = "\n".join(f"- {line}" for line in report["extra_cost"])
    cfg, p = report["config"], report["preset"]
    return (
        f"### ZeRO-3 — preset `{cfg['preset']}`, 2 CPU ranks (gloo), fp32\n\n"
        f"hidden {p['hidden_size']}, {p['num_hidden_layers']} layers, seq {p['seq_len']} × batch {p['batch_size']} per "
        f"rank, r={p['r']}; {cfg['rounds']} round(s) × {cfg['steps']} steps after {cfg['warmup']} warm-up, "
        f"{report['threads_per_rank']} thread(s) per rank.\n\n{table}\n{extra}\n\n"
        f"Command: `{report['command']}`\n\nEnvironment: {format_env(report['environment'])}; load average at end "
        f"{report['load_avg_end']}.\n"
    )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--settings", default=",".join(SETTINGS), help=f"subset of {','.join(SETTINGS)}")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--nproc", type=int, default=2, help="ranks (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--tag", default="")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--render", type=Path, default=None, help="rewrite the .md of an existing result JSON")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = make_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.worker is not None:
        result = measure(json.loads(args.worker))
        if result is not None:
            atomic_write_json(args.result_file, result)
        return None
    if args.render is not None:
        report = json.loads(args.render.read_text(encoding="utf-8"))
        report["extra_cost"] = extra_cost_lines(report["summary"], report["settings"])
        atomic_write_json(args.render, report)
        atomic_write_text(args.render.with_suffix(".md"), render_markdown(report))
        return report
    methods = [m for m in args.methods.split(",") if m]
    settings = [s for s in args.settings.split(",") if s]
    if not set(methods) <= set(METHODS) or not set(settings) <= set(SETTINGS) or not methods or not settings:
        raise SystemExit(f"--methods must be a subset of {METHODS} and --settings of {SETTINGS}.")
    overrides = {k: getattr(args, k) for k in ("seq_len", "batch_size") if getattr(args, k)}
    preset = get_preset(args.preset, **overrides)
    env = environment("cpu")
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc)]
    combos = [(m, s) for s in settings for m in methods]
    runs: dict[str, list[dict[str, Any]]] = {f"{m}/{s}": [] for m, s in combos}
    for rnd, (method, setting) in interleaved(combos, args.rounds):
        spec = {"method": method, "setting": setting, "preset": args.preset, "overrides": overrides,
                "seed": args.seed, "warmup": args.warmup, "steps": args.steps, "threads": args.threads}
        res = run_worker(Path(__file__).resolve(), spec, timeout=args.timeout, launcher=launcher)
        logger.info("round %d/%d %-5s %-8s median step %.1f ms, W0 gathers/layer fwd %.2f bwd %.2f", rnd + 1,
                    args.rounds, method, setting, summarize(res["step_times_s"])["median"] * 1e3,
                    per_layer(res, "forward"), per_layer(res, "backward"))
        runs[f"{method}/{setting}"].append(res)

    summary = {}
    for key, rs in runs.items():
        medians = [summarize(r["step_times_s"])["median"] for r in rs]
        st = summarize(medians)
        last = rs[-1]
        summary[key] = {
            "step_s_median": st["median"], "step_s_rounds_min": st["min"], "step_s_rounds_max": st["max"],
            "step_cpu_s_median": summarize([summarize(r["step_cpu_times_s"])["median"] for r in rs])["median"],
            "w0_gathers_per_layer": {ph: per_layer(last, ph) for ph in PHASES},
            "adapter_gathers_per_step": {ph: sum(s.get(ph, {}).get("adapter", 0) for s in last["gathers_per_step"])
                                         / max(1, len(last["gathers_per_step"])) for ph in PHASES},
            "gathers_total_per_step": sum(v for s in last["gathers_per_step"] for ph in s.values()
                                          for k, v in ph.items() if not k.endswith("_numel"))
            / max(1, len(last["gathers_per_step"])),
            "n_target_layers": last["n_target_layers"],
        }
    extra = extra_cost_lines(summary, settings)
    report = {
        "benchmark": "zero3",
        "command": command_line("bench_zero3.py", argv),
        "config": run_config(args),
        "preset": {**preset.__dict__},
        "methods": methods,
        "settings": settings,
        "environment": env,
        "threads_per_rank": next(iter(runs.values()))[0]["threads_per_rank"],
        "load_avg_end": load_average(),
        "summary": summary,
        "extra_cost": extra,
        "runs": runs,
    }
    stem = result_stem("zero3", args.preset, tag=args.tag)
    write_outputs(args.output_dir, stem, report, render_markdown(report))
    return report


if __name__ == "__main__":
    main()
