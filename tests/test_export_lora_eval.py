"""lm-eval scores an exported LoRA exactly as the NEAT adapter it came from: `--model hf --model_args
pretrained=BASE,peft=EXPORTED` equals `--model neat` (log-likelihoods to 1e-4, identical generations), offline."""

from __future__ import annotations

import pytest
import torch
from eval_helpers import build_adapter, build_base_model, write_local_tasks
from test_eval_harness import _per_sample, offline  # noqa: F401 (module-scoped offline fixture)

from neat_hf.eval_harness.api import evaluate, task_include_paths
from neat_hf.cli.hub import main

pytestmark = pytest.mark.slow

TASKS = ["boolq", "arc_easy", "neat_boolq_gen", "neat_arc_easy_gen"]


def test_exported_lora_scores_like_the_neat_adapter(tmp_path):
    from lm_eval.tasks import TaskManager

    base = build_base_model(tmp_path / "base")
    adapter = build_adapter(base, tmp_path / "adapter", depth=1, act_fn="gelu")
    exported = tmp_path / "exported"
    assert main(["export-lora", str(base), str(adapter), str(exported)]) == 0
    tasks = TaskManager(include_path=task_include_paths(write_local_tasks(tmp_path / "tasks")), include_defaults=False)

    def run(model, **model_args):
        return evaluate(model=model, model_args={"pretrained": str(base), "device": "cpu", "dtype": "float32", **model_args},
                        tasks=TASKS, task_manager=tasks, batch_size=4, log_samples=True, bootstrap_iters=0)

    neat = _per_sample(run("neat", adapter=str(adapter), merge=False))
    lora = _per_sample(run("hf", peft=str(exported)))
    base_only = _per_sample(run("hf"))
    assert neat.keys() == lora.keys() and len(neat) == 2 * len(TASKS)
    changed = 0
    for key, (neat_ll, neat_text) in neat.items():
        lora_ll, lora_text = lora[key]
        if neat_ll is None:
            assert lora_text == neat_text, key
            changed += lora_text != base_only[key][1]
        else:
            torch.testing.assert_close(lora_ll, neat_ll, rtol=0, atol=1e-4, msg=str(key))
            changed += bool((lora_ll - base_only[key][0]).abs().max() > 1e-3)
    assert changed > 0  # the adapter changes scores, so the comparison is not trivial
