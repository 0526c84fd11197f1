"""Scaffolding of the benchmarks that run on several CPU ranks (gloo) under `torch.distributed.run`:
`bench_zero3.py` (method × ZeRO setting) and `bench_fsdp.py` (engine × method).

Each measures a grid of two axes, every cell in a fresh `torchrun` launch, in interleaved rounds. What a cell
measures (model, engine, counters, report tables) stays in the script; this module holds the rest:

- `make_parser`: the options both take (preset, methods, the grid's other axis, rounds, steps, ranks, outputs);
- `grid`: the two axes asked for, checked;
- `run_worker_if_asked`: the worker side (`--worker SPEC`: measure on every rank; rank 0 writes the result);
- `run_rounds`: the parent side, one launch per cell and round, results by `"a/b"` key;
- `timed_steps` / `rank0_result`: the timed training-step loop (between barriers, the gather counter told the phase);
- `step_time_summary`, `build_report`, `run_description`, `provenance`: the summary fields, the report, and the
  lines of the markdown that say what ran where.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch.distributed as dist
from common import (
    RESULTS_DIR,
    atomic_write_json,
    command_line,
    format_env,
    interleaved,
    load_average,
    run_config,
    run_worker,
    summarize,
)


def make_parser(description: str, methods: Sequence[str], axis: str, values: Sequence[str]) -> argparse.ArgumentParser:
    """The options of a multi-rank benchmark; `--<axis>` is the grid's other axis (a subset of `values`)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--methods", default=",".join(methods))
    parser.add_argument(f"--{axis}", default=",".join(values), help=f"subset of {','.join(values)}")
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


def grid(
    args: argparse.Namespace, methods: Sequence[str], axis: str, values: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The methods and `--<axis>` values asked for; exits naming the allowed ones if either is empty or unknown."""
    chosen_methods = [m for m in args.methods.split(",") if m]
    chosen_values = [v for v in getattr(args, axis).split(",") if v]
    known = set(chosen_methods) <= set(methods) and set(chosen_values) <= set(values)
    if not chosen_methods or not chosen_values or not known:
        raise SystemExit(f"--methods must be a subset of {tuple(methods)} and --{axis} of {tuple(values)}.")
    return chosen_methods, chosen_values


def run_worker_if_asked(args: argparse.Namespace, measure: Callable[[dict[str, Any]], dict[str, Any] | None]) -> bool:
    """In a worker launch (`--worker SPEC`), measure on this rank and let rank 0 write the result; False otherwise."""
    if args.worker is None:
        return False
    result = measure(json.loads(args.worker))
    if result is not None:
        atomic_write_json(args.result_file, result)
    return True


def run_rounds(
    script: str | Path,
    cells: Sequence[tuple[str, str]],
    args: argparse.Namespace,
    spec: Callable[[str, str], dict[str, Any]],
    describe: Callable[[str, str, dict[str, Any]], str],
    log: logging.Logger,
) -> dict[str, list[dict[str, Any]]]:
    """Measure each cell `(a, b)` in its own launch of `args.nproc` ranks, `args.rounds` times, in interleaved order.

    `spec(a, b)` gives what the worker needs besides the preset, seed, warm-up, steps and threads; `describe(a, b,
    result)` the log line of one launch. Returns the results of every round by `"a/b"`, in the order of `cells`.
    """
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc)]
    runs: dict[str, list[dict[str, Any]]] = {f"{a}/{b}": [] for a, b in cells}
    for rnd, (a, b) in interleaved(cells, args.rounds):
        cell_spec = {**spec(a, b), "preset": args.preset, "seed": args.seed, "warmup": args.warmup,
                     "steps": args.steps, "threads": args.threads}
        result = run_worker(Path(script).resolve(), cell_spec, timeout=args.timeout, launcher=launcher)
        log.info("round %d/%d %s", rnd + 1, args.rounds, describe(a, b, result))
        runs[f"{a}/{b}"].append(result)
    return runs


def timed_steps(
    spec: dict[str, Any],
    counter: Any,
    forward: Callable[[], Any],
    backward: Callable[[Any], None],
    step: Callable[[], None],
) -> dict[str, Any]:
    """`spec["warmup"]` + `spec["steps"]` training steps on this rank, each between two barriers, with `counter.phase`
    set to "forward", "backward", "step", then "idle", and `counter.reset()` before each.

    Returns, for the steps after the warm-up: `step_times_s` (wall), `step_cpu_times_s` (this rank's CPU time: compute
    and gather work, not waiting), `gathers_per_step` (`counter.snapshot()` of each), and the last `loss`.
    """
    times, cpu_times, per_step = [], [], []
    loss = None
    for i in range(spec["warmup"] + spec["steps"]):
        counter.reset()
        dist.barrier()
        t0, c0 = time.perf_counter(), time.process_time()
        counter.phase = "forward"
        loss = forward()
        counter.phase = "backward"
        backward(loss)
        counter.phase = "step"
        step()
        counter.phase = "idle"
        cpu = time.process_time() - c0
        dist.barrier()
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
            cpu_times.append(cpu)
            per_step.append(counter.snapshot())
    return {"step_times_s": times, "step_cpu_times_s": cpu_times, "gathers_per_step": per_step,
            "loss": float(loss.detach())}


def rank0_result(result: dict[str, Any]) -> dict[str, Any] | None:
    """Wait for every rank, then hand `result` to rank 0 only (the one that writes it)."""
    dist.barrier()
    return result if dist.get_rank() == 0 else None


def step_time_summary(results: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Median over rounds of each round's median step time, with the range of the round medians."""
    rounds = summarize([summarize(r["step_times_s"])["median"] for r in results])
    return {"step_s_median": rounds["median"], "step_s_rounds_min": rounds["min"], "step_s_rounds_max": rounds["max"]}


def build_report(
    benchmark: str,
    argv: Sequence[str] | None,
    args: argparse.Namespace,
    preset: Any,
    axes: dict[str, list[str]],
    environment: dict[str, Any],
    summary: dict[str, Any],
    runs: dict[str, list[dict[str, Any]]],
    **extra: Any,
) -> dict[str, Any]:
    """The report of a multi-rank benchmark (`environment` recorded before the runs); `extra` goes before the runs."""
    return {
        "benchmark": benchmark,
        "command": command_line(f"bench_{benchmark}.py", argv),
        "config": run_config(args),
        "preset": {**preset.__dict__},
        **axes,
        "environment": environment,
        "threads_per_rank": next(iter(runs.values()))[0]["threads_per_rank"],
        "load_avg_end": load_average(),
        "summary": summary,
        **extra,
        "runs": runs,
    }


def run_description(report: dict[str, Any]) -> str:
    """The sentence under a report's heading: model shape, rounds and steps, threads."""
    cfg, p = report["config"], report["preset"]
    return (
        f"hidden {p['hidden_size']}, {p['num_hidden_layers']} layers, seq {p['seq_len']} × batch {p['batch_size']} "
        f"per rank, r={p['r']}; {cfg['rounds']} round(s) × {cfg['steps']} steps after {cfg['warmup']} warm-up, "
        f"{report['threads_per_rank']} thread(s) per rank."
    )


def provenance(report: dict[str, Any]) -> str:
    """The lines that end a report: the command and the environment."""
    return (
        f"Command: `{report['command']}`\n\nEnvironment: {format_env(report['environment'])}; load average at end "
        f"{report['load_avg_end']}.\n"
    )
