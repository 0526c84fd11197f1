"""Trainer Hub pushes (push_to_hub, hub_model_id, hub_strategy, hub_private_repo, hub_revision) on the loopback Hub.

Every push must carry the adapter and the NEAT card, never base-model weights or pickled training arguments at the
repo root; checkpoint strategies add the resume state under last-checkpoint/ or checkpoint-N/.
"""

from __future__ import annotations

import json
import threading

import pytest
import torch
from conftest import model_inputs, model_output, tiny_llama
from hub_fixtures import assert_no_token, hub_server, make_adapter  # noqa: F401 (fixture)
from huggingface_hub import HfApi, ModelCard
from neat_hf.trainers.hub_mixin import NeatHubMixin
from neat_hf.trainers import NeatTrainer, NeatTrainingArguments
from safetensors import safe_open
from transformers import TrainingArguments

from neat_hf import NeatModel

REPO = "neat-tester/trained-neat"
ROOT_FILES = {".gitattributes", "README.md", "adapter_config.json", "adapter_model.safetensors", "training_info.json",
              "training_curve.png"}  # the card shows the loss curve: it goes up with it


def _dataset(n=8):
    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(n):
        ids = torch.randint(0, 128, (8,), generator=generator)
        rows.append({"input_ids": ids, "labels": ids})
    return rows


def _train(tmp_path, model=None, args_class=TrainingArguments, **hub_args):
    model = model if model is not None else make_adapter(init_weights=True)  # B = 0: training must move it
    args = args_class(**{
        "output_dir": str(tmp_path / "out"),
        "max_steps": 4,
        "save_steps": 2,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "logging_steps": 1,
        "report_to": "none",
        "use_cpu": True,
        "remove_unused_columns": False,
        "push_to_hub": True,
        "hub_model_id": REPO,
        "hub_always_push": True,  # deterministic: never skip a checkpoint push because the previous one is running
        **hub_args,
    })
    trainer = NeatTrainer(model=model, args=args, train_dataset=_dataset())
    trainer.neat_dataset_name = "neat-tester/tiny-text"
    trainer.train()  # waits for the asynchronous checkpoint pushes before returning
    assert trainer.push_in_progress is None or trainer.push_in_progress.is_done()
    return trainer, model


def _assert_adapter_only(files: dict[str, bytes], tmp_path) -> None:
    assert not [p for p in files if p.rsplit("/", 1)[-1] in ("model.safetensors", "pytorch_model.bin")]
    assert "training_args.bin" not in files  # never at the root (a pickle)
    for path, data in files.items():
        if path.endswith("adapter_model.safetensors"):
            target = tmp_path / "check.safetensors"
            target.write_bytes(data)
            with safe_open(target, framework="pt") as handle:
                assert all(".peanut_" in k for k in handle.keys()), f"{path} holds non-adapter tensors"


def _assert_loads_as(model, revision="main"):
    loaded = NeatModel.from_pretrained(tiny_llama(), REPO, revision=revision)
    inputs = model_inputs("llama")
    expected = model_output(model, inputs)
    assert not torch.allclose(expected, model_output(tiny_llama(), inputs)), "training must have changed the adapter"
    torch.testing.assert_close(model_output(loaded, inputs), expected)


def test_hub_strategy_end_pushes_once_with_our_card(hub_server, tmp_path):
    trainer, model = _train(tmp_path, hub_strategy="end")
    assert [c.title for c in hub_server.history(REPO)] == ["initial commit"], "no push during training"
    (tmp_path / "out" / "model.safetensors").write_bytes(b"full weights must never be pushed")

    info = trainer.push_to_hub(finetuned_from="neat-tester/tiny-llama", license="apache-2.0")
    assert info.oid == hub_server.branches(REPO)["main"]
    files = hub_server.files(REPO)
    assert set(files) == ROOT_FILES
    _assert_adapter_only(files, tmp_path)
    assert [c.title for c in hub_server.history(REPO)] == ["End of training", "initial commit"]
    _assert_loads_as(model)

    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "peft" and card.data.base_model == "neat-tester/tiny-llama"
    assert "neat" in card.data.tags and card.data.license == "apache-2.0"
    assert card.data.datasets == ["neat-tester/tiny-text"]
    for needle in (
        "| optimizer steps | 4 |",
        "| effective batch size | 4 |",
        "| DeepSpeed | not used |",
        "| learning rate | 0.01 |",
    ):
        assert needle in card.text, needle
    info_json = json.loads(files["training_info.json"])
    assert info_json["global_step"] == 4 and "train_loss" in info_json and "final_train_loss" in info_json
    assert "](training_curve.png)" in card.text and files["training_curve.png"].startswith(b"\x89PNG")
    assert_no_token(b"\n".join(files.values()))


def test_hub_strategy_every_save_pushes_each_checkpoint(hub_server, tmp_path):
    _, model = _train(tmp_path, hub_strategy="every_save")
    titles = [c.title for c in hub_server.history(REPO)]
    assert titles == ["Training in progress, step 4", "Training in progress, step 2", "initial commit"]
    files = hub_server.files(REPO)
    assert set(files) == ROOT_FILES  # adapter + card only, no checkpoint folder
    _assert_adapter_only(files, tmp_path)
    assert ModelCard(files["README.md"].decode()).data.library_name == "peft"
    _assert_loads_as(model)
    for commit in hub_server.history(REPO):
        assert_no_token((commit.title + commit.message).encode())


def test_hub_strategy_checkpoint_to_new_private_branch(hub_server, tmp_path):
    _, model = _train(tmp_path, hub_strategy="checkpoint", hub_revision="experiment", hub_private_repo=True)
    assert hub_server.is_private(REPO)
    assert set(hub_server.files(REPO)) == {".gitattributes"}, "main untouched when hub_revision is set"
    files = hub_server.files(REPO, revision="experiment")
    assert ROOT_FILES <= set(files)
    checkpoint = {p for p in files if p.startswith("last-checkpoint/")}
    assert {
        "last-checkpoint/adapter_model.safetensors",
        "last-checkpoint/optimizer.pt",
        "last-checkpoint/trainer_state.json",
    } <= checkpoint
    assert json.loads(files["last-checkpoint/trainer_state.json"])["global_step"] == 4
    _assert_adapter_only(files, tmp_path)
    _assert_loads_as(model, revision="experiment")


def test_hub_strategy_all_checkpoints(hub_server, tmp_path):
    _train(tmp_path, hub_strategy="all_checkpoints")
    files = hub_server.files(REPO)
    assert {"checkpoint-2/adapter_model.safetensors", "checkpoint-4/adapter_model.safetensors"} <= set(files)
    assert not any(p.startswith("last-checkpoint/") for p in files)
    _assert_adapter_only(files, tmp_path)


def test_trackio_run_pushes_card_with_badge_tag_losses_and_curve(hub_server, tmp_path):
    """`report_to="trackio"`, logged locally (`trackio_static_space_id=False`: no Space is made on push): the pushed
    card links the run (badge and `trackio:<url>` tag) and shows the final losses and the loss curve pushed with it."""
    from neat_hf.trainers.trackers import trackio_run_url

    trainer, _ = _train(tmp_path, hub_strategy="end", report_to="trackio", project="neat-hf-tests",
                        run_name="hub-push", trackio_static_space_id=False)
    trainer.push_to_hub()
    files = hub_server.files(REPO)
    assert set(files) == ROOT_FILES
    card = ModelCard(files["README.md"].decode())
    url = trackio_run_url("neat-hf-tests", "hub-push")
    assert "trackio" in card.data.tags and f"trackio:{url}" in card.data.tags
    assert f'title="Visualize in Trackio" width="150" height="24"/>]({url})' in card.text
    info = json.loads(files["training_info.json"])
    assert info["trackio_url"] == url and info["global_step"] == 4
    assert f"| final training loss | {info['final_train_loss']:g} |" in card.text
    assert files["training_curve.png"] == (tmp_path / "out" / "training_curve.png").read_bytes()
    assert "](training_curve.png)" in card.text


def test_create_model_card_writes_the_neat_card(tmp_path):
    model = make_adapter()
    args = NeatTrainingArguments(
        output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, max_steps=1, neat_learning_rate=2e-3
    )
    trainer = NeatTrainer(model=model, args=args)
    trainer.create_model_card()  # nothing saved yet: a warning, no file
    assert not (tmp_path / "out" / "README.md").exists()
    trainer.save_model()
    trainer.create_model_card(dataset="neat-tester/tiny-text", tags=["custom"])
    card = ModelCard.load(tmp_path / "out" / "README.md")
    assert card.data.library_name == "peft" and card.data.tags[-1] == "custom"
    assert card.data.datasets == ["neat-tester/tiny-text"]
    assert "| learning rates | NEAT: 0.002 |" in card.text
    assert json.loads((tmp_path / "out" / "training_info.json").read_text())["learning_rates"] == {"NEAT": 0.002}


def test_neat_trainer_uses_the_hub_mixin():
    assert issubclass(NeatTrainer, NeatHubMixin)
    assert NeatTrainer.push_to_hub is NeatHubMixin.push_to_hub
    assert NeatTrainer._push_from_checkpoint is NeatHubMixin._push_from_checkpoint


# ---------------------------------------------------------------------------------------------- conflicting repo files
LORA_CONFIG = {"peft_type": "LORA", "base_model_name_or_path": "someone/other-base", "r": 8, "lora_alpha": 16}
STALE = {"adapter_model.bin", "model.safetensors"}


def _plant_another_adapter(hub_server) -> int:
    """A repo holding another adapter: a pickle, full-model weights and a LoRA config; returns its commit count."""
    HfApi().create_repo(REPO)
    hub_server.add_file(REPO, "adapter_model.bin", b"an old pickled adapter")
    hub_server.add_file(REPO, "model.safetensors", b"full weights")
    hub_server.add_file(REPO, "adapter_config.json", json.dumps(LORA_CONFIG).encode())
    return len(hub_server.history(REPO))


def _hub_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("neat_hf.hub.") and r.levelname == "WARNING"]


def _push_all(tmp_path, strategy, **hub_args):
    """Train with `strategy`; for "end", push once at the end as `trainer.push_to_hub()` does. Returns the titles of the
    commits made."""
    trainer, _ = _train(tmp_path, hub_strategy=strategy, **hub_args)
    if strategy == "end":
        trainer.push_to_hub()
    return ["End of training"] if strategy == "end" else ["Training in progress, step 4", "Training in progress, step 2"]


@pytest.mark.parametrize("strategy", ["end", "every_save", "checkpoint"])
def test_trainer_push_lists_another_adapters_files_once_and_leaves_them(hub_server, tmp_path, caplog, strategy):
    planted = _plant_another_adapter(hub_server)
    listed_in = []
    list_repo_tree = HfApi.list_repo_tree

    def recording(self, *args, **kwargs):
        listed_in.append(threading.current_thread() is threading.main_thread())
        return list_repo_tree(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch, caplog.at_level("WARNING", logger="neat_hf.hub"):
        patch.setattr(HfApi, "list_repo_tree", recording)
        titles = _push_all(tmp_path, strategy)
    # Every push checked the repo: the end push on the caller's thread, checkpoint pushes in their background job.
    assert listed_in == ([True] if strategy == "end" else [False, False])
    assert [c.title for c in hub_server.history(REPO)[: len(titles)]] == titles
    assert len(hub_server.history(REPO)) == planted + len(titles)
    files = hub_server.files(REPO)
    assert STALE <= set(files), "without hub_delete_conflicting nothing is deleted"
    assert ("last-checkpoint/optimizer.pt" in files) == (strategy == "checkpoint")  # a pickle we push: never listed
    assert json.loads(files["adapter_config.json"])["peft_type"] == "PEANUT", "the LoRA config is replaced by ours"
    warnings = _hub_warnings(caplog)
    left = [w for w in warnings if "left in place" in w]
    assert len(left) == 1, warnings  # once per trainer, not at every checkpoint push
    assert "'adapter_model.bin'" in left[0] and "'model.safetensors'" in left[0] and "hub_delete_conflicting" in left[0]
    replaced = [w for w in warnings if "another adapter" in w]
    assert len(replaced) == 1 and "'LORA'" in replaced[0] and "'someone/other-base'" in replaced[0], warnings
    assert len(warnings) == 2, warnings


@pytest.mark.parametrize("strategy", ["end", "every_save"])
def test_trainer_push_deletes_conflicting_files_in_the_same_commit(hub_server, tmp_path, caplog, strategy):
    planted = _plant_another_adapter(hub_server)
    with caplog.at_level("WARNING", logger="neat_hf.hub"):
        titles = _push_all(tmp_path, strategy, args_class=NeatTrainingArguments, hub_delete_conflicting=True)
    history = hub_server.history(REPO)
    assert len(history) == planted + len(titles)  # no separate commit for the deletions
    first_push, before = history[len(titles) - 1], history[len(titles)]
    assert STALE <= set(before.files) and not STALE & set(first_push.files)
    assert json.loads(first_push.files["adapter_config.json"])["peft_type"] == "PEANUT"
    assert first_push.files["adapter_model.safetensors"] != before.files.get("adapter_model.safetensors")
    assert not STALE & set(hub_server.files(REPO))
    assert any("Deleting 2 file(s)" in w for w in _hub_warnings(caplog))


def test_trainer_push_into_a_clean_repo_or_over_our_own_adapter_warns_nothing(hub_server, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="neat_hf.hub"):
        _push_all(tmp_path / "first", "every_save")
        before = len(hub_server.requests)
        # Another NEAT run (another rank, so another config file) over the first one's adapter, pushed at the end.
        _push_all(tmp_path / "second", "end", model=make_adapter(init_weights=True, r=2))
    assert _hub_warnings(caplog) == []
    assert json.loads(hub_server.files(REPO)["adapter_config.json"])["r"] == 2
    downloads = [r["path"] for r in hub_server.requests[before:] if r["method"] == "GET" and "/resolve/" in r["path"]]
    assert any(path.endswith("/adapter_config.json") for path in downloads), "our earlier config was read and compared"
