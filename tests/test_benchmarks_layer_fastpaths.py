"""The two fast paths of `NeatLayer.forward` that the benchmarks measured must never change results.

- The inference-time H cache (`NeatLayer._cached_hidden_t`) that makes unmerged NEAT generation fast
  (benchmarks/bench_generate.py: 54 → 92 new tokens per CPU-second at the `cpu` preset) must never serve a stale H:
  without autograd, H = σ(W0ᵀAᵀ) is reused while W0, A and the r×r layers are unchanged; these tests change them in
  the ways training and loading code do and compare against a fresh computation.
- The in-place add of the adapter output into the base output (1% of a training step at the `cpu` preset) must be
  bit-identical to the out-of-place add, and must not touch a base output that a forward hook has seen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from neat_hf import NeatConfig, get_neat_model


class One(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(32, 32, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def _setup(depth: int = 0):
    torch.manual_seed(0)
    model = get_neat_model(One(), NeatConfig(r=4, target_modules=["proj"], depth=depth, init_weights=False))
    return model, model.get_base_model().proj, torch.randn(3, 32)


def _fresh(layer, x):
    """The layer's output computed without the cache."""
    with torch.no_grad():
        return layer.base_layer(x) + F.linear(F.linear(x, layer.hidden_t("default")), layer.peanut_B["default"].weight)


def test_cache_follows_optimizer_steps_and_in_place_updates():
    model, layer, x = _setup(depth=1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-1)
    for _ in range(3):
        with torch.no_grad():
            cached = model(x)
        torch.testing.assert_close(cached, _fresh(layer, x))
        model(x).square().sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        layer.peanut_encoders["default"][0].weight.mul_(2.0)  # in place, as load_state_dict's copy_ does
        layer.base_layer.weight.add_(0.5)
        torch.testing.assert_close(model(x), _fresh(layer, x))


def test_cache_is_not_fooled_by_reused_storage_after_data_swaps():
    """Swapping `.data` twice between two forwards can hand the first storage address back to a new tensor with the
    same version counter; the key must not match then (failed 45/50 times before the cache kept its tensors alive)."""
    model, layer, x = _setup()
    a = layer.peanut_A["default"].weight
    stale = 0
    for _ in range(30):
        with torch.no_grad():
            model(x)
        a.data = torch.randn_like(a)
        a.data = torch.randn_like(a)
        with torch.no_grad():
            stale += not torch.allclose(model(x), _fresh(layer, x))
    assert stale == 0


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_in_place_add_is_bit_identical_to_the_hooked_out_of_place_path():
    model, layer, x = _setup(depth=1)
    x = x.requires_grad_(True)
    assert layer._can_add_in_place(layer.base_layer(x))
    out = model(x)
    out.square().sum().backward()
    fast, fast_grads, fast_x = out.detach(), _grads(model), x.grad.clone()
    model.zero_grad(set_to_none=True)
    x.grad = None

    seen = []
    handle = layer.base_layer.register_forward_hook(lambda mod, args, output: seen.append(output))
    try:
        assert not layer._can_add_in_place(layer.base_layer(x))
        seen.clear()
        out = model(x)
        out.square().sum().backward()
    finally:
        handle.remove()
    assert torch.equal(out.detach(), fast) and torch.equal(x.grad, fast_x)
    slow_grads = _grads(model)
    assert set(slow_grads) == set(fast_grads) and any("peanut_A" in n for n in slow_grads)
    for name, grad in slow_grads.items():
        assert torch.equal(grad, fast_grads[name]), name
    # The hook kept the base output: it must still be the base output, not base + adapter.
    torch.testing.assert_close(seen[0], layer.base_layer(x))
    assert not torch.allclose(seen[0], out)


def test_in_place_add_trains_adapters_when_the_input_needs_no_grad():
    """First adapted layer: x does not require grad, so the base output is a leaf without grad; adding the adapter
    output in place must still connect the adapter to the loss."""
    model, layer, x = _setup()
    assert not x.requires_grad
    model(x).square().sum().backward()
    assert layer.peanut_A["default"].weight.grad is not None and layer.peanut_A["default"].weight.grad.abs().sum() > 0
    assert layer.peanut_B["default"].weight.grad.abs().sum() > 0
