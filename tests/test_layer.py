"""The NEAT layer computes the paper's/PEFT's formula in factored form, for every depth and activation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from neat_hf import NeatConfig
from neat_hf.activations import get_activation
from neat_hf.layer import NeatLayer
from testing_common import dense_delta, dense_tensors_created


def dense_reference(layer: NeatLayer, x: torch.Tensor, adapter: str = "default") -> torch.Tensor:
    """y = W0 x + b + s·x·H·Bᵀ with the dense ΔW built straight from the definition (independent of NeatLayer)."""
    bias = layer.base_layer.bias
    y = x.double() @ (layer.base_weight().double() + dense_delta(layer, adapter)).t()
    return y + (bias.double() if bias is not None else 0)


def make_layer(depth: int, act_fn: str, *, bias: bool = True, scaling: float = 0.5) -> NeatLayer:
    torch.manual_seed(0)
    base = nn.Linear(12, 20, bias=bias)
    return NeatLayer(base, "default", NeatConfig(r=4, depth=depth, act_fn=act_fn, scaling=scaling, init_weights=False))


@pytest.mark.parametrize("depth", [0, 1, 2])
@pytest.mark.parametrize("act_fn", ["relu", "gelu", "sin", "tanh"])
def test_factored_forward_equals_dense_formula(depth, act_fn):
    layer = make_layer(depth, act_fn)
    x = torch.randn(3, 5, 12)
    expected = dense_reference(layer, x)
    torch.testing.assert_close(layer(x).double(), expected, atol=1e-5, rtol=1e-5)
    # The adapter really contributes (B is non-zero), so the equality above is not trivially base == base.
    assert (layer(x) - layer.base_layer(x)).abs().max() > 1e-3


@pytest.mark.parametrize("depth", [0, 1, 2])
def test_delta_weight_is_the_dense_update(depth):
    layer = make_layer(depth, "gelu")
    x = torch.randn(4, 12)
    delta = layer.delta_weight("default")
    assert delta.shape == (20, 12)
    torch.testing.assert_close(layer.base_layer(x) + x @ delta.t(), layer(x), atol=1e-5, rtol=1e-5)


def test_sin_activation_is_periodic_sin_2pi_x():
    sin = get_activation("sin")
    x = torch.linspace(-1, 1, 11)
    torch.testing.assert_close(sin(x), torch.sin(2 * math.pi * x))


def test_new_adapter_is_a_no_op_and_b_is_zero():
    torch.manual_seed(0)
    base = nn.Linear(12, 20)
    layer = NeatLayer(base, "default", NeatConfig(r=4))
    assert torch.count_nonzero(layer.peanut_B["default"].weight) == 0
    assert torch.count_nonzero(layer.peanut_A["default"].weight) > 0
    x = torch.randn(3, 12)
    torch.testing.assert_close(layer(x), base(x))


def test_shapes_follow_peft_convention():
    layer = NeatLayer(nn.Linear(12, 20), "default", NeatConfig(r=4, depth=2))
    assert layer.peanut_A["default"].weight.shape == (4, 20)  # A maps out -> r
    assert layer.peanut_B["default"].weight.shape == (20, 4)
    assert [e.weight.shape for e in layer.peanut_encoders["default"]] == [(4, 4), (4, 4)]
    assert [d.weight.shape for d in layer.peanut_decoders["default"]] == [(4, 4), (4, 4)]


def test_dropout_applies_to_adapter_input_in_training_only():
    torch.manual_seed(0)
    layer = NeatLayer(nn.Linear(12, 20), "default", NeatConfig(r=4, dropout=0.5, init_weights=False))
    assert isinstance(layer.peanut_dropout["default"], nn.Dropout) and layer.peanut_dropout["default"].p == 0.5
    x = torch.randn(64, 12)
    layer.eval()
    torch.testing.assert_close(layer(x), dense_reference(layer, x).float(), atol=1e-5, rtol=1e-5)  # no dropout in eval
    layer.train()
    torch.manual_seed(1)
    train_out = layer(x)
    # Recompute the same draw by hand: dropout on the adapter's *input*, the base path untouched.
    torch.manual_seed(1)
    dropped = nn.functional.dropout(x, 0.5, training=True)
    expected = layer.base_layer(x) + dropped @ layer.delta_weight("default").t()
    torch.testing.assert_close(train_out, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(train_out, layer.eval()(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_base_output_dtype_and_accuracy(dtype):
    torch.manual_seed(0)
    layer = NeatLayer(nn.Linear(12, 20).to(dtype), "default", NeatConfig(r=4, depth=1, scaling=0.5, init_weights=False))
    assert layer.peanut_A["default"].weight.dtype == torch.float32
    x = torch.randn(2, 3, 12).to(dtype)
    out = layer(x)
    assert out.dtype == dtype
    expected = dense_reference(layer, x.float())  # float64 reference on the same (half) W0 and inputs
    # bf16/fp16 keep ~3 significant digits: compare relative to the output scale.
    assert (out.double() - expected).abs().max().item() < 0.02 * expected.abs().max().item()


def test_new_layer_on_half_base_creates_fp32_adapter():
    base = nn.Linear(12, 20).to(torch.bfloat16)
    layer = NeatLayer(base, "default", NeatConfig(r=4))
    assert layer.peanut_A["default"].weight.dtype == torch.float32
    same = NeatLayer(nn.Linear(12, 20).to(torch.bfloat16), "default", NeatConfig(r=4), autocast_adapter_dtype=False)
    assert same.peanut_A["default"].weight.dtype == torch.bfloat16


def test_forward_under_autocast_matches_fp32_closely():
    layer = make_layer(1, "gelu")
    x = torch.randn(2, 5, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    expected = dense_reference(layer, x)
    assert (out.double() - expected).abs().max().item() < 0.05 * expected.abs().max().item()


def test_backward_reaches_adapter_weights_not_base():
    layer = make_layer(2, "relu")
    layer.base_layer.requires_grad_(False)
    x = torch.randn(4, 12)
    layer(x).pow(2).sum().backward()
    assert layer.base_layer.weight.grad is None
    for name, param in layer.named_parameters():
        if "peanut_" in name:
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_gradients_equal_dense_reference_gradients():
    layer = make_layer(1, "gelu")
    layer.base_layer.requires_grad_(False)
    x = torch.randn(3, 12)
    layer(x).sum().backward()
    got = {n: p.grad.clone() for n, p in layer.named_parameters() if p.requires_grad}
    layer.zero_grad()
    dense_reference(layer, x).sum().backward()
    for name, param in layer.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(got[name].double(), param.grad.double(), atol=1e-5, rtol=1e-4)


def test_forward_and_backward_never_build_a_dense_delta_or_fp32_copy_of_w0():
    base = nn.Linear(96, 80).to(torch.bfloat16)
    layer = NeatLayer(base, "default", NeatConfig(r=4, depth=1, init_weights=False))
    base.requires_grad_(False)
    x = torch.randn(2, 3, 96, dtype=torch.bfloat16)
    assert dense_tensors_created(layer.in_features * layer.out_features, lambda: layer(x).float().sum().backward()) == []
    # The recorder does see a dense ΔW (and the fp32 copy of W0) when one is built, so the check above can fail.
    dense = dense_tensors_created(layer.in_features * layer.out_features, lambda: (x.float() @ layer.delta_weight("default").t()).sum())
    assert {op for op, _, _ in dense} >= {"_to_copy", "mm"}


def test_conv1d_gpt2_layer_matches_dense_formula():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    conv = Conv1D(nf=20, nx=12)  # weight stored in×out
    nn.init.normal_(conv.weight)
    layer = NeatLayer(conv, "default", NeatConfig(r=4, depth=1, init_weights=False))
    assert (layer.in_features, layer.out_features) == (12, 20)
    x = torch.randn(3, 12)
    torch.testing.assert_close(layer(x).double(), dense_reference(layer, x), atol=1e-5, rtol=1e-5)


def test_unsupported_layer_is_refused():
    from neat_hf import UnsupportedModuleError

    with pytest.raises(UnsupportedModuleError, match="Conv2d"):
        NeatLayer(nn.Conv2d(3, 3, 1), "default", NeatConfig(r=2))
