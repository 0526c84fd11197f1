"""Bad input gets a clear error that names the problem, and leaves the model and files unchanged."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama

from neat_hf import (
    AdapterLoadError,
    AdapterMismatchError,
    NeatConfig,
    NeatError,
    NeatLayer,
    NeatModel,
    NoTargetModulesError,
    UnsupportedModuleError,
    get_neat_model,
)
from neat_hf.constants import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    after = model.state_dict()
    assert list(after) == list(before), "modules were added or removed"
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(isinstance(m, NeatLayer) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters()), "base weights were frozen by a refused call"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"r": 0}, "r must be a positive integer"),
        ({"r": -3}, "r must be a positive integer"),
        ({"r": 2.5}, "r must be a positive integer"),
        ({"depth": -1}, "depth must be a non-negative integer"),
        ({"act_fn": "swishy"}, r"Unknown act_fn 'swishy'. Must be one of \[.*'relu'.*'sin'"),
        ({"scaling": "big"}, "scaling must be a finite float"),
        ({"scaling": float("nan")}, "scaling must be a finite float"),
        ({"task_type": "SEQ_CLASSIFICATION"}, "task_type must be one of"),
        ({"dropout": 1.5}, r"dropout must be a float in \[0, 1\)"),
        ({"target_modules": 3}, "target_modules must be a list of module names or a regex"),
        ({"layers_pattern": "layers"}, "set layers_to_transform too"),
        ({"layers_to_transform": [-1]}, "layers_to_transform must be a non-negative int"),
        ({"act_fn": "gelu", "activation": "relu"}, "set it in only one place"),
    ],
)
def test_invalid_config_values(kwargs, message):
    with pytest.raises(NeatError, match=message):
        NeatConfig(**kwargs)


def test_activation_alias():
    assert NeatConfig(activation="sin").act_fn == "sin"
    assert NeatConfig(act_fn="gelu").activation == "gelu"


def test_targets_matching_nothing_lists_existing_linear_layers():
    model = tiny_llama()
    before = snapshot(model)
    with pytest.raises(NoTargetModulesError) as info:
        get_neat_model(model, NeatConfig(r=2, target_modules=["query", "value"]))
    message = str(info.value)
    assert "['query', 'value']" in message and "q_proj" in message and "down_proj" in message
    assert_unchanged(model, before)


def test_layers_to_transform_out_of_range_is_named():
    model = tiny_llama()
    with pytest.raises(NoTargetModulesError, match=r"layers_to_transform=\[7\]"):
        get_neat_model(model, NeatConfig(r=2, target_modules=["q_proj"], layers_to_transform=7))


def test_non_linear_target_is_refused_without_changes():
    model = tiny_llama()
    before = snapshot(model)
    with pytest.raises(UnsupportedModuleError, match=r"model\.layers\.0\.mlp \(LlamaMLP\)"):
        get_neat_model(model, NeatConfig(r=2, target_modules=["q_proj", "mlp"]))
    assert_unchanged(model, before)


def test_unknown_model_type_asks_for_target_modules():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(NeatError, match="pass target_modules explicitly"):
        get_neat_model(model, NeatConfig(r=2))


def test_modules_to_save_matching_nothing():
    with pytest.raises(NeatError, match="modules_to_save=\\['head'\\] matches no module"):
        get_neat_model(tiny_llama(), NeatConfig(r=2, modules_to_save=["head"]))


@pytest.fixture
def saved_adapter(tmp_path):
    get_neat_model(tiny_llama(), NeatConfig(r=4, target_modules=["q_proj", "v_proj"], init_weights=False)).save_pretrained(tmp_path)
    return tmp_path


def test_loading_into_base_of_other_shape_names_module_and_shapes(saved_adapter):
    other = tiny_llama(hidden_size=48)
    before = snapshot(other)
    with pytest.raises(AdapterMismatchError) as info:
        NeatModel.from_pretrained(other, saved_adapter)
    message = str(info.value)
    assert "model.layers.0.self_attn.q_proj" in message and "[4, 32]" in message and "[4, 48]" in message
    assert_unchanged(other, before)


def test_loading_into_base_with_other_module_names(saved_adapter):
    other = tiny_llama(num_hidden_layers=1)
    before = snapshot(other)
    with pytest.raises(AdapterMismatchError, match=r"no place in LlamaForCausalLM.*model\.layers\.1"):
        NeatModel.from_pretrained(other, saved_adapter)
    assert_unchanged(other, before)


def test_loading_into_base_without_target_modules(saved_adapter):
    from transformers import GPT2Config, GPT2LMHeadModel

    other = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=32, n_layer=1, n_head=4))
    before = snapshot(other)
    with pytest.raises(AdapterMismatchError, match="does not fit GPT2LMHeadModel.*c_attn"):
        NeatModel.from_pretrained(other, saved_adapter)
    assert_unchanged(other, before)


def test_missing_weights_file(saved_adapter):
    (saved_adapter / ADAPTER_WEIGHTS_NAME).unlink()
    model = tiny_llama()
    before = snapshot(model)
    with pytest.raises(AdapterLoadError, match=f"No {ADAPTER_WEIGHTS_NAME} in adapter folder"):
        NeatModel.from_pretrained(model, saved_adapter)
    assert_unchanged(model, before)


def test_corrupt_weights_file(saved_adapter):
    (saved_adapter / ADAPTER_WEIGHTS_NAME).write_bytes(b"\x00garbage" * 10)
    model = tiny_llama()
    before = snapshot(model)
    with pytest.raises(AdapterLoadError, match="corrupt or not safetensors"):
        NeatModel.from_pretrained(model, saved_adapter)
    assert_unchanged(model, before)


def test_truncated_weights_file(saved_adapter):
    path = saved_adapter / ADAPTER_WEIGHTS_NAME
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(AdapterLoadError, match="corrupt or not safetensors"):
        NeatModel.from_pretrained(tiny_llama(), saved_adapter)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("r", "4", r"r must be a positive integer \(e.g. 8, 16, 32\), got '4'"),
        ("depth", 1.5, "depth must be a non-negative integer"),
        ("scaling", [1], "scaling must be a finite float"),
        ("target_modules", {"q": 1}, "target_modules must be"),
        ("act_fn", 7, "Unknown act_fn 7"),
        ("peft_type", "LORA", "peft_type='LORA'"),
        ("init_weights", "yes", "init_weights must be a bool"),
    ],
)
def test_adapter_config_with_wrong_field_types(saved_adapter, field, value, message):
    path = saved_adapter / ADAPTER_CONFIG_NAME
    config = json.loads(path.read_text())
    config[field] = value
    path.write_text(json.dumps(config))
    model = tiny_llama()
    before = snapshot(model)
    with pytest.raises(AdapterLoadError, match=message):
        NeatModel.from_pretrained(model, saved_adapter)
    assert_unchanged(model, before)


def test_adapter_config_not_json(saved_adapter):
    (saved_adapter / ADAPTER_CONFIG_NAME).write_text("{not json")
    with pytest.raises(AdapterLoadError, match="not valid UTF-8 JSON"):
        NeatModel.from_pretrained(tiny_llama(), saved_adapter)


def test_path_that_is_neither_folder_nor_repo(tmp_path):
    with pytest.raises(AdapterLoadError, match="not a folder"):
        NeatModel.from_pretrained(tiny_llama(), tmp_path / "does" / "not" / "exist")


def test_save_into_a_file_path_is_refused(tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    with pytest.raises(NeatError, match="is a file"):
        get_neat_model(tiny_llama(), NeatConfig(r=2)).save_pretrained(target)
    assert target.read_text() == "keep me"


def test_duplicate_adapter_name_is_refused():
    model = get_neat_model(tiny_llama(), NeatConfig(r=2))
    before = snapshot(model)
    with pytest.raises(NeatError, match="already exists"):
        model.add_adapter("default", NeatConfig(r=4))
    after = model.state_dict()
    assert list(after) == list(before)


@pytest.mark.parametrize(("field", "value"), [("r", 0), ("depth", -1), ("act_fn", "bogus"), ("scaling", float("inf"))])
def test_config_changed_after_construction_is_checked_again(field, value):
    config = NeatConfig(r=2)
    setattr(config, field, value)
    model = tiny_llama()
    before = snapshot(model)
    with pytest.raises(NeatError, match=field):
        get_neat_model(model, config)
    assert_unchanged(model, before)


def test_nan_scaling_in_adapter_config_is_refused(saved_adapter):
    path = saved_adapter / ADAPTER_CONFIG_NAME
    path.write_text(path.read_text().replace('"scaling": 1.0', '"scaling": NaN'))
    with pytest.raises(AdapterLoadError, match="scaling must be a finite float"):
        NeatModel.from_pretrained(tiny_llama(), saved_adapter)


def test_adapter_config_not_utf8(saved_adapter):
    (saved_adapter / ADAPTER_CONFIG_NAME).write_bytes(b'{"r": "\xff\xfe"}')
    with pytest.raises(AdapterLoadError, match="not valid UTF-8 JSON"):
        NeatModel.from_pretrained(tiny_llama(), saved_adapter)


def test_wrapping_a_base_twice_is_refused(saved_adapter):
    base = tiny_llama()
    model = get_neat_model(base, NeatConfig(r=2, init_weights=False))
    before = snapshot(model)
    with pytest.raises(NeatError, match="already holds adapter layers.*add_adapter / load_adapter"):
        get_neat_model(base, NeatConfig(r=2))
    with pytest.raises(NeatError, match="already holds adapter layers"):
        NeatModel.from_pretrained(base, saved_adapter)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("name", ["", "a.b", 3])
def test_bad_adapter_name_leaves_no_state(name):
    model = get_neat_model(tiny_llama(), NeatConfig(r=2))
    before = snapshot(model)
    with pytest.raises(NeatError, match="non-empty string|is not allowed: it contains '.'"):
        model.add_adapter(name, NeatConfig(r=2))
    assert list(model.state_dict()) == list(before)
    layer = next(layer for _, layer in model.neat_layers())
    assert list(layer.r) == ["default"] and list(model.peft_config) == ["default"]


def test_merge_inside_disable_adapter_is_refused():
    model = get_neat_model(tiny_llama(), NeatConfig(r=2, init_weights=False))
    with model.disable_adapter(), pytest.raises(NeatError, match="Cannot merge inside"):
        model.merge_adapter()
    assert not any(layer.merged for _, layer in model.neat_layers())


def test_a_neat_model_is_refused_by_no_peft_aware_check():
    """Tools decide "adapter model?" by isinstance(m, PeftModel) / accelerate's is_peft_model; neat-hf's answer is yes."""
    import accelerate.utils
    import peft

    model = get_neat_model(tiny_llama(), NeatConfig(r=2))
    assert isinstance(model, peft.PeftModel) and accelerate.utils.is_peft_model(model)
    assert isinstance(model.peft_config["default"], peft.PeftConfig)


def test_quantized_like_layers_are_refused():
    class Int8Linear(torch.nn.Linear):
        pass

    layer = Int8Linear(4, 4)
    layer.weight = torch.nn.Parameter(torch.zeros(4, 4, dtype=torch.int8), requires_grad=False)
    from neat_hf.layer import layer_features

    with pytest.raises(UnsupportedModuleError, match="cannot dequantize.*Supported quantized bases: bitsandbytes 4-bit"):
        layer_features(layer)
