"""Regenerate the regression fixtures (run by hand, never by the tests): python tests/regression/make_fixtures.py

Writes, under tests/regression/:
- base/            a tiny LlamaForCausalLM (config + model.safetensors), so the fixtures do not depend on how a
                   future transformers initialises weights;
- peft_peanut/     an adapter saved by stock PEFT PEANuT (depth 1, gelu, q/v/down, lm_head in modules_to_save);
- neat_hf/         an adapter saved by neat-hf (depth 2, relu, default targets, dropout 0.1);
- expected.json    the logits each adapter gives on fixed input ids, and the library versions that made them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
INPUT_IDS = [[5, 17, 99, 3, 42, 8, 77], [1, 2, 3, 4, 5, 6, 7]]


def load_base():
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(HERE / "base").eval()


def randomize(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "peanut_" in name or "modules_to_save" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def main() -> None:
    import peft
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    import neat_hf
    from neat_hf import NeatConfig, get_neat_model

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    LlamaForCausalLM(config).save_pretrained(HERE / "base")
    ids = torch.tensor(INPUT_IDS)

    stock = peft.get_peft_model(load_base(), peft.PeanutConfig(
        r=4, depth=1, act_fn="gelu", target_modules=["q_proj", "v_proj", "down_proj"], modules_to_save=["lm_head"]))
    randomize(stock, 1)
    stock.eval().save_pretrained(HERE / "peft_peanut")
    ours = get_neat_model(load_base(), NeatConfig(r=4, depth=2, dropout=0.1))
    randomize(ours, 2)
    ours.eval().save_pretrained(HERE / "neat_hf")
    with torch.no_grad():
        expected = {
            "input_ids": INPUT_IDS,
            "peft_peanut": stock(input_ids=ids).logits.tolist(),
            "neat_hf": ours(input_ids=ids).logits.tolist(),
            "made_with": {"peft": peft.__version__, "neat_hf": neat_hf.__version__,
                          "transformers": transformers.__version__, "torch": torch.__version__},
        }
    (HERE / "expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    main()
