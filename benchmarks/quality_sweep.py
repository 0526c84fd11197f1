#!/usr/bin/env python
"""Print the `quality.py` job lines of a sweep file, one run per line, for `xargs -L 1` (the run_*_suite.sh scripts).

A sweep file (`sweeps/cpu_seeds.yaml`, …) holds `epochs` per task and `runs`: a list of loop nests over `task`,
`method`, `seed` and `lr`, outermost key first. A loop given as a mapping takes its values from the current `method`
(the GPU sweep runs fewer learning rates for the extra NEAT rows). Each combination becomes

    --tasks T --methods M --seeds S --lrs LR --epochs E --tag shard_T_M_sS_lrLR

Usage: python benchmarks/quality_sweep.py benchmarks/sweeps/gpu.yaml [--seeds 0,1,2]
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

LOOP_KEYS = ("task", "method", "seed", "lr")


def _values(loop: Any, current: dict[str, Any], key: str) -> list[Any]:
    if isinstance(loop, dict):
        if current.get("method") not in loop:
            raise SystemExit(f"The {key!r} loop is keyed by method but has no entry for {current.get('method')!r}.")
        return list(loop[current["method"]])
    return list(loop)


def _combinations(nest: dict[str, Any], current: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Every assignment of the loop nest `nest`, outermost key first."""
    current = current or {}
    remaining = [key for key in nest if key not in current]
    if not remaining:
        yield dict(current)
        return
    key = remaining[0]
    for value in _values(nest[key], current, key):
        yield from _combinations(nest, {**current, key: value})


def job_lines(sweep: dict[str, Any], seeds: list[int] | None = None) -> list[str]:
    """The job lines of a parsed sweep file; `seeds` replaces every nest's seed list."""
    lines = []
    for nest in sweep["runs"]:
        if set(nest) != set(LOOP_KEYS):
            raise SystemExit(f"A run nest needs exactly the loops {LOOP_KEYS}; got {sorted(nest)}.")
        if seeds is not None:
            nest = {**nest, "seed": seeds}
        for run in _combinations(nest):
            task, method, seed, lr = (run[key] for key in LOOP_KEYS)
            lines.append(f"--tasks {task} --methods {method} --seeds {seed} --lrs {lr} "
                         f"--epochs {sweep['epochs'][task]} --tag shard_{task}_{method}_s{seed}_lr{lr}")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", type=Path, help="a sweep file, e.g. benchmarks/sweeps/gpu.yaml")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds replacing the file's (e.g. $SEEDS)")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    sweep = yaml.safe_load(args.sweep.read_text(encoding="utf-8"))
    print("\n".join(job_lines(sweep, seeds)))


if __name__ == "__main__":
    main()
