"""The contract every adapter keeps, run over the whole table of cases in `testing_common.CASES`.

For each (tiny model × config): the factored forward equals the dense formula, stock PEFT reads neat-hf's files and
neat-hf reads stock PEFT's (same logits), save → load is exact, merge/unmerge/merge_and_unload keep the function and
restore W0 bit-exactly, and loading onto a base of another shape is refused without changing it.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from transformers.pytorch_utils import Conv1D
from conftest import model_output, stock_peft
from testing_common import CASES, Case, adapted, assert_logits_differ, dense_reference_model

from neat_hf import AdapterMismatchError, NeatLayer, NeatModel

peft = pytest.importorskip("peft")

PEFT_CASES = [case for case in CASES if case.peft_refuses is None]
REFUSED_CASES = [case for case in CASES if case.peft_refuses is not None]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_forward_equals_dense_formula(case: Case):
    model = adapted(case)
    ours = model_output(model, case.inputs())
    assert_logits_differ(ours, model_output(case.base(), case.inputs()))
    expected = model_output(dense_reference_model(case, model), case.inputs())
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", PEFT_CASES, ids=str)
def test_stock_peft_loads_neat_adapter_without_warnings(tmp_path, case: Case):
    model = adapted(case)
    model.save_pretrained(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with stock_peft():
            stock = peft.PeftModel.from_pretrained(case.base(), tmp_path).eval()
    assert not [str(w.message) for w in caught if "peft" in str(w.filename).lower() or "Unexpected" in str(w.message)]
    torch.testing.assert_close(model_output(stock, case.inputs()), model_output(model, case.inputs()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", PEFT_CASES, ids=str)
def test_neat_hf_loads_stock_peft_adapter(tmp_path, case: Case):
    with stock_peft():
        stock = peft.get_peft_model(case.base(), case.peft_config()).eval()
    with torch.no_grad():
        generator = torch.Generator().manual_seed(5)
        for name, param in stock.named_parameters():
            if "peanut_" in name or "modules_to_save" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    stock.save_pretrained(tmp_path)
    expected = model_output(stock, case.inputs())
    assert_logits_differ(expected, model_output(case.base(), case.inputs()))
    ours = NeatModel.from_pretrained(case.base(), tmp_path)
    torch.testing.assert_close(model_output(ours, case.inputs()), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", REFUSED_CASES, ids=str)
def test_stock_peft_refuses_what_it_cannot_compute_loudly(tmp_path, case: Case):
    """Where stock PEFT cannot compute an adapter, loading it fails with an error, never silently loads another one."""
    adapted(case).save_pretrained(tmp_path)
    with pytest.raises((ValueError, NotImplementedError), match=case.peft_refuses), stock_peft():
        peft.PeftModel.from_pretrained(case.base(), tmp_path)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_save_load_round_trip_is_exact(tmp_path, case: Case):
    model = adapted(case)
    model.save_pretrained(tmp_path)
    loaded = NeatModel.from_pretrained(case.base(), tmp_path)
    assert torch.equal(model_output(loaded, case.inputs()), model_output(model, case.inputs()))
    assert not any(p.requires_grad for p in loaded.parameters()), "from_pretrained loads frozen unless is_trainable"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_merge_unmerge_and_merge_and_unload(case: Case):
    model = adapted(case)
    inputs = case.inputs()
    live = model_output(model, inputs)
    originals = {name: layer.base_layer.weight.detach().clone() for name, layer in model.neat_layers()}

    model.merge_adapter()
    torch.testing.assert_close(model_output(model, inputs), live, atol=1e-4, rtol=1e-4)
    model.unmerge_adapter()
    for name, layer in model.neat_layers():
        assert torch.equal(layer.base_layer.weight, originals[name]), name
    assert torch.equal(model_output(model, inputs), live)

    merged = model.merge_and_unload()
    assert type(merged) is type(case.base())
    assert not any(isinstance(m, NeatLayer) for m in merged.modules())
    torch.testing.assert_close(model_output(merged, inputs), live, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_loading_onto_a_base_of_another_shape_is_refused_unchanged(tmp_path, case: Case):
    adapted(case).save_pretrained(tmp_path)
    other = case.base()
    # Same names, other shapes: one more output feature in every layer (A is r×out and B out×r, so the adapter's
    # tensors no longer fit; a wider input alone would fit them, since H is computed from whatever W0 is there).
    for name, module in list(other.named_modules()):
        if isinstance(module, torch.nn.Linear):
            other.set_submodule(name, torch.nn.Linear(module.in_features, module.out_features + 1))
        elif isinstance(module, Conv1D):
            other.set_submodule(name, Conv1D(module.nf + 1, module.weight.shape[0]))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(AdapterMismatchError, match="Shape mismatch for module"):
        NeatModel.from_pretrained(other, tmp_path)
    after = other.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert not any(isinstance(m, NeatLayer) for m in other.modules())


def test_table_covers_every_model_kind_and_depth():
    """Adding a model or a config is one line in CASES; keep the table covering what neat-hf supports."""
    kinds = {case.kind for case in CASES}
    assert kinds == {"llama", "bert", "vit", "gpt2"}
    depths = {case.neat_config().depth for case in CASES}
    assert depths == {0, 1, 2}
    assert any(case.neat_config().task_type == "SEQ_CLS" for case in CASES)
