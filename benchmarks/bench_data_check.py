"""Peak memory and time of `neat-train`'s data-file check on a large file (target: a 1 GB JSONL uses <= 100 MB more
RSS for the check).

Writes a data file of `--size-mb` (instruction rows of varied length, some non-ASCII) into a temporary folder, then
runs `neat_hf.cli.train.data_files.check_data_file` on it in a fresh process (`common.run_worker`). The worker imports
everything first, resets the kernel's peak-RSS mark (`/proc/self/clear_refs`), reads its RSS, runs the check and
reads the peak again: the increase is what the check itself cost. `--before FILE` also runs the `check_data_file` of
another file (e.g. the data.py before the streaming check: `git show af0a855:neat_hf/cli/train/data.py > old.py`) on
the same data. No test asserts these numbers; `tests/test_benchmarks.py` runs the script on a tiny file.

    python benchmarks/bench_data_check.py                                  # 1 GB JSONL
    python benchmarks/bench_data_check.py --size-mb 256 --formats jsonl,json,csv --before old_data.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from common import (
    RESULTS_DIR,
    atomic_write_json,
    command_line,
    environment,
    format_env,
    import_pyplot,
    markdown_table,
    peak_rss_bytes,
    run_config,
    run_worker,
    save_figure,
    write_outputs,
)

MEMORY_BOUND = 100 * 2**20
FORMATS = ("jsonl", "json", "csv")
WORDS = ("the", "answer", "is", "choose", "correct", "option", "sentence", "café", "naïve", "größe", "日本語", "😀")


def _rows(seed: int, count: int) -> list[dict[str, Any]]:
    """Commonsense170K-shaped rows with 20-120 words of instruction and a label."""
    rng = random.Random(seed)
    return [
        {"instruction": " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 120))), "input": "",
         "output": f"the correct answer is answer{rng.randint(1, 4)}", "label": rng.randint(0, 3)}
        for _ in range(count)
    ]


def write_data_file(path: Path, fmt: str, size_bytes: int) -> int:
    """Write rows in `fmt` until the file holds at least `size_bytes`; returns the number of rows."""
    block = _rows(0, 2000)
    rows = 0
    with open(path, "w", encoding="utf-8", newline="") as handle:
        if fmt == "csv":
            handle.write("instruction,output,label\n")
            lines = [f"\"{r['instruction']}\",{r['output']},{r['label']}\n" for r in block]
        else:
            lines = [json.dumps(r, ensure_ascii=False) + ("\n" if fmt == "jsonl" else "") for r in block]
        if fmt == "json":
            handle.write("[")
        written = 0
        while written < size_bytes:
            text = (",\n" if fmt == "json" else "").join(lines)
            if fmt == "json" and rows:
                text = ",\n" + text
            handle.write(text)
            written += len(text.encode("utf-8"))
            rows += len(lines)
        if fmt == "json":
            handle.write("]\n")
    return rows


def _rss(field: str) -> int:
    """`VmRSS` or `VmHWM` (peak) of this process in bytes, from /proc/self/status."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def worker(spec: dict[str, Any], result_file: str) -> None:
    """One check in this fresh process: RSS before, peak RSS during, wall and CPU time, the refusal if any."""
    if spec["checker"]:
        module_spec = importlib.util.spec_from_file_location("checker_under_test", spec["checker"])
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        check = module.check_data_file
    else:
        from neat_hf.cli.train.data_files import check_data_file as check
    kwargs = {"delimiter": ","} if spec["path"].endswith(".csv") else {}
    try:  # the peak so far is the imports'; measure the check's own
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
        peak_reset = True
    except OSError:
        peak_reset = False
    before = _rss("VmRSS")
    start, cpu = time.perf_counter(), time.process_time()
    error = None
    try:
        check(spec["path"], **kwargs)
    except Exception as err:  # recorded, not raised: a refusal of the generated file would be a finding
        error = f"{type(err).__name__}: {err}"
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    peak = _rss("VmHWM") if peak_reset else peak_rss_bytes()
    atomic_write_json(result_file, {"seconds": seconds, "cpu_seconds": cpu_seconds, "rss_before": before,
                                    "peak_rss": peak, "rss_increase": peak - before, "peak_reset": peak_reset,
                                    "error": error})


def plot(report: dict[str, Any], path: Path) -> None:
    plt = import_pyplot()
    results = report["results"]
    labels = [f"{r['format']}\n{r['checker']}" for r in results]
    colors = ["#2ca02c" if r["checker"] == "streaming" else "#d62728" for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.6 * len(results), 4))
    increases = [max(r["rss_increase"], 2**17) / 2**20 for r in results]  # >= 0.125 MiB: log scale
    axes[0].bar(labels, increases, color=colors)
    axes[0].axhline(MEMORY_BOUND / 2**20, color="black", linestyle="--", linewidth=1, label="bound: 100 MiB")
    axes[0].set_yscale("log")
    axes[0].set_ylim(top=max(increases + [MEMORY_BOUND / 2**20]) * 8)
    axes[0].set_ylabel("peak RSS above the RSS before the check (MiB, log)")
    axes[0].legend(loc="upper left")
    axes[1].bar(labels, [r["seconds"] for r in results], color=colors)
    axes[1].set_ylabel("wall time of the check (s)")
    fig.suptitle(f"data-file check on a {report['config']['size_mb']} MB file")
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="size of each data file in MB (10^6 bytes)")
    parser.add_argument("--formats", default="jsonl", help=f"comma-separated, from {list(FORMATS)}")
    parser.add_argument("--before", help="a .py file defining check_data_file to compare with (e.g. an older data.py)")
    parser.add_argument("--before-formats", help="formats to run --before on (default: --formats)")
    parser.add_argument("--tmp-dir", help="where the data files are written (default: the system's temporary folder)")
    parser.add_argument("--output-dir", default=str(RESULTS_DIR))
    parser.add_argument("--tag", default="", help="suffix of the result file names")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker), args.result_file)
        return {}
    formats = args.formats.split(",")
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        parser.error(f"unknown format(s) {unknown}; use {list(FORMATS)}")
    before_formats = (args.before_formats or args.formats).split(",") if args.before else []
    script = Path(__file__).resolve()
    results = []
    with tempfile.TemporaryDirectory(prefix="neat-bench-data-", dir=args.tmp_dir) as tmp:
        for fmt in formats:
            path = Path(tmp) / f"train.{fmt}"
            rows = write_data_file(path, fmt, args.size_mb * 10**6)
            size = path.stat().st_size
            checkers = [("streaming", None)] + ([("before", os.path.abspath(args.before))] if fmt in before_formats else [])
            for name, checker in checkers:
                print(f"checking {size / 1e6:.0f} MB {fmt} ({rows:,d} rows) with the {name} check ...", flush=True)
                result = run_worker(script, {"path": str(path), "checker": checker, "method": name})
                results.append({"format": fmt, "checker": name, "size_bytes": size, "rows": rows, **result,
                                "within_bound": result["error"] is None and result["rss_increase"] <= MEMORY_BOUND})
            path.unlink()
    env = {**environment(), **{name: metadata.version(name) for name in ("datasets", "pyarrow")}}
    report = {"command": command_line("bench_data_check.py", argv), "environment": env,
              "config": run_config(args), "bound_bytes": MEMORY_BOUND, "results": results}
    rows_md = [[r["format"], r["checker"], f"{r['size_bytes'] / 1e6:,.0f} MB", f"{r['rows']:,d}",
                f"{r['rss_increase'] / 2**20:,.1f} MiB", f"{r['seconds']:.1f} s", f"{r['cpu_seconds']:.1f} s",
                "yes" if r["within_bound"] else "**no**", (r["error"] or "accepted")[:80]] for r in results]
    markdown = "\n".join([
        "# Data-file check: peak RSS and time", "",
        f"Command: `{report['command']}`", "",
        f"Environment: {format_env(env)}; datasets {env['datasets']}; pyarrow {env['pyarrow']}", "",
        f"Peak RSS of the check process above its RSS right before the check (imports done; peak mark reset), "
        f"against the bound of {MEMORY_BOUND // 2**20} MiB.", "",
        markdown_table(["format", "check", "file", "rows", "peak RSS increase", "wall", "CPU", "within bound",
                        "result"], rows_md), "",
    ])
    stem = f"data_check_{args.size_mb}mb" + (f"_{args.tag}" if args.tag else "")
    write_outputs(args.output_dir, stem, report, markdown, plot=plot)
    return report


if __name__ == "__main__":
    report = main()
    sys.exit(0 if all(r["within_bound"] or r["checker"] != "streaming" for r in report.get("results", [])) else 1)
