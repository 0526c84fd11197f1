"""Fault injection: hostile adapters, saves killed at every step, checkpoints killed mid-write.

The harness pieces live here:
- `HOSTILE_ADAPTERS`: a table of (name, change to a valid saved adapter, error class, words the message must hold).
  Every row must be refused within a few seconds, without allocating what the hostile field asks for, and leave the
  base model unchanged.
- `fault_injection.kill_at_step` (tests/fault_injection.py): runs an operation in a forked child that an audit hook
  SIGKILLs at its n-th file operation (open for writing, rename/replace, remove, mkdir) under a folder; with n = 0 it
  counts them. It drives the save-killed-at-every-step test here and the checkpoint trials (single process here,
  2-process ZeRO-3 in tests/test_deepspeed.py).
- The loopback Hub server (tests/hub_server.py) with injected failures, for the Hub push tests.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import torch
from conftest import model_inputs, model_output, tiny_llama
from fault_injection import kill_at_step
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from testing_common import randomize_adapter

from neat_hf import NeatConfig, NeatModel, get_neat_model
from neat_hf.config import MAX_CONFIG_BYTES, MAX_DEPTH, MAX_R
from neat_hf.constants import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, TRAINING_INFO_NAME
from neat_hf.errors import AdapterLoadError, AdapterMismatchError, NeatError
from neat_hf.io import CONFIG_SHA_KEY, text_sha256
from neat_hf.cli.train.main import cli  # at import time: importing it reaches for bitsandbytes' Hub kernels

REPO = Path(__file__).resolve().parents[1]
TARGETS = ["q_proj", "v_proj"]


def _saved_adapter(folder: Path, **config_kwargs) -> Path:
    model = get_neat_model(tiny_llama(), NeatConfig(r=2, target_modules=TARGETS, init_weights=False, **config_kwargs))
    model.save_pretrained(folder)
    return folder


def _edit_config(folder: Path, _resign: bool = True, **changes) -> None:
    """Change adapter_config.json; with `_resign` the weights' config hash is updated too (a consistent hostile
    folder, as an attacker would craft it), otherwise the folder looks like a save interrupted before the config."""
    path = folder / ADAPTER_CONFIG_NAME
    data = json.loads(path.read_text())
    data.update(changes)
    text = json.dumps(data)
    path.write_text(text)
    if _resign:
        weights = folder / ADAPTER_WEIGHTS_NAME
        with safe_open(os.fspath(weights), framework="pt") as handle:
            metadata = handle.metadata()
        save_file(load_file(weights), weights, metadata={**metadata, CONFIG_SHA_KEY: text_sha256(text)})


def _edit_weights(folder: Path, change) -> None:
    path = folder / ADAPTER_WEIGHTS_NAME
    with safe_open(os.fspath(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(path)
    key = sorted(k for k in tensors if "peanut_A" in k)[0]
    tensors[key] = change(tensors[key])
    save_file(tensors, path, metadata=metadata)


def _nan(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t[0, 0] = float("nan")
    return t


def _inf(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t[-1, -1] = float("-inf")
    return t


#: (id, how to break a valid adapter folder, error class, fragments the one-line message must contain)
HOSTILE_ADAPTERS = [
    ("depth_1e9", lambda f: _edit_config(f, depth=10**9), AdapterLoadError, ["depth", str(MAX_DEPTH)]),
    ("depth_1e6", lambda f: _edit_config(f, depth=10**6), AdapterLoadError, ["depth", str(MAX_DEPTH)]),
    ("r_1e9", lambda f: _edit_config(f, r=10**9), AdapterLoadError, ["r must be at most", str(MAX_R)]),
    ("r_too_large_for_file", lambda f: _edit_config(f, r=64), AdapterMismatchError, ["Shape mismatch"]),
    ("depth_not_in_file", lambda f: _edit_config(f, depth=3), AdapterMismatchError, ["lacks"]),
    ("depth_negative", lambda f: _edit_config(f, depth=-1), AdapterLoadError, ["depth"]),
    ("r_float", lambda f: _edit_config(f, r=2.5), AdapterLoadError, ["r must be"]),
    # "(.*)*X" hangs Python's `re`; the `regex` matcher fails it at once (no literal X in any name).
    ("regex_nested_star", lambda f: _edit_config(f, target_modules="(.*)*X"), AdapterMismatchError, ["matched no layer"]),
    # "(.|.)*m" backtracks exponentially in both engines: refused by the time bound.
    ("regex_backtracking", lambda f: _edit_config(f, target_modules="(.|.)*m"), AdapterMismatchError, ["backtracking"]),
    ("exclude_backtracking", lambda f: _edit_config(f, exclude_modules="(.|.)*m"), AdapterMismatchError, ["exclude_modules"]),
    (
        "layers_pattern_backtracking",
        lambda f: _edit_config(f, target_modules=TARGETS, layers_to_transform=[0], layers_pattern="(.|.)*m"),
        AdapterMismatchError,
        ["layers_pattern"],
    ),
    ("regex_invalid", lambda f: _edit_config(f, target_modules="(q_proj"), AdapterMismatchError, ["not a valid regex"]),
    ("string_50MB", lambda f: _edit_config(f, base_model_name_or_path="x" * 50_000_000), AdapterLoadError, ["bytes"]),
    ("string_100k", lambda f: _edit_config(f, revision="x" * 100_000), AdapterLoadError, ["revision", "characters"]),
    ("list_100k", lambda f: _edit_config(f, target_modules=[f"m{i}" for i in range(100_000)]), AdapterLoadError, ["entries"]),
    ("nan_weight", lambda f: _edit_weights(f, _nan), AdapterLoadError, ["NaN/inf", "peanut_A"]),
    ("inf_weight", lambda f: _edit_weights(f, _inf), AdapterLoadError, ["NaN/inf", "peanut_A"]),
    ("int8_weight", lambda f: _edit_weights(f, lambda t: t.to(torch.int8)), AdapterLoadError, ["torch.int8", "refused rather than cast"]),
    ("bool_weight", lambda f: _edit_weights(f, lambda t: t > 0), AdapterLoadError, ["torch.bool"]),
    ("config_from_other_save", lambda f: _edit_config(f, _resign=False, scaling=3.0), AdapterLoadError, ["interrupted"]),
    # deeper than the JSON parser's recursion limit (was a raw RecursionError)
    ("config_too_deep", lambda f: (f / ADAPTER_CONFIG_NAME).write_text("[" * 200_000), AdapterLoadError, ["not valid UTF-8 JSON"]),
    # issue 25: a 5,000-digit integer reached int() (ValueError: Exceeds the limit (4300 digits))
    ("r_5000_digits", lambda f: _replace_in_config(f, '"r": 2', '"r": ' + "9" * 5000), AdapterLoadError, ["5,000 digits"]),
    # float8 reached torch.isfinite (NotImplementedError) in merge, export and lm-eval
    ("float8_weight", lambda f: _edit_weights(f, lambda t: t.to(torch.float8_e4m3fn)), AdapterLoadError, ["F8_E4M3", "refused"]),
    # a FIFO blocked every loader past 60 s; a /dev/zero symlink never ends
    ("config_fifo", lambda f: _make_fifo(f / ADAPTER_CONFIG_NAME), AdapterLoadError, ["named pipe (FIFO)", "regular"]),
    ("weights_fifo", lambda f: _make_fifo(f / ADAPTER_WEIGHTS_NAME), AdapterLoadError, ["named pipe (FIFO)", "regular"]),
    ("weights_dev_zero", lambda f: _symlink(f / ADAPTER_WEIGHTS_NAME, "/dev/zero"), AdapterLoadError, ["character device"]),
]


def _replace_in_config(folder: Path, old: str, new: str) -> None:
    path = folder / ADAPTER_CONFIG_NAME
    text = path.read_text()
    assert old in text, text
    path.write_text(text.replace(old, new))


def _make_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _symlink(path: Path, target: str) -> None:
    path.unlink()
    path.symlink_to(target)


@pytest.mark.parametrize("name,breaker,error,fragments", HOSTILE_ADAPTERS, ids=[row[0] for row in HOSTILE_ADAPTERS])
def test_hostile_adapter_is_refused_quickly_and_changes_nothing(tmp_path, name, breaker, error, fragments):
    folder = _saved_adapter(tmp_path / "adapter")
    breaker(folder)
    base = tiny_llama(seed=1)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    modules_before = [type(m) for m in base.modules()]
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(error) as info:
        NeatModel.from_pretrained(base, folder)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    message = str(info.value)
    assert elapsed < 5, f"{name}: refused only after {elapsed:.1f} s"
    # The 50 MB row is refused from the file size, so nothing near 50 MB may have been read into Python objects.
    assert peak < 20_000_000, f"{name}: {peak:,d} bytes of Python memory"
    assert "\n" not in message and len(message) < 1200, message
    for fragment in fragments:
        assert fragment in message, message
    assert [type(m) for m in base.modules()] == modules_before
    for key, value in base.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_hostile_configs_are_refused_by_every_loader(tmp_path):
    """neat-hub merge and the lm-eval backend read the config first, through the same checks."""
    from neat_hf.export.merged import export_merged

    folder = _saved_adapter(tmp_path / "adapter")
    _edit_config(folder, depth=10**9)
    base_dir = tmp_path / "base"
    tiny_llama().save_pretrained(base_dir)
    start = time.perf_counter()
    with pytest.raises(AdapterLoadError, match="depth must be at most"):
        export_merged(base_dir, folder, tmp_path / "merged")
    with pytest.raises(AdapterLoadError, match="depth must be at most"):
        NeatConfig.from_pretrained(folder)  # what NeatLM (the lm-eval backend) reads first
    assert time.perf_counter() - start < 10
    assert not (tmp_path / "merged").exists()

    folder2 = _saved_adapter(tmp_path / "adapter2")
    _edit_config(folder2, target_modules="(.|.)*m")
    start = time.perf_counter()
    with pytest.raises(AdapterMismatchError, match="backtracking"):
        export_merged(base_dir, folder2, tmp_path / "merged")
    assert time.perf_counter() - start < 20


@pytest.mark.parametrize("name", ["AutoTokenizer", "LlamaConfig"])
def test_merge_refuses_an_auto_mapping_that_names_no_model_class(tmp_path, name):
    from neat_hf.export.merged import export_merged

    folder = _saved_adapter(tmp_path / "adapter")
    _edit_config(folder, auto_mapping={"base_model_class": name, "parent_library": "transformers.models.auto"}, task_type=None)
    base_dir = tmp_path / "base"
    tiny_llama().save_pretrained(base_dir)
    with pytest.raises(NeatError, match="is not a transformers model class"):
        export_merged(base_dir, folder, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_limits_hold_for_new_configs_and_the_file_size_limit_is_generous():
    with pytest.raises(NeatError, match="depth must be at most"):
        NeatConfig(depth=MAX_DEPTH + 1)
    NeatConfig(depth=MAX_DEPTH, r=MAX_R)  # the bounds themselves are accepted
    assert MAX_CONFIG_BYTES >= 100 * len(NeatConfig(target_modules=TARGETS).to_json_string())


def test_saves_of_the_same_adapter_are_byte_identical(tmp_path):
    """The config hash is a second safetensors metadata key; safetensors writes metadata in hash-map order, so the
    header is sorted after writing. Otherwise every push of an unchanged adapter would upload a "new" file."""
    model = get_neat_model(tiny_llama(), NeatConfig(r=2, target_modules=TARGETS, init_weights=False))
    blobs = set()
    for i in range(6):
        model.save_pretrained(tmp_path / str(i))
        blobs.add((tmp_path / str(i) / ADAPTER_WEIGHTS_NAME).read_bytes())
    assert len(blobs) == 1
    with safe_open(os.fspath(tmp_path / "0" / ADAPTER_WEIGHTS_NAME), framework="pt") as handle:
        assert handle.metadata()["format"] == "pt" and CONFIG_SHA_KEY in handle.metadata()


#: The hostile rows added for issue 25, run through every loader (the rest of the table through from_pretrained above
#: and merge in test_hostile_configs_are_refused_by_every_loader).
EVERY_LOADER_ROWS = [row for row in HOSTILE_ADAPTERS if row[0] in (
    "r_5000_digits", "float8_weight", "config_fifo", "weights_fifo", "weights_dev_zero", "depth_1e9", "nan_weight")]
LOADERS = ["from_pretrained", "load_adapter", "neat_hub_merge", "neat_hub_export_lora", "neat_lm_eval"]


@pytest.fixture(scope="module")
def saved_base(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("base") / "tiny_llama"
    tiny_llama(seed=1).save_pretrained(base)
    return base


def _run_loader(loader: str, base_dir: Path, folder: Path, out: Path) -> None:
    if loader == "from_pretrained":
        NeatModel.from_pretrained(tiny_llama(seed=1), folder)
    elif loader == "load_adapter":
        get_neat_model(tiny_llama(seed=1), NeatConfig(r=2, target_modules=TARGETS)).load_adapter(folder, "other")
    elif loader == "neat_hub_merge":
        from neat_hf.export.merged import export_merged

        export_merged(base_dir, folder, out)
    elif loader == "neat_hub_export_lora":
        from neat_hf.export.saved_adapter import export_lora

        export_lora(base_dir, folder, out)
    else:  # what the lm-eval backend runs: the config first, then the same from_pretrained on the loaded base
        from neat_hf.eval_harness.model import _check_merged_weights_finite

        NeatConfig.from_pretrained(folder)
        _check_merged_weights_finite(NeatModel.from_pretrained(tiny_llama(seed=1), folder), os.fspath(folder))


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize("name,breaker,error,fragments", EVERY_LOADER_ROWS, ids=[row[0] for row in EVERY_LOADER_ROWS])
def test_hostile_adapter_is_one_line_through_every_loader(tmp_path, saved_base, loader, name, breaker, error, fragments):
    folder = _saved_adapter(tmp_path / "adapter")
    breaker(folder)
    out = tmp_path / "out"
    start = time.perf_counter()
    with pytest.raises(error) as info:
        _run_loader(loader, saved_base, folder, out)
    # A hang guard only (a FIFO blocked forever): time and memory bounds are measured by benchmarks/bench_hostile.py.
    assert time.perf_counter() - start < 60, f"{name} through {loader}: {time.perf_counter() - start:.1f} s"
    message = str(info.value)
    assert "\n" not in message and len(message) < 1200, message
    assert all(fragment in message for fragment in fragments), message
    assert not out.exists()


def test_training_info_fifo_is_ignored_with_a_warning(tmp_path, caplog):
    """A FIFO training_info.json blocked from_pretrained, load_adapter and merge past 60 s."""
    folder = _saved_adapter(tmp_path / "adapter")
    reference = _outputs_of(folder)
    _make_fifo(folder / TRAINING_INFO_NAME)
    start = time.perf_counter()
    with caplog.at_level("WARNING", logger="neat_hf"):
        out = _outputs_of(folder)
    assert time.perf_counter() - start < 60 and torch.equal(out, reference)  # a hang guard
    assert "named pipe (FIFO)" in caplog.text and TRAINING_INFO_NAME in caplog.text


@pytest.mark.parametrize("tool", ["merge", "export-lora"])
def test_a_head_claiming_huge_num_labels_is_refused_before_the_base_is_built(tmp_path, tool):
    """A trained head's row count sets num_labels of the base that merge / export-lora build (8,000,000 took > 3 GB
    within seconds): above MAX_NUM_LABELS it is one AdapterLoadError line."""
    from conftest import tiny_bert_classifier

    from neat_hf.cli.hub import main as neat_hub
    from neat_hf.export.merged import MAX_NUM_LABELS

    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    tiny_bert_classifier(num_labels=2).save_pretrained(base_dir)
    config = NeatConfig(r=2, init_weights=False, task_type="SEQ_CLS", target_modules=["query", "value"])
    get_neat_model(tiny_bert_classifier(num_labels=2), config).save_pretrained(adapter_dir)
    weights = adapter_dir / ADAPTER_WEIGHTS_NAME
    with safe_open(os.fspath(weights), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(weights)
    head = next(k for k in tensors if "classifier" in k and k.endswith("weight"))
    tensors[head] = torch.zeros(MAX_NUM_LABELS + 1, tensors[head].shape[1], dtype=torch.bfloat16)
    save_file(tensors, weights, metadata=metadata)
    start = time.perf_counter()
    with pytest.raises(AdapterLoadError, match=f"{MAX_NUM_LABELS + 1:,d} classes"):
        from neat_hf.export.merged import adapter_load_plan

        adapter_load_plan(base_dir, adapter_dir)
    assert neat_hub([tool, str(base_dir), str(adapter_dir), str(tmp_path / "out")]) == 2  # bad input
    assert time.perf_counter() - start < 60 and not (tmp_path / "out").exists()  # a hang guard


@pytest.mark.parametrize(
    "content,fragment",
    [(b'{"note": "' + b"x" * (5 << 20) + b'"}', "at most"), (b'{"dropout": 0.1, "note": "\xff\xfe"}', "UTF-8"),
     (b"not json", "JSON"), (b"[" * 200_000, "JSON")],
    ids=["5MB", "not_utf8", "not_json", "too_deep"],
)
def test_hostile_training_info_is_ignored_with_a_warning(tmp_path, caplog, content, fragment):
    """training_info.json is neat-hf's own record (stock PEFT ignores it): an oversized, undecodable or non-JSON one
    costs no more than a stat and a bounded read, and the adapter loads without its neat-only settings, with a warning
    naming the file."""
    folder = _saved_adapter(tmp_path / "adapter")
    reference = _outputs_of(folder)
    (folder / TRAINING_INFO_NAME).write_bytes(content)
    start = time.perf_counter()
    with caplog.at_level("WARNING", logger="neat_hf.config"):
        out = _outputs_of(folder)
    assert time.perf_counter() - start < 5
    assert torch.equal(out, reference)
    assert TRAINING_INFO_NAME in caplog.text and fragment in caplog.text


def test_nonfinite_opt_out_loads_for_debugging(tmp_path):
    folder = _saved_adapter(tmp_path / "adapter")
    _edit_weights(folder, _nan)
    model = NeatModel.from_pretrained(tiny_llama(), folder, check_finite=False)
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    assert torch.isnan(layer(torch.randn(2, 32))).any()


def test_regex_targets_still_match_like_re(tmp_path):
    """The bounded matcher selects exactly the layers Python's `re` (PEFT's rule) selects."""
    import re

    base = tiny_llama()
    pattern = r".*\.(q_proj|v_proj)"
    model = get_neat_model(base, NeatConfig(r=2, target_modules=pattern))
    expected = sorted(n for n, _ in tiny_llama().named_modules() if re.fullmatch(pattern, n))
    assert sorted(n for n, _ in model.neat_layers()) == expected


# ---------------------------------------------------------------------------------------------- saves killed at each step


def _random_adapter(seed: int, **config_kwargs) -> NeatModel:
    model = get_neat_model(tiny_llama(), NeatConfig(r=2, target_modules=TARGETS, init_weights=False, **config_kwargs))
    randomize_adapter(model, seed)
    return model


def _new_adapter() -> NeatModel:
    """An adapter of another config (scaling) and other weights than `_saved_adapter`'s."""
    return _random_adapter(7, scaling=2.0)


def _outputs_of(folder: Path) -> torch.Tensor:
    return model_output(NeatModel.from_pretrained(tiny_llama(), folder), model_inputs("llama"))


def test_adapter_save_killed_at_every_step_is_old_or_refused_then_recovers(tmp_path):
    """Kill `save_pretrained` over an existing adapter at each of its file operations: the folder then loads as the
    old adapter or is refused with the 'interrupted' error (the config is the last file, so a save that did not
    finish never loads as the new one, and never as a silent mix); the next save succeeds and leaves no temporary
    file."""
    old_out = _outputs_of(_saved_adapter(tmp_path / "old"))
    new = _new_adapter()
    new_dir = tmp_path / "new"
    steps = kill_at_step(lambda: new.save_pretrained(new_dir), new_dir, 0)
    new_out = _outputs_of(new_dir)
    assert not torch.allclose(old_out, new_out)
    assert steps >= 6, steps  # mkstemp + rename for weights, config and card at least
    outcomes = []
    for kill_at in range(1, steps + 1):
        trial = _saved_adapter(tmp_path / f"trial{kill_at}")
        assert kill_at_step(lambda: new.save_pretrained(trial), trial, kill_at) == kill_at
        try:
            out = _outputs_of(trial)
        except AdapterLoadError as err:
            assert "interrupted" in str(err), err
            outcomes.append("refused")
        else:
            if torch.allclose(out, old_out):
                outcomes.append("old")
            else:
                assert torch.allclose(out, new_out), f"kill at step {kill_at} left a mixed adapter"
                outcomes.append("new")
        # Recovery: the next save into the folder works and removes the temporaries the kill left.
        new.save_pretrained(trial)
        assert not [p.name for p in trial.iterdir() if p.name.startswith(".tmp-")]
        assert torch.allclose(_outputs_of(trial), new_out)
    assert set(outcomes) == {"old", "refused"}, outcomes
    assert outcomes[-1] == "refused"  # killed just before the config is moved into place


def _card_and_info(folder: Path) -> tuple[str, dict]:
    return (folder / "README.md").read_text(), json.loads((folder / TRAINING_INFO_NAME).read_text())


def test_save_and_card_killed_at_every_step_never_mix_two_saves(tmp_path):
    """A Trainer-style final save over an earlier adapter *with the same config* (so the config digest cannot tell
    them apart): `save_pretrained`, then the card update with the run's training info. Killed at each file operation,
    the folder is the old adapter with its own card, training_info.json and evaluation results, or the new weights
    with a card and record that never mention the old run, or refused."""
    from huggingface_hub import EvalResult

    from neat_hf.cards.adapter_card import write_model_card

    def save_run(model: NeatModel, folder: Path, dataset: str, score: float) -> None:
        model.save_pretrained(folder)
        result = EvalResult(task_type="text-generation", dataset_type=dataset, dataset_name=dataset,
                            metric_type="accuracy", metric_value=score)
        write_model_card(folder, model=model, training_info={"dataset": dataset}, eval_results=[result],
                         keep_eval_results=False)

    old_model, new_model = _random_adapter(1, dropout=0.25), _random_adapter(2, dropout=0.0)
    old_dir, new_dir = tmp_path / "old", tmp_path / "new"
    save_run(old_model, old_dir, "old-run-data", 0.111)
    steps = kill_at_step(lambda: save_run(new_model, new_dir, "new-run-data", 0.999), new_dir, 0)
    old_out, new_out = _outputs_of(old_dir), _outputs_of(new_dir)
    old_card, old_info = _card_and_info(old_dir)
    assert "old-run-data" in old_card and "0.111" in old_card and old_info["dropout"] == 0.25
    assert (old_dir / ADAPTER_CONFIG_NAME).read_bytes() == (new_dir / ADAPTER_CONFIG_NAME).read_bytes()
    outcomes = []
    for kill_at in range(1, steps + 1):
        trial = tmp_path / f"trial{kill_at}"
        save_run(old_model, trial, "old-run-data", 0.111)
        assert kill_at_step(lambda: save_run(new_model, trial, "new-run-data", 0.999), trial, kill_at) == kill_at
        try:
            out = _outputs_of(trial)
        except AdapterLoadError as err:
            assert "interrupted" in str(err), err
            outcomes.append("refused")
            continue
        card, info = _card_and_info(trial)
        if torch.allclose(out, old_out):
            assert (card, info) == (old_card, old_info), f"kill at step {kill_at}: old weights under a new card"
            outcomes.append("old")
        else:
            assert torch.allclose(out, new_out), f"kill at step {kill_at} left a mixed adapter"
            assert "old-run-data" not in card + json.dumps(info) and "0.111" not in card, (kill_at, card)
            assert "dropout" not in info  # the new adapter has none; the old 0.25 must not be carried over
            outcomes.append("new")
    assert set(outcomes) == {"old", "refused", "new"}, outcomes


def test_push_refuses_a_folder_left_by_an_interrupted_save(hub_server, tmp_path):
    """`neat-hub push` / `push_adapter_folder` check the folder like loading does: what a killed save left (new
    weights, card and training record under the old config) is refused before anything is uploaded."""
    folder = _saved_adapter(tmp_path / "adapter")
    steps = kill_at_step(lambda: _new_adapter().save_pretrained(tmp_path / "count"), tmp_path / "count", 0)
    kill_at_step(lambda: _new_adapter().save_pretrained(folder), folder, steps)  # just before the config
    with pytest.raises(AdapterLoadError, match="interrupted"):
        push_adapter_folder(folder, HUB_REPO)
    assert hub_server.request_count() == 0
    _new_adapter().save_pretrained(folder)  # the next save repairs the folder, which then goes up
    push_adapter_folder(folder, HUB_REPO)
    assert hub_server.files(HUB_REPO)[ADAPTER_WEIGHTS_NAME] == (folder / ADAPTER_WEIGHTS_NAME).read_bytes()


def test_lora_export_killed_at_every_step_is_old_new_or_absent_then_recovers(tmp_path):
    """`save_as_lora` over an earlier export, killed at each file operation: the export folder is the old one, the new
    one or absent (between the two renames), never a mix; the next export succeeds and leaves no stale folder."""
    old_model, new_model = _new_adapter(), get_neat_model(tiny_llama(), NeatConfig(r=2, target_modules=TARGETS, init_weights=False))
    work = tmp_path / "work"
    work.mkdir()
    out = work / "lora"
    old_model.save_as_lora(tmp_path / "old")
    new_model.save_as_lora(tmp_path / "new")
    old_weights, new_weights = (load_file(tmp_path / n / ADAPTER_WEIGHTS_NAME) for n in ("old", "new"))
    old_model.save_as_lora(out)
    steps = kill_at_step(lambda: new_model.save_as_lora(out), work, 0)  # counted over an existing export
    outcomes = []
    for kill_at in range(1, steps + 1):
        shutil.rmtree(work)
        work.mkdir()
        old_model.save_as_lora(out)
        assert kill_at_step(lambda: new_model.save_as_lora(out), work, kill_at) == kill_at
        if not out.exists():
            outcomes.append("absent")
        else:
            weights = load_file(out / ADAPTER_WEIGHTS_NAME)
            same = [all(torch.equal(weights[k], ref[k]) for k in ref) for ref in (old_weights, new_weights)]
            assert any(same), f"kill at step {kill_at} left a mixed export"
            outcomes.append("old" if same[0] else "new")
        new_model.save_as_lora(out)
        assert sorted(p.name for p in work.iterdir()) == ["lora"], kill_at
        weights = load_file(out / ADAPTER_WEIGHTS_NAME)
        assert all(torch.equal(weights[k], new_weights[k]) for k in new_weights)
    assert set(outcomes) == {"old", "absent", "new"}, outcomes


def test_merge_overwrite_killed_at_every_step_is_old_new_or_absent_then_cleaned(tmp_path):
    """`neat-hub merge --overwrite` over an earlier merge, killed at each file operation: the output is the old
    merge, the new one or absent, never a half-deleted folder (a kill in the middle of removing the old one left only
    generation_config.json); the next merge removes every staging folder and safetensors `.tmpXXXXXX` orphan a kill
    left (safetensors' writer is invisible to the kill hook, so such an orphan is planted)."""
    from neat_hf.export.merged import export_merged

    base_dir = tmp_path / "base"
    tiny_llama().save_pretrained(base_dir)
    old_adapter, new_adapter = _saved_adapter(tmp_path / "old_adapter"), tmp_path / "new_adapter"
    _new_adapter().save_pretrained(new_adapter)
    work = tmp_path / "work"
    work.mkdir()
    out = work / "merged"
    references = {}
    for label, adapter in (("old", old_adapter), ("new", new_adapter)):
        export_merged(base_dir, adapter, tmp_path / label)
        references[label] = load_file(tmp_path / label / "model.safetensors")

    def merge_new() -> None:
        export_merged(base_dir, new_adapter, out, overwrite=True)

    export_merged(base_dir, old_adapter, out)
    steps = kill_at_step(merge_new, work, 0)
    outcomes = []
    for kill_at in range(1, steps + 1):
        shutil.rmtree(work)
        work.mkdir()
        export_merged(base_dir, old_adapter, out)
        assert kill_at_step(merge_new, work, kill_at) == kill_at
        if not out.exists():
            outcomes.append("absent")
        else:
            weights = load_file(out / "model.safetensors")
            same = [all(torch.equal(weights[k], ref[k]) for k in ref) for ref in references.values()]
            assert any(same) and (out / "config.json").is_file(), f"kill at step {kill_at} left a mixed merge"
            outcomes.append("old" if same[0] else "new")
        for leftover in work.iterdir():  # what safetensors' writer leaves when killed mid-write
            if leftover.is_dir() and leftover.name != "merged":
                (leftover / ".tmpAb12Cd").write_bytes(b"\0" * 1000)
        merge_new()
        assert sorted(p.name for p in work.iterdir()) == ["merged"], kill_at
        assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp")], kill_at
    assert {"old", "new"} <= set(outcomes), outcomes


def test_a_save_removes_safetensors_orphans_left_by_a_killed_save(tmp_path):
    folder = _saved_adapter(tmp_path / "adapter")
    (folder / ".tmpX1y2Z3").write_bytes(b"\0" * 100)  # safetensors' own temporary file (no dash)
    (folder / ".tmp-abc.safetensors").write_bytes(b"\0" * 100)  # ours
    (folder / ".tmpkeep-me-longer").write_bytes(b"")  # not a temporary name of either writer
    _new_adapter().save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == [".tmpkeep-me-longer"]


# ---------------------------------------------------------------------------------------------- checkpoints killed mid-save


def _checkpoint_trials(tmp_path: Path, command: str, *, most: int, timeout: float) -> dict:
    """Run `python tests/fault_injection.py <command>` (its own process: the trials fork from a pristine one) on a
    tiny LLaMA saved under `tmp_path`; its report."""
    base = tmp_path / "base"
    tiny_llama().save_pretrained(base)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, str(REPO / "tests" / "fault_injection.py"), command, str(base), str(tmp_path), str(most)],
        env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_checkpoint_killed_during_save_resumes_from_the_newest_complete_one_bit_identically(tmp_path):
    """Single process, 4 steps, checkpoints at 2 and 4: SIGKILL during the save of checkpoint-4 at spread points of its
    file operations, then `resume_from_checkpoint=True`. Each resume skips the incomplete checkpoint-4, starts from
    checkpoint-2 and ends with the adapter of the uninterrupted run, bit for bit."""
    report = _checkpoint_trials(tmp_path, "checkpoint-trials", most=8, timeout=1200)
    assert report["steps"] >= 8, report  # marker, adapter, config, card, optimizer, scheduler, RNG, state, ...
    assert len(report["trials"]) == 8
    reference = load_file(tmp_path / "reference" / ADAPTER_WEIGHTS_NAME)
    for trial in report["trials"]:
        assert not trial["checkpoint_4_complete"], trial
        assert trial["resumed_from"] == "checkpoint-2", trial
        resumed = load_file(Path(trial["output"]) / ADAPTER_WEIGHTS_NAME)
        assert resumed.keys() == reference.keys()
        for key, value in reference.items():
            assert torch.equal(resumed[key], value), (trial["kill_at"], key)
        state = json.loads((Path(trial["output"]) / "checkpoint-4" / "trainer_state.json").read_text())
        assert state["global_step"] == 4


@pytest.mark.slow
def test_rotating_run_killed_at_every_file_operation_keeps_a_checkpoint_and_resumes_bit_identically(tmp_path):
    """`save_total_limit=1`, checkpoints at steps 2, 4 and 5 (5 steps of 2-step epochs), then the final save: SIGKILL
    at every file operation after checkpoint-2 is complete (writes, renames, and each single removal inside a
    deletion), then `resume_from_checkpoint=True`. A complete checkpoint always survives the kill, the resume ends at
    step 5 (never 6: resuming a finished run trains nothing) with the adapter of the uninterrupted run, bit for bit,
    and leaves checkpoint-5 as the newest checkpoint and no half-deleted folder."""
    report = _checkpoint_trials(tmp_path, "rotation-trials", most=0, timeout=3000)
    operations = report["operations"]
    assert any(op.startswith("os.remove .deleting-checkpoint-2-") for op in operations), operations  # rmtree is seen
    assert len(report["trials"]) == len(operations) - report["first_complete"]
    reference = load_file(tmp_path / "reference" / ADAPTER_WEIGHTS_NAME)
    for trial in report["trials"]:
        assert trial["complete_after_kill"], trial  # never left without a complete checkpoint
        assert trial["global_step"] == 5, trial
        # checkpoint-5 is the newest; a kill before checkpoint-4's deletion began leaves it (nothing was left to
        # train, so no save rotated it away).
        assert trial["checkpoints_after_resume"] in (["checkpoint-5"], ["checkpoint-4", "checkpoint-5"]), trial
        assert trial["leftovers"] == [], trial
        resumed = load_file(Path(trial["output"]) / ADAPTER_WEIGHTS_NAME)
        assert resumed.keys() == reference.keys()
        for key, value in reference.items():
            assert torch.equal(resumed[key], value), (trial["operation"], key)


def test_resuming_a_finished_run_trains_nothing_and_says_so(tmp_path, caplog):
    """A run of 3 steps over 2-step epochs ends with checkpoint-3; resuming from it (as after a kill during the final
    save) must not run a 4th optimizer step, write checkpoint-4 or change the adapter."""
    from ds_driver import parse_args, run

    base = tmp_path / "base"
    tiny_llama().save_pretrained(base)
    out = tmp_path / "out"
    argv = ["--base_model", str(base), "--output_dir", str(out), "--save_steps", "3", "--max_steps", "3"]
    assert run(parse_args(argv))["global_step"] == 3
    saved = load_file(out / "checkpoint-3" / ADAPTER_WEIGHTS_NAME)
    ns = parse_args(argv)
    ns.resume_from_checkpoint = True
    with caplog.at_level(logging.WARNING, logger="neat_hf"):
        assert run(ns)["global_step"] == 3
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    assert "had already finished" in caplog.text and "checkpoint-3" in caplog.text
    resumed = load_file(out / ADAPTER_WEIGHTS_NAME)
    assert all(torch.equal(resumed[key], value) for key, value in saved.items())


def test_checkpoint_deletion_renames_first_and_finishes_leftovers(tmp_path):
    """A folder being deleted stops being a checkpoint in one rename; what a kill left is removed at the next save."""
    from neat_hf.trainers.checkpoints import DELETING_PREFIX, begin_checkpoint, checkpoint_folders, remove_checkpoint

    for step in (2, 4):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    half_deleted = tmp_path / f"{DELETING_PREFIX}checkpoint-0-1234abcd"  # a kill in the middle of a deletion
    half_deleted.mkdir()
    (half_deleted / "trainer_state.json").write_text(json.dumps({"global_step": 0}))
    assert checkpoint_folders(str(tmp_path)) == [str(tmp_path / "checkpoint-2"), str(tmp_path / "checkpoint-4")]
    remove_checkpoint(str(tmp_path / "checkpoint-2"))
    begin_checkpoint(str(tmp_path / "checkpoint-6"))
    assert sorted(os.listdir(tmp_path)) == ["checkpoint-4", "checkpoint-6"]


def test_resume_refuses_an_incomplete_folder_and_an_output_dir_without_complete_checkpoints(tmp_path):
    from neat_hf.errors import TrainerSetupError
    from neat_hf.trainers.checkpoints import MARKER, resolve_resume

    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    (tmp_path / "checkpoint-4").mkdir()
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    (tmp_path / "checkpoint-4" / MARKER).write_text("")
    (tmp_path / "checkpoint-6").mkdir()  # killed before anything was written
    (tmp_path / "checkpoint-8").mkdir()
    (tmp_path / "checkpoint-8" / "trainer_state.json").write_text('{"global_st')  # killed mid-write (stock Trainer)
    assert resolve_resume(True, str(tmp_path)) == str(tmp_path / "checkpoint-2")
    with pytest.raises(TrainerSetupError, match="incomplete.*newest complete one is .*checkpoint-2"):
        resolve_resume(str(tmp_path / "checkpoint-4"), str(tmp_path))
    assert resolve_resume(None, str(tmp_path)) is None
    (tmp_path / "checkpoint-2" / "trainer_state.json").unlink()
    with pytest.raises(TrainerSetupError, match="no complete checkpoint"):
        resolve_resume(True, str(tmp_path))


# ---------------------------------------------------------------------------------------------- Hub pushes under faults

from hub_fixtures import hub_server, make_adapter  # noqa: E402,F401 (fixture)
from neat_hf.errors import HubError  # noqa: E402
from neat_hf.hub.commit import push_adapter_folder  # noqa: E402
from neat_hf.hub.conflicts import conflicting_files  # noqa: E402

HUB_REPO = "neat-tester/faulty"


def _pushed_folder(tmp_path: Path, seed: int) -> Path:
    folder = tmp_path / f"adapter{seed}"
    make_adapter(seed=seed).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("fault", ["unreachable", "repo_create_500"])
def test_neat_train_push_to_hub_with_a_failing_hub_is_one_line_exit_1(hub_server, tmp_path, capsys, fault):
    """An unreachable HF_ENDPOINT (was a ConnectError traceback from init_hf_repo) and a repo-create 500 (was exit 2
    with the raw server message) are one HubError line, exit status 1 (the Hub failed, not the input)."""
    from hub_server import patch_hub_endpoint

    argv = ["--max_steps", "1", "--output_dir", str(tmp_path / "out"), "--push_to_hub", "--hub_model_id",
            "neat-tester/failing-hub", "--max_train_samples", "8", "--max_eval_samples", "4"]
    if fault == "unreachable":
        with patch_hub_endpoint("http://127.0.0.1:9"):  # nothing listens on the discard port
            code = cli(argv)
    else:
        hub_server.inject_fault("500", path_contains="/repos/create", times=20)
        code = cli(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("neat-train:")]
    assert code == 1, err[-2000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert "neat-tester/failing-hub" in lines[0]
    assert ("connection failed" if fault == "unreachable" else "HTTP 500") in lines[0], lines[0]
    assert not (tmp_path / "out" / ADAPTER_WEIGHTS_NAME).exists()


def _checkpoint_pushing_trainer(tmp_path: Path):
    """A NeatTrainer of 4 steps that saves and pushes (`every_save`) at steps 2 and 4."""
    from transformers import TrainingArguments

    from neat_hf.trainers import NeatTrainer

    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(8):
        ids = torch.randint(0, 128, (8,), generator=generator)
        rows.append({"input_ids": ids, "labels": ids})
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=4, save_steps=2, per_device_train_batch_size=4, report_to="none",
        use_cpu=True, remove_unused_columns=False, push_to_hub=True, hub_model_id=HUB_REPO, hub_always_push=True,
        hub_strategy="every_save",
    )
    return NeatTrainer(model=make_adapter(init_weights=True), args=args, train_dataset=rows)


@pytest.mark.parametrize("fault,fragment", [("500", "HTTP 500"), ("drop_before", "connection failed")])
def test_failed_push_is_one_line_and_changes_nothing(hub_server, tmp_path, fault, fragment):
    push_adapter_folder(_pushed_folder(tmp_path, 0), HUB_REPO)
    before = hub_server.files(HUB_REPO)
    hub_server.inject_fault(fault, times=10)  # more than any client-side retry
    with pytest.raises(HubError) as info:
        push_adapter_folder(_pushed_folder(tmp_path, 1), HUB_REPO)
    assert fragment in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert hub_server.files(HUB_REPO) == before


def test_retry_after_a_lost_answer_makes_no_duplicate_commit(hub_server, tmp_path):
    push_adapter_folder(_pushed_folder(tmp_path, 0), HUB_REPO)
    new = _pushed_folder(tmp_path, 1)
    hub_server.inject_fault("drop_after")  # the commit lands, its answer is lost
    with pytest.raises(HubError, match="may have landed"):
        push_adapter_folder(new, HUB_REPO)
    landed = len(hub_server.history(HUB_REPO))
    assert hub_server.files(HUB_REPO)["adapter_model.safetensors"] == (new / ADAPTER_WEIGHTS_NAME).read_bytes()
    push_adapter_folder(new, HUB_REPO)  # the retry
    assert len(hub_server.history(HUB_REPO)) == landed


def test_suggested_neat_hub_push_after_a_landed_final_push_makes_no_commit(hub_server, tmp_path, capsys):
    """neat-train's final push lands but its answer is lost; the `neat-hub push` it suggests must find everything
    already there: no new commit, and the card (with its neat-hf tag) unchanged (it rebuilt another card: 22/22)."""
    from neat_hf.cli.hub import main as neat_hub

    repo, out = "neat-tester/landed", tmp_path / "out"
    hub_server.inject_fault("drop_after", times=1)  # the first commit: the final push (no checkpoint pushes)
    code = cli(["--max_steps", "1", "--output_dir", str(out), "--push_to_hub", "--hub_model_id", repo,
                "--save_strategy", "no", "--max_train_samples", "8", "--max_eval_samples", "4"])
    err = capsys.readouterr().err
    assert code == 1 and "may have landed" in err and f"neat-hub push {out} {repo}" in err, err[-2000:]
    landed, card = len(hub_server.history(repo)), hub_server.files(repo)["README.md"]
    assert b"neat-hf" in card
    assert neat_hub(["push", str(out), repo]) == 0
    assert len(hub_server.history(repo)) == landed
    assert hub_server.files(repo)["README.md"] == card


def test_push_lists_conflicting_files_and_deletes_them_on_request(hub_server, tmp_path, caplog):
    push_adapter_folder(_pushed_folder(tmp_path, 0), HUB_REPO)
    hub_server.add_file(HUB_REPO, "adapter_model.bin", b"an old pickled adapter")
    hub_server.add_file(HUB_REPO, "model.safetensors", b"full weights")
    hub_server.add_file(HUB_REPO, "last-checkpoint/optimizer.pt", b"resume state, kept")
    with caplog.at_level("WARNING", logger="neat_hf.hub"):
        push_adapter_folder(_pushed_folder(tmp_path, 1), HUB_REPO)
    assert "adapter_model.bin" in caplog.text and "model.safetensors" in caplog.text and "delete_conflicting" in caplog.text
    assert {"adapter_model.bin", "model.safetensors"} <= set(hub_server.files(HUB_REPO))
    commits = len(hub_server.history(HUB_REPO))
    push_adapter_folder(_pushed_folder(tmp_path, 2), HUB_REPO, delete_conflicting=True)
    files = hub_server.files(HUB_REPO)
    assert not {"adapter_model.bin", "model.safetensors"} & set(files)
    assert "last-checkpoint/optimizer.pt" in files
    assert len(hub_server.history(HUB_REPO)) == commits + 1  # the new adapter and the deletions: one commit


@pytest.mark.parametrize(
    "remote,fragments",
    [
        (json.dumps({"peft_type": "LORA", "r": 8}).encode(), ["another adapter", "peft_type 'LORA'"]),
        (json.dumps({"adapter_type": "bottleneck"}).encode(), ["another adapter", "peft_type None"]),  # AdapterHub
        (
            json.dumps({"peft_type": "PEANUT", "base_model_name_or_path": "someone/other-base"}).encode(),
            ["an adapter for another base model", "'someone/other-base'"],
        ),
        (b"{not json", ["not a readable JSON object"]),
        (b"\xff\xfe\x00", ["not a readable JSON object"]),
        (b"[1, 2]", ["not a readable JSON object"]),
        (b"[" * 200_000, ["not a readable JSON object"]),  # deeper than the JSON parser's recursion
        (b" " * (MAX_CONFIG_BYTES + 1), ["not an adapter config that can be read", "1,048,577 bytes"]),
    ],
    ids=["lora", "no-peft-type", "other-base", "invalid-json", "not-utf8", "not-an-object", "too-deep", "too-large"],
)
def test_push_names_another_adapters_config_that_it_replaces(hub_server, tmp_path, caplog, remote, fragments):
    folder = tmp_path / "ours"
    model = make_adapter(seed=0)
    model.peft_config["default"].base_model_name_or_path = "neat-tester/tiny-llama"
    model.save_pretrained(folder)
    push_adapter_folder(_pushed_folder(tmp_path, 1), HUB_REPO)
    hub_server.add_file(HUB_REPO, ADAPTER_CONFIG_NAME, remote)
    before = len(hub_server.requests)
    with caplog.at_level("WARNING", logger="neat_hf.hub"):
        push_adapter_folder(folder, HUB_REPO)
    warned = [r.getMessage() for r in caplog.records if r.name.startswith("neat_hf.hub.") and r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "holds another adapter, which this push replaces" in warned[0], warned
    assert all(fragment in warned[0] for fragment in fragments), warned[0]
    assert hub_server.files(HUB_REPO)[ADAPTER_CONFIG_NAME] == (folder / ADAPTER_CONFIG_NAME).read_bytes()
    downloads = [r for r in hub_server.requests[before:] if r["method"] == "GET" and "/resolve/" in r["path"]]
    assert len(downloads) == (0 if len(remote) > MAX_CONFIG_BYTES else 1)  # a config over the bound is not fetched


def test_push_over_an_earlier_version_of_the_same_adapter_warns_nothing(hub_server, tmp_path, caplog):
    push_adapter_folder(_pushed_folder(tmp_path, 0), HUB_REPO)
    other_rank = tmp_path / "r2"
    make_adapter(seed=1, r=2).save_pretrained(other_rank)  # another config file, same PEFT type and base
    with caplog.at_level("WARNING", logger="neat_hf.hub"):
        push_adapter_folder(other_rank, HUB_REPO)
        push_adapter_folder(_pushed_folder(tmp_path, 2), HUB_REPO)
    assert [r for r in caplog.records if r.name.startswith("neat_hf.hub.") and r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize(
    "path,conflicting",
    [
        ("adapter_model.bin", True),
        ("pytorch_adapter.bin", True),
        ("training_args.bin", True),
        ("model.safetensors", True),
        ("model-00001-of-00002.safetensors", True),
        ("model.safetensors.index.json", True),
        ("tf_model.h5", True),
        ("pytorch_lora_weights.safetensors", True),  # diffusers LoRA
        ("my-style-lora.safetensors", True),  # kohya-style LoRA
        ("model-q4_k_m.gguf", True),
        ("gguf/adapter-f16.gguf", True),
        ("old/pytorch_model.bin", True),
        ("adapter_model.safetensors", False),  # the PEFT adapter file: replaced, or an adapter of ours
        ("named/adapter_model.safetensors", False),  # a named adapter's folder
        ("tokenizer.json", False),
        ("adapter_config.json", False),
        ("last-checkpoint/optimizer.pt", False),
        ("checkpoint-500/model.safetensors", False),
    ],
)
def test_conflicting_files_of_an_adapter_repo(path, conflicting):
    assert conflicting_files([path], staged=[]) == ([path] if conflicting else [])
    assert conflicting_files([path], staged=[path]) == []  # what the push writes is replaced, not listed


def test_failed_repo_listing_of_a_checkpoint_push_is_logged_and_training_finishes(hub_server, tmp_path, caplog):
    trainer = _checkpoint_pushing_trainer(tmp_path)
    # The first listing is refused (a 500 or a dropped connection would do too, but the client retries those for
    # about 20 s before giving up).
    hub_server.inject_fault("403", path_contains="/tree/", method="GET")
    with caplog.at_level("WARNING", logger="neat_hf.hub"):
        trainer.train()
    failed = [r.getMessage() for r in caplog.records if "Background push" in r.getMessage()]
    assert len(failed) == 1 and "'Training in progress, step 2'" in failed[0], caplog.text
    assert "Cannot list the files of" in failed[0] and "(403)" in failed[0], failed[0]
    assert [c.title for c in hub_server.history(HUB_REPO)][0] == "Training in progress, step 4"
    assert trainer.state.global_step == 4
    assert (tmp_path / "out" / "checkpoint-4" / "trainer_state.json").is_file()



def test_failed_background_checkpoint_push_is_logged_and_training_finishes(hub_server, tmp_path, caplog):
    trainer = _checkpoint_pushing_trainer(tmp_path)
    hub_server.inject_fault("500", times=10)  # the first checkpoint push fails (client retries included)
    with caplog.at_level("WARNING", logger="neat_hf.hub"):
        trainer.train()
    assert "Background push 'Training in progress, step 2'" in caplog.text and "500" in caplog.text, caplog.text
    assert trainer.state.global_step == 4
    assert (tmp_path / "out" / "checkpoint-4" / "trainer_state.json").is_file()


@pytest.mark.slow
def test_neat_train_keeps_local_results_when_the_final_push_fails(hub_server, tmp_path, capsys):
    from neat_hf.cli.train.main import cli

    out = tmp_path / "out"
    hub_server.inject_fault("500", times=100)  # every commit fails
    argv = ["--max_steps", "2", "--output_dir", str(out), "--max_train_samples", "8", "--max_eval_samples", "4",
            "--push_to_hub", "--hub_model_id", HUB_REPO, "--save_strategy", "no"]
    assert cli(argv) != 0
    err = [line for line in capsys.readouterr().err.splitlines() if "final push failed" in line]
    assert len(err) == 1 and "HTTP 500" in err[0] and "neat-hub push" in err[0], err
    for name in (ADAPTER_WEIGHTS_NAME, ADAPTER_CONFIG_NAME, "trainer_state.json", "eval_results.json", "train_results.json"):
        assert (out / name).is_file(), name
