#!/usr/bin/env python
"""FSDP2 against DeepSpeed ZeRO-3 for NEAT (and PEFT LoRA): step time, memory and all-gathers per step, 2 CPU ranks.

Both engines shard the frozen base weights and the adapter across ranks and gather them for use. Under FSDP2
(`neat_hf.parallel.fsdp.fully_shard_neat_model`, what `NeatTrainer` applies) each decoder layer is one FSDP unit holding its
NEAT layers with their W0, so a unit is all-gathered in one collective when its forward starts and again for its
backward (the root unit once per step); under ZeRO-3 (`deepspeed_configs/zero3.json` as `bench_zero3.py` fills it,
`shipped`) DeepSpeed gathers per module with its prefetch and persistence rules, W0 registered as an external
parameter of its NEAT layer. The loop is bare (no Trainer): forward, backward, optimizer step, so the step times hold
only the model, the collectives and the optimizer.

Per engine × method it reports the median step time, rank 0's peak RSS (the whole process: interpreter, libraries,
model, activations), the parameter bytes each rank holds between steps (its shards plus anything kept gathered), and
the all-gathers of one step: collectives issued, and elements gathered.

Outputs `<output-dir>/fsdp_<preset>.{json,md}`.

Examples:

    python benchmarks/bench_fsdp.py --preset cpu --rounds 2
    python benchmarks/bench_fsdp.py --preset tiny --rounds 1 --warmup 1 --steps 2 --output-dir /tmp/bench   # smoke
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from neat_hf.parallel.zero3 import register_zero3_parameters

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_models import apply_method, build_llama, get_preset, random_batch  # noqa: E402
from bench_zero3 import GatherCounter as Zero3GatherCounter  # noqa: E402
from bench_zero3 import ds_config  # noqa: E402
from common import (  # noqa: E402
    environment,
    fmt_bytes,
    markdown_table,
    peak_rss_bytes,
    result_stem,
    setup_logging,
    summarize,
    write_outputs,
)
import multirank  # noqa: E402

logger = logging.getLogger("neat_hf.benchmarks.fsdp")

METHODS = ("lora", "neat")
ENGINES = ("fsdp2", "zero3")


class Fsdp2GatherCounter:
    """Counts FSDP2's all-gather collectives (`dist.all_gather_single`) and the elements they gather, per phase."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.phase = "setup"
        self.counts: dict[str, dict[str, int]] = {}
        self._dist, self._original = dist, dist.all_gather_single
        counter = self

        def all_gather_single(output, input, *args, **kwargs):
            entry = counter.counts.setdefault(counter.phase, {"collectives": 0, "numel": 0})
            entry["collectives"] += 1
            entry["numel"] += output.numel()
            return counter._original(output, input, *args, **kwargs)

        dist.all_gather_single = all_gather_single

    def reset(self) -> None:
        self.counts = {}

    def snapshot(self) -> dict[str, dict[str, int]]:
        return {phase: dict(v) for phase, v in self.counts.items()}


def _held_param_bytes(model: Any) -> int:
    """Bytes of parameter storage this rank holds right now (FSDP2 shards, ZeRO-3 partitions, or whole tensors)."""
    total = 0
    for p in model.parameters():
        if hasattr(p, "ds_tensor"):  # ZeRO-3: the rank's partition, plus the full tensor if kept gathered
            total += p.ds_tensor.numel() * p.ds_tensor.element_size() + p.data.numel() * p.element_size()
        elif hasattr(p, "to_local"):
            local = p.to_local()
            total += local.numel() * local.element_size()
        else:
            total += p.numel() * p.element_size()
    return total


def _zero3_counts(snapshot: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {phase: {"collectives": sum(v for k, v in kinds.items() if not k.endswith("_numel")),
                    "numel": sum(v for k, v in kinds.items() if k.endswith("_numel"))} for phase, kinds in snapshot.items()}


def measure(spec: dict[str, Any]) -> dict[str, Any] | None:
    """One engine × method on every rank of a gloo group (runs under torch.distributed.run)."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(int(spec.get("threads") or 1))
    engine_name, method = spec["engine"], spec["method"]
    preset = get_preset(spec["preset"], **spec.get("overrides", {}))
    if engine_name == "zero3":
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
    else:
        dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = apply_method(build_llama(preset, "cpu", torch.float32, spec["seed"]), method, preset, spec["seed"])
    if engine_name == "fsdp2":
        from neat_hf.parallel.fsdp import fully_shard_neat_model

        fully_shard_neat_model(model)  # one unit per LlamaDecoderLayer + the root (PEFT LoRA models too)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        counter: Any = Fsdp2GatherCounter()
        engine = model

        def backward(loss: torch.Tensor) -> None:
            loss.backward()

        def step() -> None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        config = ds_config("shipped", preset.hidden_size, preset.batch_size, world)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, model_parameters=params, config=config)
        if method == "neat":
            register_zero3_parameters(engine.module)  # as NeatTrainer does after deepspeed.initialize
        counter = Zero3GatherCounter(engine.module)
        backward, step = engine.backward, engine.step
    input_ids = random_batch(preset, "cpu", spec["seed"] + rank)
    steps = multirank.timed_steps(
        spec, counter, lambda: engine(input_ids=input_ids, labels=input_ids).loss, backward, step
    )
    per_step = steps["gathers_per_step"]
    return multirank.rank0_result({
        "engine": engine_name, "method": method, "world_size": world, "step_times_s": steps["step_times_s"],
        "gathers_per_step": [_zero3_counts(snap) for snap in per_step] if engine_name == "zero3" else per_step,
        "peak_rss_bytes": peak_rss_bytes(),
        "held_param_bytes": _held_param_bytes(engine.module if engine_name == "zero3" else engine),
        "model_param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "threads_per_rank": torch.get_num_threads(), "loss": steps["loss"],
    })


def _fmt_small_bytes(n: int) -> str:
    return fmt_bytes(n) if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _gathers(result: dict[str, Any], field: str) -> float:
    steps = result["gathers_per_step"]
    return sum(v[field] for s in steps for v in s.values()) / max(1, len(steps))


def render_markdown(report: dict[str, Any]) -> str:
    rows = []
    for key, r in report["summary"].items():
        engine, method = key.split("/")
        rows.append([
            engine, method, f"{r['step_s_median'] * 1e3:.1f} ms",
            f"{r['step_s_rounds_min'] * 1e3:.1f}–{r['step_s_rounds_max'] * 1e3:.1f}",
            fmt_bytes(r["peak_rss_bytes"]), _fmt_small_bytes(r["held_param_bytes"]),
            f"{r['all_gathers_per_step']:.0f}", f"{r['gathered_numel_per_step'] / 1e6:.2f} M",
        ])
    table = markdown_table(
        ["engine", "method", "step (median)", "range over rounds (ms)", "peak RSS (rank 0)",
         "parameters held per rank", "all-gathers / step", "elements gathered / step"], rows)
    return (
        f"### FSDP2 vs ZeRO-3 — preset `{report['config']['preset']}`, 2 CPU ranks (gloo), fp32\n\n"
        f"{multirank.run_description(report)} ZeRO-3 = `deepspeed_configs/zero3.json` with its autos filled "
        f"(`shipped` in bench_zero3.py).\n\n{table}\n\n{multirank.provenance(report)}"
    )


def make_parser() -> argparse.ArgumentParser:
    return multirank.make_parser(__doc__, METHODS, "engines", ENGINES)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = make_parser().parse_args(argv)
    setup_logging(args.verbose)
    if multirank.run_worker_if_asked(args, measure):
        return None
    methods, engines = multirank.grid(args, METHODS, "engines", ENGINES)
    preset = get_preset(args.preset)
    env = environment("cpu")
    runs = multirank.run_rounds(
        __file__,
        [(e, m) for e in engines for m in methods],
        args,
        spec=lambda engine, method: {"engine": engine, "method": method},
        describe=lambda engine, method, res: (
            f"{engine:<5} {method:<5} median step {summarize(res['step_times_s'])['median'] * 1e3:.1f} ms, "
            f"all-gathers/step {_gathers(res, 'collectives'):.0f}"
        ),
        log=logger,
    )
    summary = {}
    for key, rs in runs.items():
        last = rs[-1]
        summary[key] = {
            **multirank.step_time_summary(rs),
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in rs), "held_param_bytes": last["held_param_bytes"],
            "all_gathers_per_step": _gathers(last, "collectives"), "gathered_numel_per_step": _gathers(last, "numel"),
            "gathers_by_phase": last["gathers_per_step"][-1] if last["gathers_per_step"] else {},
        }
    axes = {"methods": methods, "engines": engines}
    report = multirank.build_report("fsdp", argv, args, preset, axes, env, summary, runs)
    write_outputs(args.output_dir, result_stem("fsdp", args.preset, tag=args.tag), report, render_markdown(report))
    return report


if __name__ == "__main__":
    main()
