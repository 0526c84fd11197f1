"""Hub round trips through the real huggingface_hub client against the loopback Hub (tests/hub_server.py).

push -> list files -> load back (neat_hf and stock PEFT) with identical logits, the card's metadata and body, branches
and pull requests, a second push updating the repo, clear errors for a missing repo / revision / file, downloaded
configs validated and never a pickle, HF_HUB_OFFLINE served from the cache, and the token never written or logged.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch
from conftest import model_inputs, model_output, stock_peft, tiny_llama
from hub_fixtures import LM_EVAL_RESULTS, assert_no_token, hub_server, make_adapter  # noqa: F401 (fixture)
from hub_server import DUMMY_TOKEN, hub_offline, patch_hub_endpoint, run_hub_server
from huggingface_hub import (
    CommitInfo,
    CommitOperationAdd,
    HfApi,
    ModelCard,
    hf_hub_download,
    list_repo_files,
    metadata_load,
    model_info,
)
from neat_hf.eval_harness.results import eval_results_from_lm_eval
from neat_hf.hub import HubError, push_adapter_folder
from safetensors import safe_open
from safetensors.torch import save as save_safetensors

from neat_hf import AdapterLoadError, NeatError, NeatModel

REPO = "neat-tester/tiny-llama-neat"
BASE_ID = "neat-tester/tiny-llama"
ADAPTER_FILES = {
    ".gitattributes",
    "README.md",
    "adapter_config.json",
    "adapter_model.safetensors",
    "training_info.json",
}


def _logits_of_repo(repo_id: str, **kwargs) -> torch.Tensor:
    return model_output(NeatModel.from_pretrained(tiny_llama(), repo_id, **kwargs), model_inputs("llama"))


def _all_pushed_text(server, repo_id: str) -> bytes:
    """Every byte a client sent that ended up stored: files of every revision plus commit titles and messages."""
    blobs = []
    for revision in server.branches(repo_id):
        blobs += list(server.files(repo_id, revision).values())
        blobs += [(c.title + c.message).encode() for c in server.history(repo_id, revision)]
    return b"\n".join(blobs)


def test_push_then_load_with_neat_hf_and_stock_peft(hub_server, caplog):
    caplog.set_level(logging.DEBUG)
    model = make_adapter()
    inputs = model_inputs("llama")
    expected = model_output(model, inputs)
    assert not torch.allclose(expected, model_output(tiny_llama(), inputs)), "adapter must change the logits"

    info = model.push_to_hub(REPO, base_model=BASE_ID)

    assert isinstance(info, CommitInfo)
    assert info.oid == hub_server.branches(REPO)["main"]
    assert set(list_repo_files(REPO)) == ADAPTER_FILES
    history = hub_server.history(REPO)
    assert [c.title for c in history] == ["Upload NEAT adapter", "initial commit"]  # exactly one commit
    # Only adapter tensors left the machine: every key is a PEANuT parameter of a targeted module.
    weights = hf_hub_download(REPO, "adapter_model.safetensors")
    with safe_open(weights, framework="pt") as handle:
        keys = list(handle.keys())
    assert keys and all(".peanut_" in k and (".q_proj." in k or ".v_proj." in k) for k in keys)

    torch.testing.assert_close(_logits_of_repo(REPO), expected)
    peft = pytest.importorskip("peft")
    with stock_peft():
        stock = peft.PeftModel.from_pretrained(tiny_llama(), REPO)
    torch.testing.assert_close(model_output(stock, inputs), expected)

    # The token authenticated every write, came from HF_TOKEN, and is nowhere in what was stored or logged.
    writes = [r for r in hub_server.requests if r["method"] == "POST"]
    assert writes and all(r["authorization"] == f"Bearer {DUMMY_TOKEN}" for r in writes)
    assert_no_token(_all_pushed_text(hub_server, REPO))
    assert_no_token(caplog.text)


def test_card_metadata_and_body(hub_server):
    model = make_adapter(depth=1, act_fn="gelu", scaling=2.0)
    training_info = {
        "dataset": "yahma/alpaca-cleaned",
        "num_train_epochs": 3,
        "learning_rates": {"adapter": 1e-3, "head": 1e-4},
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "world_size": 2,
        "deepspeed_stage": 3,
        "hardware": "2x NVIDIA H100 80GB",
        "hub_token": DUMMY_TOKEN,  # must be dropped
    }
    model.push_to_hub(
        REPO,
        base_model=BASE_ID,
        training_info=training_info,
        eval_results=eval_results_from_lm_eval(LM_EVAL_RESULTS),
        license="apache-2.0",
    )
    readme = hf_hub_download(REPO, "README.md")
    meta = metadata_load(readme)
    assert meta["library_name"] == "peft"
    assert meta["base_model"] == BASE_ID
    assert meta["tags"] == ["neat", "peanut", "peft", f"base_model:adapter:{BASE_ID}"]
    assert meta["datasets"] == ["yahma/alpaca-cleaned"]
    assert meta["pipeline_tag"] == "text-generation"
    assert meta["license"] == "apache-2.0"

    card = ModelCard.load(readme)
    results = {(r.dataset_name, r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}
    assert results[("arc_easy", "acc", None)] == 0.25
    assert results[("arc_easy", "acc_norm", None)] == 0.3
    assert results[("gsm8k", "exact_match", "strict-match")] == 0.125
    assert card.data.model_name == REPO

    body = card.text
    trainable = sum(t.numel() for t in model.get_adapter_state_dict().values())
    for needle in (
        "arXiv 2410.01870",
        "| rank `r` | 4 |",
        "| depth | 1 hidden r×r layer(s) per side (paper depth 4) |",
        "| activation `act_fn` | `gelu` |",
        "| scaling | 2 |",
        "| target modules | `q_proj`, `v_proj` |",
        f"| adapter parameters | {trainable:,d} (",
        "| epochs | 3 |",
        "| learning rates | adapter: 0.001, head: 0.0001 |",
        "| effective batch size | 16 |",
        "| DeepSpeed | ZeRO stage 3 |",
        "| hardware | 2x NVIDIA H100 80GB |",
        f'NeatModel.from_pretrained(base, "{REPO}")',
        f'PeftModel.from_pretrained(base, "{REPO}")',
        f'AutoModelForCausalLM.from_pretrained("{BASE_ID}")',
        "| arc_easy | acc_norm | 0.3000 | 0 | test |",
        "first 8 examples",
        "- transformers ",
        "- peft ",
        "- deepspeed ",
    ):
        assert needle in body, f"card body lacks {needle!r}:\n{body}"
    assert "hub_token" not in body and "hub_token" not in hub_server.files(REPO)["training_info.json"].decode()
    assert_no_token(_all_pushed_text(hub_server, REPO))

    # What the Hub API reports back from the card (cardData, library_name) is what the client parses.
    info = model_info(REPO)
    assert info.library_name == "peft" and info.card_data.base_model == BASE_ID


def test_push_to_new_branch_and_as_pull_request(hub_server):
    main_model, dev_model, pr_model = make_adapter(0), make_adapter(1), make_adapter(2)
    main_model.push_to_hub(REPO)
    main_weights = hub_server.files(REPO)["adapter_model.safetensors"]

    info = dev_model.push_to_hub(REPO, revision="dev", commit_message="dev adapter")
    assert set(hub_server.branches(REPO)) == {"main", "dev"}
    assert info.oid == hub_server.branches(REPO)["dev"]
    assert hub_server.files(REPO)["adapter_model.safetensors"] == main_weights  # main untouched
    torch.testing.assert_close(_logits_of_repo(REPO, revision="dev"), model_output(dev_model, model_inputs("llama")))
    torch.testing.assert_close(_logits_of_repo(REPO), model_output(main_model, model_inputs("llama")))

    pr = pr_model.push_to_hub(REPO, create_pr=True)
    assert pr.pr_url is not None and pr.pr_revision == "refs/pr/1"
    assert hub_server.files(REPO)["adapter_model.safetensors"] == main_weights
    torch.testing.assert_close(
        _logits_of_repo(REPO, revision="refs/pr/1"), model_output(pr_model, model_inputs("llama"))
    )


def test_second_push_updates_the_repo_and_the_cache(hub_server):
    first, second = make_adapter(0), make_adapter(1)
    first.push_to_hub(REPO)
    torch.testing.assert_close(_logits_of_repo(REPO), model_output(first, model_inputs("llama")))  # now cached

    info = second.push_to_hub(REPO, commit_message="second version")
    assert hub_server.history(REPO)[0].title == "second version"
    torch.testing.assert_close(_logits_of_repo(REPO), model_output(second, model_inputs("llama")))

    # Pushing identical files makes no empty commit; the client returns the current head.
    again = second.push_to_hub(REPO, commit_message="no change")
    assert again.oid == info.oid and len(hub_server.history(REPO)) == 3


def test_private_repo_and_namespace_defaulting(hub_server):
    model = make_adapter()
    model.push_to_hub("private-neat", private=True)  # no namespace: the token's user (whoami) is used
    assert hub_server.is_private("neat-tester/private-neat")
    readme = hub_server.files("neat-tester/private-neat")["README.md"].decode()
    assert 'NeatModel.from_pretrained(base, "neat-tester/private-neat")' in readme


def test_missing_repo_revision_and_file_give_clear_errors(hub_server):
    with pytest.raises(AdapterLoadError, match="neat-tester/does-not-exist"):
        _logits_of_repo("neat-tester/does-not-exist")

    make_adapter().push_to_hub(REPO)
    with pytest.raises(AdapterLoadError) as err:
        _logits_of_repo(REPO, revision="no-such-branch")
    assert "no-such-branch" in str(err.value) and REPO in str(err.value)

    HfApi().create_repo("neat-tester/config-only")
    config = hub_server.files(REPO)["adapter_config.json"]
    hub_server.add_file("neat-tester/config-only", "adapter_config.json", config)
    with pytest.raises(AdapterLoadError) as err:
        _logits_of_repo("neat-tester/config-only")
    assert "adapter_model.safetensors" in str(err.value) and "neat-tester/config-only" in str(err.value)


def test_push_to_missing_commit_names_the_revision(hub_server):
    missing = "0" * 40
    with pytest.raises(HubError, match=f"revision '{missing}' does not exist") as err:
        make_adapter().push_to_hub(REPO, revision=missing)
    assert REPO in str(err.value)
    assert set(hub_server.files(REPO)) == {".gitattributes"}


def test_no_pickle_is_ever_downloaded(hub_server):
    """A repo with only a pickled adapter_model.bin is refused, and the .bin is never requested."""
    model = make_adapter()
    model.push_to_hub(REPO)
    HfApi().create_repo("neat-tester/pickled")
    hub_server.add_file("neat-tester/pickled", "adapter_config.json", hub_server.files(REPO)["adapter_config.json"])
    hub_server.add_file("neat-tester/pickled", "adapter_model.bin", b"\x80\x04 pickle bytes")
    base = tiny_llama()
    with pytest.raises(AdapterLoadError, match="adapter_model.safetensors"):
        NeatModel.from_pretrained(base, "neat-tester/pickled")
    assert not any(r["path"].endswith((".bin", ".pt", ".pkl")) for r in hub_server.requests)
    assert type(base.model.layers[0].self_attn.q_proj) is torch.nn.Linear  # base untouched


@pytest.mark.parametrize(
    "patch",
    [{"peft_type": "LORA"}, {"r": "8"}, {"act_fn": "not-an-activation"}, {"target_modules": 3}],
    ids=["peft_type", "r-string", "act_fn", "target_modules"],
)
def test_downloaded_config_is_validated_before_use(hub_server, patch):
    make_adapter().push_to_hub(REPO)
    config = json.loads(hub_server.files(REPO)["adapter_config.json"])
    config.update(patch)
    hub_server.add_file(REPO, "adapter_config.json", json.dumps(config).encode())
    base = tiny_llama()
    with pytest.raises(AdapterLoadError):
        NeatModel.from_pretrained(base, REPO)
    assert type(base.model.layers[0].self_attn.q_proj) is torch.nn.Linear


def test_hf_hub_offline_loads_from_cache(hub_server):
    model = make_adapter()
    model.push_to_hub(REPO)
    expected = _logits_of_repo(REPO)  # first download fills the cache
    requests_before = hub_server.request_count()
    with hub_offline():
        torch.testing.assert_close(_logits_of_repo(REPO), expected)
        with pytest.raises(AdapterLoadError):
            _logits_of_repo("neat-tester/never-downloaded")
    assert hub_server.request_count() == requests_before, "offline mode must not touch the network"


def test_offline_cache_miss_says_offline(hub_server):
    with hub_offline(), pytest.raises(AdapterLoadError, match="offline"):
        _logits_of_repo("neat-tester/never-downloaded")


def test_token_is_never_uploaded(hub_server):
    model = make_adapter()
    with pytest.raises(NeatError, match="token"):
        model.push_to_hub(REPO, commit_message=f"oops {DUMMY_TOKEN}")
    assert hub_server.repo_ids() == [], "nothing may reach the Hub when the push is refused"
    with pytest.raises(NeatError, match="token"):
        model.push_to_hub(REPO, tags=[DUMMY_TOKEN])  # would land in the card
    assert hub_server.repo_ids() == []


def test_rejected_token_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", DUMMY_TOKEN)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_DISABLE_TELEMETRY", True)
    with (
        run_hub_server(valid_tokens={"hf_someOtherValidToken0000000000000000"}) as server,
        patch_hub_endpoint(server.endpoint),
    ):
        with pytest.raises(HubError, match="refused") as err:
            make_adapter().push_to_hub(REPO)
    assert DUMMY_TOKEN not in str(err.value)


def test_push_adapter_folder_uploads_only_adapter_files(hub_server, tmp_path):
    model = make_adapter()
    folder = tmp_path / "run"
    model.save_pretrained(folder)
    (folder / "optimizer.pt").write_bytes(b"pickle")
    (folder / "training_args.bin").write_bytes(b"pickle")
    (folder / "tokenizer_config.json").write_text("{}")
    (folder / "checkpoint-5").mkdir()
    (folder / "checkpoint-5" / "adapter_config.json").write_text("{}")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    push_adapter_folder(folder, REPO, training_info={"dataset": "yahma/alpaca-cleaned"})
    assert set(hub_server.files(REPO)) == ADAPTER_FILES | {"tokenizer_config.json"}
    after = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    assert after == before, "pushing must not modify the user's folder"
    torch.testing.assert_close(_logits_of_repo(REPO), model_output(model, model_inputs("llama")))


def test_push_adapter_folder_refuses_non_adapters(hub_server, tmp_path):
    with pytest.raises(AdapterLoadError, match="No adapter_config.json"):
        push_adapter_folder(tmp_path, REPO)
    full = tmp_path / "full"
    make_adapter().save_pretrained(full)
    (full / "adapter_model.safetensors").write_bytes(save_safetensors({"model.embed_tokens.weight": torch.zeros(2, 2)}))
    with pytest.raises(AdapterLoadError, match="not a PEFT adapter file"):
        push_adapter_folder(full, REPO)
    assert hub_server.repo_ids() == []


def test_existing_repo_written_by_others_is_updated_in_one_commit(hub_server):
    HfApi().create_repo(REPO)
    HfApi().create_commit(REPO, [CommitOperationAdd("notes.txt", b"keep me")], commit_message="notes")
    make_adapter().push_to_hub(REPO)
    assert "notes.txt" in hub_server.files(REPO)
    assert [c.title for c in hub_server.history(REPO)][:2] == ["Upload NEAT adapter", "notes"]


def test_a_setting_saved_is_a_setting_loaded_from_the_hub_too(hub_server):
    """dropout is neat-only (training_info.json, which stock PEFT does not read): loading from the Hub fetches it as
    loading from the folder reads it, so resuming from a Hub adapter trains with the recipe it was trained with."""
    from neat_hf import NeatConfig

    make_adapter(dropout=0.1).push_to_hub(REPO, base_model=BASE_ID)
    assert NeatConfig.from_pretrained(REPO).dropout == 0.1
    resumed = NeatModel.from_pretrained(tiny_llama(), REPO, is_trainable=True)
    assert resumed.peft_config["default"].dropout == 0.1
    assert any(isinstance(m, torch.nn.Dropout) and m.p == 0.1 for m in resumed.modules())
