"""Time and peak memory of refusing hostile adapters, through every loader, against the bounds every refusal must meet:
under 5 s, and under 100 MB above the base's own footprint.

Each (case, loader) pair runs in a fresh process (`common.run_worker`): the loader is run once on the valid adapter
(the footprint: base model, imports, the adapter itself) and once on the hostile copy; the report gives the wall time
of the refusal, the peak RSS above the valid run's, the one-line message, and whether both bounds held. The tests
(`tests/test_faults.py::test_hostile_adapter_is_one_line_through_every_loader`) check the refusals themselves; no test
asserts these timings.

    python benchmarks/bench_hostile.py                      # all cases, all loaders, tiny LLaMA
    python benchmarks/bench_hostile.py --cases float8_weight,config_fifo --loaders merge
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from common import (
    atomic_write_json,
    command_line,
    environment,
    format_env,
    markdown_table,
    peak_rss_bytes,
    RESULTS_DIR,
    run_worker,
    write_outputs,
)

SECONDS_BOUND, MEMORY_BOUND = 5.0, 100 * 2**20
LOADERS = ("from_pretrained", "load_adapter", "merge", "export_lora")
TARGETS = ["q_proj", "v_proj"]


def _edit_config(folder: Path, old: str, new: str) -> None:
    path = folder / "adapter_config.json"
    path.write_text(path.read_text().replace(old, new))


def _edit_weights(folder: Path, change: Any) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = folder / "adapter_model.safetensors"
    with safe_open(os.fspath(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(path)
    save_file({k: change(v) for k, v in tensors.items()}, path, metadata=metadata)


def _fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _dev_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


CASES = {
    "r_5000_digits": lambda f: _edit_config(f, '"r": 2', '"r": ' + "9" * 5000),
    "depth_1e9": lambda f: _edit_config(f, '"depth": 0', '"depth": 1000000000'),
    "float8_weight": lambda f: _edit_weights(f, lambda t: t.to(torch.float8_e4m3fn)),
    "nan_weight": lambda f: _edit_weights(f, lambda t: torch.full_like(t, float("nan"))),
    "config_fifo": lambda f: _fifo(f / "adapter_config.json"),
    "weights_fifo": lambda f: _fifo(f / "adapter_model.safetensors"),
    "weights_dev_zero": lambda f: _dev_zero(f / "adapter_model.safetensors"),
}


def _tiny_llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(config)


def _run_loader(loader: str, base: str, adapter: str, out: str, model: Any) -> None:
    from neat_hf import NeatModel

    if loader == "from_pretrained":
        NeatModel.from_pretrained(model, adapter)
    elif loader == "load_adapter":
        model.load_adapter(adapter, "other")
    elif loader == "merge":
        from neat_hf.export.merged import export_merged

        export_merged(base, adapter, out)
    else:
        from neat_hf.export.saved_adapter import export_lora

        export_lora(base, adapter, out)


def worker(spec: dict[str, Any], result_file: str) -> None:
    """One (adapter, loader) run in this fresh process: wall time, peak RSS, the error line (if refused)."""
    torch.set_num_threads(1)
    import neat_hf.export.saved_adapter  # noqa: F401  (imports and the in-memory base are not part of the refusal timed)
    import neat_hf.export.merged  # noqa: F401
    from neat_hf import NeatConfig, get_neat_model

    model = _tiny_llama()
    if spec["loader"] == "load_adapter":
        model = get_neat_model(model, NeatConfig(r=2, target_modules=TARGETS))
    start = time.perf_counter()
    error = None
    try:
        _run_loader(spec["loader"], spec["base"], spec["adapter"], spec["out"], model)
    except Exception as err:  # the refusal being measured
        error = f"{type(err).__name__}: {err}"
    seconds = time.perf_counter() - start
    atomic_write_json(result_file, {"seconds": seconds, "peak_rss": peak_rss_bytes(), "error": error,
                                    "wrote_output": os.path.exists(spec["out"])})


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, from {list(CASES)}")
    parser.add_argument("--loaders", default=",".join(LOADERS), help=f"comma-separated, from {list(LOADERS)}")
    parser.add_argument("--output-dir", default=str(RESULTS_DIR))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker), args.result_file)
        return {}
    from neat_hf import NeatConfig, get_neat_model

    script = Path(__file__).resolve()
    rows, results = [], []
    with tempfile.TemporaryDirectory(prefix="neat-bench-hostile-") as tmp:
        base, valid = Path(tmp) / "base", Path(tmp) / "valid"
        _tiny_llama().save_pretrained(base)
        get_neat_model(_tiny_llama(), NeatConfig(r=2, target_modules=TARGETS, init_weights=False)).save_pretrained(valid)
        for loader in args.loaders.split(","):
            spec = {"loader": loader, "base": str(base), "adapter": str(valid), "out": str(Path(tmp) / f"ok-{loader}")}
            footprint = run_worker(script, spec, timeout=600)
            for case in args.cases.split(","):
                folder = Path(tmp) / f"{case}-{loader}"
                _copy(valid, folder)
                CASES[case](folder)
                out = Path(tmp) / f"out-{case}-{loader}"
                result = run_worker(script, {**spec, "adapter": str(folder), "out": str(out)}, timeout=600)
                extra = result["peak_rss"] - footprint["peak_rss"]
                held = (result["error"] is not None and result["seconds"] < SECONDS_BOUND and extra < MEMORY_BOUND
                        and not result["wrote_output"])
                results.append({"case": case, "loader": loader, **result, "rss_above_valid": extra, "held": held})
                rows.append([case, loader, f"{result['seconds']:.2f} s", f"{extra / 2**20:+.1f} MiB",
                             "yes" if held else "**no**", (result["error"] or "(loaded)")[:90]])
    report = {"command": command_line("bench_hostile.py", argv), "environment": environment(),
              "bounds": {"seconds": SECONDS_BOUND, "bytes_above_valid": MEMORY_BOUND}, "results": results}
    markdown = "\n".join([
        "# Hostile adapters: time and memory of the refusal, per loader", "",
        f"Command: `{report['command']}`", "", f"Environment: {format_env(report['environment'])}", "",
        f"Bounds: under {SECONDS_BOUND:g} s and {MEMORY_BOUND // 2**20} MiB of peak RSS above the same loader on the "
        "valid adapter, refused, nothing written.", "",
        markdown_table(["case", "loader", "time", "peak RSS vs valid", "bounds held", "message"], rows), "",
    ])
    write_outputs(args.output_dir, "hostile_cpu", report, markdown)
    return report


def _copy(source: Path, target: Path) -> None:
    import shutil

    shutil.copytree(source, target)


if __name__ == "__main__":
    report = main()
    sys.exit(0 if all(r["held"] for r in report.get("results", [])) else 1)
