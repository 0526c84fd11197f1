"""Hub pushes from [`NeatTrainer`]: the adapter and *our* model card, never base-model weights.

`transformers.Trainer` pushes by uploading its whole `output_dir` (`upload_folder`, everything but `_*` and
`checkpoint-*`), after writing a `TrainingSummary` card (`library_name: transformers`, no base model) into
`README.md`; with a PEFT model it then asks `PeftModel.create_or_update_model_card` to patch that card. A NEAT model is
neither, so left alone the Trainer would push a blank card, a pickled `training_args.bin` and whatever else sits in
`output_dir`. [`NeatHubMixin`] replaces the four Hub methods of the Trainer:

- `init_hf_repo`: also creates the `hub_revision` branch when it does not exist (the Trainer would fail on the first
  push to a missing branch).
- the card: the trainer owns its run's card facts ([`NeatHubMixin.neat_card`], a `neat_hf.cards.CardFacts`): the
  training setup from [`NeatHubMixin.neat_training_info`], the loss curve, the arguments of `create_model_card` and
  `push_to_hub`, and what callers add (`trainer.neat_card.add(eval_results=...)`, as `neat-train` does after its final
  evaluation). `NeatTrainer.save_model` hands all of it to `NeatModel.save_pretrained`, which writes the card once per
  save, checkpoints included; `create_model_card` rewrites the card of `output_dir` from it.
- `log`: notes the experiment-tracker run (Trackio, W&B, Comet) while it is live, for the card's badge.
- `push_to_hub` (`hub_strategy="end"`, and `trainer.push_to_hub()` / `save_model()` with `push_to_hub=True`): one
  commit with the adapter files, `README.md`, `training_info.json` and the tokenizer files of `output_dir` only.
- `_push_from_checkpoint` (`hub_strategy="every_save"`, `"checkpoint"`, `"all_checkpoints"`): after each save, one
  asynchronous commit with the checkpoint's adapter and card at the repo root and, for `"checkpoint"` /
  `"all_checkpoints"`, the checkpoint folder (optimizer, scheduler, RNG and trainer state, to resume from) under
  `last-checkpoint/` or `checkpoint-<step>/`. Full-model weight files (`model*.safetensors`, `pytorch_model*.bin`) and
  DeepSpeed's `global_step*/` folders are never uploaded, and every adapter file is checked to hold adapter tensors
  only.

Every push first checks the repo, as `neat-hub push` does (`neat_hf.hub.conflicts.conflict_operations`): pickles,
full-model weights and weights in other formats already there are listed in a warning (once per trainer) and, with
`hub_delete_conflicting=True` ([`NeatTrainingArguments`]), deleted in the same commit; another adapter's
`adapter_config.json` (another PEFT type or base model) that the push replaces is named. For checkpoint pushes the
check runs in the background job with the commit, so a failure to list the repo is logged like a failed push.

Use it as the first base class: `class NeatTrainer(NeatHubMixin, Trainer)`. Files are read into memory when a push is
queued, so the next save cannot change a file while it is being uploaded. As in the Trainer, checkpoint pushes are
asynchronous (`trainer.push_in_progress`); `train()` waits for them before returning.

Which files go up, the checks made before a push, branch creation and the commit itself are the core's single Hub path
(`neat_hf.hub.commit`), shared with `NeatModel.push_to_hub` and `neat-hub push`; this mixin only decides *when* to push
and *what* to stage. It sits next to the trainer, as TRL keeps its trainers' Hub and card logic in its trainer package.
"""

from __future__ import annotations

import inspect
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import CommitOperationAdd, HfApi
from transformers.utils.hub import PushInProgress

from neat_hf.cards.adapter_card import CardFacts, framework_versions, write_model_card
from neat_hf.constants import ADAPTER_CONFIG_NAME, TRAINING_CURVE_NAME
from neat_hf.hub.commit import (
    ADAPTER_FILES,
    TOKENIZER_FILES,
    adapter_root_files,
    checkpoint_files,
    commit,
    commit_operations,
    ensure_branch,
    hub_api,
)
from neat_hf.hub.conflicts import ConflictCheck
from neat_hf.hub.error_translation import hub_errors
from neat_hf.hub.download import is_hub_id
from neat_hf.trainers.loss_curve import loss_facts, write_training_curve
from neat_hf.trainers.trackers import live_tracker_runs, tracker_urls

logger = logging.getLogger(__name__)


def _hub_strategy(args: Any) -> str:
    strategy = getattr(args, "hub_strategy", "every_save")
    return getattr(strategy, "value", strategy)


def _default_hardware(world_size: int) -> str:
    try:
        if torch.cuda.is_available():
            return f"{world_size}x {torch.cuda.get_device_name(0)}"
    except Exception:  # torch without CUDA support, or no driver
        pass
    cpu = platform.processor() or platform.machine() or "CPU"
    return (
        f"{world_size}x CPU ({cpu}, {os.cpu_count()} cores)"
        if world_size > 1
        else f"CPU ({cpu}, {os.cpu_count()} cores)"
    )


class NeatHubMixin:
    """Hub integration for a `transformers.Trainer` subclass training a [`NeatModel`] (see the module docstring)."""

    #: Dataset id(s) for the card; set it on the trainer, pass `dataset=` to `push_to_hub`, or override
    #: `neat_training_info`.
    neat_dataset_name: str | None = None

    # ------------------------------------------------------------------ card facts
    @property
    def neat_card(self) -> CardFacts:
        """This run's card facts: every card the trainer writes (each save, `create_model_card`, pushes) is built from
        them, so what one step adds stays in every later card. Add to it with `trainer.neat_card.add(...)`."""
        facts = self.__dict__.get("_neat_card_facts")
        if facts is None:
            facts = self.__dict__["_neat_card_facts"] = CardFacts()
        return facts

    def neat_training_info(self) -> dict[str, Any]:
        """The training setup written into the card and `training_info.json`.

        Reads `self.args` (epochs, learning rates of the NEAT and head groups, effective batch, schedule, precision,
        seed), `self.state` (optimizer steps, final training and evaluation loss, mean training loss), DeepSpeed's
        ZeRO stage, the hardware and the tracker run (Trackio, W&B, Comet: its address, for the card's badge).
        Override and extend (`info = super().neat_training_info()`) to add facts such as the dataset.
        """
        args, state = self.args, self.state
        world_size = int(getattr(args, "world_size", 1) or 1)
        lr = args.learning_rate
        neat_lr, head_lr = getattr(args, "neat_learning_rate", None), getattr(args, "head_learning_rate", None)
        info: dict[str, Any] = {
            # With max_steps set, the epochs actually run (state.epoch) is what happened, not num_train_epochs.
            "num_train_epochs": round(float(state.epoch), 2)
            if args.max_steps > 0 and state.epoch
            else args.num_train_epochs,
            "max_steps": args.max_steps,
            "global_step": getattr(state, "global_step", None),
            "per_device_train_batch_size": args.per_device_train_batch_size,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "world_size": world_size,
            "effective_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size,
            "lr_scheduler_type": getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type),
            **_warmup(args, state),
            "weight_decay": args.weight_decay,
            "optim": getattr(args.optim, "value", args.optim),
            "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
            "seed": args.seed,
            "deepspeed_stage": self._neat_zero_stage(),
            "hardware": _default_hardware(world_size),
        }
        if neat_lr is not None or head_lr is not None:
            info["learning_rates"] = {"NEAT": neat_lr if neat_lr is not None else lr}
            if self._neat_has_head():
                info["learning_rates"]["head"] = head_lr if head_lr is not None else lr
        else:
            info["learning_rate"] = lr
        if self.neat_dataset_name is not None:
            info["dataset"] = self.neat_dataset_name
        info.update(loss_facts(getattr(state, "log_history", [])))
        info.update(tracker_urls(getattr(self, "_neat_tracker_runs", {}), self.callback_handler.callbacks))
        used = ["deepspeed"] if info["deepspeed_stage"] else []
        info["framework_versions"] = framework_versions(used)
        return {k: v for k, v in info.items() if v is not None or k == "deepspeed_stage"}

    def neat_training_record(self, folder: str | os.PathLike) -> dict[str, Any]:
        """[`neat_training_info`] for the adapter saved in `folder`, with the loss curve drawn there
        (`training_curve.png`, see `neat_hf.trainers.loss_curve`) when any loss was logged."""
        info = self.neat_training_info()
        if write_training_curve(getattr(self.state, "log_history", []), folder) is not None:
            info["training_curve"] = TRAINING_CURVE_NAME
        return info

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        super().log(logs, *args, **kwargs)  # type: ignore[misc]
        # The reporting callbacks have seen these logs, so their runs are live now; Trackio's ends before the final
        # card is written, so its address is taken here. The first run seen is the training's: an evaluation after
        # `train()` makes the Trackio callback start another run.
        runs = live_tracker_runs(getattr(self.args, "report_to", None))
        if runs:
            self._neat_tracker_runs = {**runs, **getattr(self, "_neat_tracker_runs", {})}

    def _neat_zero_stage(self) -> int | None:
        plugin = getattr(getattr(getattr(self, "accelerator", None), "state", None), "deepspeed_plugin", None)
        stage = getattr(plugin, "zero_stage", None)
        return int(stage) if stage is not None else None

    def _neat_has_head(self) -> bool:
        config = next(iter(getattr(self._neat_hub_model(), "peft_config", {}).values()), None)
        return bool(getattr(config, "modules_to_save", None))

    def _neat_hub_model(self) -> Any:
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------ Trainer hub methods
    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        # An unreachable Hub or a server error while creating the repo is one HubError line (the Trainer let
        # huggingface_hub's ConnectError / HTTP error through as a traceback).
        repo = self.args.hub_model_id or Path(self.args.output_dir).name
        with hub_errors("create or open the repo", repo, revision=self.args.hub_revision):
            if "private" in inspect.signature(super().init_hf_repo).parameters:  # type: ignore[misc]
                super().init_hf_repo(token=token, private=private)  # type: ignore[misc]
            else:
                # transformers < 5.23 takes the visibility from `args.hub_private_repo` only: set it for this call.
                saved = self.args.hub_private_repo
                self.args.hub_private_repo = saved if private is None else private
                try:
                    super().init_hf_repo(token=token)  # type: ignore[misc]
                finally:
                    self.args.hub_private_repo = saved
            if self.is_world_process_zero():
                token = token if token is not None else self.args.hub_token
                ensure_branch(self._neat_api(), self.hub_model_id, self.args.hub_revision, token=token)

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: Any | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: Any | None = None,
        dataset_tags: Any | None = None,
        dataset: Any | None = None,
        dataset_args: Any | None = None,
    ) -> None:
        """Add these fields to the run's card facts and rewrite the NEAT model card of the adapter in `output_dir`
        from them (same arguments as `Trainer.create_model_card`)."""
        self._neat_add_card_fields(
            language=language, license=license, tags=tags, model_name=model_name, finetuned_from=finetuned_from,
            dataset=dataset if dataset is not None else dataset_tags,
        )
        if not self.is_world_process_zero():
            return
        output_dir = Path(self.args.output_dir)
        if not (output_dir / ADAPTER_CONFIG_NAME).is_file():
            logger.warning("No adapter in %s yet; call save_model() before create_model_card().", output_dir)
            return
        write_model_card(output_dir, model=self._neat_hub_model(), **self.neat_card_arguments(output_dir))
        self._neat_card_written = (os.fspath(output_dir), self.neat_card.version)

    def _neat_add_card_fields(
        self, *, finetuned_from: Any = None, dataset: Any = None, tags: Any = None, **fields: Any
    ) -> None:
        """`Trainer.create_model_card`'s fields, as the card names them, into [`neat_card`]."""
        datasets = [dataset] if isinstance(dataset, str) else list(dataset) if dataset else None
        training_info = {"dataset": datasets if len(datasets) > 1 else datasets[0]} if datasets else None
        base_model = finetuned_from if finetuned_from is not None and is_hub_id(finetuned_from) else None
        tags = [tags] if isinstance(tags, str) else list(tags or [])
        self.neat_card.add(training_info=training_info, base_model=base_model, tags=tags or None, **fields)

    def neat_card_arguments(self, folder: str | os.PathLike) -> dict[str, Any]:
        """The card of the adapter saved in `folder`: [`neat_card`] updated with the training record now (the loss
        curve drawn into `folder`), NeatTrainer's tags first (TRL's `_tag_names`) and the repo pushed to."""
        self.neat_card.add(training_info=self.neat_training_record(folder))
        arguments = self.neat_card.card_arguments()
        arguments["tags"] = list(dict.fromkeys([*(getattr(self, "_tag_names", None) or []), *arguments.get("tags", [])])) or None
        arguments.setdefault("repo_id", getattr(self, "hub_model_id", None) or self.args.hub_model_id)
        return arguments

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **kwargs: Any,
    ) -> Any:
        """Save the adapter (with its card) and push adapter + card (+ tokenizer) from `output_dir` in one commit.

        Same arguments as `Trainer.push_to_hub`; extra keyword arguments are card fields (as for
        [`create_model_card`]). An adapter already saved at this step is not saved again, and its card is rewritten
        only when the card facts changed since it was written. Returns the `CommitInfo` (or a `Future` of it with
        `blocking=False`).
        """
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        model_name = kwargs.pop("model_name", None)
        if model_name is None and self.args.should_save:
            model_name = self.args.hub_model_id or Path(self.args.output_dir).name
        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        self._neat_add_card_fields(model_name=model_name, **kwargs)
        output_dir = os.fspath(self.args.output_dir)
        if getattr(self, "_neat_saved", None) != (output_dir, self.state.global_step):
            self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        if getattr(self, "_neat_card_written", None) != (output_dir, self.neat_card.version):
            self.create_model_card()
        revision = revision if revision is not None else self.args.hub_revision
        self._finish_current_push()
        operations = self._neat_operations(Path(self.args.output_dir), prefix="", token=token)
        return self._neat_commit(operations, commit_message or "End of training", token, revision, blocking=blocking)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        strategy = _hub_strategy(self.args)
        if not self.is_world_process_zero() or strategy == "end":
            return
        if not self.args.hub_always_push and self.push_in_progress is not None and not self.push_in_progress.is_done():
            return
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        if getattr(self.args.save_strategy, "value", self.args.save_strategy) == "steps":
            commit_message = f"Training in progress, step {self.state.global_step}"
        else:
            commit_message = f"Training in progress, epoch {int(self.state.epoch or 0)}"
        token = self.args.hub_token
        checkpoint = Path(checkpoint_folder)
        staging = Path(tempfile.mkdtemp(prefix="neat-hub-push-"))
        try:
            for name in ADAPTER_FILES | TOKENIZER_FILES:  # the card too: written with the checkpoint, naming the repo
                if (checkpoint / name).is_file():
                    shutil.copy2(checkpoint / name, staging / name)
            if not (staging / ADAPTER_CONFIG_NAME).is_file():
                logger.warning("Checkpoint %s holds no adapter; nothing pushed.", checkpoint)
                return
            operations = self._neat_operations(staging, prefix="", token=token)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if strategy in ("checkpoint", "all_checkpoints"):
            path_in_repo = "last-checkpoint" if strategy == "checkpoint" else checkpoint.name
            operations += self._neat_operations(checkpoint, prefix=path_in_repo, token=token, whole_checkpoint=True)
        job = self._neat_commit(operations, commit_message, token, self.args.hub_revision, blocking=False)
        if self.push_in_progress is None or self.push_in_progress.is_done():
            self.push_in_progress = PushInProgress([job])
        else:
            self.push_in_progress.jobs.append(job)

    # ------------------------------------------------------------------ helpers
    def _neat_api(self) -> HfApi:
        api = getattr(self, "_neat_hub_api", None)
        if api is None:
            api = self._neat_hub_api = hub_api()
        return api

    def _neat_conflicts(self) -> ConflictCheck:
        """The repo check of this trainer's pushes: one for all of them, so each conflicting file is warned about
        once. Deletes with `args.hub_delete_conflicting` (absent from plain `TrainingArguments`: then only lists)."""
        check = getattr(self, "_neat_conflict_check", None)
        if check is None:
            check = self._neat_conflict_check = ConflictCheck()
        check.delete = bool(getattr(self.args, "hub_delete_conflicting", False))
        return check

    def _neat_operations(
        self, folder: Path, *, prefix: str, token: str | None, whole_checkpoint: bool = False
    ) -> list[CommitOperationAdd]:
        """Commit operations for the pushable files of `folder`, read into memory now (see the module docstring)."""
        files = checkpoint_files(folder) if whole_checkpoint else adapter_root_files(folder)
        return commit_operations(folder, files, token=token, prefix=prefix, in_memory=True)

    def _neat_commit(
        self, operations: list[CommitOperationAdd], message: str, token: str | None, revision: str | None, *, blocking: bool
    ) -> Any:
        return commit(
            self._neat_api(),
            self.hub_model_id,
            operations,
            commit_message=message,
            token=token,
            revision=revision,
            blocking=blocking,
            conflicts=self._neat_conflicts(),
        )


def _warmup(args: Any, state: Any) -> dict[str, Any]:
    """`warmup_ratio` and `warmup_steps` as the card names them: transformers 5 reads a `warmup_steps` below 1 as a
    ratio of the training steps, so such a value is recorded as the ratio, with the number of steps it came to."""
    ratio = getattr(args, "warmup_ratio", None) or None
    steps = getattr(args, "warmup_steps", None) or None
    if isinstance(steps, float) and 0 < steps < 1:
        ratio, steps = steps, None
    if ratio and not steps and getattr(state, "max_steps", 0) and hasattr(args, "get_warmup_steps"):
        steps = args.get_warmup_steps(state.max_steps) or None
    return {"warmup_ratio": ratio, "warmup_steps": steps}
