#!/usr/bin/env python
"""ZeRO-3 overhead of NEAT's W0 reads: 2 CPU ranks (gloo), NEAT against PEFT LoRA, ZeRO-3 against ZeRO-0.

NEAT reads the frozen base weight W0 twice per layer (in the base matmul W0·x and in H = relu(W0ᵀAᵀ)); under ZeRO-3
W0 is partitioned across ranks and must be all-gathered before each use. neat-hf registers W0 (and the adapter
weights) as external parameters of the NEAT layer (`neat_hf.parallel.zero3.register_zero3_parameters`, which
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

from neat_hf.parallel.zero3 import register_zero3_parameters
from neat_hf.io import atomic_write_text

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_models import apply_method, build_llama, get_preset, random_batch  # noqa: E402
from common import (  # noqa: E402
    REPO_ROOT,
    atomic_write_json,
    environment,
    markdown_table,
    result_stem,
    setup_logging,
    summarize,
    write_outputs,
)
import multirank  # noqa: E402


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
    steps = multirank.timed_steps(
        spec, counter, lambda: engine(input_ids=input_ids, labels=input_ids).loss, engine.backward, engine.step
    )
    return multirank.rank0_result({
        "method": spec["method"], "setting": spec["setting"], "world_size": world,
        "step_times_s": steps["step_times_s"],
        "step_cpu_times_s": steps["step_cpu_times_s"],  # rank 0's CPU time (compute + gather work, not waiting)
        "gathers_per_step": steps["gathers_per_step"], "n_target_layers": n_targets, "registered_external": registered,
        "zero_config": config["zero_optimization"], "threads_per_rank": torch.get_num_threads(),
        "loss": steps["loss"],
    })


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
    return (
        f"### ZeRO-3 — preset `{report['config']['preset']}`, 2 CPU ranks (gloo), fp32\n\n"
        f"{multirank.run_description(report)}\n\n{table}\n{extra}\n\n{multirank.provenance(report)}"
    )


def make_parser() -> argparse.ArgumentParser:
    parser = multirank.make_parser(__doc__, METHODS, "settings", SETTINGS)
    parser.add_argument("--seq-len", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--render", type=Path, default=None, help="rewrite the .md of an existing result JSON")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = make_parser().parse_args(argv)
    setup_logging(args.verbose)
    if multirank.run_worker_if_asked(args, measure):
        return None
    if args.render is not None:
        report = json.loads(args.render.read_text(encoding="utf-8"))
        report["extra_cost"] = extra_cost_lines(report["summary"], report["settings"])
        atomic_write_json(args.render, report)
        atomic_write_text(args.render.with_suffix(".md"), render_markdown(report))
        return report
    methods, settings = multirank.grid(args, METHODS, "settings", SETTINGS)
    overrides = {k: getattr(args, k) for k in ("seq_len", "batch_size") if getattr(args, k)}
    preset = get_preset(args.preset, **overrides)
    env = environment("cpu")
    runs = multirank.run_rounds(
        __file__,
        [(m, s) for s in settings for m in methods],
        args,
        spec=lambda method, setting: {"method": method, "setting": setting, "overrides": overrides},
        describe=lambda method, setting, res: (
            f"{method:<5} {setting:<8} median step {summarize(res['step_times_s'])['median'] * 1e3:.1f} ms, "
            f"W0 gathers/layer fwd {per_layer(res, 'forward'):.2f} bwd {per_layer(res, 'backward'):.2f}"
        ),
        log=logger,
    )

    summary = {}
    for key, rs in runs.items():
        last = rs[-1]
        summary[key] = {
            **multirank.step_time_summary(rs),
            "step_cpu_s_median": summarize([summarize(r["step_cpu_times_s"])["median"] for r in rs])["median"],
            "w0_gathers_per_layer": {ph: per_layer(last, ph) for ph in PHASES},
            "adapter_gathers_per_step": {ph: sum(s.get(ph, {}).get("adapter", 0) for s in last["gathers_per_step"])
                                         / max(1, len(last["gathers_per_step"])) for ph in PHASES},
            "gathers_total_per_step": sum(v for s in last["gathers_per_step"] for ph in s.values()
                                          for k, v in ph.items() if not k.endswith("_numel"))
            / max(1, len(last["gathers_per_step"])),
            "n_target_layers": last["n_target_layers"],
        }
    axes = {"methods": methods, "settings": settings}
    report = multirank.build_report("zero3", argv, args, preset, axes, env, summary, runs,
                                    extra_cost=extra_cost_lines(summary, settings))
    stem = result_stem("zero3", args.preset, tag=args.tag)
    write_outputs(args.output_dir, stem, report, render_markdown(report))
    return report


if __name__ == "__main__":
    main()
