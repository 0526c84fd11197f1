"""The tables of a NEAT model card: hyperparameters, training setup and evaluation results as (label, text) rows.

[`neat_hf.cards.adapter_card.build_model_card`] passes these rows to the card template; every cell is escaped for Markdown tables.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import EvalResult

from neat_hf.io import WEIGHTS_STAMP_KEY
from neat_hf.hub.download import is_hub_id

#: training_info keys of experiment-tracker runs, shown as badges (`neat_hf.cards.adapter_card.TRACKER_BADGES`).
TRACKER_URL_KEYS = ("wandb_url", "trackio_url", "comet_url")

#: training_info keys that feed the card without a row of their own.
INTERNAL_KEYS = {
    "base_model_parameters", "framework_versions", "license", "adapter_path", "base_model_path", WEIGHTS_STAMP_KEY,
    "training_curve", *TRACKER_URL_KEYS,
}

# (key, label) of the training-setup table, in display order.
_TRAINING_ROWS = (
    ("dataset", "dataset"),
    ("num_train_epochs", "epochs"),
    ("max_steps", "max steps"),
    ("global_step", "optimizer steps"),
    ("learning_rate", "learning rate"),
    ("learning_rates", "learning rates"),
    ("effective_batch_size", "effective batch size"),
    ("per_device_train_batch_size", "batch size per device"),
    ("gradient_accumulation_steps", "gradient accumulation steps"),
    ("world_size", "processes"),
    ("lr_scheduler_type", "LR schedule"),
    ("warmup_ratio", "warmup ratio"),
    ("warmup_steps", "warmup steps"),
    ("weight_decay", "weight decay"),
    ("optim", "optimizer"),
    ("max_seq_length", "max sequence length"),
    ("precision", "precision"),
    ("seed", "seed"),
    ("deepspeed_stage", "DeepSpeed"),
    ("hardware", "hardware"),
    ("train_runtime", "training time"),
    ("final_train_loss", "final training loss"),
    ("final_eval_loss", "final evaluation loss"),
    ("train_loss", "mean training loss"),
)


def cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _code(value: Any) -> str:
    return f"`{str(value).replace('`', '')}`"


def fmt_number(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,d}"
    if isinstance(value, float):
        return f"{value:g}"
    return cell(value)


def _names(value: Any, empty: str) -> str:
    if value is None:
        return empty
    if isinstance(value, str):
        return f"regex {_code(value)}"
    return ", ".join(_code(v) for v in value) if value else empty


def hyperparameter_rows(
    config: Mapping[str, Any], num_adapter_parameters: int | None, num_base_parameters: int | None
) -> list[tuple[str, str]]:
    depth = config.get("depth", 0)
    rows = [
        ("rank `r`", fmt_number(config.get("r"))),
        (
            "depth",
            f"{depth} hidden r×r layer(s) per side (paper depth {2 + 2 * depth})"
            if isinstance(depth, int)
            else cell(depth),
        ),
        ("activation `act_fn`", _code(config.get("act_fn"))),
        ("scaling", fmt_number(config.get("scaling"))),
        ("target modules", _names(config.get("target_modules"), "preset for the model type")),
    ]
    if config.get("exclude_modules"):
        rows.append(("excluded modules", _names(config["exclude_modules"], "")))
    if config.get("layers_to_transform") is not None:
        layers = config["layers_to_transform"]
        rows.append(("layers", ", ".join(str(i) for i in (layers if isinstance(layers, list) else [layers]))))
    if config.get("modules_to_save"):
        rows.append(("fully trained modules", _names(config["modules_to_save"], "")))
    if config.get("dropout"):
        rows.append(("dropout (training only)", fmt_number(config["dropout"])))
    if config.get("task_type"):
        rows.append(("task type", _code(config["task_type"])))
    if num_adapter_parameters is not None:
        text = f"{num_adapter_parameters:,d}"
        if num_base_parameters:
            share = 100.0 * num_adapter_parameters / num_base_parameters
            text += f" ({share:.4f}% of the base model's {num_base_parameters:,d})"
        rows.append(("adapter parameters", text))
    return rows


def training_rows(info: Mapping[str, Any]) -> list[tuple[str, str]]:
    info = dict(info)
    if "effective_batch_size" not in info and isinstance(info.get("per_device_train_batch_size"), int):
        info["effective_batch_size"] = (
            info["per_device_train_batch_size"]
            * int(info.get("gradient_accumulation_steps") or 1)
            * int(info.get("world_size") or 1)
        )
    rows = []
    known = {key for key, _ in _TRAINING_ROWS}
    for key, label in _TRAINING_ROWS:
        if key not in info or (info[key] is None and key != "deepspeed_stage"):
            continue
        value = info[key]
        if key == "dataset":
            items = value if isinstance(value, list) else [value]
            text = ", ".join(
                f"[{v}](https://huggingface.co/datasets/{v})" if is_hub_id(v) and "/" in str(v) else _code(v)
                for v in items
            )
        elif key == "learning_rates" and isinstance(value, dict):
            text = ", ".join(f"{cell(k)}: {fmt_number(v)}" for k, v in value.items())
        elif key == "deepspeed_stage":
            text = "not used" if value in (None, 0, False) else f"ZeRO stage {value}"
        elif key == "train_runtime" and isinstance(value, (int, float)):
            text = f"{value:.1f} s"
        elif key == "max_steps" and isinstance(value, int) and value <= 0:
            continue
        else:
            text = ", ".join(fmt_number(v) for v in value) if isinstance(value, list) else fmt_number(value)
        rows.append((label, text))
    for key, value in info.items():
        if key in known or key in INTERNAL_KEYS or key in ("dataset_name",):
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}: {fmt_number(v)}" for k, v in value.items())
        elif isinstance(value, list):
            value = ", ".join(fmt_number(v) for v in value)
        else:
            value = fmt_number(value)
        rows.append((cell(key.replace("_", " ")), value))
    return rows


def eval_rows(results: Sequence[EvalResult]) -> list[list[str]]:
    rows = []
    for r in results:
        args = r.dataset_args or {}
        rows.append(
            [
                cell(r.dataset_name),
                cell(r.metric_name or r.metric_type),
                f"{r.metric_value:.4f}" if isinstance(r.metric_value, float) else cell(r.metric_value),
                cell(args.get("num_few_shot", "")),
                cell(r.dataset_split or ""),
            ]
        )
    return rows
