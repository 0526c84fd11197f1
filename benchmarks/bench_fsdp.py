#!/usr/bin/env python
"""FSDP2 against DeepSpeed ZeRO-3 for NEAT (and PEFT LoRA): step time, memory and all-gathers per step, 2 CPU ranks.

Both engines shard the frozen base weights and the adapter across ranks and gather them for use. Under FSDP2
(`neat_hf.fsdp.fully_shard_neat_model`, what `NeatTrainer` applies) each decoder layer is one FSDP unit holding its
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
import json
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_models import apply_method, build_llama, get_preset, random_batch  # noqa: E402
from bench_zero3 import GatherCounter as Zero3GatherCounter  # noqa: E402
from bench_zero3 import ds_config  # noqa: E402
from common import (  # noqa: E402
    RESULTS_DIR,
    atomic_write_json,
    command_line,
    environment,
    fmt_bytes,
    format_env,
    interleaved,
    load_average,
    markdown_table,
    peak_rss_bytes,
    result_stem,
    run_config,
    run_worker,
    setup_logging,
    summarize,
    write_outputs,
)

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
    import time

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
        from neat_hf.fsdp import fully_shard_neat_model

        fully_shard_neat_model(model)  # one unit per LlamaDecoderLayer + the root (PEFT LoRA models too)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        counter: Any = Fsdp2GatherCounter()
        engine = model
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)
        config = ds_config("shipped", preset.hidden_size, preset.batch_size, world)
        engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, model_parameters=params, config=config)
        if method == "neat":
            from neat_hf.distributed import register_zero3_parameters

            register_zero3_parameters(engine.module)  # as NeatTrainer does after deepspeed.initialize
        counter = Zero3GatherCounter(engine.module)
    input_ids = random_batch(preset, "cpu", spec["seed"] + rank)
    times, per_step = [], []
    for i in range(spec["warmup"] + spec["steps"]):
        counter.reset()
        dist.barrier()
        t0 = time.perf_counter()
        counter.phase = "forward"
        loss = engine(input_ids=input_ids, labels=input_ids).loss
        counter.phase = "backward"
        if engine_name == "zero3":
            engine.backward(loss)
            counter.phase = "step"
            engine.step()
        else:
            loss.backward()
            counter.phase = "step"
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        counter.phase = "idle"
        dist.barrier()
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
            snap = counter.snapshot()
            per_step.append(_zero3_counts(snap) if engine_name == "zero3" else snap)
    result = {
        "engine": engine_name, "method": method, "world_size": world, "step_times_s": times,
        "gathers_per_step": per_step, "peak_rss_bytes": peak_rss_bytes(),
        "held_param_bytes": _held_param_bytes(engine.module if engine_name == "zero3" else engine),
        "model_param_bytes": sum(p.numel() * p.element_size() for p in model.parameters()),
        "threads_per_rank": torch.get_num_threads(), "loss": float(loss.detach()),
    }
    dist.barrier()
    return result if rank == 0 else None


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
    cfg, p = report["config"], report["preset"]
    return (
        f"### FSDP2 vs ZeRO-3 — preset `{cfg['preset']}`, 2 CPU ranks (gloo), fp32\n\n"
        f"hidden {p['hidden_size']}, {p['num_hidden_layers']} layers, seq {p['seq_len']} × batch {p['batch_size']} per "
        f"rank, r={p['r']}; {cfg['rounds']} round(s) × {cfg['steps']} steps after {cfg['warmup']} warm-up, "
        f"{report['threads_per_rank']} thread(s) per rank. ZeRO-3 = `deepspeed_configs/zero3.json` with its autos "
        f"filled (`shipped` in bench_zero3.py).\n\n{table}\n\n"
        f"Command: `{report['command']}`\n\nEnvironment: {format_env(report['environment'])}; load average at end "
        f"{report['load_avg_end']}.\n"
    )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"subset of {','.join(ENGINES)}")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--nproc", type=int, default=2, help="ranks (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--tag", default="")
    parser.add_argument("--timeout", type=float, default=3600)
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
    methods = [m for m in args.methods.split(",") if m]
    engines = [e for e in args.engines.split(",") if e]
    if not methods or not engines or not set(methods) <= set(METHODS) or not set(engines) <= set(ENGINES):
        raise SystemExit(f"--methods must be a subset of {METHODS} and --engines of {ENGINES}.")
    preset = get_preset(args.preset)
    env = environment("cpu")
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc)]
    combos = [(e, m) for e in engines for m in methods]
    runs: dict[str, list[dict[str, Any]]] = {f"{e}/{m}": [] for e, m in combos}
    for rnd, (engine, method) in interleaved(combos, args.rounds):
        spec = {"engine": engine, "method": method, "preset": args.preset, "seed": args.seed,
                "warmup": args.warmup, "steps": args.steps, "threads": args.threads}
        res = run_worker(Path(__file__).resolve(), spec, timeout=args.timeout, launcher=launcher)
        logger.info("round %d/%d %-5s %-5s median step %.1f ms, all-gathers/step %.0f", rnd + 1, args.rounds, engine,
                    method, summarize(res["step_times_s"])["median"] * 1e3, _gathers(res, "collectives"))
        runs[f"{engine}/{method}"].append(res)
    summary = {}
    for key, rs in runs.items():
        st = summarize([summarize(r["step_times_s"])["median"] for r in rs])
        last = rs[-1]
        summary[key] = {
            "step_s_median": st["median"], "step_s_rounds_min": st["min"], "step_s_rounds_max": st["max"],
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in rs), "held_param_bytes": last["held_param_bytes"],
            "all_gathers_per_step": _gathers(last, "collectives"), "gathered_numel_per_step": _gathers(last, "numel"),
            "gathers_by_phase": last["gathers_per_step"][-1] if last["gathers_per_step"] else {},
        }
    report = {
        "benchmark": "fsdp",
        "command": command_line("bench_fsdp.py", argv),
        "config": run_config(args),
        "preset": {**preset.__dict__},
        "methods": methods,
        "engines": engines,
        "environment": env,
        "threads_per_rank": next(iter(runs.values()))[0]["threads_per_rank"],
        "load_avg_end": load_average(),
        "summary": summary,
        "runs": runs,
    }
    write_outputs(args.output_dir, result_stem("fsdp", args.preset, tag=args.tag), report, render_markdown(report))
    return report


if __name__ == "__main__":
    main()
