"""Multi-process driver for the DeepSpeed tests (tests/test_deepspeed.py): train a tiny LLaMA with NeatTrainer.

Launched by the tests as ``torchrun --nproc_per_node 2 tests/ds_driver.py --base_model DIR --output_dir DIR ...`` (or
with the ``deepspeed`` launcher, which passes ``--local_rank``), and also run in-process without DeepSpeed as the
single-process reference, through [`run`]. Every run trains on the same fixed data with the same global batch:
8 sequences of equal length and a global batch of 8, so each optimizer step sees the whole data set whatever the
number of ranks and however the sampler orders it; the runs must then agree to fp32 round-off.

Besides the adapter (``trainer.save_model``), rank 0 writes ``driver_report.json`` into the output folder:
world size, ZeRO stage, how W0 and the adapter weights were gathered in the last step (``--count_gathers``), and,
with ``--merge_check``, ``merged_weights.safetensors`` (each NEAT layer's W0 after ``merge_adapter``, gathered).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional

import torch
from fault_injection import install_from_env
from multiprocess_helpers import TrainingStepCounter

SEQ_LEN = 12
NUM_SEQUENCES = 8
VOCAB = 128


def fixed_dataset():
    from datasets import Dataset

    generator = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, VOCAB, (NUM_SEQUENCES, SEQ_LEN), generator=generator).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def neat_config():
    from neat_hf import NeatConfig

    # r=16 on hidden size 32: with the bundled zero3.json ("auto" persistence threshold = 10 × hidden = 320 elements)
    # every W0 and the larger adapter weights (q/up/down: 16×32, 16×48) are partitioned, the k/v ones are not.
    return NeatConfig(r=16, depth=1, act_fn="gelu", target_modules=["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"])


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base_model", required=True, help="folder of a saved tiny LLaMA")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--deepspeed", default=None, help="bundled name or JSON path; omit for no DeepSpeed")
    parser.add_argument("--per_device_train_batch_size", type=int, default=4)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--max_steps", type=int, default=4)
    parser.add_argument("--save_steps", type=int, default=0, help="0: no checkpoints")
    parser.add_argument("--save_total_limit", type=int, default=None)
    parser.add_argument("--resume_from_checkpoint", default=None)
    parser.add_argument("--zero_init", action="store_true", help="build the training arguments before loading the model, "
                        "so that transformers partitions it with zero.Init while loading (else: at deepspeed.initialize)")
    parser.add_argument("--count_gathers", action="store_true")
    parser.add_argument("--merge_check", action="store_true")
    parser.add_argument("--skip_zero3_registration", action="store_true", help="diagnostic: leave W0 and the adapter "
                        "weights to DeepSpeed's on-access discovery (shows what registration saves)")
    parser.add_argument("--activation_checkpointing", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--local_rank", type=int, default=-1, help="passed by the deepspeed launcher")
    return parser.parse_args(argv)


def build_args(ns: argparse.Namespace, **overrides: Any):
    """The training arguments every driver run shares (`overrides` add or replace some, e.g. FSDP's)."""
    from neat_hf.trainers import NeatTrainingArguments
    from neat_hf.trainers.training_args import CHECKPOINTING_FIELD

    kwargs = dict(
        output_dir=ns.output_dir,
        deepspeed=ns.deepspeed,
        per_device_train_batch_size=ns.per_device_train_batch_size,
        gradient_accumulation_steps=ns.gradient_accumulation_steps,
        max_steps=ns.max_steps,
        learning_rate=1e-2,
        neat_learning_rate=2e-2,
        weight_decay=0.01,
        lr_scheduler_type="linear",
        warmup_steps=0,
        save_strategy="steps" if ns.save_steps else "no",
        save_steps=ns.save_steps or 500,
        save_total_limit=ns.save_total_limit,
        logging_steps=1,
        report_to="none",
        seed=7,
        use_cpu=True,
        disable_tqdm=True,
        dataloader_num_workers=0,
        **{CHECKPOINTING_FIELD: ns.activation_checkpointing},
        bf16=ns.bf16,
    )
    kwargs.update(overrides)
    return NeatTrainingArguments(**kwargs)


def run(ns: argparse.Namespace) -> dict[str, Any]:
    """Train, save the adapter into `ns.output_dir`, and return (rank 0: also write) the report."""
    from transformers import AutoModelForCausalLM

    from neat_hf.trainers import NeatTrainer

    if ns.zero_init:
        args = build_args(ns)  # alive HfDeepSpeedConfig(ZeRO-3) => from_pretrained uses zero.Init
        model = AutoModelForCausalLM.from_pretrained(ns.base_model, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(ns.base_model, dtype=torch.float32)
        args = build_args(ns)
    partitioned_at_load = sum(1 for p in model.parameters() if hasattr(p, "ds_id"))
    trainer = NeatTrainer(model, args, neat_config=neat_config(), train_dataset=fixed_dataset())
    if ns.skip_zero3_registration:
        trainer._zero3_registered = True
    counter = GatherCounter(trainer.model) if ns.count_gathers else None
    if counter is not None:
        counter.install()
        counter.count_training_steps(trainer)
    trainer.train(resume_from_checkpoint=ns.resume_from_checkpoint)
    if counter is not None:
        counter.uninstall()
    trainer.save_model()

    stage = 0
    if trainer.is_deepspeed_enabled:
        stage = trainer.accelerator.state.deepspeed_plugin.zero_stage
    report: dict[str, Any] = {
        "world_size": trainer.args.world_size,
        "zero_stage": stage,
        "global_step": trainer.state.global_step,
        "zero_init": bool(ns.zero_init),
        "partitioned_at_load": partitioned_at_load,
        "partitioned_params": sum(1 for p in trainer.model.parameters() if hasattr(p, "ds_id")),
        "w0_numel_outside_forward": _w0_numel(trainer.model),
        "eval_loss_after": trainer.evaluate(fixed_dataset())["eval_loss"],
    }
    if counter is not None:
        report["gathers"] = counter.summary()
    if ns.merge_check:
        report["merge_check"] = _merged_weights(trainer, os.path.join(ns.output_dir, "merged_weights.safetensors"))
    if trainer.args.process_index == 0:
        with open(os.path.join(ns.output_dir, "driver_report.json"), "w", encoding="utf-8") as handle:
            json.dump(report, handle, indent=2)
    return report


def _neat_layers(model):
    from neat_hf.layer import NeatLayer

    return [(name, module) for name, module in model.named_modules() if isinstance(module, NeatLayer)]


def _w0_numel(model) -> int:
    """Elements W0 of the first NEAT layer holds on this rank now (0 under ZeRO-3 outside a forward)."""
    return _neat_layers(model)[0][1].base_layer.weight.numel()


def _merged_weights(trainer, path: str) -> str:
    """merge_adapter() under the current (maybe ZeRO-3) setup, gather each merged W0, unmerge; rank 0 saves them."""
    from safetensors.torch import save_file

    from neat_hf.parallel.zero3 import gathered

    model = trainer.model
    model.merge_adapter()
    tensors = {}
    for name, layer in _neat_layers(model):
        with gathered([layer.base_layer.weight]):
            tensors[name] = layer.base_layer.weight.detach().cpu().clone()
    model.unmerge_adapter()
    if trainer.args.process_index == 0:
        save_file(tensors, path)
    return "ok"


class GatherCounter(TrainingStepCounter):
    """Counts, per NEAT-layer weight, how often ZeRO-3 gathers it in forward and in backward (first and last step).

    Hooks DeepSpeed internals (0.19): the coordinator's gather of a module's parameters (`fetch_sub_module`), and
    `Init._all_gather`, the path DeepSpeed's on-access discovery takes when a partitioned weight is read outside its
    owner's forward. Without these internals it reports `{"supported": false}`.
    """

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.counts: dict[tuple[str, str], int] = {}
        self.names: dict[int, str] = {}
        self.steps = 0
        self.supported = True
        self.per_step: list[dict[tuple[str, str], int]] = []

    def install(self) -> None:
        try:
            from deepspeed.runtime.zero import partitioned_param_coordinator as ppc
            from deepspeed.runtime.zero.partition_parameters import Init, ZeroParamStatus
        except ImportError:
            self.supported = False
            return
        coordinator_attr = "_PartitionedParameterCoordinator__all_gather_params"
        cls = ppc.PartitionedParameterCoordinator
        if not hasattr(cls, coordinator_attr) or not hasattr(Init, "_all_gather"):
            self.supported = False
            return
        counter = self
        original_coordinator = getattr(cls, coordinator_attr)
        original_direct = Init._all_gather

        def coordinator_gather(coordinator, params, forward):
            for param in params:
                counter._record(param, "forward" if forward else "backward")
            return original_coordinator(coordinator, params, forward)

        def direct_gather(init, param_list, async_op=False, hierarchy=None):
            for param in param_list:
                if param.ds_status == ZeroParamStatus.NOT_AVAILABLE:
                    counter._record(param, "on_access")
            return original_direct(init, param_list, async_op=async_op, hierarchy=hierarchy)

        setattr(cls, coordinator_attr, coordinator_gather)
        Init._all_gather = direct_gather
        self._restore = [(cls, coordinator_attr, original_coordinator), (Init, "_all_gather", original_direct)]

    def start_step(self) -> None:
        """Counted inside `trainer.training_step` (forward + backward) only, each step apart: the first step also
        records DeepSpeed's module trace, and the optimizer step re-gathers the small persistent weights (not a NEAT
        access)."""
        self.counts = {}
        self.per_step.append(self.counts)
        self.steps += 1

    def _record(self, param, phase: str) -> None:
        if not self.active:
            return
        if not self.names:
            self.names = {id(p): n for n, p in self.model.named_parameters()}
        name = self.names.get(id(param))
        if name is None or not any(k in name for k in (".base_layer.weight", ".peanut_")):
            return
        key = (name, phase)
        self.counts[key] = self.counts.get(key, 0) + 1

    def summary(self) -> dict[str, Any]:
        if not self.supported:
            return {"supported": False}

        def by_param(counts: dict[tuple[str, str], int]) -> dict[str, dict[str, int]]:
            per_param: dict[str, dict[str, int]] = {}
            for (name, phase), count in counts.items():
                per_param.setdefault(name, {})[phase] = count
            return per_param

        return {
            "supported": True,
            "steps": self.steps,
            "first_step": by_param(self.per_step[0]) if self.per_step else {},
            "last_step": by_param(self.per_step[-1]) if self.per_step else {},
        }


def main(argv: Optional[list[str]] = None) -> None:
    ns = parse_args(argv)
    if ns.resume_from_checkpoint == "true":
        ns.resume_from_checkpoint = True
    install_from_env()  # fault-injection tests: SIGKILL this rank at a given file operation
    run(ns)
    _shutdown_distributed()


def _shutdown_distributed() -> None:
    """Leave the process group in step on every rank, then exit without running C++ static destructors: gloo/DeepSpeed
    CPU threads torn down at interpreter exit sometimes abort ("terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
