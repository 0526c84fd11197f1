#!/usr/bin/env python
"""Where does NEAT's adapter path spend time? One-layer timings and a torch.profiler op table.

For each (in, out) shape of the LLaMA preset's targeted projections this times forward + backward of a single layer
on a `(batch·seq) × in` activation, in one process with the variants interleaved call by call:

- ``frozen``: the bare frozen `nn.Linear` (input requires grad, so backward computes dX as it does inside a model);
- ``lora``: a PEFT LoRA `Linear` (α = r, dropout 0);
- ``neat``: a neat-hf NEAT layer (depth 0, relu, scaling 1);
- ``flops``: the factored NEAT computation written inline with no wrapper, casts or scaling
  (y = W0 x + (x·relu(A·W0)ᵀ)·Bᵀ and its autograd backward): the FLOP floor of the factored form, to show what the
  module spends beyond it.

It then profiles the NEAT layer with `torch.profiler` (CPU activities; CUDA too on a GPU) and writes the op table
sorted by self time. Outputs `<output-dir>/profile_<preset>_<device>_<dtype>.{json,md}`.

Examples:

    python benchmarks/profile_adapter.py --preset cpu --threads 1
    python benchmarks/profile_adapter.py --preset tiny --iters 3 --output-dir /tmp/bench   # smoke
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from neat_hf import NeatConfig, get_neat_model

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_models import get_preset  # noqa: E402
from common import (  # noqa: E402
    RESULTS_DIR,
    command_line,
    environment,
    format_env,
    markdown_table,
    resolve_dtype,
    result_stem,
    setup_logging,
    summarize,
    write_outputs,
)


logger = logging.getLogger("neat_hf.benchmarks.profile")


def _layers(in_f: int, out_f: int, r: int, device: str, dtype: Any, seed: int) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from torch import nn

    class One(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(in_f, out_f, bias=False)

        def forward(self, x):
            return self.proj(x)

    def base() -> nn.Module:
        torch.manual_seed(seed)
        return One().to(device=device, dtype=dtype)

    frozen = base().requires_grad_(False)
    torch.manual_seed(seed + 1)
    lora = get_peft_model(base(), LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, target_modules=["proj"],
                                             init_lora_weights=False))
    torch.manual_seed(seed + 1)
    neat = get_neat_model(base(), NeatConfig(r=r, target_modules=["proj"], depth=0, act_fn="relu", init_weights=False))

    # The inline FLOP floor of the factored form, with the same parameter shapes as neat (fp32 adapter weights).
    w0 = base().proj.weight.detach()
    adt = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    a = nn.Parameter(torch.randn(r, out_f, device=device, dtype=adt) * 0.02)
    b = nn.Parameter(torch.randn(out_f, r, device=device, dtype=adt) * 0.02)

    def flops(x):
        h_t = torch.relu(a.to(w0.dtype) @ w0)  # r×in
        return torch.nn.functional.linear(x, w0) + (x @ h_t.t()) @ b.to(x.dtype).t()

    flops.parameters = lambda: iter((a, b))  # so the timing loop can reset its grads like the modules'
    return {"frozen": frozen, "lora": lora, "neat": neat, "flops": flops}


def _clear_grads(fn: Any, x: Any) -> None:
    # As `optimizer.zero_grad(set_to_none=True)` does between steps: no gradient accumulation inside the timing.
    x.grad = None
    for p in fn.parameters():
        p.grad = None


def time_layers(shapes: list[tuple[int, int]], tokens: tuple[int, int], r: int, device: str, dtype: Any, iters: int,
                seed: int) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    for in_f, out_f in shapes:
        fns = _layers(in_f, out_f, r, device, dtype, seed)
        x = torch.randn(*tokens, in_f, device=device, dtype=dtype, requires_grad=True)
        grad = torch.randn(*tokens, out_f, device=device, dtype=dtype)
        times: dict[str, list[float]] = {k: [] for k in fns}
        cpu: dict[str, list[float]] = {k: [] for k in fns}
        for i in range(iters + 2):
            for name, fn in fns.items():
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0, c0 = time.perf_counter(), time.process_time()
                y = fn(x)
                y.backward(grad)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                if i >= 2:
                    times[name].append(time.perf_counter() - t0)
                    cpu[name].append(time.process_time() - c0)
                _clear_grads(fn, x)
        key = f"{in_f}x{out_f}"
        out[key] = {name: {**summarize(v), "cpu_median": summarize(cpu[name])["median"]} for name, v in times.items()}
        logger.info("%s: %s", key, ", ".join(f"{n} {s['median'] * 1e3:.2f} ms" for n, s in out[key].items()))
    return out


def profile_neat(in_f: int, out_f: int, tokens: tuple[int, int], r: int, device: str, dtype: Any, iters: int,
                 seed: int) -> list[dict[str, Any]]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    neat = _layers(in_f, out_f, r, device, dtype, seed)["neat"]
    x = torch.randn(*tokens, in_f, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(*tokens, out_f, device=device, dtype=dtype)
    for _ in range(2):
        neat(x).backward(grad)
        _clear_grads(neat, x)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        for _ in range(iters):
            neat(x).backward(grad)
            _clear_grads(neat, x)
    rows = []
    for evt in sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:25]:
        rows.append({
            "op": evt.key,
            "calls_per_iter": evt.count / iters,
            "self_cpu_us_per_iter": evt.self_cpu_time_total / iters,
            "cpu_total_us_per_iter": evt.cpu_time_total / iters,
            "self_device_us_per_iter": getattr(evt, "self_device_time_total", 0) / iters,
        })
    return rows


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per variant (after 2 warm-up)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--tag", default="")
    parser.add_argument("-v", "--verbose", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    args = make_parser().parse_args(argv)
    setup_logging(args.verbose)
    if args.threads:
        torch.set_num_threads(args.threads)
    preset = get_preset(args.preset)
    dtype = resolve_dtype(args.dtype)
    h, inter = preset.hidden_size, preset.intermediate_size
    kv = h * preset.num_key_value_heads // preset.num_attention_heads
    shapes = sorted({(h, h), (h, kv), (h, inter), (inter, h)})
    tokens = (preset.batch_size, preset.seq_len)
    env = environment(args.device)
    timings = time_layers(shapes, tokens, preset.r, args.device, dtype, args.iters, args.seed)
    prof_rows = profile_neat(h, inter, tokens, preset.r, args.device, dtype, max(3, args.iters // 2), args.seed)

    rows = []
    for key, t in timings.items():
        fr, lo, ne, fl = (t[k]["median"] * 1e3 for k in ("frozen", "lora", "neat", "flops"))
        cfr, clo, cne, cfl = (t[k]["cpu_median"] * 1e3 for k in ("frozen", "lora", "neat", "flops"))
        rows.append([key, f"{fr:.2f}", f"{lo:.2f}", f"{ne:.2f}", f"{fl:.2f}", f"{ne - fr:.2f}", f"{lo - fr:.2f}",
                     f"{ne - fl:.2f}", f"{cfr:.2f} / {clo:.2f} / {cne:.2f} / {cfl:.2f}"])
    table = markdown_table(
        ["in×out", "frozen ms", "LoRA ms", "NEAT ms", "inline factored ms", "NEAT − frozen", "LoRA − frozen",
         "NEAT − inline", "CPU ms: frozen / LoRA / NEAT / inline"], rows)
    prof_table = markdown_table(
        ["op", "calls/iter", "self CPU µs/iter", "total CPU µs/iter"] + (["self device µs/iter"] if args.device != "cpu" else []),
        [[r["op"], f"{r['calls_per_iter']:.0f}", f"{r['self_cpu_us_per_iter']:.0f}", f"{r['cpu_total_us_per_iter']:.0f}"]
         + ([f"{r['self_device_us_per_iter']:.0f}"] if args.device != "cpu" else []) for r in prof_rows[:15]])
    cmd = command_line("profile_adapter.py", argv)
    md = (
        f"### One-layer forward+backward, preset `{args.preset}` (batch {tokens[0]} × seq {tokens[1]}, r={preset.r}), "
        f"{args.device} {args.dtype}, median of {args.iters}\n\n{table}\n"
        f"#### torch.profiler: NEAT layer {h}×{inter}, per iteration\n\n{prof_table}\n"
        f"Command: `{cmd}`\n\nEnvironment: {format_env(env)}.\n"
    )
    report = {"benchmark": "profile_adapter", "command": cmd, "environment": env, "batch_seq": list(tokens), "r": preset.r,
              "timings": timings, "profile": prof_rows}
    stem = result_stem("profile", args.preset, args.device, args.dtype, tag=args.tag)
    write_outputs(args.output_dir, stem, report, md)
    return report


if __name__ == "__main__":
    main()
