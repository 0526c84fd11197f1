"""torch.compile must keep working on NEAT's factored forward (issue 6): a tiny compile smoke check.

`fullgraph=True` fails on any graph break, so this catches data-dependent Python or unsupported ops creeping into
`NeatLayer.forward` / `hidden_t`; outputs and gradients must match eager mode.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neat_hf import NeatConfig, get_neat_model


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(16, 24)
        self.down = nn.Linear(24, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def _model(depth: int, act_fn: str) -> nn.Module:
    torch.manual_seed(0)
    cfg = NeatConfig(r=4, target_modules=["up", "down"], depth=depth, act_fn=act_fn, init_weights=False)
    return get_neat_model(TwoLayer(), cfg)


def _forward_backward(fn, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = fn(x)
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize(("backend", "depth", "act_fn"), [("aot_eager", 0, "relu"), ("aot_eager", 1, "sin"),
                                                          pytest.param("inductor", 0, "relu", marks=pytest.mark.slow)])
def test_neat_compiles_fullgraph_and_matches_eager(backend, depth, act_fn):
    torch._dynamo.reset()
    model = _model(depth, act_fn)
    x = torch.randn(3, 5, 16)
    eager_out, eager_grads = _forward_backward(model, model, x)
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    out, grads = _forward_backward(compiled, model, x)
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-6)
    assert set(grads) == set(eager_grads) and any("peanut_A" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(grads[name], eager_grads[name], rtol=1e-4, atol=1e-6, msg=name)
