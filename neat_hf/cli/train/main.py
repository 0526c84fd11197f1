"""`neat-train`: fine-tune a model with NEAT from the command line.

```bash
neat-train                                          # the embedded default: tiny LLaMA, built-in task, CPU, ~2 min
neat-train --list                                   # the shipped recipes (the paper's setups)
neat-train --recipe commonsense/llama2-7b           # a recipe; any flag below overrides it
neat-train --recipe glue/roberta-base_neat-s --dataset_config_name cola --neat_scaling 0.1
neat-train --config my_run.yaml --learning_rate 1e-4
neat-train --model_name_or_path meta-llama/Llama-3.2-1B --train_file data.json --neat_r 16
torchrun --nproc_per_node 4 -m neat_hf.cli.train --recipe commonsense/llama3-8b --deepspeed zero3
deepspeed --num_gpus 4 --module neat_hf.cli.train.main --recipe commonsense/llama3-8b --deepspeed zero3
accelerate launch --num_processes 4 -m neat_hf.cli.train --recipe math/llama2-7b --deepspeed zero2
```

Defaults come, lowest first, from the dataclasses, then a recipe (`--recipe`), then a config file (`--config`), then
the command line ([`NeatTrainParser`], `parser.py`). Without `--recipe`, `--config` and `--model_name_or_path`, the
`default` recipe applies, so `neat-train --max_steps 20` is the embedded default job, shortened. The job itself
([`prepare`], [`run`]) is in `job.py`.
"""


from __future__ import annotations

import logging
import math
import os
import shlex
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from neat_hf.cli import REPORTED_ERRORS, exit_status
from neat_hf.cli.train.launch_checks import check_launcher, deepspeed_flag, finished_run_message
from neat_hf.cli.train.parser import ArgumentTuple, NeatTrainParser
from neat_hf.cli.train.recipe_registry import list_recipes, recipe_summary
from neat_hf.cli.train.script_args import DataArguments, ModelArguments
from neat_hf.trainers.neat_arguments import NeatArguments
from neat_hf.trainers.training_args import NeatTrainingArguments

if TYPE_CHECKING:
    from neat_hf.cli.train.job import PreparedJob

logger = logging.getLogger(__name__)


def make_parser() -> NeatTrainParser:
    """The `neat-train` parser (see [`NeatTrainParser`])."""
    return NeatTrainParser(description=__doc__.split("\n\n", 1)[0])


def parse_args(argv: Sequence[str] | None = None) -> tuple[ArgumentTuple, str | None]:
    """Parse `neat-train` arguments: `((model_args, data_args, neat_args, training_args), recipe_name)`, as
    [`NeatTrainParser.parse_args_and_config`] returns and raises them.

    `NeatTrainingArguments` resolves `--deepspeed` (a path or a bundled name such as `zero3`) and decides `use_cpu`
    on a machine without a GPU (DeepSpeed and distributed launches need the gloo process group).
    """
    return make_parser().parse_args_and_config(argv)


def main(
    model_args: ModelArguments,
    data_args: DataArguments,
    neat_args: NeatArguments,
    training_args: NeatTrainingArguments,
    *,
    recipe: str | None = None,
) -> dict[str, Any]:
    """Train a NEAT adapter as `neat-train` does: [`prepare`] (all checks, loading, the adapter) then [`run`].

    Features:
        - base model by Hub id or local folder (`AutoModelForCausalLM`, `…ForSequenceClassification`,
          `…ForImageClassification` by `task`), or the built-in tiny LLaMA;
        - instruction data with the LLM-Adapters template and the loss on the response only, GLUE-style text
          classification, image classification;
        - separate NEAT / head learning rates, DeepSpeed ZeRO-2/3 (also on CPU), resume from a checkpoint;
        - before/after evaluation, the adapter (PEFT PEANUT files) saved to `output_dir`.

    Raises:
        MissingColumnsError, NoTargetModulesError, NeatError: see [`prepare`]; all before training.

    Example:
        >>> from neat_hf.cli.train.main import main, parse_args
        >>> (model_args, data_args, neat_args, training_args), recipe = parse_args(["--max_steps", "5"])
        >>> results = main(model_args, data_args, neat_args, training_args, recipe=recipe)
        >>> results["after"]["eval_exact_match"] >= results["before"]["eval_exact_match"]
        True
    """
    from neat_hf.cli.train.job import prepare, run  # lazy: the Trainer and peft, after parsing

    return run(prepare(model_args, data_args, neat_args, training_args, recipe=recipe))



def _print_recipes() -> None:
    names = list_recipes()
    width = max(len(name) for name in names)
    print("Recipes (neat-train --recipe NAME):")
    for name in names:
        print(f"  {name:<{width}}  {recipe_summary(name)}")


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else str(value)
    return str(value)


def _print_summary(results: dict[str, Any], job: PreparedJob) -> None:
    before, after = results["before"], results["after"]
    keys = [k for k in after if k.startswith("eval_") and not k.endswith(("_runtime", "_per_second", "_time"))]
    print()
    title = f"neat-train: {job.recipe or 'custom'} run, {job.num_train} train / {job.num_eval} eval examples, "
    print(title + f"{results['runtime_s']:.0f} s")
    if keys:
        width = max(len(k) for k in keys)
        print(f"  {'metric':<{width}}  {'before':>10}  {'after':>10}")
        for key in keys:
            print(f"  {key:<{width}}  {_format_value(before.get(key, '-')):>10}  {_format_value(after[key]):>10}")
    if after and not before:
        reason = "DeepSpeed" if job.training_args.deepspeed else "--eval_before_training false"
        print(f"  (no evaluation before training: {reason})")
    if "train_loss" in results["train"]:
        print(f"  train_loss (mean over the run): {results['train']['train_loss']:.4f}")
    print(f"Adapter saved to {results['output_dir']}. Use it from Python:")
    print()
    print(results["snippet"])
    if results.get("evaluate"):
        print()
        print("Evaluate it offline with lm-eval (the held-out data, generated locally; needs the eval extra):")
        print(f"  {results['evaluate']}")


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `neat-train` console script (and `python -m neat_hf.cli.train`). Returns the exit status: 0;
    2 for bad input and 1 when the Hub failed, each as one line ([`neat_hf.cli.REPORTED_ERRORS`]; any other error keeps
    its traceback); 130 / 143 when interrupted."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if NeatTrainParser.parse_run_flags(argv).list:
            _print_recipes()
            return 0
        check_launcher(deepspeed_flag(argv))  # before parsing: building the arguments can hang under such a launch
        (model_args, data_args, neat_args, training_args), recipe = parse_args(argv)
        if training_args.should_log:
            logging.getLogger("neat_hf").setLevel(logging.INFO)
        main_process = os.environ.get("RANK", "0") == "0"
        finished = finished_run_message(training_args, tidy=main_process)
        if finished:
            if main_process:  # one line per launch, not per rank
                print(f"neat-train: {finished}", file=sys.stderr)
            return 0
        from neat_hf.cli.train.job import prepare, run  # lazy: careless input is refused before this import

        job = prepare(model_args, data_args, neat_args, training_args, recipe=recipe)
    except REPORTED_ERRORS as error:  # bad input: 2; the Hub failing (unreachable, a server error): 1
        print(f"neat-train: error: {error}", file=sys.stderr)
        return exit_status(error)
    except KeyboardInterrupt:
        print("neat-train: interrupted before training started; nothing was written.", file=sys.stderr)
        return 130
    try:
        results = run(job)
    except KeyboardInterrupt:
        print(f"neat-train: interrupted; checkpoints written so far (if any) are in {training_args.output_dir}.",
              file=sys.stderr)
        return 130
    except REPORTED_ERRORS as error:  # the final push failed (results saved), no checkpoint to resume, output_dir in use
        print(f"neat-train: error: {error}", file=sys.stderr)
        return exit_status(error)
    stopped = results.get("interrupted")
    if stopped:
        if results["is_main_process"]:
            print(_resume_line(stopped, argv), file=sys.stderr)
        _leave_process_group()
        return stopped["exit_code"]
    if results["is_main_process"]:
        _print_summary(results, job)
    _leave_process_group()
    return 0


#: Flags whose value is a secret: never echoed in a printed command.
SECRET_FLAGS = ("--hub_token", "--hub-token")


def _without_flags(argv: Sequence[str], flags: Sequence[str]) -> tuple[list[str], bool]:
    """`argv` without `flags` and their values (`--flag value` and `--flag=value`); whether any was dropped."""
    kept: list[str] = []
    dropped = skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in flags:
            skip = dropped = True
        elif arg.startswith(tuple(f"{flag}=" for flag in flags)):
            dropped = True
        else:
            kept.append(arg)
    return kept, dropped


def _resume_line(stopped: dict[str, Any], argv: Sequence[str]) -> str:
    """One line: where the adapter trained so far is, and the command that resumes from it. A `--hub_token` given on
    the command line is left out of it (the line lands in terminals and logs); the line says where the token comes
    from instead."""
    kept, _ = _without_flags(argv, ("--resume_from_checkpoint", "--resume-from-checkpoint"))
    kept, had_token = _without_flags(kept, SECRET_FLAGS)
    command = shlex.join(["neat-train", *kept, "--resume_from_checkpoint", stopped["checkpoint"]])
    token_note = (" (--hub_token is left out: add it back, or let the token come from HF_TOKEN or `hf auth login`)"
                  if had_token else "")
    return (f"neat-train: stopped by {stopped['signal']} at step {stopped['step']}/{stopped['max_steps']}; the adapter "
            f"trained so far is saved in {stopped['checkpoint']}. Resume with: {command}{token_note}")


def _leave_process_group() -> None:
    """End a distributed run in step on every rank (gloo/DeepSpeed threads left at interpreter exit can abort it)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(cli())
