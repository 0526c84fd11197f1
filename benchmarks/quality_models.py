"""The methods of `quality.py` — read from `sweeps/quality_experiments.yaml` — and the model each one builds: the same
pretrained classifier with NEAT, PEFT LoRA, only its head, or everything trainable; and the check that NEAT and LoRA
train exactly as many adapter parameters.

Not an installed module: `quality.py` imports it from this folder (as it does `common.py`).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import yaml
from transformers import AutoModelForSequenceClassification, set_seed

from neat_hf import NeatConfig, get_neat_model

from common import BENCH_DIR

#: The methods and built-in tasks (data, not code): see the file's comments.
EXPERIMENTS_FILE = BENCH_DIR / "sweeps" / "quality_experiments.yaml"
EXPERIMENTS: dict[str, Any] = yaml.safe_load(EXPERIMENTS_FILE.read_text(encoding="utf-8"))
METHODS: tuple[str, ...] = tuple(EXPERIMENTS["methods"])
DEFAULT_METHODS: tuple[str, ...] = tuple(EXPERIMENTS["default_methods"])


def head_param_names(model: Any) -> list[str]:
    return [n for n, _ in model.named_parameters() if n.split(".")[0] in ("classifier", "score")]


def build_model(method: str, args: argparse.Namespace, num_labels: int, seed: int) -> tuple[Any, dict[str, int]]:
    """Load the pretrained classifier (head initialised from `seed`) and wrap it for `method`.

    Returns the model and its parameter counts: `adapter` (trainable, outside the head), `head`, `total`.
    """
    if method not in EXPERIMENTS["methods"]:
        raise SystemExit(f"Unknown method {method!r}; expected one of {METHODS}.")
    spec = EXPERIMENTS["methods"][method]
    set_seed(seed)  # the head's random init: identical across methods for one seed
    model = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=num_labels)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = model.config.eos_token_id
    heads = head_param_names(model)
    if not heads:
        raise SystemExit(f"{args.model}: no `classifier`/`score` head found; quality.py needs a sequence classifier.")
    head_module = heads[0].split(".")[0]
    targets = args.target_modules.split(",")
    torch.manual_seed(seed + 1000)  # adapter init (A, B, encoders)
    if spec["adapter"] == "lora":
        from peft import LoraConfig, get_peft_model  # optional heavy package (the `bench` extra)

        cfg = LoraConfig(r=args.r, lora_alpha=args.lora_alpha or args.r, lora_dropout=args.dropout,
                         target_modules=targets, modules_to_save=[head_module], bias="none")
        model = get_peft_model(model, cfg)
    elif spec["adapter"] == "neat":
        cfg = NeatConfig(r=args.r, target_modules=targets, depth=spec.get("depth", 0),
                         act_fn=spec.get("act_fn", args.act_fn), scaling=args.neat_scaling,
                         dropout=args.dropout, modules_to_save=[head_module])
        model = get_neat_model(model, cfg)
    elif spec.get("train") == "head":
        for name, p in model.named_parameters():
            p.requires_grad_(name.split(".")[0] == head_module)
    counts = count_params(model, head_module)
    return model, counts


def count_params(model: Any, head_module: str) -> dict[str, int]:
    """Trainable parameters split into the task head (`modules_to_save` copies included) and the rest."""
    head = adapter = total = 0
    for name, p in model.named_parameters():
        total += p.numel()
        if not p.requires_grad:
            continue
        if head_module in name.split("."):  # `classifier.weight` or PEFT's `...classifier.modules_to_save.default.weight`
            head += p.numel()
        else:
            adapter += p.numel()
    return {"adapter": adapter, "head": head, "total": total}


def check_equal_budget(args: argparse.Namespace, num_labels: int, methods: list[str]) -> dict[str, dict[str, int]]:
    """Build each method once and refuse to go on if NEAT's and LoRA's adapter counts differ."""
    counts = {}
    for method in methods:
        model, c = build_model(method, args, num_labels, seed=0)
        counts[method] = c
        del model
    if "neat" in counts and "lora" in counts and counts["neat"]["adapter"] != counts["lora"]["adapter"]:
        raise SystemExit(
            f"NEAT has {counts['neat']['adapter']:,} adapter parameters and LoRA {counts['lora']['adapter']:,}: the "
            "comparison is only fair at equal counts. NEAT (A: r×out, B: out×r) and LoRA (A: r×in, B: out×r) match "
            "when every target is square; pick square targets (e.g. query,value) or adjust r."
        )
    if "neat" in counts and "lora" in counts and counts["neat"]["head"] != counts["lora"]["head"]:
        raise SystemExit(f"Head parameter counts differ: NEAT {counts['neat']['head']} vs LoRA {counts['lora']['head']}.")
    return counts
