"""NeatModel: injection, trainability, PEFT interop both ways, save/load, merge/unmerge, modules_to_save."""

from __future__ import annotations

import json
import os
import warnings

import pytest
import torch
from conftest import model_inputs, model_output, stock_peft, tiny_bert_classifier, tiny_llama
from safetensors.torch import load_file
from testing_common import assert_logits_differ, randomize_adapter

from neat_hf import NeatConfig, NeatLayer, NeatModel, get_neat_model
from neat_hf.constants import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME

peft = pytest.importorskip("peft")


# ---------------------------------------------------------------------------------------------- PEFT interop
# The table-driven interop checks (every model kind × depth × activation, both ways) are in test_common_cases.py.
def test_stock_peft_seq_cls_adapter_with_head_loads(tmp_path):
    inputs = model_inputs("bert")
    with stock_peft():
        stock = peft.get_peft_model(tiny_bert_classifier(), peft.PeanutConfig(r=4, task_type="SEQ_CLS", target_modules=["query", "value"], init_weights=False))
    with torch.no_grad():
        stock.base_model.model.classifier.modules_to_save["default"].weight.add_(0.5)
    stock.eval().save_pretrained(tmp_path)
    ours = NeatModel.from_pretrained(tiny_bert_classifier(), tmp_path)
    torch.testing.assert_close(model_output(ours, inputs), model_output(stock, inputs), atol=1e-5, rtol=1e-5)


def test_sin_adapter_round_trips_in_neat_hf_and_fails_loudly_in_stock_peft(tmp_path):
    inputs = model_inputs("llama")
    model = get_neat_model(tiny_llama(), NeatConfig(r=4, depth=1, act_fn="sin", init_weights=False)).eval()
    expected = model_output(model, inputs)
    model.save_pretrained(tmp_path)
    assert not model.peft_config["default"].is_peft_compatible
    reloaded = NeatModel.from_pretrained(tiny_llama(), tmp_path)
    torch.testing.assert_close(model_output(reloaded, inputs), expected)
    with pytest.raises(ValueError, match="sin"), stock_peft():
        peft.PeftModel.from_pretrained(tiny_llama(), tmp_path)


# ---------------------------------------------------------------------------------------------- files
def test_saved_files_are_peft_peanut_format(tmp_path):
    model = get_neat_model(tiny_llama(), NeatConfig(r=4, depth=1, target_modules=["q_proj", "v_proj"], dropout=0.1))
    model.save_pretrained(tmp_path)
    # Adapter files plus the model card and its training facts: JSON, safetensors and Markdown only.
    assert sorted(os.listdir(tmp_path)) == ["README.md", ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, "training_info.json"]
    config = json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())
    assert config["peft_type"] == "PEANUT"
    assert config["inference_mode"] is True
    assert (config["r"], config["depth"], config["act_fn"], config["scaling"]) == (4, 1, "relu", 1.0)
    # dropout is neat-only: stock PEFT would warn about it, so it lives in training_info.json and is read back.
    assert "dropout" not in config and json.loads((tmp_path / "training_info.json").read_text())["dropout"] == 0.1
    assert NeatConfig.from_pretrained(tmp_path).dropout == 0.1
    assert config["target_modules"] == ["q_proj", "v_proj"]
    tensors = load_file(tmp_path / ADAPTER_WEIGHTS_NAME)
    assert "base_model.model.model.layers.0.self_attn.q_proj.peanut_A.weight" in tensors
    assert "base_model.model.model.layers.1.self_attn.v_proj.peanut_encoders.0.weight" in tensors
    assert tensors["base_model.model.model.layers.0.self_attn.v_proj.peanut_A.weight"].shape == (4, 16)
    assert not any("base_layer" in k or "default" in k for k in tensors), "base weights or adapter names leaked"
    assert len(tensors) == 2 * 2 * 4  # layers × targets × (A, B, encoder, decoder)


def test_user_config_is_not_mutated(tmp_path):
    config = NeatConfig(r=4)
    get_neat_model(tiny_llama(), config).save_pretrained(tmp_path)
    assert config.target_modules is None and config.inference_mode is False


def test_default_targets_follow_the_paper():
    model = get_neat_model(tiny_llama(), NeatConfig(r=4))
    adapted = sorted({name.rsplit(".", 1)[-1] for name, _ in model.neat_layers()})
    assert adapted == ["down_proj", "k_proj", "q_proj", "up_proj", "v_proj"]
    bert = get_neat_model(tiny_bert_classifier(), NeatConfig(r=4))
    assert sorted({n.rsplit(".", 1)[-1] for n, _ in bert.neat_layers()}) == ["query", "value"]


def test_save_load_round_trip_is_exact_and_frozen_by_default(tmp_path):
    inputs = model_inputs("llama")
    model = get_neat_model(tiny_llama(), NeatConfig(r=4, depth=2, init_weights=False)).eval()
    model.save_pretrained(tmp_path)
    loaded = NeatModel.from_pretrained(tiny_llama(), tmp_path)
    assert torch.equal(model_output(loaded, inputs), model_output(model, inputs))
    assert not loaded.training
    assert loaded.get_nb_trainable_parameters()[0] == 0
    trainable = NeatModel.from_pretrained(tiny_llama(), tmp_path, is_trainable=True)
    assert trainable.get_nb_trainable_parameters()[0] == model.get_nb_trainable_parameters()[0] > 0


def test_refuses_pickle_serialization(tmp_path):
    model = get_neat_model(tiny_llama(), NeatConfig(r=2))
    with pytest.raises(ValueError, match="safetensors"):
        model.save_pretrained(tmp_path, safe_serialization=False)
    assert not os.listdir(tmp_path)


# ---------------------------------------------------------------------------------------------- training
def test_only_adapter_and_modules_to_save_get_gradients_and_change():
    model = get_neat_model(tiny_bert_classifier(), NeatConfig(r=4, task_type="SEQ_CLS"))
    model.train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    inputs = model_inputs("bert")
    for _ in range(2):  # two steps: B starts at zero, so A only moves from the second step on
        loss = model(**inputs, labels=torch.tensor([0, 1])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    for name, param in model.named_parameters():
        changed = not torch.equal(before[name], param.detach())
        trainable = "peanut_" in name or ".modules_to_save." in name
        assert param.requires_grad == trainable, name
        assert changed == trainable, name
    assert model.peft_config["default"].modules_to_save == ["classifier"]


def test_print_trainable_parameters_counts_adapter(capsys):
    model = get_neat_model(tiny_bert_classifier(), NeatConfig(r=8, target_modules=["query", "value"]))
    trainable, total = model.get_nb_trainable_parameters()
    assert trainable == 2 * 2 * (8 * 32 + 32 * 8)  # layers × (query, value) × (A + B)
    model.print_trainable_parameters()
    assert f"trainable params: {trainable:,d}" in capsys.readouterr().out


def test_gradient_checkpointing_with_frozen_embeddings():
    model = get_neat_model(tiny_llama(), NeatConfig(r=4, init_weights=False))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    model.train()
    inputs = model_inputs("llama")
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "peanut_A" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_model_forward(dtype):
    model = get_neat_model(tiny_llama().to(dtype), NeatConfig(r=4, init_weights=False))
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if "peanut_" in n)
    logits = model(**model_inputs("llama")).logits
    assert logits.dtype == dtype and torch.isfinite(logits).all()


def test_generate_goes_through_the_adapter():
    prompt = model_inputs("llama")["input_ids"][:1]
    kwargs = dict(max_new_tokens=4, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)

    def scores(model):
        return torch.stack(model.generate(input_ids=prompt, **kwargs).scores)

    model = get_neat_model(tiny_llama(), NeatConfig(r=4, init_weights=False)).eval()
    randomize_adapter(model)
    live = scores(model)
    assert live.shape[0] == 4
    assert model.config.model_type == "llama"  # attribute access falls through
    assert_logits_differ(live, scores(tiny_llama()))
    torch.testing.assert_close(live, scores(model.merge_and_unload()), atol=1e-4, rtol=1e-4)


def test_inference_cache_of_h_is_refreshed_when_weights_change():
    inputs = model_inputs("llama")
    model = get_neat_model(tiny_llama(), NeatConfig(r=4, init_weights=False)).eval()
    first = model_output(model, inputs)  # no_grad: fills the cache
    assert torch.equal(model_output(model, inputs), first)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "peanut_A" in name:
                param.mul_(1.5)  # in-place update, as an optimizer step does
    updated = model_output(model, inputs)
    assert_logits_differ(updated, first)
    torch.testing.assert_close(updated, model(**inputs).logits.detach())  # grad-enabled path, no cache


# ---------------------------------------------------------------------------------------------- merge
def test_unload_restores_the_base_model_exactly():
    inputs = model_inputs("bert")
    base_logits = model_output(tiny_bert_classifier(), inputs)
    model = get_neat_model(tiny_bert_classifier(), NeatConfig(r=4, task_type="SEQ_CLS", init_weights=False))
    randomize_adapter(model)
    model.merge_adapter()
    plain = model.unload()
    assert not any(isinstance(m, NeatLayer) for m in plain.modules())
    assert torch.equal(model_output(plain, inputs), base_logits)


def test_merge_and_unload_keeps_trained_head():
    inputs = model_inputs("bert")
    model = get_neat_model(tiny_bert_classifier(), NeatConfig(r=4, task_type="SEQ_CLS", init_weights=False)).eval()
    randomize_adapter(model)
    live = model_output(model, inputs)
    merged = model.merge_and_unload()
    torch.testing.assert_close(model_output(merged, inputs), live, atol=1e-4, rtol=1e-4)


def test_safe_merge_refuses_nan_and_changes_nothing():
    model = get_neat_model(tiny_llama(), NeatConfig(r=4, init_weights=False))
    name, layer = next(iter(model.neat_layers()))
    with torch.no_grad():
        layer.peanut_B["default"].weight[0, 0] = float("nan")
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    with pytest.raises(ValueError, match="NaN"):
        model.merge_and_unload(safe_merge=True)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) or torch.isnan(before[k]).any() for k in before)
    assert any(isinstance(m, NeatLayer) for m in model.modules())


def test_disable_adapter_gives_base_logits_also_when_merged():
    inputs = model_inputs("llama")
    base_logits = model_output(tiny_llama(), inputs)
    model = get_neat_model(tiny_llama(), NeatConfig(r=4, init_weights=False)).eval()
    live = model_output(model, inputs)
    with model.disable_adapter():
        assert torch.equal(model_output(model, inputs), base_logits)
    assert torch.equal(model_output(model, inputs), live)
    model.merge_adapter()
    with model.disable_adapter():
        torch.testing.assert_close(model_output(model, inputs), base_logits)
    torch.testing.assert_close(model_output(model, inputs), live, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- selection
def test_layers_to_transform_and_exclude_modules_and_regex():
    model = get_neat_model(tiny_llama(num_hidden_layers=3), NeatConfig(r=2, target_modules=["q_proj", "v_proj"], layers_to_transform=[0, 2]))
    assert sorted(n for n, _ in model.neat_layers()) == [
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj",
        "model.layers.2.self_attn.q_proj", "model.layers.2.self_attn.v_proj",
    ]
    model = get_neat_model(tiny_llama(), NeatConfig(r=2, target_modules=r".*\.(q|v)_proj", exclude_modules=["model.layers.1.self_attn.v_proj"]))
    assert sorted(n for n, _ in model.neat_layers()) == [
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.v_proj", "model.layers.1.self_attn.q_proj",
    ]


def test_multiple_adapters_switch_and_save(tmp_path):
    inputs = model_inputs("llama")
    model = get_neat_model(tiny_llama(), NeatConfig(r=4, init_weights=False)).eval()
    first = model_output(model, inputs)
    model.add_adapter("other", NeatConfig(r=2, target_modules=["q_proj"], init_weights=False))
    assert torch.equal(model_output(model, inputs), first)  # still the active one
    # Only the active adapter trains; the added one waits frozen until it is activated.
    for name, param in model.named_parameters():
        assert param.requires_grad == (".default." in name and "peanut_" in name), name
    model.set_adapter("other")
    for name, param in model.named_parameters():
        assert param.requires_grad == (".other." in name), name
    second = model_output(model, inputs)
    assert_logits_differ(first, second)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "other" / ADAPTER_WEIGHTS_NAME).exists() and (tmp_path / ADAPTER_WEIGHTS_NAME).exists()
    torch.testing.assert_close(model_output(NeatModel.from_pretrained(tiny_llama(), tmp_path / "other"), inputs), second)
    model.set_adapter("default")
    model.delete_adapter("other")
    assert list(model.peft_config) == ["default"]
    assert torch.equal(model_output(model, inputs), first)


def test_no_warnings_on_plain_use(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = get_neat_model(tiny_llama(), NeatConfig(r=2))
        model.save_pretrained(tmp_path)
        NeatModel.from_pretrained(tiny_llama(), tmp_path)


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_stock_peft_loads_default_adapter_without_unknown_key_warnings(tmp_path, caplog, dropout):
    get_neat_model(tiny_llama(), NeatConfig(r=2, dropout=dropout)).save_pretrained(tmp_path)
    assert "dropout" not in json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING"), stock_peft():
        warnings.simplefilter("always")
        peft.PeftModel.from_pretrained(tiny_llama(), tmp_path)
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "Unexpected keyword" in m or "dropout" in m], messages
    # neat-hf reads the neat-only setting back (for resuming training with the same dropout).
    assert NeatModel.from_pretrained(tiny_llama(), tmp_path, is_trainable=True).peft_config["default"].dropout == dropout


def test_stock_peft_warns_about_dropout_in_adapter_config(tmp_path, caplog):
    """The failure the test above guards against is real: PEFT reports an unknown `dropout` key."""
    get_neat_model(tiny_llama(), NeatConfig(r=2)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / ADAPTER_CONFIG_NAME).read_text())
    (tmp_path / ADAPTER_CONFIG_NAME).write_text(json.dumps({**config, "dropout": 0.1}))
    with warnings.catch_warnings(record=True) as caught, caplog.at_level("WARNING"), stock_peft():
        warnings.simplefilter("always")
        peft.PeftModel.from_pretrained(tiny_llama(), tmp_path)
    messages = [str(w.message) for w in caught] + [r.getMessage() for r in caplog.records]
    assert [m for m in messages if "dropout" in m], messages


def test_saved_files_get_normal_permissions(tmp_path):
    get_neat_model(tiny_llama(), NeatConfig(r=2)).save_pretrained(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")], "temporary files were left behind"


def test_load_adapter_adds_a_saved_adapter(tmp_path):
    inputs = model_inputs("llama")
    other = get_neat_model(tiny_llama(), NeatConfig(r=2, depth=1, target_modules=["v_proj"], init_weights=False)).eval()
    other.save_pretrained(tmp_path)
    model = get_neat_model(tiny_llama(), NeatConfig(r=4, init_weights=False)).eval()
    first = model_output(model, inputs)
    model.load_adapter(tmp_path, "other")
    assert torch.equal(model_output(model, inputs), first)
    model.set_adapter("other")
    torch.testing.assert_close(model_output(model, inputs), model_output(other, inputs))


def test_set_adapter_keeps_base_parameters_the_user_unfroze():
    model = get_neat_model(tiny_llama(), NeatConfig(r=2))
    norm = model.base_model.model.norm.weight
    norm.requires_grad_(True)
    model.add_adapter("other", NeatConfig(r=2))
    model.set_adapter("other")
    assert norm.requires_grad


def test_merge_and_unload_when_active_adapter_has_no_head_copy():
    inputs = model_inputs("bert")
    model = get_neat_model(tiny_bert_classifier(), NeatConfig(r=2, task_type="SEQ_CLS", init_weights=False)).eval()
    model.add_adapter("other", NeatConfig(r=2, target_modules=["query"], init_weights=False))
    model.set_adapter("other")
    live = model_output(model, inputs)
    torch.testing.assert_close(model_output(model.merge_and_unload(), inputs), live, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("task_type", "modules_to_save", "expected"),
    [
        ("SEQ_CLS", None, ["classifier"]),
        ("TOKEN_CLS", None, ["classifier"]),
        ("SEQ_CLS", ["pooler"], ["pooler", "classifier"]),
        (None, ["classifier"], ["classifier"]),
    ],
)
def test_task_heads_are_trained_like_peft(task_type, modules_to_save, expected):
    model = get_neat_model(tiny_bert_classifier(), NeatConfig(r=2, task_type=task_type, modules_to_save=modules_to_save))
    assert model.peft_config["default"].modules_to_save == expected
    trained = sorted({n.split(".modules_to_save.")[0].rsplit(".", 1)[-1] for n, p in model.named_parameters() if p.requires_grad and ".modules_to_save." in n})
    assert trained == sorted(expected)
    with stock_peft():
        stock = peft.get_peft_model(tiny_bert_classifier(), peft.PeanutConfig(r=2, task_type=task_type, target_modules=["query", "value"], modules_to_save=modules_to_save))
    stock_trained = sorted({n.split(".modules_to_save.")[0].rsplit(".", 1)[-1] for n, p in stock.named_parameters() if p.requires_grad and ".modules_to_save." in n})
    assert trained == stock_trained


def test_safe_merge_checks_the_merged_weight_in_the_base_dtype_and_merges_nothing():
    model = get_neat_model(tiny_llama().to(torch.float16), NeatConfig(r=4, init_weights=False))
    layers = [layer for _, layer in model.neat_layers()]
    with torch.no_grad():
        layers[-1].peanut_B["default"].weight.fill_(1e7)  # finite in fp32, overflows fp16 once merged
    assert torch.isfinite(layers[-1].delta_weight("default")).all()
    before = {n: p.detach().clone() for n, p in model.state_dict().items()}
    with pytest.raises(ValueError, match="NaN or inf"):
        model.merge_adapter(safe_merge=True)
    assert not any(layer.merged for layer in layers), "a refused safe merge must merge no layer"
    with pytest.raises(ValueError, match="NaN or inf"):
        model.merge_and_unload(safe_merge=True)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_moving_the_model_drops_the_inference_cache():
    model = get_neat_model(tiny_llama(), NeatConfig(r=2, init_weights=False)).eval()
    model_output(model, model_inputs("llama"))
    layers = [layer for _, layer in model.neat_layers()]
    assert all(layer._hidden_cache for layer in layers)
    model.to(torch.float64)
    assert not any(layer._hidden_cache for layer in layers)
    assert model_output(model, {"input_ids": model_inputs("llama")["input_ids"]}).dtype == torch.float64


def test_inference_cache_sees_fused_adamw_updates():
    """torch's fused AdamW (the Trainer's default optimizer) does not bump version counters: values must be compared."""
    inputs = model_inputs("llama")
    model = get_neat_model(tiny_llama(), NeatConfig(r=4, init_weights=False))
    model.eval()
    model_output(model, inputs)  # fills the cache
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1, fused=True)
    model(**inputs, labels=inputs["input_ids"]).loss.backward()
    optimizer.step()
    after = model_output(model, inputs)
    with torch.enable_grad():
        reference = model(**inputs).logits.detach()  # recomputes H from the current weights
    torch.testing.assert_close(after, reference)
