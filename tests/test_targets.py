"""Target selection equals PEFT's `check_target_module_exists`, so a config adapts the same layers in both libraries."""

from __future__ import annotations

import pytest
import torch
from conftest import stock_peft, tiny_gpt2, tiny_llama
from torch import nn

from neat_hf import NeatConfig, NoTargetModulesError
from neat_hf.targets import plan_injection

peft = pytest.importorskip("peft")
from peft.tuners.tuners_utils import check_target_module_exists  # noqa: E402


class MoEToy(nn.Module):
    """`model.layers.<i>.experts.<j>.<k>` paths: the first numbered segment is the layer, later ones are experts."""

    def __init__(self):
        super().__init__()
        self.model = nn.Module()
        self.model.layers = nn.ModuleList(
            nn.ModuleDict({"experts": nn.ModuleList(nn.Sequential(nn.Linear(4, 4)) for _ in range(2)), "proj": nn.Linear(4, 4)})
            for _ in range(2)
        )


def peft_targets(model, **kwargs) -> list[str]:
    config = peft.PeanutConfig(r=2, **kwargs)
    kinds = (nn.Linear, __import__("transformers").pytorch_utils.Conv1D)
    return sorted(n for n, m in model.named_modules() if isinstance(m, kinds) and check_target_module_exists(config, n))


CASES = [
    (tiny_llama, dict(target_modules=["q_proj", "v_proj"])),
    (tiny_llama, dict(target_modules=["q_proj", "v_proj"], layers_to_transform=[1])),
    (tiny_llama, dict(target_modules=["q_proj"], layers_to_transform=0, layers_pattern="layers")),
    (tiny_llama, dict(target_modules=r".*\.(q|v)_proj", layers_to_transform=[0])),  # regex: PEFT ignores the index
    (tiny_llama, dict(target_modules=["model.layers.1.mlp.down_proj", "up_proj"], layers_to_transform=[0])),
    (tiny_llama, dict(target_modules=["q_proj", "k_proj", "v_proj"], exclude_modules=["model.layers.0.self_attn.k_proj"])),
    (tiny_llama, dict(target_modules=["q_proj", "v_proj"], exclude_modules=r".*layers\.1.*")),
    (MoEToy, dict(target_modules=["experts.0.0", "experts.1.0"], layers_to_transform=[0])),
    (MoEToy, dict(target_modules=["proj"], layers_to_transform=[1])),
]


@pytest.mark.parametrize(("factory", "kwargs"), CASES)
def test_same_targets_as_peft(factory, kwargs):
    model = factory()
    expected = peft_targets(model, **kwargs)
    assert expected, "the case must select something"
    assert sorted(plan_injection(model, NeatConfig(r=2, **kwargs)).targets) == expected


def test_bare_gpt2_body_with_layers_pattern_at_path_start():
    body = tiny_gpt2().transformer
    kwargs = dict(target_modules=["c_attn"], layers_to_transform=[0], layers_pattern="h")
    assert sorted(plan_injection(body, NeatConfig(r=2, **kwargs)).targets) == peft_targets(body, **kwargs) == ["h.0.attn.c_attn"]


def test_index_outside_the_model_matches_nothing():
    with pytest.raises(NoTargetModulesError):
        plan_injection(tiny_llama(), NeatConfig(r=2, target_modules=["q_proj"], layers_to_transform=[5]))


def test_stock_adapter_with_regex_and_layers_to_transform_loads(tmp_path):
    from neat_hf import NeatModel

    with stock_peft():
        stock = peft.get_peft_model(tiny_llama(), peft.PeanutConfig(r=2, target_modules=r".*\.(q|v)_proj", layers_to_transform=[0], init_weights=False)).eval()
    stock.save_pretrained(tmp_path)
    ids = torch.tensor([[1, 2, 3, 4]])
    ours = NeatModel.from_pretrained(tiny_llama(), tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(ours(input_ids=ids).logits, stock(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
