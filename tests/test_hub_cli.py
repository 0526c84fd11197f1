"""`neat-hub push / card / merge`, driven through `main([...])` (and once as a real subprocess with HF_ENDPOINT)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import model_inputs, model_output, tiny_bert_classifier, tiny_gpt2, tiny_llama, tiny_vit_classifier
from hub_fixtures import LM_EVAL_RESULTS, assert_no_token, hub_server, make_adapter  # noqa: F401 (fixture)
from huggingface_hub import ModelCard, metadata_load
from neat_hf.cli.hub import main
from transformers import AutoModelForCausalLM, AutoModelForImageClassification, AutoModelForSequenceClassification

from neat_hf import NeatConfig, NeatModel, get_neat_model

REPO = "neat-tester/cli-neat"


def _saved_adapter(tmp_path, seed=0):
    model = make_adapter(seed)
    folder = tmp_path / f"adapter-{seed}"
    model.save_pretrained(folder)
    return model, folder


def _saved_base_and_adapter(tmp_path, factory, config: NeatConfig, seed=0):
    """A base checkpoint on disk plus a non-identity adapter trained on it (as a user would have)."""
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    factory().save_pretrained(base_dir)
    torch.manual_seed(seed)
    live = get_neat_model(factory(), config)
    live.save_pretrained(adapter_dir)
    return base_dir, adapter_dir, live


def test_push_command(hub_server, tmp_path, capsys):
    model, folder = _saved_adapter(tmp_path)
    (folder / "optimizer.pt").write_bytes(b"not uploaded")
    code = main(["push", str(folder), REPO, "--private", "--revision", "v1", "--commit-message", "from the CLI"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert out.strip() == f"{hub_server.endpoint}/{REPO}/commit/{hub_server.branches(REPO)['v1']}"
    assert hub_server.is_private(REPO)
    files = hub_server.files(REPO, revision="v1")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(files)
    assert "optimizer.pt" not in files
    assert set(hub_server.files(REPO)) == {".gitattributes"}  # main untouched
    assert hub_server.history(REPO, "v1")[0].title == "from the CLI"
    card = files["README.md"].decode()
    assert f'NeatModel.from_pretrained(base, "{REPO}")' in card
    loaded = NeatModel.from_pretrained(tiny_llama(), REPO, revision="v1")
    torch.testing.assert_close(model_output(loaded, model_inputs("llama")), model_output(model, model_inputs("llama")))
    assert_no_token(out + err)


def test_card_command_adds_and_updates_eval_results(tmp_path, capsys):
    _, folder = _saved_adapter(tmp_path)
    assert main(["card", str(folder), "--repo-id", REPO, "--base-model", "neat-tester/tiny-llama"]) == 0
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == "neat-tester/tiny-llama"
    assert not card.data.eval_results

    # lm-eval writes <output_path>/<model_name>/results_<date>.json; a folder or the file both work.
    results_dir = tmp_path / "eval" / "neat-tester__cli-neat"
    results_dir.mkdir(parents=True)
    (results_dir / "results_2026-11-27T10-00-00.json").write_text(json.dumps(LM_EVAL_RESULTS))
    assert main(["card", str(folder), "--eval-results", str(tmp_path / "eval"), "--repo-id", REPO]) == 0
    card = ModelCard.load(folder / "README.md")
    scores = {(r.dataset_name, r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}
    assert scores[("boolq", "acc", None)] == 0.75
    assert card.data.base_model is None or card.data.base_model == "neat-tester/tiny-llama"

    # A later run on one task replaces that task's scores and keeps the others.
    update = {
        "results": {"boolq": {"alias": "boolq", "acc,none": 0.875}},
        "configs": {"boolq": LM_EVAL_RESULTS["configs"]["boolq"]},
        "n-shot": {"boolq": 0},
    }
    (results_dir / "update.json").write_text(json.dumps(update))
    assert main(["card", str(folder), "--eval-results", str(results_dir / "update.json")]) == 0
    card = ModelCard.load(folder / "README.md")
    scores = {(r.dataset_name, r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}
    assert scores[("boolq", "acc", None)] == 0.875
    assert scores[("arc_easy", "acc_norm", None)] == 0.3
    assert "| boolq | acc | 0.8750 | 0 | validation |" in card.text
    capsys.readouterr()


def test_card_command_errors(tmp_path, capsys):
    assert main(["card", str(tmp_path)]) == 2  # bad input: 2 (a failing Hub: 1)
    assert "adapter_config.json" in capsys.readouterr().err
    _, folder = _saved_adapter(tmp_path)
    card_before = (folder / "README.md").read_bytes()  # save_pretrained writes a first card
    (tmp_path / "bad.json").write_text('{"not": "lm-eval"}')
    assert main(["card", str(folder), "--eval-results", str(tmp_path / "bad.json")]) == 2
    assert "results" in capsys.readouterr().err
    assert (folder / "README.md").read_bytes() == card_before, "a failed run must not change the card"


def test_push_command_errors(hub_server, tmp_path, capsys):
    assert main(["push", str(tmp_path / "missing"), REPO]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["push"])  # argparse: missing arguments -> exit status 2
    assert hub_server.repo_ids() == []


def test_exit_status_tells_bad_input_from_a_failing_hub_from_a_bug(tmp_path, monkeypatch, capsys):
    """Bad input is one line and status 2 (above); a failing Hub is one `HubError` line and status 1; anything else is
    a bug and propagates with its traceback instead of being reported as the user's mistake."""
    import neat_hf.cards.adapter_card
    import neat_hf.hub.commit
    from neat_hf.hub import HubError

    _, folder = _saved_adapter(tmp_path)

    def hub_down(*args, **kwargs):
        raise HubError(f"Cannot push to {REPO!r}: the Hub failed with HTTP 500 (Internal Server Error).")

    monkeypatch.setattr(neat_hf.hub.commit, "push_adapter_folder", hub_down)
    assert main(["push", str(folder), REPO]) == 1
    assert capsys.readouterr().err.splitlines() == [
        f"neat-hub push: error: Cannot push to {REPO!r}: the Hub failed with HTTP 500 (Internal Server Error)."
    ]

    def buggy(*args, **kwargs):
        raise ValueError("a bug, not the user's input")

    monkeypatch.setattr(neat_hf.cards.adapter_card, "write_model_card", buggy)
    with pytest.raises(ValueError, match="a bug"):
        main(["card", str(folder)])


@pytest.mark.parametrize("command", ["merge", "export-lora"])
def test_a_base_that_cannot_be_loaded_is_one_line(tmp_path, monkeypatch, capsys, command):
    """transformers' errors loading BASE (a folder that holds no model: a ValueError; an unknown Hub id, no network:
    an OSError) are one line naming BASE, not a traceback."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base").mkdir()
    _, folder = _saved_adapter(tmp_path)
    assert main([command, "base", str(folder), "out"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"neat-hub {command}: error: Cannot load the config of base model 'base': "), err
    assert "model_type" in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_loading_errors_tell_the_hub_failing_from_bad_input():
    """transformers wraps huggingface_hub's errors in an OSError; the chain tells a Hub that cannot be reached (or
    fails) from a name that does not exist there."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    from neat_hf.errors import NeatError
    from neat_hf.hub import HubError
    from neat_hf.hub.error_translation import TransportError, loading_errors  # httpx2's (huggingface_hub 1.x: httpx's)

    def transformers_error(cause: BaseException) -> OSError:
        error = OSError("We couldn't connect to 'https://huggingface.co' to load the files.")
        error.__cause__ = cause  # `raise OSError(...) from cause`, as transformers does
        return error

    unreachable = LocalEntryNotFoundError("not in the cache")
    unreachable.__context__ = TransportError("[Errno 111] Connection refused")  # huggingface_hub's own chain
    cases = [
        (transformers_error(unreachable), HubError),  # no connection
        (transformers_error(LocalEntryNotFoundError("offline and not cached")), NeatError),  # HF_HUB_OFFLINE
        (ValueError("Unrecognized model in base."), NeatError),
    ]
    for error, expected in cases:
        with pytest.raises(expected, match=r"Cannot load base model 'org/model' at revision 'v1': ") as info:
            with loading_errors("base model", "org/model", revision="v1"):
                raise error
        assert info.value.__cause__ is error
    with pytest.raises(NeatError, match="passes through") as info:  # neat-hf's own errors are not rewrapped
        with loading_errors("base model", "org/model"):
            raise NeatError("passes through")
    assert info.value.__cause__ is None


@pytest.mark.slow
def test_merge_command_matches_live_adapter_and_pushes(hub_server, tmp_path, capsys):
    config = NeatConfig(r=4, depth=1, act_fn="gelu", init_weights=False, task_type="CAUSAL_LM")
    base_dir, adapter_dir, live = _saved_base_and_adapter(tmp_path, tiny_llama, config)
    out_dir = tmp_path / "merged"
    code = main(["merge", str(base_dir), str(adapter_dir), str(out_dir), "--push-to-hub", "neat-tester/merged"])
    out, err = capsys.readouterr()
    assert code == 0, err

    inputs = model_inputs("llama")
    merged = AutoModelForCausalLM.from_pretrained(out_dir)
    expected = model_output(live, inputs)
    assert not torch.allclose(expected, model_output(tiny_llama(), inputs))
    torch.testing.assert_close(model_output(merged, inputs), expected, atol=1e-5, rtol=1e-4)
    assert not [p.name for p in out_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    meta = metadata_load(out_dir / "README.md")
    assert meta["library_name"] == "transformers" and "neat" in meta["tags"]

    pushed = hub_server.files("neat-tester/merged")
    assert {"config.json", "model.safetensors", "README.md"} <= set(pushed)
    commit_url = f"{hub_server.endpoint}/neat-tester/merged/commit/{hub_server.branches('neat-tester/merged')['main']}"
    # (DeepSpeed, imported by transformers, may print its accelerator warning to stdout first.)
    assert out.strip().splitlines()[-2:] == [str(out_dir), commit_url]

    # Refuses to overwrite a non-empty output folder.
    assert main(["merge", str(base_dir), str(adapter_dir), str(out_dir)]) == 2
    assert "not empty" in capsys.readouterr().err


def test_merge_command_refuses_a_base_of_another_architecture_before_loading_it(tmp_path, capsys):
    """An adapter saved from LlamaForCausalLM and a GPT-2 base: one line, nothing written (loading the GPT-2 folder with
    the LLaMA class would build LLaMA's default, 7B-sized model first)."""
    base_dir, adapter_dir, _ = _saved_base_and_adapter(tmp_path, tiny_llama, NeatConfig(r=4))
    assert json.loads((adapter_dir / "adapter_config.json").read_text())["auto_mapping"]["base_model_class"] == "LlamaForCausalLM"
    gpt2_dir = tmp_path / "gpt2"
    tiny_gpt2().save_pretrained(gpt2_dir)
    assert main(["merge", str(gpt2_dir), str(adapter_dir), str(tmp_path / "merged")]) == 2
    assert "is a 'gpt2' model: the adapter does not fit it" in capsys.readouterr().err
    assert not (tmp_path / "merged").exists()
    assert main(["merge", str(base_dir), str(adapter_dir), str(tmp_path / "merged")]) == 0  # its own base still merges


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_merge_command_classifier_with_trained_head(tmp_path, capsys, kind):
    """The base class comes from task_type (BERT: SEQ_CLS) or from PEFT's auto_mapping (ViT: no task_type), and the
    trained head (modules_to_save) is merged in, even when it has more labels than the saved base checkpoint."""
    if kind == "bert":
        config = NeatConfig(r=4, init_weights=False, task_type="SEQ_CLS", target_modules=["query", "value"])
        factory, auto = tiny_bert_classifier, AutoModelForSequenceClassification
    else:
        config = NeatConfig(
            r=4, init_weights=False, target_modules=["q_proj", "v_proj"], modules_to_save=["classifier"]
        )
        factory, auto = tiny_vit_classifier, AutoModelForImageClassification
    base_dir, adapter_dir = tmp_path / "base", tmp_path / "adapter"
    factory(num_labels=2).save_pretrained(base_dir)  # the published base: 2 labels
    torch.manual_seed(0)
    live = get_neat_model(factory(num_labels=5), config)  # fine-tuned with 5 labels: head trained from scratch
    live.save_pretrained(adapter_dir)

    assert main(["merge", str(base_dir), str(adapter_dir), str(tmp_path / "merged")]) == 0, capsys.readouterr().err
    merged = auto.from_pretrained(tmp_path / "merged")
    assert merged.config.num_labels == 5
    inputs = model_inputs(kind)
    torch.testing.assert_close(model_output(merged, inputs), model_output(live, inputs), atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_console_script_in_a_subprocess_uses_hf_endpoint(hub_server, tmp_path):
    """The installed CLI reads HF_ENDPOINT / HF_TOKEN from the environment like any huggingface_hub program."""
    _, folder = _saved_adapter(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "neat_hf.cli.hub", "push", str(folder), REPO],
        env=hub_server.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "adapter_model.safetensors" in hub_server.files(REPO)
    assert_no_token(proc.stdout + proc.stderr)


def test_help_shows_an_example_per_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    shown = capsys.readouterr().out
    for command in ("push", "card", "merge", "export-lora"):
        assert f"\n  neat-hub {command} " in shown, command
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert f"neat-hub {command} " in capsys.readouterr().out.split("example:")[1]


def test_unrecognized_option_gets_a_suggestion(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["merge", str(tmp_path), str(tmp_path), str(tmp_path / "out"), "--dtpye", "float32"])
    assert exit_info.value.code == 2
    assert "--dtpye (did you mean --dtype?)" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["merge", "export-lora"])
def test_a_missing_local_adapter_is_named_at_once(tmp_path, monkeypatch, capsys, command):
    """The issue's `neat-hub merge base neat-outptu out`: no Hub request (and no retries), one line within a second."""
    import time

    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("the Hub was asked for a local path")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base").mkdir()
    (tmp_path / "neat-output").mkdir()
    start = time.monotonic()
    assert main([command, "base", "neat-outptu", "out"]) == 2
    assert time.monotonic() - start < 1.0
    err = capsys.readouterr().err
    assert "ADAPTER 'neat-outptu': no such local folder" in err and "Did you mean 'neat-output'?" in err
    assert not (tmp_path / "out").exists()
    # A typo of a folder path is a missing local path too, whatever its spelling; a Hub id is still a Hub id.
    assert main([command, "./bsae", "neat-output", "out"]) == 2
    assert "BASE './bsae': no such local folder" in capsys.readouterr().err


def test_merge_output_honours_the_umask(tmp_path):
    """The merged folder and its files get the permissions mkdir/open would give (the folder was 0700, weights 0600)."""
    import os
    import stat

    config = NeatConfig(r=4, init_weights=False, task_type="CAUSAL_LM")
    base_dir, adapter_dir, _ = _saved_base_and_adapter(tmp_path, tiny_llama, config)
    previous = os.umask(0o022)
    try:
        assert main(["merge", str(base_dir), str(adapter_dir), str(tmp_path / "merged")]) == 0
    finally:
        os.umask(previous)
    out = tmp_path / "merged"
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir() if p.is_file()}
    assert modes and set(modes.values()) == {0o644}, modes
