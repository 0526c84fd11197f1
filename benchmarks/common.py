"""Shared helpers for the neat-hf benchmark scripts.

Nothing here is part of the installed library: the scripts in ``benchmarks/`` import this module from their own
folder (``sys.path`` holds the script's directory), and tests only ever run the scripts as subprocesses.

The helpers cover what every benchmark needs once: the environment record that goes with each number (versions,
machine, load, date), atomic JSON/markdown writes, peak-memory readings, medians with spread, a markdown table
renderer, and a child-process runner so each measured method starts in a fresh interpreter.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from neat_hf.io import atomic_write_text


logger = logging.getLogger("neat_hf.benchmarks")

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

# LLaMA projections targeted by every method in the speed benchmarks (the paper's q, k, v, up, down;
# ../shared/ANCHORS.md).
LLAMA_TARGETS = ("q_proj", "k_proj", "v_proj", "up_proj", "down_proj")


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr at INFO (or DEBUG), in the format used by all benchmark scripts."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# ----------------------------------------------------------------------------------------------------------------
# Environment record
# ----------------------------------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist_name: str) -> str | None:
    """Installed version of a distribution, read from its metadata (no import, so no import-time side effects)."""
    try:
        return metadata.version(dist_name)
    except metadata.PackageNotFoundError:
        return None


def environment(device: str = "cpu") -> dict[str, Any]:
    """Describe the machine and software a measurement was taken on.

    Args:
        device (`str`, *optional*, defaults to `"cpu"`):
            The device the benchmark ran on; for CUDA the GPU name is recorded.

    Returns:
        `dict`: versions of torch/transformers/peft/deepspeed/neat_hf, python, CPU model and count, torch threads,
        GPU name, the 1/5/15-minute load average (other processes on a shared machine skew CPU timings) and the
        date and time.
    """
    env: dict[str, Any] = {
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_avg_1_5_15": load_average(),
        "device": device,
    }
    for name in ("torch", "transformers", "peft", "deepspeed", "accelerate"):
        env[name] = _version(name)
    env["neat_hf"] = _version("neat-hf")
    # The layer under test changes while the project is young: record exactly which one was measured.
    layer = REPO_ROOT / "neat_hf" / "layer.py"
    if layer.is_file():
        env["neat_hf_layer_sha256"] = hashlib.sha256(layer.read_bytes()).hexdigest()[:12]
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    return env


# ----------------------------------------------------------------------------------------------------------------
# Output files
# ----------------------------------------------------------------------------------------------------------------


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """Write `data` as indented JSON, atomically (`neat_hf.io.atomic_write_text`), creating the folder if needed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command that produced a result, as a user would retype it (`argv`: the arguments, default sys.argv)."""
    return f"python benchmarks/{script} " + " ".join(sys.argv[1:] if argv is None else argv)


def run_config(args: Any) -> dict[str, Any]:
    """The parsed options of a benchmark run as JSON-ready values, without the parent-to-worker plumbing."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
            if k not in ("worker", "result_file")}


def result_stem(*parts: str, tag: str = "") -> str:
    """`train_1b_cuda_bf16[_tag]`: the parts joined by `_` (":" dropped from devices such as cuda:1)."""
    return "_".join(p.replace(":", "") for p in parts) + (f"_{tag}" if tag else "")


def load_average() -> list[float]:
    """The 1/5/15-minute load average, rounded (recorded at the start and end of runs on shared machines)."""
    return [round(x, 2) for x in os.getloadavg()]


def interleaved(items: Sequence[Any], rounds: int) -> Iterator[tuple[int, Any]]:
    """Yield `(round, item)` for `rounds` rounds over `items`, starting each round one item later.

    Rotating the order means no method is always measured first (cold caches, clock ramp-up) or last.
    """
    for rnd in range(rounds):
        k = rnd % len(items)
        for item in list(items[k:]) + list(items[:k]):
            yield rnd, item


def write_outputs(out_dir: str | os.PathLike, stem: str, report: dict[str, Any], markdown: str,
                  plot: Any = None) -> None:
    """Write `<stem>.json` (the whole report), `<stem>.md` and, when `plot` is given, `<stem>.png`; print the table.

    Every file is written atomically, so an interrupted run never leaves a half-written result behind.
    """
    out_dir = Path(out_dir)
    atomic_write_json(out_dir / f"{stem}.json", report)
    atomic_write_text(out_dir / f"{stem}.md", markdown)
    if plot is not None:
        plot(report, out_dir / f"{stem}.png")
    print(markdown)


def save_figure(fig: Any, path: str | os.PathLike) -> None:
    """Save a matplotlib figure to `path` atomically (PNG)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def import_pyplot() -> Any:
    """Import matplotlib's pyplot with the non-interactive Agg backend (matplotlib is optional, the `bench` extra,
    so it is imported only when a chart is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Render a GitHub markdown table."""
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"Row {row!r} has {len(row)} cells, but the table has {len(headers)} columns.")
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines) + "\n"


def format_env(env: dict[str, Any]) -> str:
    """One-paragraph description of an :func:`environment` record for a markdown report."""
    parts = [
        f"date {env.get('date')}",
        f"device {env.get('gpu') or env.get('device')}",
        f"CPU {env.get('cpu')} ({env.get('cpu_count')} logical cores, torch threads {env.get('torch_threads')})",
        f"load average at start {env.get('load_avg_1_5_15')}",
        f"python {env.get('python')}",
        f"torch {env.get('torch')}",
        f"transformers {env.get('transformers')}",
        f"peft {env.get('peft')}",
        f"neat_hf {env.get('neat_hf')}",
    ]
    if env.get("deepspeed"):
        parts.append(f"deepspeed {env.get('deepspeed')}")
    return "; ".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# Statistics and memory
# ----------------------------------------------------------------------------------------------------------------


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median and spread (min, max, interquartile range, relative IQR) of a sample."""
    if not values:
        raise ValueError("Cannot summarize an empty sample.")
    vals = sorted(float(v) for v in values)
    med = statistics.median(vals)
    if len(vals) >= 4:
        q1, _, q3 = statistics.quantiles(vals, n=4, method="inclusive")
    else:
        q1, q3 = vals[0], vals[-1]
    return {
        "median": med,
        "min": vals[0],
        "max": vals[-1],
        "q1": q1,
        "q3": q3,
        "iqr_rel": (q3 - q1) / med if med else 0.0,
        "n": len(vals),
    }


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (Linux reports `ru_maxrss` in KiB, macOS in bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def resolve_dtype(name: str) -> Any:
    """Map `"fp32"`/`"bf16"`/`"fp16"` to a torch dtype, naming the accepted values on error."""
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
             "fp16": torch.float16, "float16": torch.float16}
    if name not in table:
        raise ValueError(f"Unknown dtype {name!r}; expected one of {sorted(table)}.")
    return table[name]


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def fmt_count(n: int | None) -> str:
    if not n:
        return "—"
    return f"{n / 1e6:.2f} M" if n >= 1e5 else f"{n:,}"


# ----------------------------------------------------------------------------------------------------------------
# Fresh-process workers
# ----------------------------------------------------------------------------------------------------------------


def run_worker(script: Path, spec: dict[str, Any], timeout: float | None = None,
               launcher: Sequence[str] = ()) -> dict[str, Any]:
    """Run `script --worker SPEC_JSON --result-file F` in a fresh interpreter and return the JSON it writes.

    `launcher` goes between the interpreter and the script, e.g. `["-m", "torch.distributed.run", "--standalone",
    "--nproc_per_node", "2"]` for a multi-process run (then only rank 0 writes the result file).

    Every measured method runs in its own process so allocator state, compiled kernels, thread pools and peak RSS
    never leak from one method into the next. The child's stderr is forwarded on failure.
    """
    with tempfile.TemporaryDirectory(prefix="neat-bench-") as tmp:
        result_file = Path(tmp) / "result.json"
        cmd = [sys.executable, *launcher, str(script), "--worker", json.dumps(spec), "--result-file", str(result_file)]
        env = dict(os.environ)
        # The benchmark folder is not a package; children import common.py from it like the parent does.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH_DIR), env.get("PYTHONPATH", "")) if p)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if proc.returncode != 0 or not result_file.exists():
            tail = "\n".join(proc.stderr.strip().splitlines()[-40:])
            raise RuntimeError(
                f"Benchmark worker for {spec.get('method')!r} failed with exit code {proc.returncode}.\n{tail}"
            )
        return json.loads(result_file.read_text(encoding="utf-8"))
