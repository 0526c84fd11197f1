"""NEAT -> LoRA export: stock PEFT serves the exported LoRA with the NEAT adapter's exact outputs."""

from __future__ import annotations

import functools
import json
import os
import warnings

import pytest
import torch
from conftest import model_inputs, model_output, tiny_bert_classifier, tiny_gpt2, tiny_llama
from hub_fixtures import hub_server  # noqa: F401 (fixture)
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from testing_common import assert_logits_differ, randomize_adapter

from neat_hf import AdapterMismatchError, NeatConfig, NeatError, NeatModel, get_neat_model
from neat_hf.errors import ServingLimitError
from neat_hf.cli.hub import main
from neat_hf.export.serving import check_serving_limits, vllm_max_lora_rank

peft = pytest.importorskip("peft")

FACTORIES = {"llama": tiny_llama, "bert": tiny_bert_classifier, "gpt2": tiny_gpt2}
CONFIGS = {
    "llama": dict(target_modules=None),
    "bert": dict(target_modules=["query", "value"], task_type="SEQ_CLS"),
    "gpt2": dict(target_modules=["c_attn", "c_fc"]),
}


def neat_model(kind: str, seed: int = 3, **config):
    options = dict(r=4, **CONFIGS[kind])
    options.update(config)
    model = get_neat_model(FACTORIES[kind](), NeatConfig(**options))
    randomize_adapter(model, seed)
    return model.eval()


def load_with_warnings(factory, folder, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = peft.PeftModel.from_pretrained(factory(), folder, **kwargs).eval()
    return model, {str(w.message) for w in caught}


@functools.lru_cache(maxsize=None)
def _stock_lora_warnings(kind: str, tmp_root: str) -> frozenset[str]:
    """Warnings stock PEFT emits when loading a LoRA adapter that PEFT itself saved for this model (the baseline)."""
    config = CONFIGS[kind]
    lora = peft.LoraConfig(r=4, lora_alpha=4, target_modules=config["target_modules"] or ["q_proj"],
                           task_type=config.get("task_type"), fan_in_fan_out=kind == "gpt2")
    folder = os.path.join(tmp_root, f"stock-{kind}")
    peft.get_peft_model(FACTORIES[kind](), lora).save_pretrained(folder)
    return frozenset(load_with_warnings(FACTORIES[kind], folder)[1])


@pytest.mark.parametrize("kind", ["llama", "bert", "gpt2"])
@pytest.mark.parametrize("depth", [0, 1, 2])
@pytest.mark.parametrize("act_fn", ["relu", "gelu", "sin"])
def test_stock_peft_serves_the_export_with_identical_logits(tmp_path_factory, tmp_path, kind, depth, act_fn):
    inputs = model_inputs("llama")
    model = neat_model(kind, depth=depth, act_fn=act_fn)
    ours = model_output(model, inputs)
    assert_logits_differ(ours, model_output(FACTORIES[kind](), inputs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # BERT's head: vLLM refuses modules_to_save (tested below)
        model.save_as_lora(tmp_path / "lora")
    stock, caught = load_with_warnings(FACTORIES[kind], tmp_path / "lora")
    assert isinstance(stock.peft_config["default"], peft.LoraConfig)
    torch.testing.assert_close(model_output(stock, inputs), ours, atol=1e-5, rtol=1e-5)
    # No warning beyond those stock PEFT gives for a LoRA adapter it saved itself.
    assert caught <= _stock_lora_warnings(kind, str(tmp_path_factory.getbasetemp())), caught

    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == config["lora_alpha"] == 4
    assert config["fan_in_fan_out"] is (kind == "gpt2")
    assert config["modules_to_save"] == (["classifier"] if kind == "bert" else None)
    keys = load_file(tmp_path / "lora" / "adapter_model.safetensors")
    n_layers = sum(1 for _ in model.neat_layers())
    assert sum(k.endswith(".lora_A.weight") for k in keys) == sum(k.endswith(".lora_B.weight") for k in keys) == n_layers


@pytest.mark.parametrize("kind", ["llama", "bert", "gpt2"])
def test_merged_export_equals_the_neat_merge(tmp_path, kind):
    inputs = model_inputs("llama")
    model = neat_model(kind, depth=1, act_fn="gelu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.save_as_lora(tmp_path / "lora")
    stock = peft.PeftModel.from_pretrained(FACTORIES[kind](), tmp_path / "lora").eval()
    stock_merged = stock.merge_and_unload()
    neat_merged = model.merge_and_unload()
    for (name, a), (_, b) in zip(stock_merged.state_dict().items(), neat_merged.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    torch.testing.assert_close(model_output(stock_merged, inputs), model_output(neat_merged, inputs), atol=1e-5, rtol=1e-5)


def test_two_exports_in_one_stock_peft_mixed_batch(tmp_path):
    inputs = {"input_ids": torch.randint(0, 128, (4, 7), generator=torch.Generator().manual_seed(5))}
    first = neat_model("llama", seed=3, depth=1, act_fn="gelu")
    second = neat_model("llama", seed=4, depth=2, act_fn="sin", r=8)
    first.save_as_lora(tmp_path / "first")
    second.save_as_lora(tmp_path / "second")
    stock = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path / "first", adapter_name="first")
    stock.load_adapter(tmp_path / "second", adapter_name="second")
    stock.eval()
    names = ["second", "first", "__base__", "second"]
    with torch.no_grad():
        mixed = stock(**inputs, adapter_names=names).logits
    expected = {"first": model_output(first, inputs), "second": model_output(second, inputs),
                "__base__": model_output(tiny_llama(), inputs)}
    assert_logits_differ(expected["first"], expected["second"])
    for row, name in enumerate(names):
        torch.testing.assert_close(mixed[row], expected[name][row], atol=1e-5, rtol=1e-5)


def test_h_is_computed_from_the_served_dtype(tmp_path):
    model = neat_model("llama", depth=1)
    model.save_as_lora(tmp_path / "fp32")
    model.save_as_lora(tmp_path / "bf16", dtype="bfloat16")
    # Reference: the same adapter on a base whose weights were rounded to bf16 (kept in fp32).
    rounded = tiny_llama()
    with torch.no_grad():
        for param in rounded.parameters():
            param.copy_(param.to(torch.bfloat16).float())
    reference = get_neat_model(rounded, NeatConfig(r=4, depth=1))
    reference.load_adapter_weights(model.get_adapter_state_dict())
    reference.save_as_lora(tmp_path / "ref")
    fp32, bf16, ref = (load_file(tmp_path / n / "adapter_model.safetensors") for n in ("fp32", "bf16", "ref"))
    for key in ref:
        assert bf16[key].dtype == torch.float32
        torch.testing.assert_close(bf16[key], ref[key], atol=0, rtol=0)
    assert any((fp32[k] - bf16[k]).abs().max() > 0 for k in fp32 if "lora_A" in k)  # the dtype matters
    info = json.loads((tmp_path / "bf16" / "training_info.json").read_text())
    assert info["export_base_dtype"] == "bfloat16"
    assert json.loads((tmp_path / "fp32" / "training_info.json").read_text())["export_base_dtype"] == "float32"


def test_bf16_base_exports_from_its_stored_dtype(tmp_path):
    model = get_neat_model(tiny_llama().to(torch.bfloat16), NeatConfig(r=4, init_weights=False)).eval()
    model.save_as_lora(tmp_path / "lora")
    assert json.loads((tmp_path / "lora" / "training_info.json").read_text())["export_base_dtype"] == "bfloat16"
    assert "`bfloat16` (fp32 accumulation)" in (tmp_path / "lora" / "README.md").read_text()
    inputs = model_inputs("llama")
    stock = peft.PeftModel.from_pretrained(tiny_llama().to(torch.bfloat16), tmp_path / "lora").eval()
    # bf16 activations: NEAT rounds A to bf16 inside W0ᵀAᵀ, the export accumulates in fp32; both are bf16-close.
    torch.testing.assert_close(model_output(stock, inputs).float(), model_output(model, inputs).float(), atol=0.05, rtol=0.05)


def test_card_and_training_info(tmp_path):
    model = neat_model("llama", depth=2, act_fn="sin", r=20)
    model.peft_config["default"].base_model_name_or_path = "neat-tester/tiny-llama"
    model.save_as_lora(tmp_path / "lora", revision="abc123", exported_from="neat-tester/neat-sin")
    card = ModelCard.load(tmp_path / "lora" / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == "neat-tester/tiny-llama"
    assert {"lora", "neat", "base_model:adapter:neat-tester/tiny-llama"} <= set(card.data.tags)
    assert "exported from a NEAT adapter** (neat-tester/neat-sin)" in card.text
    assert "`abc123`" in card.text and "--max-lora-rank 32" in card.text  # r=20 needs vLLM's 32
    info = json.loads((tmp_path / "lora" / "training_info.json").read_text())
    assert info["export_exact_for_base"] == "neat-tester/tiny-llama" and info["export_base_revision"] == "abc123"
    assert (info["neat_depth"], info["neat_act_fn"]) == (2, "sin")
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "neat-tester/tiny-llama" and config["revision"] == "abc123"


def test_export_is_atomic_and_never_overwrites_other_files(tmp_path, monkeypatch):
    model = neat_model("llama")
    out = tmp_path / "lora"
    import neat_hf.export.lora as lora_export

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(lora_export, "write_lora_card", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save_as_lora(out)
    assert sorted(os.listdir(tmp_path)) == []  # no half folder, no temporary left behind
    monkeypatch.undo()

    model.save_as_lora(out)
    first = (out / "adapter_model.safetensors").read_bytes()
    randomize_adapter(model, seed=9)
    model.save_as_lora(out)  # an earlier export is replaced as a whole
    assert (out / "adapter_model.safetensors").read_bytes() != first
    assert sorted(os.listdir(tmp_path)) == ["lora"]

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(NeatError, match="notes.txt"):
        model.save_as_lora(other)
    assert os.listdir(other) == ["notes.txt"]
    with pytest.raises(NeatError, match="dtype must be"):
        model.save_as_lora(tmp_path / "x", dtype="int8")
    model.merge_adapter()
    with pytest.raises(NeatError, match="unmerge_adapter"):
        model.save_as_lora(tmp_path / "merged")
    assert not (tmp_path / "merged").exists() and not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------------------- server limits
def test_vllm_rank_values():
    assert [vllm_max_lora_rank(r) for r in (1, 4, 8, 16, 17, 300, 320, 512, 513)] == [1, 8, 8, 16, 32, 320, 320, 512, None]


def test_server_limit_checks_name_server_and_limit():
    issues = check_serving_limits(r=600, target_paths=["model.layers.0.mlp.fancy_proj", "model.layers.0.self_attn.q_proj"],
                                  modules_to_save=["score"], model_type="llama")
    errors = [str(i) for i in issues if i.level == "error"]
    assert any("vllm" in e and "512" in e and "r=600" in e for e in errors)
    assert any("vllm" in e and "modules_to_save" in e for e in errors)
    assert any("vllm" in e and "['fancy_proj']" in e for e in errors)
    assert not any("q_proj']" in e for e in errors)
    clean = check_serving_limits(r=16, target_paths=["model.layers.0.self_attn.q_proj"], modules_to_save=None, model_type="llama")
    assert [i for i in clean if i.level == "error"] == []
    bert = check_serving_limits(r=8, target_paths=["encoder.layer.0.attention.self.query"], modules_to_save=None, model_type="bert")
    assert any(i.server == "vllm" and "model_type='bert'" in i.message for i in bert)


def test_export_warns_or_refuses_for_server_limits(tmp_path):
    model = neat_model("bert")
    with pytest.raises(ServingLimitError, match="vllm: vLLM refuses adapters with modules_to_save"):
        model.save_as_lora(tmp_path / "strict", server="vllm")
    assert not (tmp_path / "strict").exists()
    with pytest.warns(UserWarning, match="will not load in vllm: .*modules_to_save"):
        model.save_as_lora(tmp_path / "lenient")
    assert "vLLM refuses adapters with modules_to_save" in (tmp_path / "lenient" / "README.md").read_text()
    big = get_neat_model(tiny_llama(), NeatConfig(r=513)).eval()
    with pytest.raises(ServingLimitError, match="r=513 exceeds the largest --max-lora-rank vLLM accepts"):
        big.save_as_lora(tmp_path / "big", server="vllm")
    big.save_as_lora(tmp_path / "big-sglang", server="sglang")  # SGLang has no such limit
    assert (tmp_path / "big-sglang" / "adapter_model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------- CLI and Hub
def _base_and_adapter(tmp_path, factory=tiny_llama, **config):
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    factory().save_pretrained(base_dir)
    model = get_neat_model(factory(), NeatConfig(r=4, depth=1, act_fn="sin", **config))
    randomize_adapter(model)
    model.save_pretrained(adapter_dir)
    return base_dir, adapter_dir, model.eval()


def test_cli_export_lora(tmp_path, capsys):
    base, adapter, model = _base_and_adapter(tmp_path)
    out = tmp_path / "lora"
    assert main(["export-lora", str(base), str(adapter), str(out), "--server", "vllm"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    inputs = model_inputs("llama")
    stock = peft.PeftModel.from_pretrained(tiny_llama(), out).eval()
    torch.testing.assert_close(model_output(stock, inputs), model_output(model, inputs), atol=1e-5, rtol=1e-5)
    info = json.loads((out / "training_info.json").read_text())
    assert info == {**info, "export_exact_for_base": str(base), "export_base_is_local": True,
                    "export_base_dtype": "float32", "exported_from": "local folder 'adapter'"}
    # A local base is kept as given, never turned into a Hub link or an adapter tag of a Hub model (issue 23).
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == str(base)
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model is None and not any(tag.startswith("base_model:") for tag in card.data.tags)
    assert "https://huggingface.co/" + base.name not in card.text and f"`{base}` (local folder)" in card.text
    assert main(["export-lora", str(base), str(adapter), str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    assert json.loads((tmp_path / "bf16" / "training_info.json").read_text())["export_base_dtype"] == "bfloat16"


def test_cli_refuses_a_base_of_other_shapes_or_names_before_writing(tmp_path, capsys):
    _, adapter, _ = _base_and_adapter(tmp_path)
    wider = tmp_path / "wider"
    tiny_llama(intermediate_size=64).save_pretrained(wider)
    assert main(["export-lora", str(wider), str(adapter), str(tmp_path / "out")]) == 2  # bad input: 2
    assert "Shape mismatch" in capsys.readouterr().err
    other_names = tmp_path / "gpt2"
    tiny_gpt2().save_pretrained(other_names)
    with pytest.raises(AdapterMismatchError):
        NeatModel.from_pretrained(tiny_gpt2(), adapter)
    assert main(["export-lora", str(other_names), str(adapter), str(tmp_path / "out")]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_export_and_push_to_the_hub(hub_server, tmp_path, capsys):
    base, adapter, model = _base_and_adapter(tmp_path)
    repo = "neat-tester/neat-as-lora"
    assert main(["export-lora", str(base), str(adapter), str(tmp_path / "lora"), "--push-to-hub", repo]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == f"{hub_server.endpoint}/{repo}/commit/{hub_server.branches(repo)['main']}"
    files = hub_server.files(repo)
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md", "training_info.json"} <= set(files)
    card = files["README.md"].decode()
    assert f'PeftModel.from_pretrained(base, "{repo}")' in card and "--lora-modules neat=" + repo in card
    assert hub_server.history(repo, "main")[0].title == "Upload LoRA exported from a NEAT adapter"
    inputs = model_inputs("llama")
    stock, caught = load_with_warnings(tiny_llama, repo)
    torch.testing.assert_close(model_output(stock, inputs), model_output(model, inputs), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("depth", [0, 2])
def test_lora_weights_reproduce_the_layer_delta_in_column_slabs(monkeypatch, depth):
    """W0 is cast to fp32 a slab of columns at a time; the slabs give the same H as the whole weight at once."""
    from torch import nn

    import neat_hf.export.lora as lora_export
    from neat_hf.layer import NeatLayer

    torch.manual_seed(0)
    layer = NeatLayer(nn.Linear(23, 17), "default", NeatConfig(r=4, depth=depth, act_fn="gelu", scaling=0.7, init_weights=False))
    whole_a, whole_b = lora_export.lora_weights(layer, "default")
    monkeypatch.setattr(lora_export, "_COLUMN_SLAB", 5)
    slab_a, slab_b = lora_export.lora_weights(layer, "default")
    torch.testing.assert_close(slab_a, whole_a, atol=1e-6, rtol=1e-5)  # fp32 rounding of the blocked matmul only
    assert slab_a.shape == (4, 23) and slab_b.shape == (17, 4)
    torch.testing.assert_close(slab_b @ slab_a, layer.delta_weight("default"), atol=1e-6, rtol=1e-5)


def test_cli_server_flag_refuses_what_the_server_would_refuse(tmp_path, capsys):
    base, adapter, _ = _base_and_adapter(tmp_path, tiny_bert_classifier, target_modules=["query", "value"], task_type="SEQ_CLS")
    assert main(["export-lora", str(base), str(adapter), str(tmp_path / "out"), "--server", "vllm"]) == 2
    assert "vllm: vLLM refuses adapters with modules_to_save (['classifier'])" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.warns(UserWarning, match="will not load in vllm"):
        assert main(["export-lora", str(base), str(adapter), str(tmp_path / "out"), "--server", "sglang"]) == 0
    stock = peft.PeftModel.from_pretrained(tiny_bert_classifier(), tmp_path / "out").eval()
    live = NeatModel.from_pretrained(tiny_bert_classifier(), adapter)
    torch.testing.assert_close(model_output(stock, model_inputs("bert")), model_output(live, model_inputs("bert")), atol=1e-5, rtol=1e-5)


def test_exports_the_named_adapter_of_a_multi_adapter_model(tmp_path):
    model = neat_model("llama")
    model.add_adapter("other", NeatConfig(r=8, depth=1, act_fn="gelu"))
    randomize_adapter(model, seed=11)
    model.eval().save_as_lora(tmp_path / "other", adapter_name="other")
    assert model.active_adapter == "default"
    inputs = model_inputs("llama")
    default_logits = model_output(model, inputs)
    model.set_adapter("other")
    stock = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path / "other").eval()
    torch.testing.assert_close(model_output(stock, inputs), model_output(model, inputs), atol=1e-5, rtol=1e-5)
    assert_logits_differ(model_output(stock, inputs), default_logits)
    assert json.loads((tmp_path / "other" / "adapter_config.json").read_text())["r"] == 8
    with pytest.raises(NeatError, match="Unknown adapter 'nope'"):
        model.save_as_lora(tmp_path / "nope", adapter_name="nope")
