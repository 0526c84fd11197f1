"""One owner per thing: a run's card is written from one set of facts, a push writes it and scans for the token once,
and a load reads and checks each file once.

Counted by wrapping the one function that does each thing (where the caller looks it up), so a second write, scan or
check anywhere on the path shows up as a count of 2.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_llama
from hub_fixtures import hub_server, make_adapter  # noqa: F401 (fixture)
from huggingface_hub import ModelCard

import neat_hf.hub.commit
import neat_hf.io
import neat_hf.loading
import neat_hf.model
import neat_hf.training_info
from neat_hf import NeatModel
from neat_hf.cards import CardFacts
from neat_hf.cli.train.main import cli
from neat_hf.constants import TRAINING_INFO_NAME

REPO = "neat-tester/owned-card"


class Counter:
    """Wraps `module.name`, counting calls (all of them, or those whose first argument matches `where`)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, module, name: str, where=None):
        self.calls = 0
        original = getattr(module, name)

        def counted(*args, **kwargs):
            if where is None or where(*args, **kwargs):
                self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)


def _results(card: ModelCard) -> list[tuple]:
    return sorted((r.dataset_name, r.metric_type, r.metric_value) for r in card.data.eval_results or [])


# ---------------------------------------------------------------------------------------------------- the card
def test_card_facts_add_never_erase():
    from huggingface_hub import EvalResult

    facts = CardFacts()
    score = EvalResult(task_type="text-generation", dataset_type="d", dataset_name="d", metric_type="acc", metric_value=0.5)
    facts.add(eval_results=[score], tags=["a"], training_info={"dataset": "d"})
    version = facts.version
    facts.add(tags=["b"], training_info={"global_step": 4}, license=None)
    assert facts.card_arguments()["eval_results"] == [score] and facts.card_arguments()["tags"] == ["a", "b"]
    assert facts.training_info == {"dataset": "d", "global_step": 4} and "license" not in facts.card_kwargs
    assert facts.version == version + 1
    facts.add(tags=["a"])  # nothing new
    assert facts.version == version + 1


@pytest.mark.slow
def test_neat_train_local_and_pushed_cards_carry_the_same_eval_results(hub_server, tmp_path, monkeypatch):
    """The final evaluation's results and the scores before training reach the card, and a push neither saves the
    adapter again nor rewrites the card: the local card with and without `--push_to_hub` and the pushed card match."""
    monkeypatch.chdir(tmp_path)
    saves = Counter(monkeypatch, NeatModel, "save_pretrained")
    writes = Counter(monkeypatch, neat_hf.model, "write_model_card")
    job = ["--max_steps", "4", "--max_train_samples", "32", "--max_eval_samples", "8", "--save_strategy", "no"]
    assert cli([*job, "--output_dir", "local"]) == 0
    local_counts = (saves.calls, writes.calls)
    assert cli([*job, "--output_dir", "pushed", "--push_to_hub", "--hub_model_id", REPO]) == 0
    assert (saves.calls, writes.calls) == (2 * local_counts[0], 2 * local_counts[1]), "the push saved or wrote again"

    local = ModelCard.load(tmp_path / "local" / "README.md")
    pushed_local = ModelCard.load(tmp_path / "pushed" / "README.md")
    files = hub_server.files(REPO)
    pushed = ModelCard(files["README.md"].decode())
    assert _results(local), "the final evaluation is in the card"
    assert _results(local) == _results(pushed_local) == _results(pushed)
    assert files["README.md"] == (tmp_path / "pushed" / "README.md").read_bytes(), "the pushed card is the local one"
    for card in (local, pushed):
        assert "exact match before training" in card.text
    info = json.loads(files[TRAINING_INFO_NAME])
    assert info["global_step"] == 4 and "eval_exact_match before training" in info


# ---------------------------------------------------------------------------------------------------- a push
@pytest.mark.parametrize("repo_id", [REPO, "bare-name"])
def test_a_push_writes_the_card_once_and_scans_for_the_token_once(hub_server, monkeypatch, repo_id):
    model = make_adapter()
    writes = Counter(monkeypatch, neat_hf.model, "write_model_card")
    scans = Counter(monkeypatch, neat_hf.hub.commit, "check_no_token")
    saves = Counter(monkeypatch, NeatModel, "save_pretrained")
    info = model.push_to_hub(repo_id, training_info={"dataset": "neat-tester/tiny"})
    assert (writes.calls, scans.calls, saves.calls) == (1, 1, 1)
    full_id = repo_id if "/" in repo_id else f"neat-tester/{repo_id}"  # a bare name gets the token's namespace
    assert full_id in info.commit_url
    card = hub_server.files(full_id)["README.md"].decode()
    assert f'"{full_id}"' in card, "the card's snippets name the repo, with its namespace"
    assert json.loads(hub_server.files(full_id)[TRAINING_INFO_NAME])["dataset"] == "neat-tester/tiny"


# ---------------------------------------------------------------------------------------------------- a load
def test_a_load_reads_and_checks_each_file_once(tmp_path, monkeypatch):
    make_adapter().save_pretrained(tmp_path / "adapter")
    plans = Counter(monkeypatch, neat_hf.loading, "plan_injection")
    quantized = Counter(monkeypatch, neat_hf.loading, "check_quantized_model")
    value_scans = Counter(monkeypatch, neat_hf.loading, "check_adapter_values")
    model_value_scans = Counter(monkeypatch, neat_hf.model, "check_adapter_values")
    shape_checks = Counter(monkeypatch, neat_hf.loading, "check_adapter_tensors")
    model_shape_checks = Counter(monkeypatch, neat_hf.model, "check_adapter_tensors")
    is_record = lambda path, **_: str(path).endswith(TRAINING_INFO_NAME)  # noqa: E731
    record_reads = [Counter(monkeypatch, module, "read_json_file", where=is_record)
                    for module in (neat_hf.io, neat_hf.training_info)]
    loaded = NeatModel.from_pretrained(tiny_llama(), tmp_path / "adapter")
    assert (plans.calls, quantized.calls) == (1, 1), "target matching and the quantization check once"
    assert value_scans.calls + model_value_scans.calls == 1, "one NaN/inf scan"
    assert shape_checks.calls + model_shape_checks.calls == 1, "one shape check"
    assert sum(c.calls for c in record_reads) == 1, "training_info.json read once"
    reference = make_adapter()
    for key, value in reference.get_adapter_state_dict().items():
        torch.testing.assert_close(loaded.get_adapter_state_dict()[key], value)
    # load_adapter reads and checks once too, for a new adapter and for new weights of an existing one.
    for name in ("second", "second"):
        before = (plans.calls, value_scans.calls + model_value_scans.calls)
        loaded.load_adapter(tmp_path / "adapter", adapter_name=name)
        assert (plans.calls, value_scans.calls + model_value_scans.calls) == (before[0] + 1, before[1] + 1)
