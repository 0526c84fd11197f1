"""Model card pieces without a Hub: lm-eval parsing, training info scrubbing, metadata rules, write_model_card."""

from __future__ import annotations

import json

import pytest
from hub_fixtures import LM_EVAL_RESULTS, make_adapter
from hub_server import DUMMY_TOKEN
from huggingface_hub import EvalResult, ModelCard
from neat_hf.cards import build_model_card, merge_eval_results, write_model_card
from neat_hf.eval_harness.results import eval_results_from_lm_eval
from neat_hf.training_info import load_training_info, sanitize_training_info, save_training_info

from neat_hf import AdapterLoadError, NeatConfig, NeatError


def _by_key(results):
    return {(r.dataset_name, r.metric_type, r.metric_config): r for r in results}


def test_lm_eval_results_become_eval_results(tmp_path):
    results = _by_key(eval_results_from_lm_eval(LM_EVAL_RESULTS))
    arc = results[("arc_easy", "acc", None)]
    assert (arc.dataset_type, arc.dataset_config, arc.dataset_split) == ("allenai/ai2_arc", "ARC-Easy", "test")
    assert arc.dataset_args == {"num_few_shot": 0, "limit": 8}
    assert arc.task_type == "text-generation" and arc.source_name == "lm-evaluation-harness"
    assert results[("boolq", "acc", None)].dataset_split == "validation"  # no test split: lm-eval used validation
    gsm = results[("gsm8k", "exact_match", "flexible-extract")]
    assert gsm.metric_value == 0.2 and gsm.metric_name == "exact_match (flexible-extract)"
    assert gsm.dataset_args["num_few_shot"] == 5
    assert results[("commonsense", "acc", None)].metric_value == 0.5  # group aggregate
    assert not any("stderr" in r.metric_type for r in results.values())

    assert ("commonsense", "acc", None) not in _by_key(eval_results_from_lm_eval(LM_EVAL_RESULTS, include_groups=False))

    # The same from a file and from a folder of lm-eval outputs (newest file wins).
    folder = tmp_path / "out" / "model"
    folder.mkdir(parents=True)
    older = {**LM_EVAL_RESULTS, "results": {"boolq": {"alias": "boolq", "acc,none": 0.1}}}
    (folder / "results_2026-01-01T00-00-00.json").write_text(json.dumps(older))
    (folder / "results_2026-11-27T00-00-00.json").write_text(json.dumps(LM_EVAL_RESULTS))
    from_dir = _by_key(eval_results_from_lm_eval(tmp_path / "out"))
    assert from_dir[("boolq", "acc", None)].metric_value == 0.75


@pytest.mark.parametrize(
    "bad, match",
    [({"config": {}}, "no 'results' object"), ({"results": {"t": {"alias": "t"}}}, "no numeric metric")],
)
def test_lm_eval_results_rejects_other_json(bad, match):
    with pytest.raises(NeatError, match=match):
        eval_results_from_lm_eval(bad)


def test_lm_eval_results_file_errors(tmp_path):
    with pytest.raises(NeatError, match="does not exist"):
        eval_results_from_lm_eval(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(NeatError, match="not a JSON file"):
        eval_results_from_lm_eval(tmp_path / "x.json")
    with pytest.raises(NeatError, match="No lm-eval results"):
        eval_results_from_lm_eval(tmp_path)


def test_merge_eval_results_replaces_only_remeasured_metrics():
    def result(name, metric, value):
        return EvalResult(
            task_type="text-generation", dataset_type=name, dataset_name=name, metric_type=metric, metric_value=value
        )

    old = [result("a", "acc", 0.1), result("b", "acc", 0.2)]
    merged = merge_eval_results(old, [result("b", "acc", 0.9), result("c", "acc", 0.3)])
    assert [(r.dataset_name, r.metric_value) for r in merged] == [("a", 0.1), ("b", 0.9), ("c", 0.3)]


def test_training_info_is_scrubbed_and_validated(tmp_path, caplog):
    info = {
        "dataset": "yahma/alpaca-cleaned",
        "hub_token": DUMMY_TOKEN,
        "api_key": "secret",
        "note": f"pushed with {DUMMY_TOKEN}",
        "access_token": "secret",
        "HF_TOKEN": "secret",
        "max_new_tokens": 32,  # not a credential
        "eval_token_accuracy before training": 0.25,  # a metric neat-train records, not a credential
        "learning_rates": {"adapter": 1e-3},
    }
    clean = sanitize_training_info(info)
    assert clean == {
        "dataset": "yahma/alpaca-cleaned",
        "max_new_tokens": 32,
        "eval_token_accuracy before training": 0.25,
        "learning_rates": {"adapter": 1e-3},
    }
    assert DUMMY_TOKEN not in caplog.text
    with pytest.raises(NeatError, match=r"training_info\['nested'\]"):
        sanitize_training_info({"nested": {"a": {"b": 1}}})
    with pytest.raises(NeatError, match="mapping"):
        sanitize_training_info(["not", "a", "dict"])

    path = save_training_info(tmp_path, info)
    assert DUMMY_TOKEN not in path.read_text()
    assert load_training_info(tmp_path) == clean
    path.write_text("[1, 2]")
    with pytest.raises(AdapterLoadError, match="training_info.json"):
        load_training_info(tmp_path)


def test_card_metadata_rules():
    config = NeatConfig(r=8, act_fn="sin", base_model_name_or_path="/home/me/models/llama", task_type="CAUSAL_LM")
    card = build_model_card(config, repo_id="me/neat")
    assert card.data.base_model is None, "a local path is never written as base_model"
    assert card.data.tags == ["neat", "peanut", "peft"]
    assert "/home/me" not in str(card)
    assert "a local base model (`llama`)" in card.text
    assert "Stock PEFT cannot load this adapter" in card.text and "PeftModel.from_pretrained" not in card.text

    hub_config = NeatConfig(r=8, base_model_name_or_path="meta-llama/Llama-3.2-1B", task_type="SEQ_CLS")
    card = build_model_card(hub_config, tags=["custom"], datasets="glue", language="en")
    assert card.data.base_model == "meta-llama/Llama-3.2-1B"
    assert card.data.tags[-2:] == ["base_model:adapter:meta-llama/Llama-3.2-1B", "custom"]
    assert card.data.pipeline_tag == "text-classification" and card.data.datasets == "glue"
    assert "AutoModelForSequenceClassification" in card.text
    with pytest.raises(NeatError, match="base_model"):
        build_model_card(hub_config, base_model="../not an id")
    with pytest.raises(NeatError, match="EvalResult"):
        build_model_card(hub_config, eval_results=[{"acc": 1}])


def test_card_from_auto_mapping_for_models_without_task_type():
    config = {
        "r": 4,
        "peft_type": "PEANUT",
        "act_fn": "relu",
        "depth": 0,
        "scaling": 1.0,
        "auto_mapping": {
            "base_model_class": "ViTForImageClassification",
            "parent_library": "transformers.models.vit.modeling_vit",
        },
    }
    card = build_model_card(config)
    assert card.data.pipeline_tag == "image-classification"
    assert "ViTForImageClassification.from_pretrained" in card.text


def test_write_model_card_rebuilds_from_folder(tmp_path):
    with pytest.raises(AdapterLoadError, match="save_pretrained"):
        write_model_card(tmp_path)
    model = make_adapter()
    model.save_pretrained(tmp_path)
    write_model_card(
        tmp_path,
        model=model,
        training_info={"num_train_epochs": 1},
        eval_results=eval_results_from_lm_eval(LM_EVAL_RESULTS),
        base_model="neat-tester/tiny-llama",
    )
    first = (tmp_path / "README.md").read_text()
    assert "% of the base model's" in first and "| epochs | 1 |" in first

    # Rebuilt without the live model or new inputs: same facts, from training_info.json and the old card.
    write_model_card(tmp_path, base_model="neat-tester/tiny-llama")
    second = (tmp_path / "README.md").read_text()
    assert second == first
    assert len(ModelCard.load(tmp_path / "README.md").data.eval_results) == len(
        eval_results_from_lm_eval(LM_EVAL_RESULTS)
    )
    write_model_card(tmp_path, keep_eval_results=False)
    assert ModelCard.load(tmp_path / "README.md").data.eval_results is None


def test_card_says_how_to_install_neat_hf_and_names_each_quantity(tmp_path):
    """Issue 23: neat-hf is not on an index (the card said `pip install neat-hf`); a `warmup_steps` below 1 is the
    ratio transformers reads it as (the "warmup steps" row showed 0.05); enums are written as their values."""
    from types import SimpleNamespace

    from transformers import BitsAndBytesConfig, TrainingArguments

    from neat_hf.quantization import quantization_settings
    from neat_hf.trainers.hub_mixin import _warmup

    model = make_adapter()
    model.save_pretrained(tmp_path)
    args = TrainingArguments(str(tmp_path / "run"), warmup_steps=0.05, report_to="none")
    warmup = _warmup(args, SimpleNamespace(max_steps=3000))
    assert warmup == {"warmup_ratio": 0.05, "warmup_steps": 150}
    write_model_card(tmp_path, model=model, training_info={"num_train_epochs": 1, **warmup})
    card = (tmp_path / "README.md").read_text()
    assert "pip install neat-hf`" not in card and "git+https://github.com/neat-hf/neat-hf" in card
    assert "| warmup ratio | 0.05 |" in card and "| warmup steps | 150 |" in card

    quantized = SimpleNamespace(config=SimpleNamespace(quantization_config=BitsAndBytesConfig(load_in_4bit=True)))
    assert quantization_settings(quantized)["quant_method"] == "bitsandbytes"
    assert type(quantization_settings(quantized)["quant_method"]) is str
