"""Checks of how `neat-train` was launched, before anything is loaded: a run that would crash on one rank,
silently train differently from what was asked, or redo a finished run is named in one line instead.

- [`check_launch`]: a quantized base (`--load_in_4bit` / `--load_in_8bit`) with DeepSpeed, FSDP, or the built-in
  model in several processes; `accelerate launch --num_processes N` that started one process (accelerate's simple
  launcher on a machine without GPUs, without `--use_deepspeed`/`--use_fsdp`); `--deepspeed` under an
  `accelerate launch` that was not told to use DeepSpeed.
- [`finished_run_message`]: `--resume_from_checkpoint` of a run whose checkpoint already reached `--max_steps`
  (nothing is trained; its folder is left holding what `--save_total_limit` allows).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from neat_hf.errors import TrainingArgumentError, UnsupportedQuantizationError
from neat_hf.cli.train import default_job
from neat_hf.trainers import checkpoints


def _world_size(environ: Mapping[str, str]) -> int:
    return int(environ.get("WORLD_SIZE", "1") or 1)


def _launched_by_accelerate(environ: Mapping[str, str]) -> bool:
    # `accelerate launch` sets these in every launcher it uses, the simple one included.
    return "ACCELERATE_MIXED_PRECISION" in environ or "ACCELERATE_DYNAMO_BACKEND" in environ


def check_launch(model_args: Any, training_args: Any, environ: Mapping[str, str] | None = None) -> None:
    """Refuse a launch that cannot run as asked (see the module docstring); nothing loaded yet.

    Raises:
        UnsupportedQuantizationError: a quantized base with DeepSpeed, FSDP, or the built-in model on several ranks.
        TrainingArgumentError: accelerate started fewer processes than asked, or ignores `--deepspeed`.
    """
    environ = os.environ if environ is None else environ
    quantized = "--load_in_4bit" if model_args.load_in_4bit else "--load_in_8bit" if model_args.load_in_8bit else None
    if quantized and training_args.deepspeed:
        raise UnsupportedQuantizationError(
            f"{quantized} with --deepspeed: DeepSpeed ZeRO is not supported with a quantized base (ZeRO-3 shards weights "
            "into flat 16-bit partitions that bitsandbytes layers cannot compute with; ZeRO-2 is untested with NEAT). "
            "Train the quantized base without --deepspeed (QLoRA-style, one GPU), or load the base in bf16 for ZeRO."
        )
    if quantized and getattr(training_args, "fsdp", None):
        raise UnsupportedQuantizationError(
            f"{quantized} with --fsdp: FSDP is not supported with a quantized base (untested with NEAT). Train the "
            "quantized base without --fsdp, or load the base in bf16 to shard it."
        )
    if quantized and default_job.is_builtin(model_args.model_name_or_path) and _world_size(environ) > 1:
        raise UnsupportedQuantizationError(
            f"{quantized} on the built-in model runs in one process; this launch started {_world_size(environ)} "
            f"(WORLD_SIZE). Run `neat-train {quantized} ...` without torchrun/accelerate/deepspeed, or drop {quantized} "
            "to train the built-in model on several processes."
        )
    check_launcher(training_args.deepspeed, environ)


def deepspeed_flag(argv: Sequence[str]) -> str | None:
    """The value of `--deepspeed` on a command line, before it is parsed (None without one)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--deepspeed="):
            return arg.split("=", 1)[1]
        if arg == "--deepspeed" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def check_launcher(deepspeed: str | None, environ: Mapping[str, str] | None = None) -> None:
    """The launcher's part of [`check_launch`], which needs no parsed arguments: `neat-train` runs it before parsing,
    since building the training arguments under such a launch can wait forever for ranks that never start.

    Raises:
        TrainingArgumentError: accelerate started fewer processes than asked, or ignores `--deepspeed`.
    """
    environ = os.environ if environ is None else environ
    if _launched_by_accelerate(environ) and "MASTER_ADDR" in environ and "WORLD_SIZE" not in environ:
        raise TrainingArgumentError(
            "accelerate launch was asked for several processes (--num_processes) but started one: without GPUs "
            "accelerate runs several processes only for DeepSpeed or FSDP, and this run would train alone with other "
            "batches. Launch with `torchrun --nproc_per_node N -m neat_hf.cli.train ...`, or for DeepSpeed add "
            "`--use_deepspeed --deepspeed_config_file <the --deepspeed file>` to accelerate launch."
        )
    if deepspeed and _launched_by_accelerate(environ) and environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() != "true":
        raise TrainingArgumentError(
            f"--deepspeed {deepspeed} was given, but accelerate launch was not told to use DeepSpeed, so accelerate "
            f"would not use that config. Add `--use_deepspeed --deepspeed_config_file {deepspeed}` to accelerate "
            "launch, or launch with torchrun or deepspeed."
        )


def finished_run_message(training_args: Any, *, tidy: bool = False) -> str | None:
    """One line when `--resume_from_checkpoint` names a checkpoint that already reached `--max_steps` (there is
    nothing left to train), else None. Only runs bounded by `--max_steps` are recognised.

    With `tidy=True` (the main process of `neat-train`), when that checkpoint is the newest of `--output_dir`, the
    run's folder is first left as its own saves would have left it ([`checkpoints.tidy_finished_run`]: older
    checkpoints beyond `--save_total_limit` deleted); the line names what was deleted.
    """
    if not training_args.resumes() or training_args.max_steps is None or training_args.max_steps <= 0:
        return None
    value = str(training_args.resume_from_checkpoint)
    complete = [f for f in checkpoints.checkpoint_folders(training_args.output_dir) if checkpoints.is_complete(f)]
    if value.lower() in ("true", "last", "latest"):
        folder = complete[-1] if complete else None
    else:
        # An interrupted checkpoint is not a finished run: the resume refuses it (neat_hf.trainers.checkpoints).
        folder = value if os.path.isdir(value) and checkpoints.is_complete(value) else None
    state_file = os.path.join(folder, "trainer_state.json") if folder else None
    if not state_file or not os.path.isfile(state_file):
        return None
    try:
        with open(state_file, encoding="utf-8") as handle:
            step = int(json.load(handle).get("global_step", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return None
    if step < training_args.max_steps:
        return None
    limit = training_args.save_total_limit
    deleted = checkpoints.tidy_finished_run(training_args.output_dir, limit, folder) if tidy else []
    changed = (f"only the older checkpoint(s) beyond --save_total_limit {limit} were deleted ({', '.join(deleted)})"
               if deleted else "nothing was changed")
    return (f"{folder} is at step {step}, and --max_steps is {training_args.max_steps}: the run has finished, so "
            f"there is nothing to resume and {changed}. Raise --max_steps to train further.")
