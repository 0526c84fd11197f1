"""`--model neat` end to end, offline: a tiny LLaMA with a word-level tokenizer, a NEAT adapter that changes its
outputs, and every bundled task reading a few local JSON rows in its Hub dataset's schema (see eval_helpers.py).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
from argparse import Namespace
from pathlib import Path
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


def _assert_same_samples(ours, reference):
    """Same samples; equal generations and log-likelihoods within 1e-4."""
    assert ours.keys() == reference.keys()
    for key, (ref_ll, ref_text) in reference.items():
        our_ll, our_text = ours[key]
        if ref_ll is None:
            assert our_text == ref_text, key
        else:
            torch.testing.assert_close(our_ll, ref_ll, rtol=0, atol=1e-4, msg=str(key))


@pytest.fixture(scope="module")
def stock_peft_results(env, task_manager):
    return _run(env, task_manager, "hf", peft=str(env.adapter))


@pytest.mark.parametrize("merge", [True, False])
def test_scores_equal_stock_hf_with_peft(env, task_manager, stock_peft_results, merge):
    ours = _run(env, task_manager, "neat", adapter=str(env.adapter), merge=merge)
    assert ours["config"]["adapter_merged"] is merge
    assert len(_per_sample(ours)) == 32  # 16 tasks x 2 rows
    _assert_same_samples(_per_sample(ours), _per_sample(stock_peft_results))
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


@pytest.fixture
def loader_tokens(monkeypatch) -> list:
    """The `HF_TOKEN` each model load of the run saw (none set before the run)."""
    monkeypatch.delenv("HF_TOKEN", raising=False)
    seen = []
    original = NeatLM._create_model

    def spy(self, *args, **kwargs):
        seen.append(os.environ.get("HF_TOKEN"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(NeatLM, "_create_model", spy)
    return seen


def test_token_in_model_args_reaches_the_hub_but_no_log_or_results_file(env, capsys, caplog, loader_tokens):
    secret = "hf_SeCrEt0123456789abcdefTOKEN"
    seen = loader_tokens
    out = env.root / "token_out"
    with caplog.at_level(logging.DEBUG):
        cli.main([
            "--model", "neat", "--model_args", f"pretrained={env.base},adapter={env.adapter},token={secret}",
            "--device", "cpu", "--tasks", "neat_boolq_gen", "--include_path", str(env.tasks), "--limit", "2",
            "--batch_size", "2", "--output_path", str(out),
        ])
    printed = capsys.readouterr()
    (results_file,) = out.rglob("results_*.json")
    for text in (results_file.read_text(), printed.out, printed.err, caplog.text):
        assert secret not in text
    assert seen == [secret]  # the loaders got it (as HF_TOKEN) ...
    assert "HF_TOKEN" not in os.environ  # ... for the run only


@pytest.mark.parametrize("form", ["mapping", "string"])
def test_token_in_config_yaml_model_args_reaches_the_hub_but_no_log_or_results_file(env, capsys, caplog, loader_tokens,
                                                                                     tmp_path, form):
    """The same for a token in the `model_args` of a `--config` YAML (lm-eval also prints the merged config)."""
    import yaml

    secret = "hf_CoNfIg0123456789abcdefTOKEN"
    seen = loader_tokens
    model_args = {"pretrained": str(env.base), "adapter": str(env.adapter), "token": secret}
    out = tmp_path / "out"
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({
        "model": "neat",
        "model_args": model_args if form == "mapping" else ",".join(f"{k}={v}" for k, v in model_args.items()),
        "device": "cpu", "tasks": ["neat_boolq_gen"], "include_path": str(env.tasks), "limit": 2, "batch_size": 2,
        "output_path": str(out),
    }))
    written = config.read_text()
    with caplog.at_level(logging.DEBUG):
        cli.main(["run", "--config", str(config)])
    printed = capsys.readouterr()
    (results_file,) = out.rglob("results_*.json")
    results = json.loads(results_file.read_text())
    assert results["config"]["adapter"] == str(env.adapter)  # the other model_args of the YAML were used
    for text in (results_file.read_text(), printed.out, printed.err, caplog.text):
        assert secret not in text
    assert seen == [secret]  # the loaders got it (as HF_TOKEN) ...
    assert "HF_TOKEN" not in os.environ  # ... for the run only
    assert config.read_text() == written  # the user's file is left as it was


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
        ({"adapter": "ADAPTER", "peft": "MISSING"}, NeatModelArgsError, "name two adapters"),
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


@pytest.mark.parametrize("merge", [True, False])
def test_adapter_with_overflowing_merged_weights_is_refused(env, merge):
    """Every tensor 3e38 is finite, W0 + ΔW is not: scored as chance before, refused now (as by neat-hub merge)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    folder = env.root / "overflowing_adapter"
    if not folder.exists():
        shutil.copytree(env.adapter, folder)
        weights = folder / "adapter_model.safetensors"
        with safe_open(str(weights), framework="pt") as handle:
            metadata = handle.metadata()
        save_file({k: torch.full_like(v, 3e38) for k, v in load_file(weights).items()}, weights, metadata=metadata)
    with pytest.raises(AdapterLoadError, match="NaN/inf in the merged weight of .*q_proj") as info:
        NeatLM(pretrained=str(env.base), adapter=str(folder), merge=merge, device="cpu")
    assert "\n" not in str(info.value)


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


# ------------------------------------------------------------------------------- stock `lm_eval --model neat`

STARTUP_PTH = "neat_hf_lm_eval.pth"
_OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def _python(code: str, *args: str) -> dict:
    """Run `code` in a fresh interpreter of this environment (so its site-packages start-up runs) and parse the JSON
    it prints last."""
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=_OFFLINE_ENV)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_startup_hook_is_installed_at_the_top_of_site_packages():
    """The other start-up tests are only meaningful if this interpreter really processes the `.pth` file."""
    installed = Path(sysconfig.get_paths()["purelib"]) / STARTUP_PTH
    assert installed.is_file(), f"{installed} missing: reinstall neat-hf (pip install -e .)"
    repo_copy = Path(__file__).resolve().parents[1] / STARTUP_PTH
    assert installed.read_text() == repo_copy.read_text()


def test_unrelated_python_process_imports_nothing_of_neat_hf_or_lm_eval():
    loaded = _python(
        "import json, sys; print(json.dumps(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('neat_hf', '_neat_hf_lm_eval', 'lm_eval'))))"
    )
    assert loaded == []


def test_startup_line_acts_only_in_lm_eval_processes():
    """The `.pth` line, run under the argv of other programs and then of lm-eval's three spellings."""
    code = """
import json, sys
line = open(sys.argv[1]).read()
seen = []
for argv, orig in [(["-c"], ["python", "-c", "pass"]), (["/venv/bin/pytest"], ["python", "/venv/bin/pytest"]),
                   (["-m"], ["python", "-m", "pytest"]), (["/venv/bin/lm_eval_tools"], ["python", "x"]),
                   (["/venv/bin/lm_eval"], ["python", "/venv/bin/lm_eval"]),
                   (["/venv/bin/lm-eval"], ["python", "/venv/bin/lm-eval"]),
                   (["-m"], ["python", "-u", "-m", "lm_eval", "run"])]:
    sys.argv, sys.orig_argv = list(argv), list(orig)
    exec(line)
    from_lm_eval = "lm_eval" in sys.modules
    registered = from_lm_eval and "neat" in sys.modules["lm_eval.api.registry"].model_registry
    seen.append([orig[-1], "_neat_hf_lm_eval" in sys.modules, registered])
    if from_lm_eval:  # start each lm-eval spelling from an empty registry again
        sys.modules["lm_eval.api.registry"].model_registry._objs.clear()
        for name in [m for m in sys.modules if m == "lm_eval.models"]:
            del sys.modules[name]
        del sys.modules["_neat_hf_lm_eval"]
print(json.dumps(seen))
"""
    seen = _python(code, str(Path(__file__).resolve().parents[1] / STARTUP_PTH))
    assert seen == [
        ["pass", False, False], ["/venv/bin/pytest", False, False], ["pytest", False, False], ["x", False, False],
        ["/venv/bin/lm_eval", True, True], ["/venv/bin/lm-eval", True, True], ["run", True, True],
    ]


def test_hook_registers_neat_lazily_next_to_every_builtin_backend():
    code = """
import json, sys
import _neat_hf_lm_eval as hook
first, again = hook.install(), hook.install()
from lm_eval.api.registry import get_model, model_registry
from lm_eval.models import MODEL_MAPPING
placeholder = dict(model_registry.items())["neat"]
neat_hf_before = "neat_hf" in sys.modules
hf = get_model("hf")
neat = get_model("neat")
print(json.dumps({"first": first, "again": again, "names": sorted(model_registry.keys()),
                  "builtins": sorted(MODEL_MAPPING), "placeholder": placeholder, "neat_hf_before": neat_hf_before,
                  "hf": f"{hf.__module__}:{hf.__name__}", "neat": f"{neat.__module__}:{neat.__name__}",
                  "neat_is_hflm": issubclass(neat, hf)}))
"""
    seen = _python(code)
    assert seen["first"] is True and seen["again"] is False
    assert seen["names"] == sorted([*seen["builtins"], "neat"])  # every built-in backend is still there
    assert seen["placeholder"] == "neat_hf.eval_harness.model:NeatLM"  # lazy: nothing of neat-hf imported ...
    assert seen["neat_hf_before"] is False  # ... until a run asks for --model neat
    assert seen["hf"] == "lm_eval.models.huggingface:HFLM"
    assert seen["neat"] == "neat_hf.eval_harness.model:NeatLM" and seen["neat_is_hflm"]


def _samples_from_files(out: Path) -> dict:
    """`_per_sample` over the samples files that lm-eval's `--log_samples` wrote under `out`."""
    samples: dict[str, list] = {}
    for path in out.rglob("samples_*.jsonl"):
        task = path.name.removeprefix("samples_").rsplit("_", 1)[0]
        samples[task] = [json.loads(line) for line in path.read_text().splitlines()]
    return _per_sample({"samples": samples})


def test_stock_lm_eval_command_runs_neat_and_matches_neat_lm_eval(env, capsys):
    """The stock `lm_eval` console script resolves `--model neat` (with `--model hf`'s `peft=` spelling) and scores
    every sample as `neat-lm-eval` does."""
    tasks = "boolq,arc_easy,neat_boolq_gen"
    common = ["--tasks", tasks, "--include_path", str(env.tasks), "--device", "cpu", "--batch_size", "2",
              "--log_samples"]
    stock_out, ours_out = env.root / "stock_lm_eval", env.root / "neat_lm_eval"
    lm_eval_script = Path(sys.executable).with_name("lm_eval")
    result = subprocess.run(
        [str(lm_eval_script), "--model", "neat", "--model_args", f"pretrained={env.base},peft={env.adapter}",
         *common, "--output_path", str(stock_out)],
        capture_output=True, text=True, env=_OFFLINE_ENV,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "neat_boolq_gen" in result.stdout  # lm-eval's results table
    (results_file,) = stock_out.rglob("results_*.json")
    results = json.loads(results_file.read_text())
    assert results["config"]["model"] == "neat" and results["config"]["adapter"] == str(env.adapter)

    cli.main(["--model", "neat", "--model_args", f"pretrained={env.base},adapter={env.adapter}", *common,
              "--output_path", str(ours_out)])
    capsys.readouterr()
    stock = _samples_from_files(stock_out)
    assert len(stock) == 6  # 3 tasks x 2 rows
    _assert_same_samples(stock, _samples_from_files(ours_out))


def test_unrecognized_option_gets_a_suggestion(capsys):
    """Issue 23: every command line suggests the option meant (lm-eval's parser only names the unknown one)."""
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--model", "neat", "--taks", "neat_number_words"])
    assert exit_info.value.code == 2
    assert "--taks (did you mean --tasks?)" in capsys.readouterr().err


def test_number_words_task_is_the_main_jobs_held_out_data():
    """The bundled offline task holds exactly the rows the default job evaluates on (no download)."""
    import importlib.util

    from neat_hf.cli.train.default_job import generate_number_words

    spec = importlib.util.spec_from_file_location("nw_utils", TASKS_DIR / "number_words" / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    from neat_hf.cli.train.main import parse_args

    (_, data_args, _, training_args), _ = parse_args(["--output_dir", "unused"])  # the default job's values
    rows = list(utils.load_number_words()["test"])
    train, held_out = generate_number_words(num_train=data_args.max_train_samples, num_eval=data_args.max_eval_samples,
                                            seed=training_args.seed)
    assert rows == held_out and not {json.dumps(r, sort_keys=True) for r in rows} & {json.dumps(r, sort_keys=True) for r in train}
    assert utils.doc_to_text(rows[0]).endswith("### Response:\n")
    assert "neat_number_words" in cli.bundled_tasks()[:5]
