"""`--model neat` end to end, offline: a tiny LLaMA with a word-level tokenizer, a NEAT adapter that changes its
outputs, and every bundled task reading a few local JSON rows in its Hub dataset's schema (see eval_helpers.py).
"""

from __future__ import annotations

import json
from argparse import Namespace
from importlib.metadata import EntryPoint, entry_points

import pytest
import torch

from eval_helpers import build_adapter, build_base_model, write_local_tasks
from neat_hf import NeatModel
from neat_hf.errors import AdapterLoadError
from neat_hf.eval_harness import TASKS_DIR, cli
from neat_hf.eval_harness.api import evaluate, task_include_paths
from neat_hf.eval_harness.model import NeatLM, NeatModelArgsError, register_model_once
from neat_hf.eval_harness.protocol import extract_commonsense_answer, extract_last_number

pytestmark = pytest.mark.slow

COMMONSENSE_LL = ["boolq", "piqa", "social_iqa", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"]
ANSWER_KIND = {"neat_boolq_gen": "true_false", "neat_piqa_gen": "solution", "neat_hellaswag_gen": "ending",
               "neat_winogrande_gen": "option", "neat_social_iqa_gen": "answer", "neat_arc_easy_gen": "answer",
               "neat_arc_challenge_gen": "answer", "neat_openbookqa_gen": "answer"}


@pytest.fixture(scope="module", autouse=True)
def offline():
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE for these tests only.

    huggingface_hub and datasets read the variables when first imported, so the flags they consult are patched too,
    and everything is restored afterwards (other test modules talk to a loopback Hub).
    """
    import datasets.config
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        patch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
        patch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
        yield


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    base = build_base_model(root / "base")
    adapter = build_adapter(base, root / "adapter")
    # Same architecture with a wider MLP: an adapter made for it does not fit `base`.
    other_base = root / "other_base"
    from conftest import tiny_llama

    tiny_llama(vocab_size=16, intermediate_size=64).save_pretrained(other_base)
    other_adapter = build_adapter(other_base, root / "other_adapter")
    tasks = write_local_tasks(root / "tasks")
    return Namespace(root=root, base=base, adapter=adapter, other_adapter=other_adapter, tasks=tasks)


@pytest.fixture(scope="module")
def task_manager(env):
    from lm_eval.tasks import TaskManager

    # Our tasks, then the local-data overrides; lm-eval's own index is not needed (the overrides include its YAMLs).
    return TaskManager(include_path=task_include_paths(env.tasks), include_defaults=False)


def _run(env, task_manager, model, **model_args):
    return evaluate(
        model=model,
        model_args={"pretrained": str(env.base), "device": "cpu", "dtype": "float32", **model_args},
        tasks=["neat_commonsense", "neat_commonsense_gen"],
        task_manager=task_manager,
        batch_size=4,
        log_samples=True,
        bootstrap_iters=0,
    )


def _per_sample(results):
    """{(task, doc_id): (loglikelihoods or None, generated text or None)}"""
    out = {}
    for task, samples in results["samples"].items():
        for sample in samples:
            resps = sample["resps"]
            if isinstance(resps[0][0], str):
                out[task, sample["doc_id"]] = (None, resps[0][0])
            else:
                out[task, sample["doc_id"]] = (torch.tensor([float(r[0][0]) for r in resps]), None)
    return out


@pytest.fixture(scope="module")
def stock_peft_results(env, task_manager):
    return _run(env, task_manager, "hf", peft=str(env.adapter))


@pytest.mark.parametrize("merge", [True, False])
def test_scores_equal_stock_hf_with_peft(env, task_manager, stock_peft_results, merge):
    ours = _run(env, task_manager, "neat", adapter=str(env.adapter), merge=merge)
    assert ours["config"]["adapter_merged"] is merge
    stock_samples, our_samples = _per_sample(stock_peft_results), _per_sample(ours)
    assert stock_samples.keys() == our_samples.keys()
    assert len(stock_samples) == 32  # 16 tasks x 2 rows
    for key, (stock_ll, stock_text) in stock_samples.items():
        our_ll, our_text = our_samples[key]
        if stock_ll is None:
            assert our_text == stock_text, key
        else:
            torch.testing.assert_close(our_ll, stock_ll, rtol=0, atol=1e-4, msg=str(key))
    for task, metrics in stock_peft_results["results"].items():
        for name, value in metrics.items():
            if name.startswith(("acc", "exact_match")) and "stderr" not in name:
                assert ours["results"][task][name] == pytest.approx(value, abs=1e-9), (task, name)


def test_adapter_changes_scores(env, task_manager, stock_peft_results):
    """Guard for the equality test above: without the adapter the same run gives other log-likelihoods."""
    base_only = _per_sample(_run(env, task_manager, "hf"))
    with_adapter = _per_sample(stock_peft_results)
    gaps = [(with_adapter[k][0] - ll).abs().max().item() for k, (ll, _) in base_only.items() if ll is not None]
    assert max(gaps) > 1e-2


def test_merge_modes_build_the_expected_model(env):
    merged = NeatLM(pretrained=str(env.base), adapter=str(env.adapter), device="cpu")
    live = NeatLM(pretrained=str(env.base), adapter=str(env.adapter), device="cpu", merge="false")
    assert not isinstance(merged.model, NeatModel)
    assert not any("peanut" in name for name, _ in merged.model.named_parameters())
    assert isinstance(live.model, NeatModel)
    info = merged.get_model_info()
    assert info["adapter"] == str(env.adapter)
    assert info["adapter_merged"] is True and info["adapter_sha"] == "" and info["adapter_revision"] is None
    assert info["adapter_config"]["r"] == 4
    json.dumps(info, default=str)  # lands in lm-eval's results file


def test_neat_lm_eval_command_end_to_end(env, capsys):
    """`neat-lm-eval` with lm-eval's own flags: log-likelihood and generation tasks, results and samples on disk, and
    the scores folded into the adapter's model card."""
    out = env.root / "cli_out"
    cli.main([
        "--model", "neat",
        "--model_args", f"pretrained={env.base},adapter={env.adapter}",
        "--device", "cpu",  # lm-eval's CLI passes --device (default cuda:0) itself: device= in model_args clashes
        "--tasks", "neat_commonsense,neat_commonsense_gen,neat_gsm8k_gen,neat_hendrycks_math_gen_algebra",
        "--include_path", str(env.tasks),  # kept: merged behind the bundled tasks
        "--batch_size", "4",
        "--output_path", str(out),
        "--log_samples",
        "--update_card",  # no folder: the adapter= folder of --model_args
    ])
    printed = capsys.readouterr().out
    assert "neat_commonsense_gen" in printed and "neat_gsm8k_gen" in printed
    assert f"Updated model card {env.adapter / 'README.md'}" in printed
    (results_file,) = out.rglob("results_*.json")
    results = json.loads(results_file.read_text())
    assert results["config"]["model"] == "neat"
    assert results["config"]["adapter"] == str(env.adapter)
    assert set(COMMONSENSE_LL) <= set(results["results"])
    assert 0.0 <= results["groups"]["neat_commonsense"]["acc,none"] <= 1.0
    assert 0.0 <= results["groups"]["neat_commonsense_gen"]["exact_match,extract"] <= 1.0
    assert results["n-samples"]["neat_hendrycks_math_gen_algebra"]["effective"] == 2
    # The logged samples show the paper's prompt, the raw response and the answer our filter extracted from it.
    for task, kind in ANSWER_KIND.items():
        (samples_file,) = out.rglob(f"samples_{task}_*.jsonl")
        for line in samples_file.read_text().splitlines():
            sample = json.loads(line)
            prompt = sample["arguments"]["gen_args_0"]["arg_0"]
            assert prompt.startswith("Below is an instruction that describes a task.")
            assert prompt.endswith("### Response:\n                ")
            assert sample["arguments"]["gen_args_0"]["arg_1"]["max_gen_toks"] == 32
            response = sample["resps"][0][0]
            assert sample["filtered_resps"][0] == extract_commonsense_answer(response, kind)
            assert sample["exact_match"] == float(sample["filtered_resps"][0] == sample["target"])
    (gsm_file,) = out.rglob("samples_neat_gsm8k_gen_*.jsonl")
    for line in gsm_file.read_text().splitlines():
        sample = json.loads(line)
        assert sample["filtered_resps"][0] == extract_last_number(sample["resps"][0][0])
        assert sample["target"] in {"7", "2400"}
    # --update_card folded this run's scores into the adapter's model card (model-index).
    from huggingface_hub import ModelCard

    card = ModelCard.load(env.adapter / "README.md")
    in_card = {(r.metric_type, r.metric_config, round(r.metric_value, 6)) for r in card.data.eval_results}
    gen_score = results["groups"]["neat_commonsense_gen"]["exact_match,extract"]
    assert ("exact_match", "extract", round(gen_score, 6)) in in_card
    assert ("acc", None, round(results["groups"]["neat_commonsense"]["acc,none"], 6)) in in_card
    for task in COMMONSENSE_LL:
        assert ("acc", None, round(results["results"][task]["acc,none"], 6)) in in_card
    assert ("exact_match", "extract", round(results["results"]["neat_gsm8k_gen"]["exact_match,extract"], 6)) in in_card


@pytest.mark.parametrize(
    "argv, match",
    [
        (["ls", "tasks", "--update_card", "ADAPTER"], "only applies to an evaluation run"),
        (["--model", "neat", "--tasks", "boolq", "--update_card", "ADAPTER"], "also pass --output_path"),
        (["--model", "hf", "--model_args", "pretrained=x", "--tasks", "boolq", "--output_path", "o", "--update_card"],
         "pass --update_card DIR"),
        (["--model", "neat", "--tasks", "boolq", "--output_path", "o", "--update_card", "no/such/dir"],
         "local adapter folder"),
    ],
)
def test_update_card_is_checked_before_evaluating(env, capsys, argv, match):
    argv = [str(env.adapter) if a == "ADAPTER" else a for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert match in capsys.readouterr().err


def test_update_card_option_is_not_passed_to_lm_eval():
    flag, rest = cli._pop_update_card(["--model", "neat", "--update_card", "--tasks", "boolq"])
    assert flag is cli._FROM_MODEL_ARGS and rest == ["--model", "neat", "--tasks", "boolq"]
    flag, rest = cli._pop_update_card(["run", "--update_card", "out/adapter", "--limit", "2"])
    assert flag == "out/adapter" and rest == ["run", "--limit", "2"]
    assert cli._pop_update_card(["--model", "neat"]) == (None, ["--model", "neat"])


def test_adapter_for_another_base_gives_a_clear_error(env, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([
            "--model", "neat",
            "--model_args", f"pretrained={env.base},adapter={env.other_adapter}",
            "--device", "cpu",
            "--tasks", "neat_boolq_gen",
            "--include_path", str(env.tasks),
        ])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "neat-lm-eval: error:" in err
    assert "mlp.up_proj" in err or "mlp.down_proj" in err  # names the module ...
    assert "[4, 64]" in err or "[64, 4]" in err  # ... and the shapes


@pytest.mark.parametrize(
    "model_args, error, match",
    [
        ({}, NeatModelArgsError, "needs an adapter"),
        ({"adapter": "  "}, NeatModelArgsError, "needs an adapter"),
        ({"adapter": "ADAPTER", "merge": "sometimes"}, NeatModelArgsError, "merge must be True or False"),
        ({"adapter": "ADAPTER", "peft": "ADAPTER"}, NeatModelArgsError, "not peft="),
        ({"adapter": "ADAPTER", "delta": "x"}, NeatModelArgsError, "delta"),
        ({"adapter": "ADAPTER", "autogptq": True}, NeatModelArgsError, "GPTQ"),
        ({"adapter": "MISSING"}, AdapterLoadError, "not a folder"),
        ({"adapter": "LORA"}, AdapterLoadError, "peft_type='LORA'"),
    ],
)
def test_bad_model_args(env, model_args, error, match):
    lora = env.root / "lora_adapter"
    lora.mkdir(exist_ok=True)
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8, "target_modules": ["q_proj"]}))
    values = {"ADAPTER": str(env.adapter), "MISSING": str(env.root / "no_such_adapter"), "LORA": str(lora)}
    model_args = {k: values.get(v, v) if isinstance(v, str) else v for k, v in model_args.items()}
    with pytest.raises(error, match=match):
        NeatLM(pretrained=str(env.base), device="cpu", **model_args)


def test_pretrained_must_be_a_name_or_folder(env):
    from transformers import AutoModelForCausalLM

    with pytest.raises(NeatModelArgsError, match="pretrained"):
        NeatLM(pretrained=AutoModelForCausalLM.from_pretrained(env.base), adapter=str(env.adapter))


def test_evaluate_argument_errors():
    with pytest.raises(ValueError, match="needs `tasks`"):
        evaluate(model_args="pretrained=x,adapter=y")
    with pytest.raises(ValueError, match="either `task_manager` or `include_path`"):
        evaluate(model_args="pretrained=x,adapter=y", tasks=["boolq"], include_path="a", task_manager=object())


# ----------------------------------------------------------------------------------------------- registration


def test_neat_is_registered_and_declared_as_entry_point():
    from lm_eval.api.registry import get_model

    assert get_model("neat") is NeatLM
    assert get_model("hf").__name__ == "HFLM"  # registering ours did not hide lm-eval's own backends
    (entry,) = [ep for ep in entry_points(group="lm_eval.models") if ep.name == "neat"]
    assert entry.value == "neat_hf.eval_harness.model:NeatLM"
    assert entry.load() is NeatLM


def test_registration_tolerates_lm_eval_entry_point_placeholders():
    from lm_eval.api.model import LM
    from lm_eval.api.registry import Registry

    target = "neat_hf.eval_harness.model:NeatLM"
    for placeholder in (EntryPoint(name="neat", value=target, group="lm_eval.models"), target):
        registry = Registry("model", base_cls=LM)
        registry.register("neat", target=placeholder)
        assert register_model_once("neat", registry=registry)(NeatLM) is NeatLM
        assert registry.get("neat") is NeatLM
    registry = Registry("model", base_cls=LM)
    registry.register("neat", target="someone_else.models:OtherLM")
    with pytest.raises(ValueError, match="already registered"):
        register_model_once("neat", registry=registry)(NeatLM)


# -------------------------------------------------------------------------------------------------- include path


def test_include_paths_put_bundled_tasks_first(tmp_path):
    assert task_include_paths() == [str(TASKS_DIR)]
    assert task_include_paths(tmp_path) == [str(TASKS_DIR), str(tmp_path)]
    assert task_include_paths([str(TASKS_DIR), "mine"]) == [str(TASKS_DIR), "mine"]

    config = tmp_path / "run.yaml"
    config.write_text("include_path: from_yaml\n")
    args = Namespace(config=str(config), include_path="from_cli")
    cli._with_bundled_tasks(args)
    assert args.include_path == [str(TASKS_DIR), "from_yaml", "from_cli"]
    args = Namespace(config=None, include_path=None)
    cli._with_bundled_tasks(args)
    assert args.include_path == [str(TASKS_DIR)]


def test_ls_lists_bundled_groups_next_to_lm_evals(capsys):
    cli.main(["ls", "groups"])
    listing = capsys.readouterr().out
    for group in ("neat_commonsense", "neat_commonsense_gen", "neat_math", "neat_math_gen"):
        assert group in listing
    assert "minerva_math" in listing  # lm-eval's own groups are still there


def test_console_script_is_declared():
    (script,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "neat-lm-eval"]
    assert script.load() is cli.main


def test_unrecognized_option_gets_a_suggestion(capsys):
    """Issue 23: every command line suggests the option meant (lm-eval's parser only names the unknown one)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--model", "neat", "--taks", "neat_number_words"])
    assert exit_info.value.code == 2
    assert "--taks (did you mean --tasks?)" in capsys.readouterr().err


def test_number_words_task_is_the_main_jobs_held_out_data():
    """The bundled offline task holds exactly the rows the default job evaluates on (no download)."""
    import importlib.util

    from neat_hf.trainers.default_job import generate_number_words

    spec = importlib.util.spec_from_file_location("nw_utils", TASKS_DIR / "number_words" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    from neat_hf.trainers.train import parse_args

    (_, data_args, _, training_args), _ = parse_args(["--output_dir", "unused"])  # the default job's values
    rows = list(utils.load_number_words()["test"])
    train, held_out = generate_number_words(num_train=data_args.max_train_samples, num_eval=data_args.max_eval_samples,
                                            seed=training_args.seed)
    assert rows == held_out and not {json.dumps(r, sort_keys=True) for r in rows} & {json.dumps(r, sort_keys=True) for r in train}
    assert utils.doc_to_text(rows[0]).endswith("### Response:\n")
    assert "neat_number_words" in cli.bundled_tasks()[:5]
