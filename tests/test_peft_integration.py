"""NEAT inside PEFT: the patch behind PEFT's PEANUT type, and the tools that only know PEFT (plain Trainer, TRL).

`neat_hf.apply_neat_to_peft` points PEFT's PEANUT tuner at `NeatTuner`; after it, `peft.get_peft_model(model,
PeanutConfig(...))` must compute what unpatched PEFT computes (outputs and gradients), never build the dense ΔW, work
on bitsandbytes bases, and save files unpatched PEFT loads. A `NeatModel` is a `PeftModel`, so the plain
`transformers.Trainer` and TRL's SFT/DPO/GRPO trainers train it with adapter-only checkpoints and exact resume.
"""

from __future__ import annotations

import copy
import math
import os

import peft
import pytest
import torch
from conftest import lm_dataset, model_inputs, model_output, stock_peft, tiny_llama
from safetensors.torch import load_file
from testing_common import CASES, dense_tensors_created, randomize_adapter
from torch import nn
from transformers import BitsAndBytesConfig, LlamaForCausalLM, Trainer, TrainingArguments

from neat_hf import NeatConfig, NeatError, NeatLayer, NeatModel, NeatTuner, get_neat_model
from neat_hf.peft_patch import (
    ALLOW_UNTESTED_ENV,
    apply_neat_to_peft,
    check_peft_version,
    is_neat_applied,
    revert_neat_to_peft,
)

PEFT_CASES = [case for case in CASES if case.peft_refuses is None]


# ---------------------------------------------------------------------------------------------- the patch
def test_the_patch_is_idempotent_and_reversible():
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.tuners.peanut import PeanutModel
    from peft.utils import PeftType

    apply_neat_to_peft()
    apply_neat_to_peft()
    assert is_neat_applied() and PEFT_TYPE_TO_TUNER_MAPPING[PeftType.PEANUT] is NeatTuner
    with stock_peft():
        assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.PEANUT] is PeanutModel
        revert_neat_to_peft()  # reverting twice is a no-op too
        stock = peft.get_peft_model(tiny_llama(), peft.PeanutConfig(r=2, target_modules=["q_proj"]))
        assert not any(isinstance(m, NeatLayer) for m in stock.modules())
    assert is_neat_applied()
    ours = peft.get_peft_model(tiny_llama(), peft.PeanutConfig(r=2, target_modules=["q_proj"]))
    assert isinstance(ours.base_model, NeatTuner) and any(isinstance(m, NeatLayer) for m in ours.modules())


def test_an_untested_peft_is_refused_in_one_line(monkeypatch):
    monkeypatch.delenv(ALLOW_UNTESTED_ENV, raising=False)
    check_peft_version("0.21.2")
    with pytest.raises(NeatError, match=r"tested with peft>=0.21,<0.22, not peft 0.30.0: install a tested version") as err:
        check_peft_version("0.30.0")
    assert "\n" not in str(err.value)
    check_peft_version("0.30.0", allow_untested=True)
    monkeypatch.setenv(ALLOW_UNTESTED_ENV, "1")
    check_peft_version("0.30.0")


def _relative_error(ours: torch.Tensor, stock: torch.Tensor) -> float:
    """‖ours − stock‖ / ‖stock‖ (‖ours‖ where stock is exactly zero, e.g. a gradient behind a dead ReLU)."""
    difference = float((ours.double() - stock.double()).norm())
    scale = float(stock.double().norm())
    return difference / scale if scale else difference


@pytest.mark.parametrize("case", PEFT_CASES, ids=str)
def test_patched_peft_equals_stock_peft_in_outputs_and_gradients(case):
    with stock_peft():
        stock = peft.get_peft_model(case.base(), case.peft_config())
    randomize_adapter(stock)
    ours = peft.get_peft_model(case.base(), case.peft_config())
    assert any(isinstance(m, NeatLayer) for m in ours.modules())
    ours.load_state_dict(stock.state_dict())
    outputs = {}
    for name, model in (("stock", stock), ("ours", ours)):
        model.train()
        for module in model.modules():  # the tiny models' dropout would draw different masks
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        out = model(**case.inputs()).logits
        out.pow(2).mean().backward()
        outputs[name] = out.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    (out_stock, grads_stock), (out_ours, grads_ours) = outputs["stock"], outputs["ours"]
    assert _relative_error(out_ours, out_stock) < 1e-6
    assert sorted(grads_ours) == sorted(grads_stock)
    for name, grad in grads_stock.items():
        assert _relative_error(grads_ours[name], grad) < 1e-6, name


def test_patched_peft_never_builds_the_dense_delta():
    class One(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(96, 80)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(x)

    model = peft.get_peft_model(One(), peft.PeanutConfig(r=4, depth=1, target_modules=["proj"], init_weights=False))
    x = torch.randn(2, 3, 96)
    assert dense_tensors_created(96 * 80, lambda: model(x).sum().backward()) == []
    with stock_peft():  # the same check sees stock PEANuT's dense ΔW, so it can fail
        stock = peft.get_peft_model(One(), peft.PeanutConfig(r=4, depth=1, target_modules=["proj"], init_weights=False))
    assert dense_tensors_created(96 * 80, lambda: stock(x).sum().backward())


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_patched_peft_trains_on_bitsandbytes_bases_like_neat_model(tmp_path, kind):
    tiny_llama().save_pretrained(tmp_path / "base")
    quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4") if kind == "nf4" else BitsAndBytesConfig(load_in_8bit=True)

    def quantized() -> nn.Module:
        return LlamaForCausalLM.from_pretrained(tmp_path / "base", quantization_config=quantization, device_map="cpu")

    config = dict(r=4, target_modules=["q_proj", "v_proj"], init_weights=False)
    ours = peft.get_peft_model(quantized(), peft.PeanutConfig(**config))
    reference = get_neat_model(quantized(), NeatConfig(**config))
    missing, unexpected = reference.load_state_dict({k: v for k, v in ours.state_dict().items() if ".peanut_" in k}, strict=False)
    assert not unexpected and not [k for k in missing if ".peanut_" in k]
    inputs = model_inputs("llama")
    torch.testing.assert_close(ours(**inputs).logits, reference(**inputs).logits)
    ours(**inputs).logits.pow(2).mean().backward()
    assert all(p.grad is not None for n, p in ours.named_parameters() if p.requires_grad)
    with stock_peft():  # what the patch fixes: stock PEANuT cannot run on a 4-bit base
        if kind == "nf4":
            stock = peft.get_peft_model(quantized(), peft.PeanutConfig(**config))
            with pytest.raises(RuntimeError):  # a shape error from its dense ΔW on the packed weight
                stock(**inputs)


def test_files_saved_through_patched_peft_load_in_unpatched_peft_and_in_neat_hf(tmp_path):
    ours = peft.get_peft_model(tiny_llama(), peft.PeanutConfig(r=4, depth=1, act_fn="gelu", target_modules=["q_proj", "v_proj"]))
    randomize_adapter(ours)
    ours.eval().save_pretrained(tmp_path)
    inputs = model_inputs("llama")
    expected = model_output(ours, inputs)
    with stock_peft():
        stock = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path).eval()
    torch.testing.assert_close(model_output(stock, inputs), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model_output(NeatModel.from_pretrained(tiny_llama(), tmp_path), inputs), expected)


# ---------------------------------------------------------------------------------------------- the plain Trainer
def _plain_trainer(model: nn.Module, output_dir: str, **overrides) -> Trainer:
    args = TrainingArguments(
        output_dir, max_steps=4, save_steps=2, per_device_train_batch_size=4, learning_rate=1e-2, use_cpu=True,
        report_to="none", seed=0, data_seed=0, logging_steps=1, save_strategy="steps", **overrides,
    )
    return Trainer(model=model, args=args, train_dataset=lm_dataset(16))


def _adapter(folder) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(folder, "adapter_model.safetensors"))


@pytest.mark.slow
def test_plain_trainer_trains_a_neat_model_with_adapter_only_checkpoints_and_exact_resume(tmp_path):
    torch.manual_seed(0)
    full = _plain_trainer(get_neat_model(tiny_llama(), NeatConfig(r=4, dropout=0.1)), str(tmp_path / "full"))
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-2"
    files = set(os.listdir(checkpoint))
    assert {"adapter_model.safetensors", "adapter_config.json"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin"}, "checkpoints hold the adapter only"
    assert set(_adapter(checkpoint)) == set(_adapter(tmp_path / "full" / "checkpoint-4"))
    assert all(".peanut_" in key for key in _adapter(checkpoint))

    torch.manual_seed(0)
    resumed = _plain_trainer(get_neat_model(tiny_llama(), NeatConfig(r=4, dropout=0.1)), str(tmp_path / "resumed"))
    resumed.train(resume_from_checkpoint=str(checkpoint))
    final, again = _adapter(tmp_path / "full" / "checkpoint-4"), _adapter(tmp_path / "resumed" / "checkpoint-4")
    assert not torch.equal(final[next(iter(final))], _adapter(checkpoint)[next(iter(final))]), "training moved it"
    for key, tensor in final.items():
        assert torch.equal(again[key], tensor), key


# ---------------------------------------------------------------------------------------------- TRL
trl = pytest.importorskip("trl")


def _tokenizer():
    from neat_hf.cli.train.default_job import build_default_tokenizer

    return build_default_tokenizer()


def _tokenizer_base(tokenizer) -> nn.Module:
    from neat_hf.cli.train.default_job import build_default_base_model

    torch.manual_seed(0)
    return build_default_base_model(tokenizer)


def _trl_args(config_cls, output_dir, **overrides):
    settings = dict(
        output_dir=str(output_dir), report_to="none", use_cpu=True, bf16=False, max_steps=4, save_steps=2,
        per_device_train_batch_size=2, logging_steps=1, seed=0, learning_rate=5e-3,
    )
    settings.update(overrides)
    return config_cls(**settings)


# Words of the built-in tokenizer's vocabulary (anything else is <unk>, which would make chosen and rejected equal).
PROMPT = "the correct answer is"
SFT_TEXTS = ["the correct answer is 5", "the correct answer is 7", "the correct answer is 12"] * 4


def _check_saved_adapter_loads_everywhere(folder, trained: nn.Module, tokenizer) -> None:
    """The saved folder loads in unpatched PEFT and in neat-hf with the logits of the model that was trained."""
    inputs = {"input_ids": tokenizer([PROMPT], return_tensors="pt").input_ids}
    trained.eval()
    expected = model_output(trained, inputs)
    assert (expected - model_output(_tokenizer_base(tokenizer), inputs)).abs().max() > 1e-4, "training changed it"
    torch.testing.assert_close(model_output(NeatModel.from_pretrained(_tokenizer_base(tokenizer), folder), inputs), expected)
    with stock_peft():
        stock = peft.PeftModel.from_pretrained(_tokenizer_base(tokenizer), folder).eval()
    torch.testing.assert_close(model_output(stock, inputs), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["peft_config", "get_neat_model"])
def test_trl_sft_trains_neat_with_adapter_checkpoints_and_exact_resume(tmp_path, how):
    from datasets import Dataset

    tokenizer = _tokenizer()
    data = Dataset.from_dict({"text": SFT_TEXTS})

    def trainer(output_dir):
        if how == "peft_config":
            model, extra = _tokenizer_base(tokenizer), {"peft_config": NeatConfig(r=4, dropout=0.1)}
        else:
            model, extra = get_neat_model(_tokenizer_base(tokenizer), NeatConfig(r=4, dropout=0.1)), {}
        args = _trl_args(trl.SFTConfig, output_dir, max_length=16)
        return trl.SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, **extra)

    full = trainer(tmp_path / "full")
    assert isinstance(full.model, peft.PeftModel) and any(isinstance(m, NeatLayer) for m in full.model.modules())
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert "adapter_model.safetensors" in os.listdir(checkpoint)
    assert "model.safetensors" not in os.listdir(checkpoint)
    resumed = trainer(tmp_path / "resumed")
    resumed.train(resume_from_checkpoint=str(checkpoint))
    final, again = _adapter(tmp_path / "full" / "checkpoint-4"), _adapter(tmp_path / "resumed" / "checkpoint-4")
    for key, tensor in final.items():
        assert torch.equal(again[key], tensor), key
    full.save_model(str(tmp_path / "out"))
    _check_saved_adapter_loads_everywhere(tmp_path / "out", full.model, tokenizer)
    assert NeatModel.from_pretrained(_tokenizer_base(tokenizer), tmp_path / "out", is_trainable=True).peft_config["default"].dropout == 0.1


@pytest.mark.slow
def test_trl_dpo_reference_is_the_base_for_a_new_adapter_and_a_copy_for_a_given_one(tmp_path):
    """TRL's two PEFT references, with NEAT: `peft_config=NeatConfig(...)` trains a new adapter against the model with
    its adapter disabled (a fresh adapter, B = 0, is the base: first loss ln 2; a random one is not); a model from
    `get_neat_model` is an adapter given to re-train, whose reference is a frozen copy of it ("ref"): ln 2 again."""
    from datasets import Dataset

    tokenizer = _tokenizer()
    data = Dataset.from_dict({"prompt": [PROMPT] * 4, "chosen": [" 5"] * 4, "rejected": [" 7"] * 4})

    def first_loss(name: str, **kwargs) -> tuple[float, trl.DPOTrainer]:
        args = _trl_args(trl.DPOConfig, tmp_path / name, max_length=16, max_steps=1)
        trainer = trl.DPOTrainer(args=args, train_dataset=data, processing_class=tokenizer, **kwargs)
        assert trainer.ref_model is None, "no reference model copy: PEFT's adapter switching instead"
        trainer.train()
        return trainer.state.log_history[0]["loss"], trainer

    fresh, _ = first_loss("fresh", model=_tokenizer_base(tokenizer), peft_config=NeatConfig(r=4))
    moved, _ = first_loss("random", model=_tokenizer_base(tokenizer), peft_config=NeatConfig(r=4, init_weights=False))
    given, trainer = first_loss("given", model=get_neat_model(_tokenizer_base(tokenizer), NeatConfig(r=4, init_weights=False)))
    assert fresh == pytest.approx(math.log(2), abs=1e-6)
    assert abs(moved - math.log(2)) > 1e-4
    assert given == pytest.approx(math.log(2), abs=1e-6) and "ref" in trainer.model.peft_config
    trainer.save_model(str(tmp_path / "out"))
    _check_saved_adapter_loads_everywhere(tmp_path / "out", trainer.model, tokenizer)


@pytest.mark.slow
def test_trl_grpo_trains_neat_without_vllm(tmp_path):
    from datasets import Dataset

    tokenizer = _tokenizer()

    def reward_length(completions, **kwargs):
        return [float(len(c)) for c in completions]

    args = _trl_args(trl.GRPOConfig, tmp_path / "grpo", num_generations=2, max_completion_length=4, max_steps=2)
    model = get_neat_model(_tokenizer_base(tokenizer), NeatConfig(r=4, init_weights=False))
    before = copy.deepcopy({k: v.detach().clone() for k, v in model.state_dict().items() if ".peanut_" in k})
    trainer = trl.GRPOTrainer(model=model, reward_funcs=reward_length, args=args, train_dataset=Dataset.from_dict({"prompt": [PROMPT] * 8}), processing_class=tokenizer)
    trainer.train()
    after = {k: v for k, v in trainer.model.state_dict().items() if ".peanut_" in k}
    assert any(not torch.equal(after[k], before[k]) for k in before), "GRPO updated the adapter"
    trainer.save_model(str(tmp_path / "out"))
    assert set(os.listdir(tmp_path / "out")) >= {"adapter_model.safetensors", "adapter_config.json"}
    _check_saved_adapter_loads_everywhere(tmp_path / "out", trainer.model, tokenizer)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["dpo", "grpo"])
def test_trl_dpo_and_grpo_checkpoint_the_adapter_only_and_resume_exactly(tmp_path, kind):
    from datasets import Dataset

    tokenizer = _tokenizer()

    def reward_length(completions, **kwargs):
        return [float(len(c)) for c in completions]

    def trainer(output_dir):
        model = get_neat_model(_tokenizer_base(tokenizer), NeatConfig(r=4, init_weights=False))
        if kind == "dpo":
            data = Dataset.from_dict({"prompt": [PROMPT] * 8, "chosen": [" 5"] * 8, "rejected": [" 7"] * 8})
            return trl.DPOTrainer(model=model, args=_trl_args(trl.DPOConfig, output_dir, max_length=16),
                                  train_dataset=data, processing_class=tokenizer)
        args = _trl_args(trl.GRPOConfig, output_dir, num_generations=2, max_completion_length=4)
        return trl.GRPOTrainer(model=model, reward_funcs=reward_length, args=args,
                               train_dataset=Dataset.from_dict({"prompt": [PROMPT] * 8}), processing_class=tokenizer)

    trainer(tmp_path / "full").train()
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert "adapter_model.safetensors" in os.listdir(checkpoint)
    assert not set(os.listdir(checkpoint)) & {"model.safetensors", "pytorch_model.bin"}
    trainer(tmp_path / "resumed").train(resume_from_checkpoint=str(checkpoint))
    final, again = _adapter(tmp_path / "full" / "checkpoint-4"), _adapter(tmp_path / "resumed" / "checkpoint-4")
    assert final.keys() == again.keys()
    for key, tensor in final.items():
        assert torch.equal(again[key], tensor), key
