"""One table of cases (tiny model × adapter config) and the checks every case must pass, in PEFT's style.

PEFT's `tests/testing_common.py` runs each (model, config) pair of a table through one tester; adding a model or a
config to neat-hf is likewise one line in `CASES`. Scenario tests (caches, dtypes, DeepSpeed, the Hub) stay in their
own files: this module is for the contract every adapter must keep, whatever model and config it was built with.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from conftest import MODEL_FACTORIES, model_inputs
from transformers.pytorch_utils import Conv1D

from neat_hf import NeatConfig, NeatLayer, NeatModel, get_neat_model
from neat_hf.activations import get_activation
from peft.utils import ModulesToSaveWrapper


@dataclass(frozen=True)
class Case:
    """One row of the table: which tiny model, which `NeatConfig`, and whether stock PEFT can load it."""

    name: str
    kind: str
    config: dict[str, Any] = field(default_factory=dict)
    peft_refuses: str | None = None  # what stock PEFT says when it cannot take this adapter (a regex), else None

    def __str__(self) -> str:  # pytest ids
        return self.name

    def base(self, seed: int = 0) -> torch.nn.Module:
        return MODEL_FACTORIES[self.kind](seed)

    def inputs(self) -> dict[str, torch.Tensor]:
        return model_inputs(self.kind)

    def neat_config(self) -> NeatConfig:
        return NeatConfig(**{"r": 4, "init_weights": False, **self.config})

    def peft_config(self):
        """The same adapter as stock PEFT's `PeanutConfig` (neat-hf's defaults spelled out)."""
        import peft  # interop-only dependency

        config = self.neat_config()
        return peft.PeanutConfig(
            r=config.r,
            depth=config.depth,
            act_fn=config.act_fn,
            scaling=config.scaling,
            target_modules=config.target_modules or _default_targets(self),
            layers_to_transform=config.layers_to_transform,
            layers_pattern=config.layers_pattern,
            task_type=config.task_type,
            init_weights=False,
        )


def _default_targets(case: Case) -> list[str]:
    """The module names neat-hf's preset picks for this model (stock PEFT has no PEANuT preset for every model)."""
    model = get_neat_model(case.base(), case.neat_config())
    return sorted({name.rsplit(".", 1)[-1] for name, _ in model.neat_layers()})


CASES: list[Case] = [
    Case("llama-default", "llama"),
    Case("llama-depth1-gelu", "llama", {"depth": 1, "act_fn": "gelu"}),
    Case("llama-depth2-tanh-scaled", "llama", {"depth": 2, "act_fn": "tanh", "scaling": 0.5}),
    Case("llama-qv-list", "llama", {"target_modules": ["q_proj", "v_proj"]}),
    Case("llama-regex", "llama", {"target_modules": r".*\.mlp\.(up|down)_proj", "r": 2}),
    Case("llama-layer-1-only", "llama", {"layers_to_transform": [1], "layers_pattern": "layers"}),
    Case("llama-sin", "llama", {"act_fn": "sin", "depth": 1}, peft_refuses="sin"),
    Case("bert-seq-cls", "bert", {"task_type": "SEQ_CLS", "depth": 1, "act_fn": "gelu"}),
    Case("bert-query-value-depth2", "bert", {"target_modules": ["query", "value"], "depth": 2}),
    Case("vit-default", "vit", {}),
    Case("vit-depth1-silu", "vit", {"depth": 1, "act_fn": "silu"}),
    Case("vit-depth2-gelu", "vit", {"depth": 2, "act_fn": "gelu"}),
    # Stock PEFT's PEANuT supports nn.Linear only; neat-hf also adapts GPT-2's Conv1D.
    Case("gpt2-conv1d", "gpt2", {}, peft_refuses="Conv1D"),
    Case("gpt2-conv1d-depth2-gelu", "gpt2", {"depth": 2, "act_fn": "gelu"}, peft_refuses="Conv1D"),
]


def randomize_adapter(model: NeatModel, seed: int = 3) -> None:
    """Make every adapter tensor non-trivial (B and trained heads included), as PEFT's tests do."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "peanut_" in name or "modules_to_save" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)


def adapted(case: Case) -> NeatModel:
    """The case's base with a fresh neat-hf adapter whose every weight is random, in eval mode."""
    model = get_neat_model(case.base(), case.neat_config())
    randomize_adapter(model)
    return model.eval()


def dense_delta(layer: NeatLayer, adapter: str = "default") -> torch.Tensor:
    """ΔW (out×in, float64) straight from the paper's/PEFT's definition, independent of `NeatLayer`'s code."""
    act = get_activation(layer.act_fn[adapter])
    w0 = layer.base_weight().double()
    h = act(w0.t() @ layer.peanut_A[adapter].weight.double().t())  # in×r
    residuals = []
    for encoder in layer.peanut_encoders[adapter]:
        residuals.append(h)
        h = act(h @ encoder.weight.double().t())
    for i, decoder in enumerate(layer.peanut_decoders[adapter]):
        h = act(h @ decoder.weight.double().t()) + residuals[len(residuals) - 1 - i]
    return layer.scaling[adapter] * layer.peanut_B[adapter].weight.double() @ h.t()


def dense_reference_model(case: Case, model: NeatModel) -> torch.nn.Module:
    """A plain copy of the base with W0 + ΔW written into every target and the trained heads copied over."""
    reference = case.base()
    modules = dict(reference.named_modules())
    with torch.no_grad():
        for name, layer in model.neat_layers():
            target = modules[name]
            delta = dense_delta(layer)
            target.weight.add_((delta.t() if isinstance(target, Conv1D) else delta).to(target.weight.dtype))
        for name, module in model.get_base_model().named_modules():
            if isinstance(module, ModulesToSaveWrapper):
                modules[name].load_state_dict(copy.deepcopy(module.modules_to_save["default"].state_dict()))
    return reference.eval()


def assert_logits_differ(a: torch.Tensor, b: torch.Tensor) -> None:
    assert (a - b).abs().max() > 1e-3, "the adapter has no effect, so this comparison would pass trivially"


ALIASING_OPS = {"t", "transpose", "view", "_unsafe_view", "expand", "detach", "alias", "permute", "as_strided"}


def dense_tensors_created(threshold: int, forward: Callable[[], Any]) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """(op, shape, dtype) of every non-view tensor with at least `threshold` (out×in) elements created while running
    `forward`: what shows a dense ΔW or a full-precision copy of W0 being built."""
    from torch.utils._python_dispatch import TorchDispatchMode

    created = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket.__name__ not in ALIASING_OPS:
                for t in out if isinstance(out, (tuple, list)) else [out]:
                    if isinstance(t, torch.Tensor) and t.numel() >= threshold:
                        created.append((func.overloadpacket.__name__, tuple(t.shape), t.dtype))
            return out

    with Recorder():
        forward()
    return created
