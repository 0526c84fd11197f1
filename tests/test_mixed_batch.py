"""Mixed-adapter batches (`adapter_names=[...]`): each row equals its own adapter's output, in forward and generate."""

from __future__ import annotations

import pytest
import torch
from conftest import MODEL_FACTORIES, model_inputs, tiny_llama
from testing_common import dense_tensors_created, randomize_adapter
from torch import nn

from neat_hf import NeatConfig, NeatError, get_neat_model
from neat_hf.layer import NeatLayer

CONFIGS = {
    "llama": dict(target_modules=None),
    "gpt2": dict(target_modules=None),
    "bert": dict(target_modules=["query", "value"], task_type="SEQ_CLS"),
}


def three_adapter_model(kind: str):
    """A model with adapters "a" (depth 0, relu), "b" (depth 1, gelu) and "c" (depth 2, sin), all non-identity."""
    extra = CONFIGS[kind]
    model = get_neat_model(MODEL_FACTORIES[kind](), NeatConfig(r=4, **extra), adapter_name="a")
    model.add_adapter("b", NeatConfig(r=2, depth=1, act_fn="gelu", **extra))
    model.add_adapter("c", NeatConfig(r=4, depth=2, act_fn="sin", scaling=0.5, **extra))
    randomize_adapter(model)
    return model.eval()


def per_adapter(model, name: str, fn):
    """`fn()` with only adapter `name` active (or none for "__base__")."""
    if name == "__base__":
        with model.disable_adapter():
            return fn()
    model.set_adapter(name)
    return fn()


@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert"])
def test_mixed_forward_rows_equal_their_own_adapter(kind):
    model = three_adapter_model(kind)
    names = ["a", "__base__", "c", "b", "a"]
    input_ids = torch.randint(0, 128, (len(names), 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mixed = model(input_ids=input_ids, adapter_names=names).logits
        expected = {n: per_adapter(model, n, lambda: model(input_ids=input_ids).logits) for n in set(names)}
    for row, name in enumerate(names):
        torch.testing.assert_close(mixed[row], expected[name][row], atol=1e-5, rtol=1e-5)
    # The adapters really differ from each other and from the base, so the row-wise comparison is not trivial.
    for other in {"a", "b", "c"} - {"a"}:
        assert (expected["a"] - expected[other]).abs().max() > 1e-3
    assert (expected["a"] - expected["__base__"]).abs().max() > 1e-3
    # No hook is left behind: a plain forward afterwards is the active adapter's.
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_mixed_greedy_generate_equals_per_adapter_generate():
    model = three_adapter_model("llama")
    names = ["b", "a", "__base__", "c"]
    prompt = torch.randint(0, 128, (len(names), 5), generator=torch.Generator().manual_seed(1))
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, eos_token_id=None)
    mixed = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), adapter_names=names, **kwargs)
    for row, name in enumerate(names):
        alone = per_adapter(
            model, name, lambda: model.generate(input_ids=prompt[row : row + 1], attention_mask=torch.ones_like(prompt[row : row + 1]), **kwargs)
        )
        assert mixed[row].tolist() == alone[0].tolist(), name
    generations = {tuple(mixed[row, 5:].tolist()) for row in range(len(names))}
    assert len(generations) > 1  # the adapters steer generation differently


def test_generate_with_beams_expands_adapter_names_per_row():
    model = three_adapter_model("llama")
    names = ["a", "c"]
    prompt = torch.randint(0, 128, (2, 5), generator=torch.Generator().manual_seed(2))
    kwargs = dict(max_new_tokens=4, num_beams=2, num_return_sequences=2, do_sample=False, pad_token_id=0, eos_token_id=None)
    mixed = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), adapter_names=names, **kwargs)
    assert mixed.shape[0] == 4
    for row, name in enumerate(names):
        alone = per_adapter(model, name, lambda: model.generate(input_ids=prompt[row : row + 1], attention_mask=torch.ones_like(prompt[row : row + 1]), **kwargs))
        assert mixed[2 * row : 2 * row + 2].tolist() == alone.tolist(), name


def test_mixed_batch_is_refused_in_training_while_merged_and_for_unknown_names():
    model = three_adapter_model("llama")
    ids = torch.randint(0, 128, (2, 4))
    with pytest.raises(NeatError, match="unknown adapters \\['zzz'\\].*__base__"):
        model(input_ids=ids, adapter_names=["a", "zzz"])
    with pytest.raises(NeatError, match="one name per row"):
        model.generate(input_ids=torch.randint(0, 128, (3, 4)), adapter_names=["a", "b"], max_new_tokens=1)
    with pytest.raises(NeatError, match="2 entries but the batch has 4 rows"):  # forward never repeats names
        model(input_ids=torch.randint(0, 128, (4, 4)), adapter_names=["a", "b"])
    with pytest.raises(NeatError, match="list of adapter names"):
        model(input_ids=ids, adapter_names="a")
    model.train()
    with pytest.raises(NeatError, match="model.eval\\(\\)"):
        model(input_ids=ids, adapter_names=["a", "b"])
    model.eval()
    model.merge_adapter()
    with pytest.raises(NeatError, match="unmerge_adapter"):
        model(input_ids=ids, adapter_names=["a", "b"])
    model.unmerge_adapter()
    assert all(not m._forward_pre_hooks for m in model.modules())  # a refused call leaves no hook behind


def test_mixed_layer_forward_builds_no_dense_delta():
    torch.manual_seed(0)
    layer = NeatLayer(nn.Linear(96, 80), "a", NeatConfig(r=4, depth=1, init_weights=False))
    layer.update_layer("b", NeatConfig(r=4, act_fn="gelu", init_weights=False))
    x = torch.randn(3, 2, 96)
    names = ["b", "a", "__base__"]
    with torch.no_grad():
        assert dense_tensors_created(layer.in_features * layer.out_features, lambda: layer(x, adapter_names=names)) == []
        out = layer(x, adapter_names=names)
        for row, name in enumerate(names):
            if name == "__base__":
                expected = layer.base_layer(x[row])
            else:
                layer.active_adapter = name
                expected = layer(x[row : row + 1])[0]
            torch.testing.assert_close(out[row], expected, atol=1e-6, rtol=1e-6)


def test_mixed_batch_with_stock_tiny_llama_uses_the_cached_h():
    """generate's decode steps reuse each adapter's s·Hᵀ instead of recomputing it per step."""
    model = get_neat_model(tiny_llama(), NeatConfig(r=4, init_weights=False), adapter_name="a")
    model.add_adapter("b", NeatConfig(r=4, init_weights=False))
    model.eval()
    layer = next(layer for _, layer in model.neat_layers())
    calls = []
    original = layer.hidden_t
    layer.hidden_t = lambda *a, **k: calls.append(a[0]) or original(*a, **k)
    prompt = torch.randint(0, 128, (2, 4))
    model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), adapter_names=["a", "b"], max_new_tokens=5,
                   do_sample=False, pad_token_id=0, eos_token_id=None)
    assert sorted(calls) == ["a", "b"]
