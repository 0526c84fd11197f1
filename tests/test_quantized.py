"""NEAT on bitsandbytes 4-bit / 8-bit bases (neat_hf/quantization.py), on CPU.

The layer computes the dense formula on the *dequantized* W0, its gradients match, and no out×in floating tensor
outlives one layer's computation; a tiny LLaMA loaded with `BitsAndBytesConfig` trains, saves, reloads bit-identically,
merges (full precision, exact; or re-quantized) and is refused where it cannot work (other quantizers, DeepSpeed,
missing bitsandbytes).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import weakref

import pytest
import torch
from conftest import lm_dataset, tiny_llama
from test_layer import dense_reference
from testing_common import ALIASING_OPS
from torch import nn

from neat_hf import (
    MissingDependencyError,
    NeatConfig,
    NeatLayer,
    NeatModel,
    UnsupportedQuantizationError,
    get_neat_model,
    prepare_model_for_kbit_training,
)
from neat_hf.constants import ADAPTER_CONFIG_NAME
from neat_hf.quantization import (
    bnb_config_from_kwargs,
    dequantize_weight,
    import_bitsandbytes,
    quantization_settings,
)

bnb = pytest.importorskip("bitsandbytes")
from transformers import BitsAndBytesConfig, LlamaForCausalLM  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

# Layer variants: nf4, fp4 with double quantization, LLM.int8.
KINDS = ["nf4", "fp4-double-quant", "int8"]
# bitsandbytes' CPU kernels need in_features >= 64 (block size) and out_features % 32 == 0.
LLAMA_SHAPE = dict(hidden_size=64, intermediate_size=128)
IN, OUT = 64, 96


def quantized_linear(
    kind: str, in_features: int = IN, out_features: int = OUT, seed: int = 0, compute: torch.dtype = torch.float32
) -> nn.Module:
    """A bitsandbytes layer quantized (on CPU) from a seeded dense `nn.Linear`, 4-bit ones computing in `compute`."""
    torch.manual_seed(seed)
    dense = nn.Linear(in_features, out_features)
    if kind == "int8":
        layer = bnb.nn.Linear8bitLt(in_features, out_features, has_fp16_weights=False)
        layer.weight = bnb.nn.Int8Params(dense.weight.data.clone(), requires_grad=False, has_fp16_weights=False)
    else:
        quant_type, double = kind.split("-")[0], kind.endswith("double-quant")
        layer = bnb.nn.Linear4bit(
            in_features, out_features, compute_dtype=compute, quant_type=quant_type, compress_statistics=double
        )
        layer.weight = bnb.nn.Params4bit(
            dense.weight.data.clone(), requires_grad=False, quant_type=quant_type, compress_statistics=double
        )
    layer.bias = nn.Parameter(dense.bias.data.clone(), requires_grad=False)
    return layer.to("cpu")  # quantizes


def neat_on(kind: str, depth: int = 1, **kwargs) -> NeatLayer:
    return NeatLayer(quantized_linear(kind, **kwargs), "default", NeatConfig(r=4, depth=depth, init_weights=False))


BNB_CONFIGS = {
    "nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32),
    "fp4-double-quant": dict(
        load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32
    ),
    "int8": dict(load_in_8bit=True),
}


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(**LLAMA_SHAPE).save_pretrained(path)
    return str(path)


def load_quantized(path: str, kind: str = "nf4") -> nn.Module:
    return LlamaForCausalLM.from_pretrained(
        path, quantization_config=BitsAndBytesConfig(**BNB_CONFIGS[kind]), device_map="cpu"
    )


def ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


# ---------------------------------------------------------------------------------------------- the layer
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("depth", [0, 1, 2])
def test_output_equals_dense_formula_on_the_dequantized_weight(kind, depth):
    layer = neat_on(kind, depth)
    x = torch.randn(3, 5, IN)
    # The reference reads W0 through layer.base_weight(), i.e. bitsandbytes' dequantization, in float64.
    torch.testing.assert_close(layer(x).double(), dense_reference(layer, x), atol=1e-5, rtol=1e-5)
    assert (layer(x) - layer.base_layer(x)).abs().max() > 1e-3  # the adapter contributes
    assert layer.base_layer.weight.dtype in (torch.uint8, torch.int8)  # and the base stayed quantized


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("depth", [0, 1, 2])
def test_gradients_equal_dense_formula_gradients(kind, depth):
    layer = neat_on(kind, depth)
    x = torch.randn(3, IN)
    layer(x).sum().backward()
    got = {n: p.grad.clone() for n, p in layer.named_parameters() if p.requires_grad}
    assert got and all(g.abs().sum() > 0 for g in got.values())
    layer.zero_grad()
    dense_reference(layer, x).sum().backward()
    for name, param in layer.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(got[name].double(), param.grad.double(), atol=1e-5, rtol=1e-4)


def test_fused_4bit_training_path_equals_bitsandbytes_own_forward(monkeypatch):
    """In training, a 4-bit NEAT layer computes W0·x and A·W0 from one dequantization; it must give what the layer's
    own (bitsandbytes) forward plus the separate A·W0 give, and be the path actually taken."""
    from neat_hf import quantization

    calls = []
    original = quantization._FusedBaseAndWeightNetwork.apply
    monkeypatch.setattr(quantization._FusedBaseAndWeightNetwork, "apply", lambda *a: calls.append(1) or original(*a))
    layer = neat_on("nf4", 1)
    x = torch.randn(3, 5, IN, requires_grad=True)

    def run():
        x.grad = None
        layer.zero_grad()
        out = layer(x)
        out.square().sum().backward()
        return out.detach(), x.grad.clone(), layer.peanut_A["default"].weight.grad.clone()

    fused = run()
    assert len(calls) == 1
    handle = layer.base_layer.register_forward_hook(lambda *args: None)  # a hooked layer runs its own forward
    own = run()
    handle.remove()
    assert len(calls) == 1
    torch.testing.assert_close(fused[0], own[0], atol=1e-6, rtol=1e-6)
    for got, expected in zip(fused[1:], own[1:]):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("compute", [torch.bfloat16, torch.float16])
def test_half_precision_compute_dtype(compute):
    """bnb_4bit_compute_dtype=bf16/fp16: A·W0 and the base product run in it (also under autocast), the output keeps
    the input's dtype, and it matches the float64 dense formula to that dtype's precision."""
    layer = NeatLayer(quantized_linear("nf4", compute=compute), "default", NeatConfig(r=4, depth=1, init_weights=False))
    x = torch.randn(3, 5, IN)
    expected = dense_reference(layer, x)
    out = layer(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=0.1, rtol=0.05)
    assert (out.double() - expected).abs().max() > 1e-5  # really computed in half precision
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.requires_grad)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = layer(x)
    torch.testing.assert_close(under_autocast.float(), out.detach(), atol=0.1, rtol=0.05)


def test_dequantization_is_bitsandbytes_own():
    layer = quantized_linear("nf4")
    expected = bnb.functional.dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    assert torch.equal(dequantize_weight(layer), expected)
    layer8 = quantized_linear("int8")
    from peft.utils.integrations import dequantize_bnb_weight

    assert torch.equal(dequantize_weight(layer8), dequantize_bnb_weight(layer8.weight, layer8.state))


class _DenseTracker:
    """Records, while active, every floating tensor of at least `min_numel` elements that is created (not a view)
    and every tensor autograd saves for backward; tracks which created ones are still alive (weak references)."""

    def __init__(self, min_numel: int):
        from torch.utils._python_dispatch import TorchDispatchMode

        self.min_numel = min_numel
        self.alive: dict[int, int] = {}  # id -> numel of created dense tensors not yet freed
        self.snapshots: list[list[int]] = []  # numels alive right after each creation
        self.saved: list[tuple[tuple[int, ...], torch.dtype]] = []
        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if func.overloadpacket.__name__ not in ALIASING_OPS:
                    for t in out if isinstance(out, (tuple, list)) else [out]:
                        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel() >= tracker.min_numel:
                            key = id(t)
                            tracker.alive[key] = t.numel()
                            weakref.finalize(t, tracker.alive.pop, key, None)
                            tracker.snapshots.append(sorted(tracker.alive.values()))
                return out

        self.mode = Mode()

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point() and t.numel() >= self.min_numel:
            self.saved.append((tuple(t.shape), t.dtype))
        return t

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self._hooks.__enter__()
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        self.mode.__exit__(*exc)
        self._hooks.__exit__(*exc)


@pytest.mark.parametrize("kind", KINDS)
def test_no_dequantized_weight_is_saved_or_outlives_its_layer(kind):
    # Two layers of different sizes, so the tensors of each can be told apart: 64×96 and 96×128 dense weights.
    first, second = neat_on(kind, 1), neat_on(kind, 1, in_features=OUT, out_features=128, seed=1)
    sizes = {IN * OUT, OUT * 128}
    x = torch.randn(2, 3, IN)
    tracker = _DenseTracker(min(sizes))
    with tracker:
        y = second(first(x))
        alive_after_forward = list(tracker.alive.values())
        y.float().sum().backward()
    assert tracker.snapshots, "the tracker saw no dequantized weight, so it could not catch a saved one"
    assert tracker.saved == [], f"autograd saved out×in tensors for backward: {tracker.saved}"
    assert alive_after_forward == [], f"dense tensors outlive the forward: {alive_after_forward}"
    assert tracker.alive == {}, f"dense tensors outlive the backward: {list(tracker.alive.values())}"
    # At most one layer's dequantized W0 at a time: never a tensor of each layer's size alive together.
    assert not any(sizes <= set(snapshot) for snapshot in tracker.snapshots), tracker.snapshots
    assert all(p.grad is not None for p in first.peanut_A.parameters())

    # The tracker does catch a dequantized W0 kept for backward by plain autograd (what the custom Function avoids).
    layer = neat_on(kind, 0)
    a = layer.peanut_A["default"].weight
    naive = _DenseTracker(IN * OUT)
    with naive:
        product = a @ dequantize_weight(layer.base_layer, a.dtype)
    assert naive.saved and list(naive.alive.values()) == [IN * OUT]
    del product


# ---------------------------------------------------------------------------------------------- the model
def test_get_neat_model_on_4bit_llama_keeps_the_base_quantized_and_frozen(llama_dir):
    model = get_neat_model(load_quantized(llama_dir), NeatConfig(r=4, target_modules=["q_proj", "v_proj"]))
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    assert isinstance(layer, NeatLayer) and isinstance(layer.base_layer, bnb.nn.Linear4bit)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".peanut_" in n for n in trainable)
    # Params4bit counts two values per byte (as PEFT counts them): the base has as many parameters as the dense one.
    _, total = model.get_nb_trainable_parameters()
    dense_total = sum(p.numel() for p in tiny_llama(**LLAMA_SHAPE).parameters())
    assert total - sum(p.numel() for n, p in model.named_parameters() if p.requires_grad) == dense_total


@pytest.mark.parametrize("kind", KINDS)
def test_save_then_load_on_the_same_quantized_base_is_bit_identical(llama_dir, tmp_path, kind):
    model = get_neat_model(load_quantized(llama_dir, kind), NeatConfig(r=4, depth=1, init_weights=False))
    model.eval()
    expected = logits(model, ids())
    model.save_pretrained(tmp_path)
    reloaded = NeatModel.from_pretrained(load_quantized(llama_dir, kind), tmp_path)
    assert torch.equal(logits(reloaded, ids()), expected)
    base = logits(load_quantized(llama_dir, kind), ids())
    assert (expected - base).abs().max() > 1e-3  # the adapter changes the output
    # Quantization settings go to training_info.json and the card, never to adapter_config.json.
    with open(tmp_path / ADAPTER_CONFIG_NAME) as handle:
        assert not any("bit" in key or "quant" in key for key in json.load(handle))
    with open(tmp_path / "training_info.json") as handle:
        recorded = json.load(handle)["base_model_quantization"]
    assert recorded == quantization_settings(model)
    assert recorded["quant_method"] == "bitsandbytes" and recorded[f"load_in_{'8' if kind == 'int8' else '4'}bit"]
    assert "base model quantization" in (tmp_path / "README.md").read_text()


def test_adapter_from_4bit_base_loads_on_the_dense_base_with_a_small_difference(llama_dir, tmp_path):
    model = get_neat_model(load_quantized(llama_dir), NeatConfig(r=4, depth=1, init_weights=False)).eval()
    quantized = logits(model, ids())
    model.save_pretrained(tmp_path)
    dense = NeatModel.from_pretrained(LlamaForCausalLM.from_pretrained(llama_dir), tmp_path)
    difference = (logits(dense, ids()) - quantized).abs().max()
    assert 0 < difference < (quantized - logits(load_quantized(llama_dir), ids())).abs().max() * 20


@pytest.mark.parametrize("kind", KINDS)
def test_merge_and_unload_returns_an_exact_full_precision_model(llama_dir, tmp_path, kind):
    model = get_neat_model(load_quantized(llama_dir, kind), NeatConfig(r=4, depth=1, init_weights=False))
    model.train()  # no dropout in this LLaMA; bitsandbytes' int8 inference path would quantize the activations too
    expected = logits(model, ids())
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    w0, delta = dequantize_weight(layer.base_layer, torch.float32), layer.delta_weight("default")
    merged = model.merge_and_unload()
    q_proj = merged.model.layers[0].self_attn.q_proj
    assert type(q_proj) is nn.Linear and torch.equal(q_proj.weight, w0 + delta)
    assert not any(type(m).__module__.startswith("bitsandbytes") for m in merged.modules())  # k_proj, o_proj, … too
    assert getattr(merged.config, "quantization_config", None) is None and not merged.is_quantized
    merged.train()
    torch.testing.assert_close(logits(merged, ids()), expected, atol=1e-5, rtol=1e-5)
    merged.save_pretrained(tmp_path)
    assert "quantization_config" not in json.loads((tmp_path / "config.json").read_text())
    torch.testing.assert_close(
        logits(LlamaForCausalLM.from_pretrained(tmp_path).train(), ids()), expected, atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_merge_and_unload_requantize_keeps_the_base_quantized(llama_dir, kind):
    model = get_neat_model(load_quantized(llama_dir, kind), NeatConfig(r=4, depth=1, init_weights=False))
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    target = dequantize_weight(layer.base_layer, torch.float32) + layer.delta_weight("default")
    full = get_neat_model(load_quantized(llama_dir, kind), NeatConfig(r=4, depth=1, init_weights=False))
    full.load_adapter_weights(model.get_adapter_state_dict())
    merged = model.merge_and_unload(requantize=True)
    q_proj = merged.model.layers[0].self_attn.q_proj
    assert type(q_proj).__module__.startswith("bitsandbytes") and merged.is_quantized
    # bitsandbytes' own quantization of W0 + ΔW, with the layer's settings: rounded to the 4/8-bit grid.
    reference = quantized_linear(kind)
    if kind == "int8":
        reference.weight = bnb.nn.Int8Params(target.to(torch.float16), requires_grad=False, has_fp16_weights=False)
    else:
        kwargs = dict(quant_type="nf4", compress_statistics=False)
        reference.weight = bnb.nn.Params4bit(target, requires_grad=False, **kwargs)
    reference = reference.to("cpu")
    assert torch.equal(dequantize_weight(q_proj), dequantize_weight(reference))
    rounding = (dequantize_weight(q_proj, torch.float32) - target).abs().max()
    assert 0 < rounding  # lossy, unlike the default full-precision merge
    full_merged = full.merge_and_unload()
    assert not torch.equal(logits(merged.train(), ids()), logits(full_merged.train(), ids()))


def test_in_place_merge_is_refused_without_changing_the_model(llama_dir):
    model = get_neat_model(load_quantized(llama_dir), NeatConfig(r=4, init_weights=False))
    before = logits(model, ids())
    with pytest.raises(UnsupportedQuantizationError, match="merge_and_unload"):
        model.merge_adapter()
    assert not any(layer.merged for _, layer in model.neat_layers())
    assert torch.equal(logits(model, ids()), before)


def test_prepare_model_for_kbit_training_matches_peft(llama_dir):
    from peft import prepare_model_for_kbit_training as peft_prepare

    ours = prepare_model_for_kbit_training(
        LlamaForCausalLM.from_pretrained(
            llama_dir, dtype=torch.bfloat16, quantization_config=BitsAndBytesConfig(load_in_4bit=True), device_map="cpu"
        )
    )
    theirs = peft_prepare(
        LlamaForCausalLM.from_pretrained(
            llama_dir, dtype=torch.bfloat16, quantization_config=BitsAndBytesConfig(load_in_4bit=True), device_map="cpu"
        )
    )
    for (name, mine), (_, peft_param) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert (mine.dtype, mine.requires_grad) == (peft_param.dtype, peft_param.requires_grad), name
    assert ours.model.embed_tokens.weight.dtype == torch.float32  # upcast from bf16
    assert ours.is_gradient_checkpointing and theirs.is_gradient_checkpointing
    assert ours._require_grads_hooks is not None


# ---------------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_neat_trainer_learns_on_a_4bit_base(llama_dir, tmp_path):
    from neat_hf.trainers import NeatTrainer, NeatTrainingArguments

    model = prepare_model_for_kbit_training(load_quantized(llama_dir))
    args = NeatTrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=24,
        learning_rate=1e-2,
        logging_steps=4,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
    )
    trainer = NeatTrainer(model=model, args=args, train_dataset=lm_dataset(32), neat_config=NeatConfig(r=8))
    base_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) >= 4 and losses[-1] < losses[0]
    for name, param in trainer.model.named_parameters():
        if name in base_before:
            assert torch.equal(param, base_before[name]), name
    trainer.save_model()
    info = json.loads((tmp_path / "out" / "training_info.json").read_text())
    assert info["base_model_quantization"]["bnb_4bit_quant_type"] == "nf4"


# ---------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("method", ["gptq", "awq", "hqq", "torchao", "quanto"])
def test_other_quantizers_are_refused_with_the_supported_ones_named(method):
    model = tiny_llama()
    model.config.quantization_config = {"quant_method": method}
    with pytest.raises(UnsupportedQuantizationError, match=rf"{method}.*bitsandbytes 4-bit .* and 8-bit"):
        get_neat_model(model, NeatConfig(r=4))
    assert not any(isinstance(m, NeatLayer) for m in model.modules())


def test_missing_bitsandbytes_names_the_extra(llama_dir, monkeypatch):
    model = load_quantized(llama_dir)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"neat-hf\[bnb\]"):
        import_bitsandbytes()
    with pytest.raises(MissingDependencyError, match=r"neat-hf\[bnb\]") as info:
        get_neat_model(model, NeatConfig(r=4))
    assert isinstance(info.value, ImportError)
    assert not any(isinstance(m, NeatLayer) for m in model.modules())
    with pytest.raises(MissingDependencyError, match=r"neat-hf\[bnb\]"):
        bnb_config_from_kwargs({"load_in_4bit": "true"})


def test_bnb_flags_build_a_bitsandbytes_config():
    kwargs = {"load_in_4bit": "true", "bnb_4bit_compute_dtype": "bfloat16", "bnb_4bit_quant_type": "nf4", "dtype": "x"}
    config = bnb_config_from_kwargs(kwargs)
    assert kwargs == {"dtype": "x"}  # the flags are consumed, the rest is left
    assert config.load_in_4bit and config.bnb_4bit_compute_dtype == torch.bfloat16 and config.bnb_4bit_quant_type == "nf4"
    assert bnb_config_from_kwargs({}) is None
    with pytest.raises(UnsupportedQuantizationError, match="not both"):
        bnb_config_from_kwargs({"load_in_4bit": True, "load_in_8bit": True})
    with pytest.raises(UnsupportedQuantizationError, match="only apply with load_in_4bit"):
        bnb_config_from_kwargs({"load_in_8bit": True, "bnb_4bit_quant_type": "nf4"})


_DEEPSPEED_SCRIPT = r"""
import sys, torch
from transformers import BitsAndBytesConfig, LlamaForCausalLM
from neat_hf import NeatConfig, NeatLayer, UnsupportedQuantizationError
from neat_hf.trainers import NeatTrainer, NeatTrainingArguments

model = LlamaForCausalLM.from_pretrained(
    sys.argv[1], quantization_config=BitsAndBytesConfig(load_in_4bit=True), device_map="cpu"
)
for stage in ("zero3", "zero2"):
    args = NeatTrainingArguments(output_dir=sys.argv[2], deepspeed=stage, report_to="none", max_steps=1)
    try:
        NeatTrainer(model=model, args=args, neat_config=NeatConfig(r=4))
    except UnsupportedQuantizationError as err:
        assert not any(isinstance(m, NeatLayer) for m in model.modules()), "model changed"
        print(stage, "REFUSED:", err)
    else:
        print(stage, "ACCEPTED")
"""


@pytest.mark.slow
@pytest.mark.deepspeed
def test_deepspeed_zero_with_a_quantized_base_is_refused_before_anything_is_built(llama_dir, tmp_path):
    # In a subprocess: DeepSpeed arguments set up a (single-process, gloo) process group.
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    done = subprocess.run(
        [sys.executable, "-c", _DEEPSPEED_SCRIPT, llama_dir, str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if "REFUSED" in line or "ACCEPTED" in line]
    assert len(lines) == 2, done.stdout
    zero3, zero2 = lines
    assert zero3.startswith("zero3 REFUSED") and "ZeRO-3" in zero3 and "without --deepspeed" in zero3
    assert zero2.startswith("zero2 REFUSED") and "without --deepspeed" in zero2


@pytest.mark.slow
def test_neat_train_load_in_4bit_learns_on_the_builtin_tiny_llama(tmp_path, capsys):
    from neat_hf.cli.train.main import cli

    out = tmp_path / "out"
    argv = ["--load_in_4bit", "--bnb_4bit_compute_dtype", "float32", "--bnb_4bit_use_double_quant", "true",
            "--max_steps", "80", "--max_eval_samples", "32", "--output_dir", str(out)]
    assert cli(argv) == 0
    before = json.loads((out / "before_results.json").read_text())
    after = json.loads((out / "eval_results.json").read_text())
    assert after["eval_loss"] < 0.7 * before["eval_loss"]
    info = json.loads((out / "training_info.json").read_text())["base_model_quantization"]
    assert info["load_in_4bit"] and info["bnb_4bit_quant_type"] == "nf4" and info["bnb_4bit_use_double_quant"]
    assert info["bnb_4bit_compute_dtype"] == "float32"
    # The CLI reported where the adapter went.
    assert "Adapter saved to" in capsys.readouterr().out


def test_neat_train_quantization_flags_are_checked():
    from neat_hf.cli.train.main import parse_args

    with pytest.raises(ValueError, match="not both"):
        parse_args(["--load_in_4bit", "--load_in_8bit"])
    with pytest.raises(ValueError, match="only apply with --load_in_4bit"):
        parse_args(["--load_in_8bit", "--bnb_4bit_compute_dtype", "bfloat16"])
    (model_args, *_), _ = parse_args(["--load_in_4bit", "--bnb_4bit_quant_type", "fp4"])
    assert model_args.quantization_kwargs()["bnb_4bit_quant_type"] == "fp4"


# ---------------------------------------------------------------------------------------------- merge CLI and lm-eval
@pytest.mark.slow
def test_neat_hub_merge_and_lm_eval_with_a_4bit_base(tmp_path, monkeypatch):
    """An adapter trained on a 4-bit base: `neat-hub merge --load-in-4bit` writes the dequantized base plus ΔW, and
    `--model neat` with `load_in_4bit=True` scores exactly like `--model hf` on that merged checkpoint (and, unmerged,
    like the adapter running live on the 4-bit base)."""
    from eval_helpers import build_base_model, write_local_tasks
    from lm_eval.tasks import TaskManager

    from neat_hf.eval_harness.api import evaluate, task_include_paths
    from neat_hf.cli.hub import main as hub_main

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(name, "1")
    base = build_base_model(tmp_path / "base")
    quant = BitsAndBytesConfig(**BNB_CONFIGS["nf4"])
    model = get_neat_model(
        LlamaForCausalLM.from_pretrained(base, quantization_config=quant, device_map="cpu"),
        NeatConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], init_weights=False),
    )
    model.save_pretrained(tmp_path / "adapter")

    merged_dir = tmp_path / "merged"
    flags = ["--load-in-4bit", "--bnb-4bit-quant-type", "nf4", "--bnb-4bit-compute-dtype", "float32"]
    assert hub_main(["merge", str(base), str(tmp_path / "adapter"), str(merged_dir), *flags]) == 0
    config = json.loads((merged_dir / "config.json").read_text())
    assert "quantization_config" not in config
    model.train()
    merged = LlamaForCausalLM.from_pretrained(merged_dir).train()
    torch.testing.assert_close(logits(merged, ids()), logits(model, ids()), atol=1e-5, rtol=1e-5)

    task_manager = TaskManager(include_path=task_include_paths(write_local_tasks(tmp_path / "tasks")), include_defaults=False)

    def run(model_name, **model_args):
        results = evaluate(
            model=model_name,
            model_args={"device": "cpu", "dtype": "float32", **model_args},
            tasks=["neat_commonsense"],
            task_manager=task_manager,
            batch_size=4,
            log_samples=True,
            bootstrap_iters=0,
        )
        return {
            (task, s["doc_id"]): torch.tensor([float(r[0][0]) for r in s["resps"]])
            for task, samples in results["samples"].items()
            for s in samples
        }

    quantized = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype="float32")
    ours = run("neat", pretrained=str(base), adapter=str(tmp_path / "adapter"), **quantized)
    reference = run("hf", pretrained=str(merged_dir))
    assert ours.keys() == reference.keys() and len(ours) == 16
    for key, value in ours.items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=1e-5, msg=str(key))
    live = run("neat", pretrained=str(base), adapter=str(tmp_path / "adapter"), merge=False, **quantized)
    for key, value in live.items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=1e-3, msg=str(key))
    plain = run("hf", pretrained=str(base))
    assert max((plain[k] - v).abs().max().item() for k, v in reference.items()) > 1e-2  # the adapter matters


def test_fsdp_with_a_quantized_base_is_refused(llama_dir):
    from types import SimpleNamespace

    from neat_hf.trainers.trainer import _check_quantized_base

    model = load_quantized(llama_dir)
    with pytest.raises(UnsupportedQuantizationError, match="FSDP.*without --fsdp"):
        _check_quantized_base(model, SimpleNamespace(deepspeed=None, fsdp="full_shard auto_wrap"))
    _check_quantized_base(model, SimpleNamespace(deepspeed=None, fsdp=""))  # one GPU / CPU: accepted


@pytest.mark.parametrize("kind", ["nf4", "int8"])
def test_mixed_adapter_batch_on_a_quantized_base(llama_dir, kind):
    """`adapter_names=` (one adapter per row) on a quantized base: each row equals its adapter run alone."""
    model = get_neat_model(load_quantized(llama_dir, kind), NeatConfig(r=4, init_weights=False), adapter_name="a")
    torch.manual_seed(3)
    model.add_adapter("b", NeatConfig(r=4, init_weights=False))
    model.eval()
    names = ["a", "__base__", "b", "a"]
    input_ids = torch.randint(0, 128, (len(names), 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mixed = model(input_ids=input_ids, adapter_names=names).logits
        expected = {"a": model(input_ids=input_ids).logits}
        model.set_adapter("b")
        expected["b"] = model(input_ids=input_ids).logits
        with model.disable_adapter():
            expected["__base__"] = model(input_ids=input_ids).logits
    for row, name in enumerate(names):
        torch.testing.assert_close(mixed[row], expected[name][row], atol=1e-4, rtol=1e-4)
    assert (expected["a"] - expected["b"]).abs().max() > 1e-3
