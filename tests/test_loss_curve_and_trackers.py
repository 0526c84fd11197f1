"""What a training run leaves in the adapter's record and card: final losses, step count, the loss curve (PNG) and the
tracker run (badge + `trackio:<url>` tag, as TRL's cards have), for every adapter `NeatTrainer` saves."""

from __future__ import annotations

import json

import pytest
import torch
from hub_fixtures import make_adapter
from huggingface_hub import ModelCard

from neat_hf.cards.adapter_card import TRACKER_BADGES, build_model_card, write_model_card
from neat_hf.constants import TRAINING_CURVE_NAME
from neat_hf.trainers import NeatTrainer, NeatTrainingArguments
from neat_hf.trainers.loss_curve import loss_facts, write_training_curve
from neat_hf.trainers.trackers import trackio_run_url, tracker_urls
from neat_hf.training_info import load_training_info

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CONFIG = {"r": 4, "depth": 0, "act_fn": "relu", "scaling": 1.0, "target_modules": ["q_proj"],
          "base_model_name_or_path": "neat-tester/tiny-llama"}
HISTORY = [
    {"loss": 4.0, "step": 1}, {"loss": 3.0, "step": 2}, {"eval_loss": 3.5, "step": 2},
    {"loss": 2.5, "step": 3}, {"eval_loss": 2.75, "step": 3},
    {"train_loss": 3.1666, "train_runtime": 1.0, "step": 3},
]


def test_loss_facts_take_the_last_logged_losses():
    assert loss_facts(HISTORY) == {"final_train_loss": 2.5, "final_eval_loss": 2.75, "train_loss": 3.1666}
    assert loss_facts([{"loss": 1.0, "step": 1}]) == {"final_train_loss": 1.0}
    assert loss_facts([]) == {}


def test_training_curve_is_a_reproducible_png(tmp_path):
    path = write_training_curve(HISTORY, tmp_path)
    assert path == tmp_path / TRAINING_CURVE_NAME
    first = path.read_bytes()
    assert first.startswith(PNG_SIGNATURE)
    assert write_training_curve(HISTORY, tmp_path).read_bytes() == first  # no timestamp inside
    assert write_training_curve(HISTORY[:1], tmp_path).read_bytes() != first  # drawn from the history
    assert list(tmp_path.iterdir()) == [path]  # written atomically: no temporary left
    assert write_training_curve([{"train_runtime": 1.0, "step": 0}], tmp_path / "none") is None


def test_trackio_addresses():
    assert trackio_run_url("my project", "run-1", "neat-tester/trackio") == (
        "https://neat-tester-trackio.hf.space/?project=my+project&runs=run-1&sidebar=collapsed"
    )
    assert trackio_run_url("p", "r") == "http://127.0.0.1:7860/?project=p&runs=r&sidebar=collapsed"
    runs = {"trackio": ("p", "r", None), "wandb_url": "https://wandb.ai/x/y/runs/1"}
    assert tracker_urls(runs) == {"wandb_url": "https://wandb.ai/x/y/runs/1", "trackio_url": trackio_run_url("p", "r")}
    # After a push, transformers' Trackio callback has synced the logs to a static Space: the card links it.
    from transformers.integrations import TrackioCallback

    callback = TrackioCallback()
    callback._static_space_id = "neat-tester/p-static-abc123"
    assert tracker_urls(runs, [object(), callback])["trackio_url"] == trackio_run_url("p", "r", callback._static_space_id)


def test_card_shows_tracker_badges_tag_losses_and_curve():
    info = {"global_step": 3, "final_train_loss": 2.5, "final_eval_loss": 2.75, "train_loss": 3.1666,
            "trackio_url": "https://neat-tester-p.hf.space/?project=p&runs=r&sidebar=collapsed",
            "wandb_url": "https://wandb.ai/x/y/runs/1"}
    card = build_model_card(CONFIG, training_info=info, training_curve=TRAINING_CURVE_NAME,
                            tags=["trackio:https://old.example/run", "custom"])
    tags = card.data.tags
    assert "trackio" in tags and f"trackio:{info['trackio_url']}" in tags and "custom" in tags
    assert not any(t.startswith("trackio:https://old") for t in tags)  # one run, one trackio tag (as TRL)
    for key in ("trackio_url", "wandb_url"):
        image, alt = TRACKER_BADGES[key]
        assert f'[<img src="{image}" alt="{alt}" title="{alt}" width="150" height="24"/>]({info[key]})' in card.text
    assert TRACKER_BADGES["comet_url"][0] not in card.text
    assert f"![Training loss per optimizer step and evaluation loss]({TRAINING_CURVE_NAME})" in card.text
    for row in ("| optimizer steps | 3 |", "| final training loss | 2.5 |", "| final evaluation loss | 2.75 |",
                "| mean training loss | 3.1666 |"):
        assert row in card.text, row
    assert "trackio_url" not in card.text and "is local" not in card.text  # a badge, not a table row
    local = build_model_card(CONFIG, training_info={"trackio_url": trackio_run_url("p", "r")})
    assert "The Trackio run is local" in local.text
    plain = build_model_card(CONFIG, training_info={"global_step": 3})
    assert "trackio" not in plain.data.tags and "Visualize in" not in plain.text and "![" not in plain.text


def test_card_refuses_a_tracker_address_that_is_not_a_plain_url(caplog):
    card = build_model_card(CONFIG, training_info={"trackio_url": "javascript:alert(1)", "wandb_url": "https://x/(y)"})
    assert "Visualize in" not in card.text and "trackio" not in card.data.tags
    assert sum("not a plain http(s) URL" in r.getMessage() for r in caplog.records) == 2


def test_a_stale_curve_is_not_shown(tmp_path):
    """A curve left by an earlier adapter saved into the folder: the record of the new weights does not name it."""
    model = make_adapter()
    model.save_pretrained(tmp_path)
    (tmp_path / TRAINING_CURVE_NAME).write_bytes(PNG_SIGNATURE)
    assert "![" not in write_model_card(tmp_path).read_text()
    write_model_card(tmp_path, training_info={"training_curve": TRAINING_CURVE_NAME})
    assert f"]({TRAINING_CURVE_NAME})" in (tmp_path / "README.md").read_text()
    with torch.no_grad():  # new weights saved into the folder: the old record and its curve are dropped
        next(p for n, p in model.named_parameters() if "peanut_B" in n).add_(1.0)
    model.save_pretrained(tmp_path)
    assert "training_curve" not in (load_training_info(tmp_path) or {})
    assert "![" not in (tmp_path / "README.md").read_text()


def _dataset(n=8):
    generator = torch.Generator().manual_seed(0)
    return [{"input_ids": ids, "labels": ids} for ids in torch.randint(0, 128, (n, 8), generator=generator)]


@pytest.mark.slow
@pytest.mark.parametrize("report_to", ["none", "trackio"])
def test_every_saved_adapter_records_losses_steps_curve_and_tracker(tmp_path, report_to):
    args = NeatTrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=4, save_steps=2, per_device_train_batch_size=4, learning_rate=1e-2,
        logging_steps=1, eval_strategy="steps", eval_steps=2, report_to=report_to, use_cpu=True,
        remove_unused_columns=False, project="neat-hf-tests", run_name=f"record-{report_to}",
    )
    trainer = NeatTrainer(model=make_adapter(init_weights=True), args=args, train_dataset=_dataset(),
                          eval_dataset=_dataset(4))
    trainer.train()
    trainer.save_model()
    for folder in (tmp_path / "out" / "checkpoint-2", tmp_path / "out"):  # checkpoints too
        info = json.loads((folder / "training_info.json").read_text())
        step = 2 if folder.name == "checkpoint-2" else 4
        assert info["global_step"] == step
        expected = loss_facts([e for e in trainer.state.log_history if e["step"] <= step])
        assert {k: info[k] for k in ("final_train_loss", "final_eval_loss")} == {
            k: expected[k] for k in ("final_train_loss", "final_eval_loss")
        }
        assert info["training_curve"] == TRAINING_CURVE_NAME
        assert (folder / TRAINING_CURVE_NAME).read_bytes().startswith(PNG_SIGNATURE)
        card = ModelCard.load(folder / "README.md")
        assert f"| final training loss | {info['final_train_loss']:g} |" in card.text
        assert f"]({TRAINING_CURVE_NAME})" in card.text
        if report_to == "trackio":
            url = trackio_run_url("neat-hf-tests", f"record-{report_to}")
            assert info["trackio_url"] == url
            assert f"trackio:{url}" in card.data.tags and f"]({url})" in card.text
        else:
            assert "trackio_url" not in info and "trackio" not in card.data.tags
    assert "train_loss" in info  # the mean over the run, once training has ended
