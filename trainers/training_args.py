"""`NeatTrainingArguments`: `transformers.TrainingArguments` plus the knobs NEAT training needs.

The paper tunes separate learning rates for the NEAT weights and the task head (arXiv 2410.01870, Tables 6, 8, 9:
"Learning Rate (NEAT)" and "Learning Rate (Head)"); these arguments carry them to [`NeatTrainer.create_optimizer`].
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from transformers import TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from neat_hf.constants import ADAPTER_CONFIG_NAME
from neat_hf.deepspeed_configs import DeepSpeedConfigError, has_optimizer_section, resolve_deepspeed_config
from neat_hf.errors import NeatError, TrainerSetupError, TrainingArgumentError
from neat_hf.trainers.checkpoints import MARKER, checkpoint_folders, is_complete, resolve_resume

logger = logging.getLogger(__name__)


#: TrainingArguments fields transformers 5.23 renamed (new name → old name; the old ones stay as deprecated aliases).
RENAMED_FIELDS = {"activation_checkpointing": "gradient_checkpointing",
                  "activation_checkpointing_kwargs": "gradient_checkpointing_kwargs"}
#: The field that turns on activation checkpointing in the installed transformers (new name, else the old one).
CHECKPOINTING_FIELD = ("activation_checkpointing"
                       if any(f.name == "activation_checkpointing" for f in dataclasses.fields(TrainingArguments))
                       else RENAMED_FIELDS["activation_checkpointing"])


@dataclass
class NeatTrainingArguments(TrainingArguments):
    r"""
    Configuration class for [`NeatTrainer`]: every [`~transformers.TrainingArguments`] field, plus the NEAT ones below.

    Only the parameters specific to NEAT training are listed here. For the others, see
    [`~transformers.TrainingArguments`].

    Parameters that control the optimizer groups:

        neat_learning_rate (`float`, *optional*):
            Learning rate of the NEAT weights (`peanut_A`, `peanut_B`, encoders, decoders). Defaults to
            `learning_rate`.
        neat_weight_decay (`float`, *optional*):
            Weight decay of the NEAT weights. Defaults to `weight_decay`.
        head_learning_rate (`float`, *optional*):
            Learning rate of the fully trained `modules_to_save` (e.g. a classification head). Defaults to
            `learning_rate`.
        head_weight_decay (`float`, *optional*):
            Weight decay of the `modules_to_save` weights. Defaults to `weight_decay`.

        Biases and normalisation weights get no weight decay in either group, as in [`~transformers.Trainer`].

    DeepSpeed (`deepspeed`): besides a JSON path or a dict, the name of a bundled config is accepted (`"zero2"`,
    `"zero3"`, `"zero3_offload"`, see `neat_hf.deepspeed_configs`). The config is read and checked when the
    arguments are built, so a missing or invalid file fails before any model is loaded. On a machine without a GPU,
    DeepSpeed runs on CPU with the gloo backend (`use_cpu` is turned on), and a script started without a launcher
    runs as a single-process DeepSpeed job.

    Parameters that control the output folder:

        overwrite_output_dir (`bool`, *optional*, defaults to `False`):
            Allow training into an `output_dir` that already holds a trained adapter or `checkpoint-*` folders.
            Without it, a new run (not resuming) into such a folder is refused before anything is loaded or
            written, so earlier work is never silently replaced; an adapter for another base model is refused even
            when resuming.

    Parameters that control Hub pushes (besides `push_to_hub`, `hub_model_id`, `hub_strategy`, ...):

        hub_delete_conflicting (`bool`, *optional*, defaults to `False`):
            Every push (end of training and checkpoints) first lists the repo's files that contradict an adapter repo:
            pickles such as an old `adapter_model.bin`, full-model weights such as `model.safetensors`, `*.gguf`
            files, other `*.safetensors` at the root (see `neat_hf.hub.conflicts.conflicting_files`). By default they
            are named in a warning (once per trainer) and left in place; with `True` they are deleted in the same
            commit as the adapter. Checkpoint folders in the repo are never touched. An `adapter_config.json` of
            another adapter (another PEFT type or base model) is replaced by the push either way, with a warning.

    > [!NOTE]
    > These defaults differ from [`~transformers.TrainingArguments`]:
    > - `learning_rate` defaults to `3e-4` instead of `5e-5` (the paper's LLaMA setting, Table 10; adapters need a
    >   larger step than full fine-tuning).
    > - `logging_steps` defaults to `10` instead of `500`.
    """

    learning_rate: float = field(
        default=3e-4,
        metadata={"help": "The initial learning rate (AdamW); also the default of neat_ and head_learning_rate."},
    )
    logging_steps: float = field(
        default=10,
        metadata={
            "help": "Log every X update steps. An integer, or a float in [0, 1) for a ratio of the total steps."
        },
    )

    # --- NEAT optimizer groups ---
    neat_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of the NEAT weights (peanut_A/B, encoders, decoders). Defaults to learning_rate."},
    )
    neat_weight_decay: float | None = field(
        default=None, metadata={"help": "Weight decay of the NEAT weights. Defaults to weight_decay."}
    )
    head_learning_rate: float | None = field(
        default=None,
        metadata={"help": "Learning rate of modules_to_save (e.g. the classifier head). Defaults to learning_rate."},
    )
    head_weight_decay: float | None = field(
        default=None, metadata={"help": "Weight decay of modules_to_save. Defaults to weight_decay."}
    )

    # --- output folder ---
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Allow an output_dir that already holds a trained adapter or checkpoints (they get replaced)."
        },
    )

    # --- Hub pushes ---
    hub_delete_conflicting: bool = field(
        default=False,
        metadata={
            "help": "Delete, in the same commit as each Hub push, files of the repo that contradict an adapter repo "
            "(pickles such as an old adapter_model.bin, full-model weights such as model.safetensors, *.gguf, other "
            "root *.safetensors). Without it they are only listed in a warning."
        },
    )

    def __post_init__(self) -> None:
        for name in ("neat_learning_rate", "neat_weight_decay", "head_learning_rate", "head_weight_decay"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise TrainingArgumentError(f"{name} must be a non-negative number or None (= use the global value), got {value!r}.")
            setattr(self, name, float(value))
        if self.deepspeed:
            self.deepspeed = resolve_deepspeed_config(self.deepspeed)
        self._resolve_use_cpu()
        if self.deepspeed:
            self._prepare_deepspeed()
        try:
            super().__post_init__()
        except NeatError:
            raise
        except ValueError as err:  # transformers' own checks of the values (strategies, precision, ...), as one line
            raise TrainingArgumentError(f"Invalid training arguments: {' '.join(str(err).split())}") from err

    def _resolve_use_cpu(self) -> None:
        """Turn on `use_cpu` where a run on a machine without a GPU needs it: the one place this is decided.

        Measured with transformers 5.24 / DeepSpeed 0.19: under DeepSpeed, or a distributed launch (torchrun,
        `WORLD_SIZE` > 1), the Trainer joins the process group (gloo) only with `use_cpu=True`; otherwise DeepSpeed and
        the Trainer disagree on the world size, and under torchrun every rank trains alone on the whole dataset.
        """
        if self.use_cpu:
            return
        has_gpu = torch.cuda.is_available()
        has_accelerator = has_gpu or (hasattr(torch, "xpu") and torch.xpu.is_available())
        if self.deepspeed and not has_gpu:
            logger.info("No GPU found: running DeepSpeed on CPU (use_cpu=True, gloo backend).")
        elif int(os.environ.get("WORLD_SIZE", "1")) > 1 and not has_accelerator:
            logger.info("Distributed launch without a GPU: setting use_cpu=True (gloo backend).")
        else:
            return
        self.use_cpu = True

    def _prepare_deepspeed(self) -> None:
        """Check the (resolved) DeepSpeed config, and set up what DeepSpeed needs before `TrainingArguments` reads
        the world size (which happens in `super().__post_init__`)."""
        if has_optimizer_section(self.deepspeed) and any(
            getattr(self, name) is not None for name in ("neat_learning_rate", "head_learning_rate")
        ):
            raise DeepSpeedConfigError(
                "The DeepSpeed config defines an \"optimizer\", which builds one parameter group and would ignore "
                "neat_learning_rate / head_learning_rate. Remove the \"optimizer\" section (the Trainer then builds "
                "AdamW with the NEAT groups; set --optim for another optimizer) or drop the per-group learning rates."
            )
        # `python train.py --deepspeed ...` without a launcher: DeepSpeed would otherwise look for MPI.
        if "RANK" not in os.environ and "OMPI_COMM_WORLD_SIZE" not in os.environ:
            defaults = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}
            for key, value in defaults.items():
                os.environ.setdefault(key, value)
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            logger.info("No launcher environment found: running DeepSpeed as a single process.")
        if not torch.cuda.is_available() and not dist.is_initialized():
            # On a CPU-only machine the Trainer and DeepSpeed agree on the world size only with `use_cpu=True` (see
            # `_resolve_use_cpu`) and a gloo process group created before the arguments are.
            import deepspeed  # optional heavy package (the `deepspeed` extra): imported only when asked for

            deepspeed.init_distributed(dist_backend="gloo")

    # Resolved values, so that callers never repeat the "None means the global value" rule.
    @property
    def resolved_neat_learning_rate(self) -> float:
        """`neat_learning_rate`, or `learning_rate` when unset."""
        return self.learning_rate if self.neat_learning_rate is None else self.neat_learning_rate

    @property
    def resolved_neat_weight_decay(self) -> float:
        """`neat_weight_decay`, or `weight_decay` when unset."""
        return self.weight_decay if self.neat_weight_decay is None else self.neat_weight_decay

    @property
    def resolved_head_learning_rate(self) -> float:
        """`head_learning_rate`, or `learning_rate` when unset."""
        return self.learning_rate if self.head_learning_rate is None else self.head_learning_rate

    @property
    def resolved_head_weight_decay(self) -> float:
        """`head_weight_decay`, or `weight_decay` when unset."""
        return self.weight_decay if self.head_weight_decay is None else self.head_weight_decay

    @classmethod
    def from_training_arguments(cls, args: TrainingArguments, **overrides: Any) -> NeatTrainingArguments:
        """Upgrade a plain [`~transformers.TrainingArguments`] (as TRL's `SFTTrainer` does with its config).

        Every init field is copied with its real value (the token fields included, which `to_dict()` masks), so the
        result trains exactly like `args`; `overrides` set NEAT fields on top.
        """
        if isinstance(args, cls) and not overrides:
            return args
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
        # Deprecated aliases are mirrored from their new names after __post_init__; pass only the new ones.
        for new_name, old_name in RENAMED_FIELDS.items():
            if new_name in values:
                values.pop(old_name, None)
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        dropped = sorted(set(values) - known)
        if dropped:
            logger.warning(f"{type(args).__name__} fields unknown to NeatTrainingArguments are ignored: {dropped}.")
        values = {k: v for k, v in values.items() if k in known}
        values.update(overrides)
        return cls(**values)


    def trained_work(self) -> list[str]:
        """The trained adapter and `checkpoint-*` folders already in `output_dir` (what a new run would replace).
        A checkpoint whose save was interrupted (it still holds `checkpoints.MARKER`) is not: nothing can resume from
        it, and the next save at its step replaces it."""
        output_dir = self.output_dir
        if not output_dir or not os.path.isdir(output_dir):
            return []
        found = [folder for folder in _adapter_folders(output_dir)
                 if os.path.isfile(os.path.join(folder, ADAPTER_CONFIG_NAME))
                 or (folder != output_dir and os.path.isdir(folder) and not os.path.exists(os.path.join(folder, MARKER)))]
        return found

    def resumes(self) -> bool:
        """Whether `resume_from_checkpoint` asks to resume (a path, or `true`/`last`/`latest`)."""
        value = self.resume_from_checkpoint
        return bool(value) and str(value).lower() not in ("false", "no", "none", "0")

    def check_resume_checkpoint(self) -> None:
        """Refuse a `resume_from_checkpoint` that has nothing to resume, before any data or model is loaded.

        `true`/`last`/`latest` need a complete `checkpoint-*` folder in `output_dir` (see
        `neat_hf.trainers.checkpoints`); a path must be an existing folder whose save was not interrupted.

        Raises:
            TrainingArgumentError: one line naming the folder that is missing or incomplete and what to do instead.
        """
        if not self.resumes():
            return
        value = str(self.resume_from_checkpoint)
        if value.lower() in ("true", "last", "latest"):
            if not (os.path.isdir(self.output_dir) and get_last_checkpoint(self.output_dir)):
                raise TrainingArgumentError(
                    f"--resume_from_checkpoint {value}: output_dir {self.output_dir!r} holds no checkpoint-* folder "
                    "to resume from. Drop the flag to start a new run, or pass the checkpoint folder itself."
                )
            if not any(is_complete(folder) for folder in checkpoint_folders(self.output_dir)):
                interrupted = [os.path.basename(folder) for folder in checkpoint_folders(self.output_dir)]
                raise TrainingArgumentError(
                    f"--resume_from_checkpoint {value}: output_dir {self.output_dir!r} holds no complete checkpoint "
                    f"(the save of {', '.join(interrupted)} was interrupted, so there is nothing to resume). Start the "
                    "run again: the same command without --resume_from_checkpoint (the interrupted checkpoint is "
                    "replaced when that step is saved again)."
                )
        elif not os.path.isdir(value):
            raise TrainingArgumentError(
                f"--resume_from_checkpoint {value!r}: no such folder. Pass a checkpoint-* folder written by a run, or "
                "`true` for the last checkpoint in --output_dir."
            )
        else:
            try:
                resolve_resume(value, self.output_dir, announce=False)
            except TrainerSetupError as err:
                raise TrainingArgumentError(f"--resume_from_checkpoint {value!r}: {err}") from err

    def check_output_dir(self, base_model_name_or_path: str | None, *, new_run: bool = False) -> None:
        """Refuse an `output_dir` whose trained work this run would replace, unless `overwrite_output_dir`; nothing
        is written. `neat-train` calls it first thing (before data and model are loaded); [`NeatTrainer`] calls it
        before it creates the adapter and again when `train()` starts, so a refused run leaves the model and the
        folder as they were.

        Args:
            base_model_name_or_path (`str`, *optional*): The base model the run trains an adapter for; an adapter (at
                the top or in a `checkpoint-*` folder) for another base is refused even when resuming.
            new_run (`bool`, *optional*, defaults to `False`): The run starts from scratch (does not resume): then any
                trained adapter or `checkpoint-*` folder in `output_dir` is refused, whatever its base model.

        Raises:
            NeatError: one line naming the folder, what it holds and the fixes (`--overwrite_output_dir`,
                `--resume_from_checkpoint`, another `--output_dir`).
        """
        output_dir = self.output_dir
        if self.overwrite_output_dir or not output_dir or not os.path.isdir(output_dir):
            return
        for folder in _adapter_folders(output_dir):
            path = os.path.join(folder, ADAPTER_CONFIG_NAME)
            if not os.path.isfile(path) or not base_model_name_or_path:
                continue
            try:
                with open(path, encoding="utf-8") as handle:
                    saved = json.load(handle).get("base_model_name_or_path")
            except (OSError, ValueError, AttributeError) as err:
                raise NeatError(
                    f"output_dir {output_dir!r} holds an unreadable {path!r} ({err}); choose another output_dir or "
                    "set overwrite_output_dir=True (--overwrite_output_dir) to replace it."
                ) from err
            if saved and saved != base_model_name_or_path:
                raise NeatError(
                    f"output_dir {output_dir!r} already holds an adapter for base model {saved!r} ({path}), but this "
                    f"run trains one for {base_model_name_or_path!r}. Choose another output_dir, or set "
                    "overwrite_output_dir=True (--overwrite_output_dir) to replace it."
                )
        work = self.trained_work() if new_run else []
        if work:
            shown = ", ".join(os.path.basename(os.path.normpath(w)) if w != output_dir else "an adapter" for w in work[:3])
            raise NeatError(
                f"output_dir {output_dir!r} already holds trained work ({shown}{', ...' if len(work) > 3 else ''}) "
                "that this run would replace. Resume it with --resume_from_checkpoint true, choose another "
                "--output_dir, or pass --overwrite_output_dir (overwrite_output_dir=True) to replace it."
            )


def _adapter_folders(output_dir: str) -> Iterator[str]:
    yield output_dir
    yield from sorted(glob.glob(os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-*")))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
