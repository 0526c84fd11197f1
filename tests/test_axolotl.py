"""`neat_hf.integrations.axolotl.NeatPlugin`: NEAT as Axolotl's `adapter: neat`.

Where Axolotl is not installed (it needs Python >= 3.12 from 0.20 on; see tests/axolotl_standin.py for why), the
plugin is checked against a labelled STAND-IN of Axolotl's plugin interface: the adapter is declared and accepted by
config validation, `load_adapter` returns a `(PeftModel, PeftConfig)` whose layers are neat-hf's, a run of Axolotl's
kind of trainer (a transformers `Trainer` on the `PeftModel`) trains it, and the saved folder loads in stock PEFT and
in neat-hf with the same logits. `test_axolotl_train_cli` runs the real `axolotl train` where Axolotl is installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import axolotl_standin
import pytest
import torch
from conftest import lm_dataset, model_inputs, model_output, stock_peft, tiny_llama
from pydantic import ValidationError
from transformers import Trainer, TrainingArguments

STANDIN = axolotl_standin.install()

from neat_hf import NeatModel  # noqa: E402
from neat_hf.errors import NeatError  # noqa: E402
from neat_hf.integrations.axolotl import NeatArgs, NeatPlugin  # noqa: E402

DictDefault = sys.modules["axolotl.utils.dict"].DictDefault
AdapterCapabilities = sys.modules["axolotl.integrations.base"].AdapterCapabilities

NEAT_KEYS = {"neat_r": 4, "neat_depth": 1, "neat_act_fn": "gelu", "neat_scaling": 2.0,
             "neat_target_modules": ["q_proj", "v_proj", "up_proj"]}


def _cfg(**overrides):
    return DictDefault({"adapter": "neat", "base_model": "neat-tester/tiny-llama", **NEAT_KEYS, **overrides})


def _manager():
    return axolotl_standin.PluginManager([NeatPlugin()])


def test_plugin_declares_neat_and_config_validation_accepts_it_only_with_the_plugin():
    assert NeatPlugin().get_adapter_capabilities() == [AdapterCapabilities(name="neat", lora_like=False, relora=False)]
    schema = axolotl_standin.config_model(_manager())
    config = schema(adapter="neat", neat_r=8, neat_depth=1, neat_act_fn="relu", neat_target_modules=["q_proj"])
    assert (config.neat_r, config.neat_depth, config.neat_act_fn) == (8, 1, "relu")
    assert config.neat_scaling is None  # unset keys take neat-train's defaults when the config is built
    with pytest.raises(ValidationError, match="neat_r"):
        schema(adapter="neat", neat_r="eight")
    without_plugin = axolotl_standin.config_model(axolotl_standin.PluginManager([]))
    with pytest.raises(ValidationError, match="not built in"):
        without_plugin(adapter="neat")


def test_neat_keys_are_neat_trains_flags():
    from dataclasses import fields

    from neat_hf.trainers.neat_arguments import NeatArguments

    assert set(NeatArgs.model_fields) == {f.name for f in fields(NeatArguments)}
    assert NeatArgs.model_fields["neat_depth"].description == next(
        f.metadata["help"] for f in fields(NeatArguments) if f.name == "neat_depth"
    )


def test_load_adapter_builds_a_peft_model_of_neat_layers():
    import peft

    from neat_hf.layer import NeatLayer

    model, config = axolotl_standin.load_adapter(_manager(), tiny_llama(), _cfg(peft_layers_to_transform=[1]))
    assert isinstance(model, peft.PeftModel) and isinstance(config, peft.PeftConfig)
    assert (config.r, config.depth, config.act_fn, config.scaling) == (4, 1, "gelu", 2.0)
    assert config.task_type == "CAUSAL_LM" and config.layers_to_transform == [1]
    adapted = {name for name, module in model.named_modules() if isinstance(module, NeatLayer)}
    assert adapted == {f"base_model.model.model.layers.1.{m}" for m in
                       ("self_attn.q_proj", "self_attn.v_proj", "mlp.up_proj")}
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".peanut_" in name for name in trainable)
    none, only_config = NeatPlugin().load_adapter(tiny_llama(), _cfg(), config_only=True)
    assert none is None and only_config.r == 4
    assert NeatPlugin().load_adapter(tiny_llama(), _cfg(adapter="lora")) is None  # other adapters: not ours


@pytest.mark.parametrize(
    "overrides, match",
    [({"neat_act_fn": "swishy"}, "act_fn"), ({"neat_r": 0}, "r must be"), ({"gptq": True}, "GPTQ")],
)
def test_bad_neat_keys_are_refused_before_the_model_loads(overrides, match):
    with pytest.raises(NeatError, match=match):
        NeatPlugin().pre_model_load(_cfg(**overrides))
    NeatPlugin().pre_model_load(_cfg(adapter="lora", **overrides))  # not ours to check


def test_trained_output_loads_in_stock_peft_and_neat_hf_with_the_same_logits(tmp_path):
    torch.manual_seed(0)
    model, _ = axolotl_standin.load_adapter(_manager(), tiny_llama(), _cfg())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(str(tmp_path / "run"), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
                             use_cpu=True, report_to="none", save_strategy="no")
    Trainer(model=model, args=args, train_dataset=lm_dataset(16)).train()  # Axolotl's trainer is a Trainer subclass
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".peanut_" in n for n in changed)  # only the adapter trained ...
    assert any("peanut_B" in n for n in changed)  # ... and B left zero, so the adapter now changes the output
    model.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "PEANUT" and saved["r"] == 4 and saved["depth"] == 1

    inputs = model_inputs("llama")
    model.eval()
    trained = model_output(model, inputs)
    assert not torch.allclose(trained, model_output(tiny_llama(), inputs))
    neat = NeatModel.from_pretrained(tiny_llama(), tmp_path / "out")
    torch.testing.assert_close(model_output(neat, inputs), trained)
    with stock_peft():
        import peft

        stock = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path / "out")
        torch.testing.assert_close(model_output(stock, inputs), trained, rtol=1e-5, atol=1e-5)

    # lora_model_dir (Axolotl's key for an adapter to continue from) loads it back, trainable.
    resumed, config = NeatPlugin().load_adapter(tiny_llama(), _cfg(lora_model_dir=str(tmp_path / "out")))
    assert config.r == 4 and any(p.requires_grad for n, p in resumed.named_parameters() if ".peanut_" in n)
    torch.testing.assert_close(model_output(resumed.eval(), inputs), trained)
    with pytest.raises(NeatError, match="holds no adapter_config.json"):
        NeatPlugin().load_adapter(tiny_llama(), _cfg(lora_model_dir=str(tmp_path)))


@pytest.mark.slow
@pytest.mark.skipif(STANDIN or shutil.which("axolotl") is None, reason="Axolotl is not installed (Python < 3.12)")
def test_axolotl_train_cli(tmp_path):
    """The real `axolotl train` on a tiny LLaMA and local data, 3 steps on CPU, with the example's NEAT keys."""
    import yaml

    from eval_helpers import build_base_model

    base = build_base_model(tmp_path / "base")
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"instruction": f"the {w} is", "input": "", "output": "true"}) + "\n"
                            for w in ("sky", "answer", "question", "solution") * 4))
    config = {
        "plugins": ["neat_hf.integrations.axolotl.NeatPlugin"], "base_model": str(base),
        "datasets": [{"path": str(data), "ds_type": "json", "type": "alpaca"}], "sequence_len": 64,
        "adapter": "neat", **NEAT_KEYS, "micro_batch_size": 2, "gradient_accumulation_steps": 1, "max_steps": 3,
        "learning_rate": 1e-2, "optimizer": "adamw_torch", "lr_scheduler": "constant", "output_dir": str(tmp_path / "out"),
        "dataset_prepared_path": str(tmp_path / "prepared"), "save_strategy": "no", "val_set_size": 0,
    }
    (tmp_path / "neat.yaml").write_text(yaml.safe_dump(config))
    offline = {**os.environ, "AXOLOTL_DO_NOT_TRACK": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
               "HF_DATASETS_OFFLINE": "1"}  # no telemetry, no Hub: tests never touch the network
    result = subprocess.run(["axolotl", "train", str(tmp_path / "neat.yaml")], capture_output=True, text=True,
                            cwd=tmp_path, timeout=1200, env=offline)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "'train_runtime'" in result.stdout + result.stderr
    assert "3/3" in result.stdout + result.stderr  # the progress bar reached 3 optimizer steps
    saved = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "PEANUT" and saved["r"] == 4
    from transformers import AutoModelForCausalLM

    inputs = model_inputs("llama")
    neat = NeatModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "out")
    # B starts at zero: the adapter changes the output only if the 3 steps trained it.
    assert not torch.allclose(model_output(neat, inputs), model_output(AutoModelForCausalLM.from_pretrained(base), inputs))
    with stock_peft():
        import peft

        stock = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "out")
        torch.testing.assert_close(model_output(neat, inputs), model_output(stock, inputs), rtol=1e-5, atol=1e-5)
    assert importlib.util.find_spec("axolotl") is not None
