"""Adapter names are checked once (`neat_hf.adapter_names.check_adapter_name`) before anything uses them, by every
way a name comes in; malformed `adapter_names=` of mixed batches are one clear `NeatError` each."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import tiny_llama
from test_mixed_batch import three_adapter_model

from neat_hf import NeatConfig, NeatModel, get_neat_model
from neat_hf.adapter_names import MAX_ADAPTER_NAME_BYTES, check_adapter_name
from neat_hf.errors import NeatError

BAD_NAMES = [
    ("absolute_path", "/tmp/x/esc", "path separator"),
    ("relative_path", "sub/dir", "path separator"),
    ("backslash", "sub\\dir", "path separator"),
    ("parent", "..", "'.'"),
    ("dot", "a.b", "'.'"),
    ("reserved_base", "__base__", "reserved"),
    ("nul", "a\x00b", "control character"),
    ("newline", "a\nb", "control character"),
    ("too_long", "x" * (MAX_ADAPTER_NAME_BYTES + 1), "too many characters"),
    ("empty", "", "non-empty string"),
    ("not_a_string", 5, "non-empty string"),
    ("none", None, "non-empty string"),
]


@pytest.mark.parametrize("name, match", [(n, m) for _, n, m in BAD_NAMES], ids=[i for i, _, _ in BAD_NAMES])
def test_bad_adapter_name_is_refused_by_every_entry_point_before_anything_changes(tmp_path, name, match):
    config = NeatConfig(r=2, target_modules=["q_proj"])
    with pytest.raises(NeatError, match=match) as info:
        check_adapter_name(name)
    assert "\n" not in str(info.value)
    with pytest.raises(NeatError, match=match):
        get_neat_model(tiny_llama(), config, adapter_name=name)
    model = get_neat_model(tiny_llama(), config)
    model.save_pretrained(tmp_path / "saved")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NeatError, match=match):
        model.add_adapter(name, config)
    with pytest.raises(NeatError, match=match):
        model.load_adapter(tmp_path / "saved", adapter_name=name)
    with pytest.raises(NeatError, match=match):
        NeatModel.from_pretrained(tiny_llama(), tmp_path / "saved", adapter_name=name)
    assert list(model.peft_config) == ["default"]
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_an_adapter_name_can_never_make_save_pretrained_write_outside_its_folder(tmp_path):
    model = get_neat_model(tiny_llama(), NeatConfig(r=2, target_modules=["q_proj"]))
    model.save_pretrained(tmp_path / "saved")
    escape = tmp_path / "escaped"
    with pytest.raises(NeatError, match="path separator"):
        model.load_adapter(tmp_path / "saved", adapter_name=str(escape))
    model.save_pretrained(tmp_path / "out")
    assert not escape.exists()


@pytest.mark.parametrize("name", ["default", "math-r16", "task_2", "ünïcode", "x" * MAX_ADAPTER_NAME_BYTES])
def test_ordinary_adapter_names_are_accepted(name):
    assert check_adapter_name(name) == name


@pytest.mark.parametrize(
    "adapter_names, match",
    [
        ([], "adapter_names is empty"),
        (5, "got int 5"),
        ("a", "got str 'a'"),
        (None, None),  # None means "no mixed batch": accepted
        ([1, 2], "holds int 1"),
        (["a", None], "holds NoneType None"),
        (["a", "b", "c"], "3 entries but the batch has 2 rows"),
        (["a", "zzz"], "unknown adapters \\['zzz'\\]"),
    ],
    ids=["empty", "int", "str", "none", "ints", "none_inside", "wrong_length", "unknown"],
)
@pytest.mark.parametrize("call", ["forward", "generate"])
def test_malformed_adapter_names_are_one_clear_error(adapter_names, match, call):
    model = three_adapter_model("llama")
    ids = torch.randint(0, 128, (2, 4), generator=torch.Generator().manual_seed(0))
    run = (lambda: model(input_ids=ids, adapter_names=adapter_names)) if call == "forward" else (
        lambda: model.generate(input_ids=ids, adapter_names=adapter_names, max_new_tokens=1, do_sample=False))
    if match is None:
        run()
        return
    if call == "generate" and adapter_names == ["a", "b", "c"]:
        match = "3 entries but the batch has 2 rows"
    with pytest.raises(NeatError, match=match) as info:
        run()
    assert "\n" not in str(info.value)
    assert all(not m._forward_pre_hooks for m in model.modules())
