"""Pinned files: an adapter saved by stock PEFT PEANuT and one saved by neat-hf keep loading to the same logits.

Fixtures are made by tests/regression/make_fixtures.py (base model weights included, so they do not depend on how
transformers initialises a model).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM
from conftest import stock_peft

from neat_hf import NeatModel

HERE = Path(__file__).resolve().parent / "regression"
EXPECTED = json.loads((HERE / "expected.json").read_text())
IDS = torch.tensor(EXPECTED["input_ids"])


def base():
    return LlamaForCausalLM.from_pretrained(HERE / "base").eval()


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.mark.parametrize("name", ["peft_peanut", "neat_hf"])
def test_neat_hf_loads_pinned_adapter(name):
    model = NeatModel.from_pretrained(base(), HERE / name)
    torch.testing.assert_close(logits(model), torch.tensor(EXPECTED[name]), atol=1e-5, rtol=1e-5)
    assert (logits(base()) - torch.tensor(EXPECTED[name])).abs().max() > 1e-2  # the adapter matters


@pytest.mark.parametrize("name", ["peft_peanut", "neat_hf"])
def test_stock_peft_loads_pinned_adapter(name):
    peft = pytest.importorskip("peft")
    with stock_peft():
        model = peft.PeftModel.from_pretrained(base(), HERE / name).eval()
    torch.testing.assert_close(logits(model), torch.tensor(EXPECTED[name]), atol=1e-5, rtol=1e-5)


def test_pinned_neat_adapter_merges_to_same_logits():
    merged = NeatModel.from_pretrained(base(), HERE / "neat_hf").merge_and_unload()
    torch.testing.assert_close(logits(merged), torch.tensor(EXPECTED["neat_hf"]), atol=1e-4, rtol=1e-4)
