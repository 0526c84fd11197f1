"""Shared fixtures: tiny models built from configs (no downloads), seeded, in fp32.

Every factory returns a fresh model with identical weights for the same seed, so a test can build a reference copy
for stock PEFT next to the one it adapts with neat-hf.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def tiny_llama(seed: int = 0, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    kwargs = dict(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**kwargs)).eval()


def tiny_bert_classifier(seed: int = 0, num_labels: int = 2):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=64,
        num_labels=num_labels,
        initializer_range=0.2,  # larger than the default 0.02 so the head gives logits of order 1
    )
    return BertForSequenceClassification(config).eval()


def tiny_vit_classifier(seed: int = 0, num_labels: int = 3):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    config = ViTConfig(
        image_size=16,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        num_labels=num_labels,
        initializer_range=0.2,  # larger than the default 0.02 so the head gives logits of order 1
    )
    return ViTForImageClassification(config).eval()


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64)).eval()


MODEL_FACTORIES = {
    "llama": tiny_llama,
    "bert": tiny_bert_classifier,
    "vit": tiny_vit_classifier,
    "gpt2": tiny_gpt2,
}


def model_inputs(kind: str, seed: int = 1) -> dict[str, torch.Tensor]:
    """A small deterministic batch for a model kind."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "vit":
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=generator)}
    return {"input_ids": torch.randint(0, 128, (2, 9), generator=generator)}


def model_output(model, inputs) -> torch.Tensor:
    """The logits of a forward pass, in eval mode, without gradients."""
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture
def llama():
    return tiny_llama()
