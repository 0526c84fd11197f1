"""Random-init LLaMA shapes and the adapter methods compared by the speed benchmarks.

A preset fixes the model shape, the batch and the rank; a method decides what is trained:

- ``floor``: no adapter at all; every weight is frozen, but the embedding output requires grad so that the backward
  pass still runs through every layer (the cost any adapter method pays at minimum).
- ``lora``: PEFT LoRA, same ``r`` and targets, ``lora_alpha = r``, dropout 0.
- ``peanut``: PEFT PEANuT (the same function as NEAT, computed with a dense out×in ΔW every step), depth 0, relu.
- ``peanut_patched``: the same `peft.get_peft_model(model, PeanutConfig(...))` after `neat_hf.apply_neat_to_peft()`,
  which builds neat-hf's factored layers (it must cost what ``neat`` costs).
- ``neat``: neat-hf NEAT, depth 0, relu, scaling 1 (factored: ``y = W0 x + (x·relu(W0ᵀAᵀ))·Bᵀ``).

For generation the ``*_merged`` variants merge the adapter into W0 first (``merge_and_unload``); ``neat_lora`` is the
NEAT adapter exported as a LoRA (``NeatModel.save_as_lora``) and served by stock PEFT; the ``*_mixed4`` variants hold
four adapters and decode a batch with one adapter per row (``adapter_names=``, see [`MIXED_ADAPTERS`]).

With a quantized base (``build_quantized_llama``: the same random-init weights saved once and loaded with
``BitsAndBytesConfig``), ``lora`` is QLoRA and every method first gets PEFT's ``prepare_model_for_kbit_training``
treatment (neat-hf's function of the same name for ``neat``; no gradient checkpointing, as in the dense runs).
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from typing import Any

from common import LLAMA_TARGETS

from neat_hf import (
    NeatConfig,
    apply_neat_to_peft,
    get_neat_model,
    prepare_model_for_kbit_training,
    revert_neat_to_peft,
)


@dataclasses.dataclass(frozen=True)
class Preset:
    """A LLaMA shape plus the batch and adapter rank the benchmarks use with it."""

    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    seq_len: int
    batch_size: int
    r: int
    description: str
    # generation settings (bench_generate.py)
    prompt_len: int = 32
    new_tokens: int = 32
    gen_batch_size: int = 1


PRESETS: dict[str, Preset] = {
    # Seconds on a laptop; used by the smoke tests.
    "tiny": Preset(64, 2, 172, 4, 2, 512, 32, 2, 8, "tiny LLaMA for smoke tests", 8, 8, 1),
    # ../shared/ANCHORS.md CPU shape: hidden 512, 4 layers, seq 256 x batch 4, r=32.
    "cpu": Preset(512, 4, 1376, 8, 8, 8192, 256, 4, 32, "ANCHORS CPU shape (hidden 512, 4 layers)", 64, 64, 1),
    # TinyLlama-1.1B dims, as in ANCHORS.
    "1b": Preset(2048, 22, 5632, 32, 4, 32000, 1024, 4, 32, "1.1B (TinyLlama dims)", 128, 128, 1),
    # LLaMA-2-7B dims, as in ANCHORS.
    "7b": Preset(4096, 32, 11008, 32, 32, 32000, 1024, 2, 32, "7B (LLaMA-2-7B dims)", 128, 128, 1),
}

#: `peanut` is stock PEFT PEANuT; `peanut_patched` is the same `get_peft_model(model, PeanutConfig(...))` call after
#: `neat_hf.apply_neat_to_peft()`, which must cost what `neat` costs.
TRAIN_METHODS = ("floor", "lora", "peanut", "peanut_patched", "neat")
GENERATE_METHODS = ("base", "lora", "lora_merged", "neat", "neat_merged", "peanut", "neat_lora", "neat_mixed4",
                    "lora_mixed4")
#: Adapter names of the ``*_mixed4`` variants: one per row of their batch.
MIXED_ADAPTERS = ("a0", "a1", "a2", "a3")


def get_preset(name: str, **overrides: Any) -> Preset:
    """Return preset `name`, with any non-None field in `overrides` replaced."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; expected one of {sorted(PRESETS)}.")
    changes = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(changes) - {f.name for f in dataclasses.fields(Preset)}
    if unknown:
        raise ValueError(f"Unknown preset fields {sorted(unknown)}.")
    return dataclasses.replace(PRESETS[name], **changes)


def build_llama(preset: Preset, device: str, dtype: Any, seed: int) -> Any:
    """Build a random-init `LlamaForCausalLM` of `preset`'s shape directly on `device` in `dtype`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        hidden_size=preset.hidden_size,
        num_hidden_layers=preset.num_hidden_layers,
        intermediate_size=preset.intermediate_size,
        num_attention_heads=preset.num_attention_heads,
        num_key_value_heads=preset.num_key_value_heads,
        vocab_size=preset.vocab_size,
        max_position_embeddings=max(2048, preset.seq_len, preset.prompt_len + preset.new_tokens),
        use_cache=False,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model


#: `--quantize` choices of the benchmarks: the `BitsAndBytesConfig` each names (compute dtype = the run's dtype).
QUANTIZATIONS = {
    "nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
    "nf4-dq": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
    "int8": dict(load_in_8bit=True),
}


def save_llama(preset: Preset, folder: str, seed: int) -> str:
    """Save the random-init LLaMA of `preset` (fp32) to `folder`, once, for quantized loading by every method."""
    import torch

    build_llama(preset, "cpu", torch.float32, seed).save_pretrained(folder)
    return folder


def build_quantized_llama(folder: str, quantize: str, device: str, dtype: Any) -> Any:
    """Load the checkpoint in `folder` with bitsandbytes (`QUANTIZATIONS[quantize]`), non-quantized parts in
    `dtype`, 4-bit layers computing in `dtype`."""
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    settings = dict(QUANTIZATIONS[quantize])
    if settings.get("load_in_4bit"):
        settings["bnb_4bit_compute_dtype"] = dtype
    return LlamaForCausalLM.from_pretrained(
        folder, dtype=dtype, quantization_config=BitsAndBytesConfig(**settings), device_map={"": device}
    )


def apply_method(model: Any, method: str, preset: Preset, seed: int, *, init_weights: bool = True) -> Any:
    """Wrap `model` for `method` (see the module docstring) and return the model to run.

    Args:
        init_weights (`bool`, *optional*, defaults to `True`):
            `False` gives the adapters a non-zero B (LoRA/NEAT then change the output), used by the generation
            benchmark so merged and unmerged models compute something real.
    """
    import torch

    base_method = method.removesuffix("_merged")
    torch.manual_seed(seed + 1)
    targets = list(LLAMA_TARGETS)
    if getattr(model, "is_quantized", False) and base_method != "base":
        if base_method == "neat":
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        else:
            from peft import prepare_model_for_kbit_training as peft_prepare  # optional baseline package

            model = peft_prepare(model, use_gradient_checkpointing=False)
    if base_method in ("floor", "base"):
        for p in model.parameters():
            p.requires_grad_(False)
        if base_method == "floor":
            # Backward still has to flow through every layer, as it does below any adapter.
            model.enable_input_require_grads()
        out = model
    elif base_method == "lora":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=preset.r, lora_alpha=preset.r, lora_dropout=0.0, target_modules=targets, bias="none",
                         init_lora_weights=init_weights)
        out = get_peft_model(model, cfg)
    elif base_method in ("peanut", "peanut_patched"):
        from peft import PeanutConfig, get_peft_model

        (apply_neat_to_peft if base_method == "peanut_patched" else revert_neat_to_peft)()
        cfg = PeanutConfig(r=preset.r, depth=0, act_fn="relu", scaling=1.0, target_modules=targets,
                           init_weights=init_weights)
        out = get_peft_model(model, cfg)
    elif base_method == "neat":
        cfg = NeatConfig(r=preset.r, depth=0, act_fn="relu", scaling=1.0, target_modules=targets,
                         init_weights=init_weights)
        out = get_neat_model(model, cfg)
    elif base_method == "neat_lora":
        from peft import PeftModel

        base_copy = copy.deepcopy(model)
        cfg = NeatConfig(r=preset.r, depth=0, act_fn="relu", scaling=1.0, target_modules=targets,
                         init_weights=init_weights)
        with tempfile.TemporaryDirectory() as folder:
            get_neat_model(model, cfg).save_as_lora(folder)
            out = PeftModel.from_pretrained(base_copy, folder)
    elif base_method == "neat_mixed4":
        cfg = NeatConfig(r=preset.r, depth=0, act_fn="relu", scaling=1.0, target_modules=targets,
                         init_weights=init_weights)
        out = get_neat_model(model, cfg, adapter_name=MIXED_ADAPTERS[0])
        for name in MIXED_ADAPTERS[1:]:
            out.add_adapter(name, cfg)
    elif base_method == "lora_mixed4":
        from peft import LoraConfig, get_peft_model

        cfg = LoraConfig(r=preset.r, lora_alpha=preset.r, lora_dropout=0.0, target_modules=targets, bias="none",
                         init_lora_weights=init_weights)
        out = get_peft_model(model, cfg, adapter_name=MIXED_ADAPTERS[0])
        for name in MIXED_ADAPTERS[1:]:
            out.add_adapter(name, cfg)
    else:
        raise ValueError(f"Unknown method {method!r}; expected one of {TRAIN_METHODS + GENERATE_METHODS}.")
    if method.endswith("_merged"):
        out = out.merge_and_unload()
    return out


def random_batch(preset: Preset, device: str, seed: int, *, seq_len: int | None = None,
                 batch_size: int | None = None) -> Any:
    """Token ids drawn from a seeded generator on CPU (identical for every method), moved to `device`."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    shape = (batch_size or preset.batch_size, seq_len or preset.seq_len)
    return torch.randint(0, preset.vocab_size, shape, generator=gen).to(device)
