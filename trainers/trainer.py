"""`NeatTrainer`: the Hugging Face `Trainer`, with what is NEAT's own.

A [`NeatModel`] is a `peft.PeftModel`, so `transformers.Trainer` already treats it as an adapter model (dataset
columns, labels, label smoothing, non-strict DeepSpeed loads, frozen weights left out of DeepSpeed checkpoints): the
plain Trainer trains it. `NeatTrainer` adds the NEAT/head learning-rate groups, checkpoints that are whole or ignored
(and resume exactly), adapter-only saves under ZeRO-3 and FSDP2 (gathering the adapter, never the base), JSON instead
of pickles, model cards and Hub pushes, and FSDP2 sharding; each private override says why no public hook does it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from transformers import Trainer, TrainingArguments, set_seed
from transformers.trainer_optimizer import is_optimizer_factory
from transformers.trainer_pt_utils import reissue_pt_warnings
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, enable_full_determinism

from neat_hf import NeatConfig, NeatModel, get_neat_model
from neat_hf.config import read_adapter_config
from neat_hf.constants import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, DEFAULT_ADAPTER_NAME
from neat_hf.deepspeed_configs import zero_stage
from neat_hf.parallel.zero3 import gathered, is_zero3_partitioned, register_zero3_parameters
from neat_hf.parallel.dtensor import full_tensor, is_dtensor
from neat_hf.errors import (
    AdapterLoadError,
    AdapterMismatchError,
    FsdpConfigError,
    TrainerSetupError,
    UnsupportedQuantizationError,
)
from neat_hf.io import atomic_write_text, check_saved_together, read_adapter_weights
from neat_hf.layer import NeatLayer
from neat_hf.quantization import check_deepspeed_stage, check_quantized_model, is_quantized_model

from neat_hf.trainers import fsdp_plan as fsdp
from neat_hf.trainers.checkpoints import (
    already_finished,
    begin_checkpoint,
    finish_checkpoint,
    keep_only,
    resolve_resume,
    rotation_deferred,
    tidy_finished_run,
)
from neat_hf.trainers.hub_mixin import NeatHubMixin
from neat_hf.trainers.training_args import CHECKPOINTING_FIELD, NeatTrainingArguments

logger = logging.getLogger(__name__)

#: Written next to the adapter instead of the Trainer's pickled `training_args.bin`.
TRAINING_ARGS_JSON_NAME = "training_args.json"
#: The Trainer's scheduler file name (transformers.trainer.SCHEDULER_NAME).
SCHEDULER_NAME = "scheduler.pt"
#: Adapter settings that change what the saved tensors compute; a checkpoint must agree on all of them to be loaded.
_FUNCTIONAL_FIELDS = ("r", "depth", "act_fn", "scaling")


class NeatTrainer(NeatHubMixin, Trainer):
    r"""
    [`~transformers.Trainer`] for NEAT adapters (arXiv 2410.01870).

    Features:
        - Takes a [`NeatModel`], or any transformers model plus `neat_config=NeatConfig(...)` (the adapter is created
          right after seeding with `args.seed`, so every rank and every run starts from the same A).
        - Separate learning rate and weight decay for the NEAT weights and for `modules_to_save` (the paper's
          "Learning Rate (NEAT)" and "Learning Rate (Head)"), built in `create_optimizer`, so `optim=`, schedulers,
          DeepSpeed and resuming keep working.
        - Checkpoints hold the adapter (`adapter_config.json` + `adapter_model.safetensors`, PEFT's PEANUT format),
          optimizer, scheduler, RNG and trainer state, never the frozen base weights; `resume_from_checkpoint`
          continues exactly; `load_best_model_at_end` and `save_total_limit` work on adapter checkpoints.
        - [`save_model`] writes an adapter folder that [`NeatModel.from_pretrained`] and stock `peft` load.
        - Hub pushes (`push_to_hub`, `hub_model_id`, `hub_strategy`, `hub_private_repo`, `hub_revision`) upload the
          adapter with its NEAT model card, never base weights (`neat_hf.trainers.hub_mixin.NeatHubMixin`).
        - Gradient checkpointing with frozen embeddings (input gradients are enabled), bf16/fp16, gradient
          accumulation.
        - DeepSpeed ZeRO-2/3 (`neat_hf.deepspeed_configs`): under ZeRO-3 each NEAT layer gathers its W0 once per
          forward, and saving gathers the adapter weights only, as full fp32 tensors equal to a single-process run's.
        - FSDP2 (`fsdp=...` with `fsdp_config={"version": 2}`, or `accelerate launch` with
          `neat_hf/trainers/accelerate_configs/fsdp2.yaml`): the trainer applies `fully_shard` itself, one unit per
          decoder layer holding its NEAT layers and their W0, on GPUs and on CPU (gloo) alike (see `trainers/fsdp_plan.py`).
        - Quantized bases (QLoRA-style): a model loaded with `BitsAndBytesConfig(load_in_4bit=True)` or
          `load_in_8bit=True` trains with its base frozen in 4/8 bit (`neat_hf.quantization`; call
          `neat_hf.prepare_model_for_kbit_training` first, as with PEFT); the base's quantization settings go into
          `training_info.json` and the model card.

    Args:
        model ([`NeatModel`] or `nn.Module`, *optional*):
            The model to train. A plain model needs `neat_config`.
        args ([`NeatTrainingArguments`] or [`~transformers.TrainingArguments`], *optional*):
            Training arguments; plain `TrainingArguments` are upgraded to [`NeatTrainingArguments`]. Defaults to
            `NeatTrainingArguments(output_dir="neat-output")`.
        neat_config ([`NeatConfig`], *optional*):
            Adapter to create on a plain `model`.
        dataset_name (`str`, *optional*):
            The training dataset's Hub id, named in the model card (`neat_dataset_name`).
        data_collator, train_dataset, eval_dataset, processing_class, model_init, compute_loss_func,
        compute_metrics, callbacks, optimizers, optimizer_cls_and_kwargs, preprocess_logits_for_metrics:
            As in [`~transformers.Trainer`]. With `model_init`, `neat_config` is applied to each model it returns.

    Raises:
        TypeError: `model` is neither a [`NeatModel`] nor a model given with `neat_config`.
        TrainerSetupError: `neat_config` is given together with a [`NeatModel`]; `optimizers` is given together with
            `neat_learning_rate` / `head_learning_rate`.
        FsdpConfigError: FSDP1, or an FSDP setting NEAT cannot train with (see `trainers/fsdp_plan.py`), or a quantized
            base model under FSDP2.
        NeatError: `output_dir` holds an adapter for a different base model and `overwrite_output_dir` is not set.
        DeepSpeedConfigError: (from the arguments) the DeepSpeed config is missing or invalid.
        UnsupportedQuantizationError: the base is quantized by another method than bitsandbytes, or a bitsandbytes
            base is combined with DeepSpeed ZeRO-2/3.
        MissingDependencyError: the base holds bitsandbytes layers but bitsandbytes is not installed.

    Example:

    ```python
    >>> from transformers import AutoModelForCausalLM
    >>> from neat_hf import NeatConfig
    >>> from neat_hf.trainers import NeatTrainer, NeatTrainingArguments

    >>> model = AutoModelForCausalLM.from_pretrained("meta-llama/Llama-2-7b-hf")
    >>> args = NeatTrainingArguments("llama2-neat", learning_rate=3e-4, deepspeed="zero3", bf16=True)
    >>> trainer = NeatTrainer(model, args, neat_config=NeatConfig(r=32), train_dataset=dataset)
    >>> trainer.train()
    >>> trainer.save_model()  # adapter_config.json + adapter_model.safetensors
    ```
    """

    # Facts for model cards (read by the hub integration; TRL's `_BaseTrainer` convention).
    _tag_names: list[str] = ["neat", "peanut", "peft", "neat-hf"]
    _name: str = "NEAT"
    _paper: dict[str, str] = {
        "title": "NEAT: Nonlinear Parameter-efficient Adaptation of Pre-trained Models",
        "id": "2410.01870",
        "url": "https://arxiv.org/abs/2410.01870",
    }

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Any | None = None,
        eval_dataset: Any | None = None,
        processing_class: Any | None = None,
        model_init: Callable[..., nn.Module] | None = None,
        compute_loss_func: Callable | None = None,
        compute_metrics: Callable | None = None,
        callbacks: list | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, torch.optim.lr_scheduler.LambdaLR | None] = (None, None),
        optimizer_cls_and_kwargs: tuple[type, dict[str, Any]] | None = None,
        preprocess_logits_for_metrics: Callable | None = None,
        *,
        neat_config: NeatConfig | None = None,
        dataset_name: str | None = None,
    ) -> None:
        # Everything is checked before the adapter is created, so a refused call leaves the user's model untouched.
        if args is None:
            args = NeatTrainingArguments(output_dir="neat-output")
        elif not isinstance(args, NeatTrainingArguments):
            args = NeatTrainingArguments.from_training_arguments(args)
        self._fsdp_plan = fsdp.fsdp_plan(args)
        if self._fsdp_plan is not None:
            if model_init is not None:
                raise FsdpConfigError("model_init is not supported with FSDP2; pass the model itself.")
            if model is not None:
                fsdp.check_model_for_fsdp(model)
        if optimizers[0] is not None and (args.neat_learning_rate is not None or args.head_learning_rate is not None):
            raise TrainerSetupError(
                "Both an optimizer (optimizers=) and neat_learning_rate/head_learning_rate were given; the optimizer "
                "you pass is used as is. Set the learning rates in one place: drop optimizers= or the per-group rates."
            )
        if neat_config is not None and not isinstance(neat_config, NeatConfig):
            raise TypeError(f"neat_config must be a NeatConfig, got {type(neat_config).__name__}.")
        # Trained work already in output_dir: train() refuses to start from scratch over it (see check_output_dir).
        self._work_before_init = args.trained_work()
        if model is not None:
            _check_model_argument(model, neat_config)
            _check_quantized_base(model, args)
            args.check_output_dir(_base_model_name(model, neat_config))
            model = self._create_neat_model(model, neat_config, args)
        self.neat_config = neat_config
        # Named in the model card that saves and Hub pushes write (Hub datasets only: local paths stay private).
        self.neat_dataset_name = dataset_name
        self._zero3_registered = False

        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            model_init=model_init,
            compute_loss_func=compute_loss_func,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            optimizer_cls_and_kwargs=optimizer_cls_and_kwargs,
            preprocess_logits_for_metrics=preprocess_logits_for_metrics,
        )
        if model is None:  # built by model_init (and wrapped by `call_model_init`)
            self.args.check_output_dir(_base_model_name(self.model, None))
        if self._fsdp_plan is not None:
            # Sharded up front, so that the Trainer treats it as sharded at load time: no DDP, no second sharding.
            self.model = self.model_wrapped = fsdp.shard(self.model, self._fsdp_plan, self.args)
            self.is_distributed_loading_by_transformers = True
        self._enable_input_require_grads()

    def train(self, resume_from_checkpoint: str | bool | None = None, trial: Any = None,
              ignore_keys_for_eval: list[str] | None = None, **kwargs: Any) -> Any:
        """[`~transformers.Trainer.train`], refusing to start from scratch over an adapter or checkpoints that were
        in `output_dir` before this trainer was built (pass `resume_from_checkpoint`, or set `overwrite_output_dir`).

        `resume_from_checkpoint=True` resumes from the newest *complete* checkpoint (one whose save finished), saying
        in one line which newer, interrupted ones it skipped. See `neat_hf.trainers.checkpoints`.

        Raises:
            NeatError: `output_dir` held trained work before this trainer was built and this is a new run.
            TrainerSetupError: no complete checkpoint to resume from, or the folder given is incomplete.
        """
        if not resume_from_checkpoint and self._work_before_init:
            self.args.check_output_dir(None, new_run=True)
        resume_from_checkpoint = resolve_resume(
            resume_from_checkpoint, self.args.output_dir, announce=self.is_world_process_zero()
        )
        return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)

    def _init_training_state(self, max_steps: int, num_update_steps_per_epoch: int, num_train_epochs: int,
                             resume_from_checkpoint: str | None, trial: Any) -> tuple[int, int]:
        epochs_trained, steps_trained_in_current_epoch = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        if resume_from_checkpoint is not None and already_finished(
            self.state.global_step, max_steps, resume_from_checkpoint, announce=self.is_world_process_zero()
        ):
            if self.args.should_save:  # as neat-train does
                tidy_finished_run(self.args.output_dir, self.args.save_total_limit, resume_from_checkpoint)
            return num_train_epochs, 0  # no epoch left to run: no optimizer step, no checkpoint
        return epochs_trained, steps_trained_in_current_epoch

    # ------------------------------------------------------------------ model
    @staticmethod
    def _create_neat_model(model: nn.Module, neat_config: NeatConfig | None, args: TrainingArguments) -> NeatModel:
        if isinstance(model, NeatModel):
            return model
        # Seed first, so that ranks (and reruns) draw the same A; Trainer.__init__ seeds only after the model exists.
        enable_full_determinism(args.seed) if args.full_determinism else set_seed(args.seed)
        return get_neat_model(model, neat_config)

    def call_model_init(self, trial: Any = None) -> nn.Module:
        """Call `model_init` and wrap its model with `neat_config` (when given)."""
        model = super().call_model_init(trial)
        _check_model_argument(model, self.neat_config)
        _check_quantized_base(model, self.args)
        return self._create_neat_model(model, self.neat_config, self.args)

    @property
    def _neat_model(self) -> NeatModel | None:
        """The trained [`NeatModel`] (None while `Trainer.__init__` runs with `model_init`)."""
        model = getattr(self, "model", None)
        return model if isinstance(model, NeatModel) else None

    def _enable_input_require_grads(self) -> None:
        # With gradient checkpointing, a checkpointed block whose input does not require grad gives no gradient to the
        # adapter weights inside it (reentrant checkpointing). The embeddings are frozen, so make their output require
        # grad, as PEFT does. transformers already does this for `input_ids` models; ViT-style models need it here.
        neat_model = self._neat_model
        checkpointing = getattr(self.args, CHECKPOINTING_FIELD)
        if neat_model is None or not checkpointing:
            return
        base = neat_model.get_base_model()
        if getattr(base, "_require_grads_hooks", None) or not hasattr(base, "enable_input_require_grads"):
            return
        base.enable_input_require_grads()

    # ------------------------------------------------------------------ optimizer
    def neat_parameter_groups(self, model: nn.Module | None = None) -> list[dict[str, Any]]:
        """The optimizer parameter groups: NEAT weights, `modules_to_save` and any other trainable parameter, each split
        into weight-decay / no-decay by [`~transformers.Trainer.get_decay_parameter_names`]. Empty groups are left out.

        Each group has `params`, `lr`, `weight_decay` and `group` (`"neat"`, `"head"` or `"other"`) keys.
        """
        model = self.model if model is None else model
        args: NeatTrainingArguments = self.args
        decay = set(self.get_decay_parameter_names(model))
        settings = {
            "neat": (args.resolved_neat_learning_rate, args.resolved_neat_weight_decay),
            "head": (args.resolved_head_learning_rate, args.resolved_head_weight_decay),
            "other": (args.learning_rate, args.weight_decay),
        }
        buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
        for name, param in model.named_parameters():
            if param.requires_grad:
                buckets.setdefault((_parameter_kind(name), name in decay), []).append(param)
        groups = []
        for kind in ("neat", "head", "other"):
            lr, weight_decay = settings[kind]
            for with_decay in (True, False):
                params = buckets.get((kind, with_decay))
                if params:
                    groups.append(
                        {"params": params, "lr": lr, "weight_decay": weight_decay if with_decay else 0.0, "group": kind}
                    )
        return groups

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Build the optimizer over [`neat_parameter_groups`] (only when none was given), with the class and
        arguments `optim=` selects through [`~transformers.Trainer.get_optimizer_cls_and_kwargs`]."""
        opt_model = self.model if model is None else model
        if self.optimizer is not None or self._neat_model is None:
            return super().create_optimizer(model)
        if self.optimizer_cls_and_kwargs is not None:
            optimizer_cls, optimizer_kwargs = self.optimizer_cls_and_kwargs
        else:
            optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        optimizer_kwargs = dict(optimizer_kwargs)
        special = [k for k in ("params", "model", "optimizer_dict") if k in optimizer_kwargs]
        if special or is_optimizer_factory(optimizer_cls):
            # GaLore, LOMO, layer-wise and factory optimizers build their own parameter groups.
            if self.args.neat_learning_rate is not None or self.args.head_learning_rate is not None:
                raise TrainerSetupError(
                    f"optim={self.args.optim!r} builds its own parameter groups, so neat_learning_rate / "
                    "head_learning_rate cannot apply. Drop them, or choose an optimizer such as adamw_torch."
                )
            return super().create_optimizer(model)
        groups = self.neat_parameter_groups(opt_model)
        for group in groups:
            group.pop("group")  # some optimizers (DeepSpeed's) reject unknown group keys
        self.optimizer = optimizer_cls(groups, **optimizer_kwargs)
        return self.optimizer

    # ------------------------------------------------------------------ DeepSpeed ZeRO-3
    def _register_zero3(self) -> None:
        """Tell DeepSpeed that each NEAT layer reads its W0 and its adapter weights in its own forward/backward, so it
        gathers them once per layer when that layer runs (see `neat_hf.parallel.zero3`)."""
        neat_model = self._neat_model
        if self._zero3_registered or neat_model is None or not self.is_deepspeed_enabled:
            return
        if any(is_zero3_partitioned(p) for p in neat_model.parameters()):
            register_zero3_parameters(neat_model)
            self._zero3_registered = True

    def _prepare_for_training(self, max_steps: int, train_dataloader: Any, resume_from_checkpoint: str | None) -> Any:
        # The Trainer builds the DeepSpeed engine (and partitions the model) in here and offers no hook after it; the
        # NEAT layers' gathered parameters can only be registered once the parameters are partitioned.
        result = super()._prepare_for_training(max_steps, train_dataloader, resume_from_checkpoint)
        self._register_zero3()
        return result

    def prediction_step(self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys=None):
        self._register_zero3()  # evaluation without training builds the DeepSpeed engine lazily
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    # ------------------------------------------------------------------ FSDP2
    @property
    def is_fsdp2_sharded(self) -> bool:
        """Whether this trainer sharded its model with FSDP2 (`trainer.is_fsdp_enabled` stays False: the Trainer's
        own FSDP path, which accelerate skips on CPU, is not used)."""
        return self._fsdp_plan is not None

    def create_accelerator_and_postprocess(self) -> None:
        if self._fsdp_plan is None:
            return super().create_accelerator_and_postprocess()
        with fsdp.accelerator_without_fsdp(self.args):
            super().create_accelerator_and_postprocess()

    @contextlib.contextmanager
    def _defer_fsdp_gradient_reduction(self) -> Iterator[None]:
        # Gradient accumulation: reduce-scatter once, after the last micro-batch (the Trainer's version reads the
        # `DistributedConfig` of a model sharded by transformers, which a NeatModel does not have).
        self.model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            self.model.set_requires_gradient_sync(True)

    # ------------------------------------------------------------------ saving
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the adapter (and the processing class) to `output_dir` (defaults to `args.output_dir`).

        Must be called on every process under DeepSpeed and FSDP2: the adapter weights are gathered collectively.
        Only the adapter is written, never the base weights; under DeepSpeed and FSDP2 the tensors are the full fp32
        master weights.
        """
        if self._neat_model is None:
            return super().save_model(output_dir, _internal_call)
        output_dir = self.args.output_dir if output_dir is None else output_dir
        if self._fsdp_plan is not None:
            fsdp.reshard(self.model)
        state_dict = self._adapter_state_dict()
        self._save(output_dir, state_dict=state_dict)
        if self.args.push_to_hub and not _internal_call:
            self.push_to_hub(commit_message="Model save", revision=self.args.hub_revision)

    def _adapter_keys(self) -> list[str]:
        neat_model = self._neat_model
        keys: set[str] = set()
        for adapter_name in neat_model.peft_config:
            keys.update(neat_model.adapter_key_map(adapter_name))
        return sorted(keys)  # the same order on every rank: the gathers below are collective

    def _adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """{state_dict key: full tensor} for every adapter weight (collective under DeepSpeed and FSDP2; all ranks get
        it).

        Under DeepSpeed the fp32 master copy held by the optimizer is read (DeepSpeed may keep the module's own
        copy in bf16/fp16), gathered across ranks for ZeRO-2/3; frozen adapter weights (another adapter) are gathered
        from their ZeRO-3 partitions. The base weights are never touched.
        """
        neat_model = self._neat_model
        params = dict(neat_model.named_parameters())
        buffers = dict(neat_model.named_buffers())
        state_dict: dict[str, torch.Tensor] = {}
        for key in self._adapter_keys():
            if key in buffers:
                state_dict[key] = buffers[key].detach().cpu().clone()
                continue
            param = params[key]
            full = None
            if self.is_deepspeed_enabled and param.requires_grad:
                from deepspeed.utils import safe_get_full_fp32_param  # optional heavy package, only under DeepSpeed

                full = safe_get_full_fp32_param(param)
            if full is None and is_dtensor(param):
                full = full_tensor(param.detach())  # FSDP2: this adapter weight only
            if full is None:
                with gathered([param]):
                    full = param.detach().clone()
            state_dict[key] = full.detach().cpu()
        return state_dict

    def _save(self, output_dir: str | None = None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        # Trainer._save pickles the arguments to training_args.bin (neat-hf writes JSON and safetensors only) and
        # passes the whole model's state dict; write the adapter's tensors and the arguments as JSON.
        neat_model = self._neat_model
        if neat_model is None:
            return super()._save(output_dir, state_dict)
        if not self.args.should_save:
            return
        output_dir = self.args.output_dir if output_dir is None else output_dir
        if state_dict is None:
            if any(is_zero3_partitioned(p) or is_dtensor(p) for p in neat_model.parameters()):
                raise RuntimeError("Under ZeRO-3 and FSDP2 call save_model() on every rank instead of _save().")
            state_dict = self._adapter_state_dict()
        os.makedirs(output_dir, exist_ok=True)
        logger.info(f"Saving NEAT adapter to {output_dir}")
        # The card is written once, by save_pretrained, from this run's card facts (NeatHubMixin.neat_card).
        card = self.neat_card_arguments(output_dir)
        neat_model.save_pretrained(output_dir, state_dict=state_dict, is_main_process=True, model_card=card)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        elif getattr(self.data_collator, "tokenizer", None) is not None:
            self.data_collator.tokenizer.save_pretrained(output_dir)
        atomic_write_text(os.path.join(output_dir, TRAINING_ARGS_JSON_NAME), self.args.to_json_string())
        self._neat_saved = (os.fspath(output_dir), self.state.global_step)
        self._neat_card_written = (os.fspath(output_dir), self.neat_card.version)

    def _save_optimizer_and_scheduler(self, output_dir: str) -> None:
        # FSDP2 is sharded by NeatTrainer itself (trainers/fsdp_plan.py), which the Trainer's FSDP code does not know.
        if self._fsdp_plan is not None:
            # The Trainer would save rank 0's shard of the optimizer state only: write the full, adapter-sized state.
            fsdp.save_optimizer(self.model, self.optimizer, output_dir, self.args.should_save)
            if self.args.should_save:
                with warnings.catch_warnings(record=True) as caught_warnings:
                    torch.save(self.lr_scheduler.state_dict(), os.path.join(output_dir, SCHEDULER_NAME))
                reissue_pt_warnings(caught_warnings)
            return
        return super()._save_optimizer_and_scheduler(output_dir)

    # ------------------------------------------------------------------ checkpoints: whole or ignored
    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        """`Trainer._save_checkpoint`, made whole-or-ignored and rotated only once complete (the protocol:
        `neat_hf.trainers.checkpoints`)."""
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:
            begin_checkpoint(folder)
        self.accelerator.wait_for_everyone()
        with rotation_deferred(self.args) as save_total_limit:
            super()._save_checkpoint(model, trial)
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            finish_checkpoint(folder, save_total_limit=save_total_limit, best_model_checkpoint=self.state.best_model_checkpoint)

    # ------------------------------------------------------------------ loading
    def _load_optimizer_and_scheduler(self, checkpoint: str | None) -> None:
        # The counterpart of `_save_optimizer_and_scheduler`: the full optimizer state into NeatTrainer's FSDP2 shards.
        if self._fsdp_plan is None or checkpoint is None:
            return super()._load_optimizer_and_scheduler(checkpoint)
        fsdp.load_optimizer(self.model, self.optimizer, checkpoint)
        with warnings.catch_warnings(record=True) as caught_warnings:
            self.lr_scheduler.load_state_dict(
                torch.load(os.path.join(checkpoint, SCHEDULER_NAME), map_location="cpu", weights_only=True)
            )
        reissue_pt_warnings(caught_warnings)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        # The Trainer's PEFT branch only logs a warning when the checkpoint has no adapter file and cannot write into
        # NeatTrainer's FSDP2-sharded parameters; `_load_adapter_folder` refuses in one line and reshards first.
        if self._neat_model is None:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_adapter_folder(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        # As `_load_from_checkpoint` (DeepSpeed engines load their own checkpoint: the Trainer's path), and with
        # `save_total_limit=1` the other checkpoints go before the Trainer's own deletion, which is not kill-safe.
        if self._neat_model is None:
            return super()._load_best_model()
        best = self.state.best_model_checkpoint
        if self.is_deepspeed_enabled:
            super()._load_best_model()
        else:
            logger.info(f"Loading best adapter from {best} (score: {self.state.best_metric}).")
            self._load_adapter_folder(best)
        if self.args.should_save and self.args.save_total_limit == 1:
            keep_only(os.path.dirname(os.path.abspath(best)), best)

    def _load_adapter_folder(self, folder: str) -> None:
        """Copy the adapter weights saved in `folder` into the model, after checking they are for this adapter."""
        neat_model = self._neat_model
        if self._fsdp_plan is not None:
            fsdp.reshard(neat_model)  # write into the sharded parameters the optimizer owns
        for name in neat_model.peft_config:
            # save_pretrained puts the "default" adapter at the top and any other adapter in a sub-folder (PEFT).
            directory = folder if name == DEFAULT_ADAPTER_NAME else os.path.join(folder, name)
            weights = os.path.join(directory, ADAPTER_WEIGHTS_NAME)
            if not os.path.isfile(weights):
                raise AdapterLoadError(
                    f"Can't find a NEAT adapter checkpoint at {directory!r}: it has no {ADAPTER_WEIGHTS_NAME} "
                    f"(folders written by NeatTrainer hold {ADAPTER_CONFIG_NAME} and {ADAPTER_WEIGHTS_NAME})."
                )
            config_path = os.path.join(directory, ADAPTER_CONFIG_NAME)
            if os.path.isfile(config_path):
                check_saved_together(config_path, weights)
            _check_checkpoint_config(config_path, neat_model.peft_config[name])
            neat_model.load_adapter_weights(read_adapter_weights(weights), adapter_name=name)


# ---------------------------------------------------------------------- helpers
def _parameter_kind(name: str) -> str:
    """"neat" for adapter weights, "head" for modules_to_save, "other" for anything else trainable."""
    if any(f".{attr}." in name for attr in NeatLayer.adapter_layer_names):
        return "neat"
    if ".modules_to_save." in name:
        return "head"
    return "other"


def _check_model_argument(model: nn.Module, neat_config: NeatConfig | None) -> None:
    if isinstance(model, NeatModel):
        if neat_config is not None:
            raise TrainerSetupError(
                "The model is already a NeatModel and neat_config was given too; set the adapter in one place: "
                "pass the plain model with neat_config, or the NeatModel alone."
            )
        return
    if isinstance(model, str):
        raise TypeError(
            f"NeatTrainer needs a model object, got the string {model!r}; load it first, e.g. "
            "AutoModelForCausalLM.from_pretrained(...), and pass neat_config=NeatConfig(...)."
        )
    if neat_config is None:
        raise TypeError(
            f"NeatTrainer trains NEAT adapters: pass a NeatModel (get_neat_model(model, config)) or pass the "
            f"{type(model).__name__} together with neat_config=NeatConfig(...)."
        )
    if any(isinstance(m, NeatLayer) for m in model.modules()):
        raise TrainerSetupError(
            "The model already contains NEAT layers but is not a NeatModel; pass the NeatModel that holds it."
        )


def _check_quantized_base(model: nn.Module, args: TrainingArguments) -> None:
    """Refuse a quantized base NEAT cannot train (other quantizers; DeepSpeed ZeRO with bitsandbytes)."""
    base = model.get_base_model() if isinstance(model, NeatModel) else model
    check_quantized_model(base)
    if args.deepspeed:
        check_deepspeed_stage(base, zero_stage(args.deepspeed))
    if getattr(args, "fsdp", None) and is_quantized_model(base):
        raise UnsupportedQuantizationError(
            "FSDP is not supported with a quantized (bitsandbytes 4-bit/8-bit) base model: it is untested with NEAT. "
            "Train the quantized base on one GPU without --fsdp (QLoRA-style), or load the base in bf16 to shard it."
        )


def _base_model_name(model: nn.Module, neat_config: NeatConfig | None) -> str | None:
    """The base model name an adapter trained on `model` will record (None when unknown)."""
    if isinstance(model, NeatModel):
        return model.peft_config[model.active_adapter].base_model_name_or_path
    if neat_config is not None and neat_config.base_model_name_or_path:
        return neat_config.base_model_name_or_path
    return getattr(getattr(model, "config", None), "name_or_path", None) or None


def _check_checkpoint_config(path: str, current: NeatConfig) -> None:
    if not os.path.isfile(path):
        return
    saved = read_adapter_config(path)
    differences = [
        f"{field}={getattr(saved, field)!r} (model has {getattr(current, field)!r})"
        for field in _FUNCTIONAL_FIELDS
        if getattr(saved, field) != getattr(current, field)
    ]
    if differences:
        raise AdapterMismatchError(
            f"The checkpoint {os.path.dirname(path)!r} holds an adapter with other settings: {', '.join(differences)}. "
            "Resume with the NeatConfig it was trained with."
        )


__all__ = ["NeatTrainer"]
