"""lm-evaluation-harness output as `huggingface_hub.EvalResult`s, for a model card's `model-index`.

`neat-lm-eval --output_path` (and plain `lm_eval`) write `results_<date>.json`; [`eval_results_from_lm_eval`] turns it
(or the dict `simple_evaluate` returns) into one `EvalResult` per task, metric and filter, which
`neat_hf.cards.adapter_card.write_model_card` (and `neat-hub card --eval-results`) put into the card. Reading the JSON needs no
lm-eval install.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult

from neat_hf.cards.adapter_card import LM_EVAL_URL
from neat_hf.errors import NeatError

logger = logging.getLogger(__name__)


def eval_results_from_lm_eval(
    results: Mapping[str, Any] | str | os.PathLike,
    *,
    task_type: str = "text-generation",
    include_groups: bool = True,
) -> list[EvalResult]:
    """Turn lm-evaluation-harness results into `EvalResult`s for the card's `model-index`.

    Args:
        results (`dict`, `str` or `os.PathLike`):
            The dict returned by `lm_eval.simple_evaluate`, a `results_<date>.json` written by
            `lm_eval --output_path`, or a folder holding such files (the newest one, by name, is used).
        task_type (`str`, *optional*, defaults to `"text-generation"`):
            Hub task type recorded for every result (lm-eval scores language models).
        include_groups (`bool`, *optional*, defaults to `True`):
            Also record group aggregates (e.g. the mean over a commonsense suite), under the group's name.

    Returns:
        `list[EvalResult]`: one per (task, metric, filter), with the dataset path/config/split from the task config,
        `num_few_shot` (and `limit` when the run used one) in `dataset_args`; standard errors are left out.

    Raises:
        NeatError: the input is not lm-eval output (no `results` object), or the file cannot be read.
    """
    data = _read_lm_eval(results)
    configs = data.get("configs") or {}
    n_shot = data.get("n-shot") or {}
    limit = (data.get("config") or {}).get("limit")
    groups = set((data.get("groups") or {}).keys()) | {
        g for g, subtasks in (data.get("group_subtasks") or {}).items() if subtasks
    }
    out: list[EvalResult] = []
    for task, metrics in data["results"].items():
        if not isinstance(metrics, Mapping):
            raise NeatError(f"lm-eval results[{task!r}] must be an object of metrics, got {type(metrics).__name__}.")
        is_group = task in groups and task not in configs
        if is_group and not include_groups:
            continue
        config = configs.get(task) or {}
        name = str(metrics.get("alias") or task).strip().lstrip("-").strip() or task
        split = config.get("test_split") or config.get("validation_split")
        args: dict[str, Any] = {}
        if isinstance(n_shot.get(task), int):
            args["num_few_shot"] = n_shot[task]
        if limit is not None:
            args["limit"] = limit
        for key, value in metrics.items():
            if key in ("alias", "name", "sample_len", "sample_count") or "," not in key:
                continue
            metric, _, filt = key.partition(",")
            if metric.endswith("_stderr") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            out.append(
                EvalResult(
                    task_type=task_type,
                    dataset_type=str(config.get("dataset_path") or task),
                    dataset_name=name,
                    dataset_config=config.get("dataset_name") if isinstance(config.get("dataset_name"), str) else None,
                    dataset_split=split if isinstance(split, str) else None,
                    dataset_args=args or None,
                    metric_type=metric,
                    metric_value=float(value),
                    metric_name=metric if filt in ("", "none") else f"{metric} ({filt})",
                    metric_config=None if filt in ("", "none") else filt,
                    source_name="lm-evaluation-harness",
                    source_url=LM_EVAL_URL,
                )
            )
    if not out:
        raise NeatError("lm-eval results hold no numeric metric; was the evaluation run to completion?")
    return out


def _read_lm_eval(results: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    if isinstance(results, Mapping):
        data: Any = dict(results)
        source = "lm-eval results"
    else:
        path = Path(results)
        if path.is_dir():
            candidates = sorted(path.rglob("results_*.json"), key=lambda p: p.name)
            if not candidates:
                raise NeatError(f"No lm-eval results_*.json under {os.fspath(path)!r}.")
            if len(candidates) > 1:
                logger.info("Using the newest of %d lm-eval result files: %s", len(candidates), candidates[-1])
            path = candidates[-1]
        if not path.is_file():
            raise NeatError(f"lm-eval results file {os.fspath(path)!r} does not exist.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise NeatError(f"{os.fspath(path)!r} is not a JSON file written by lm-eval: {err}") from err
        source = os.fspath(path)
    if not isinstance(data, dict) or not isinstance(data.get("results"), Mapping):
        raise NeatError(
            f"{source} has no 'results' object; expected the JSON that `lm_eval --output_path` writes "
            "(results_<date>.json) or the dict simple_evaluate returns."
        )
    return data
