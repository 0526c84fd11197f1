"""Multi-process driver for the FSDP2 tests (tests/test_fsdp.py): train a tiny LLaMA with NeatTrainer under FSDP2.

Launched as ``torchrun --nproc_per_node 2 tests/fsdp_driver.py --base_model DIR --output_dir DIR --fsdp`` (FSDP2
requested through the training arguments) or as ``accelerate launch --config_file <bundled fsdp2.yaml>
tests/fsdp_driver.py ...`` (requested through accelerate's environment). Same data, model, adapter and arguments as
tests/ds_driver.py, whose in-process run without any sharding is the reference: each optimizer step sees the same 8
sequences on 1 or 2 ranks, so the saved adapters must agree to fp32 round-off.

Rank 0 writes ``driver_report.json``: what was sharded during training (DTensor parameters, W0's local size), the
all-gathers of each FSDP unit per forward/backward of the last step next to every all-gather the process issued
(``--count_gathers``), and with ``--merge_check`` each NEAT layer's W0 after ``merge_adapter`` and ``unmerge_adapter``
(``merged_weights.safetensors``, gathered for the comparison only). ``--kill_after_save N`` kills every rank with
SIGKILL right after checkpoint N is written, to test resuming.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any, Optional

import torch
from ds_driver import _neat_layers, _shutdown_distributed, build_args, fixed_dataset, neat_config
from multiprocess_helpers import TrainingStepCounter


#: The prompt `--merge_check` runs `generate` on (token ids of the tiny LLaMA's 128-token vocabulary).
GENERATE_PROMPT = [1, 17, 42, 99, 5]


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base_model", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--fsdp", action="store_true", help="request FSDP2 via TrainingArguments (else: the launcher)")
    parser.add_argument("--reshard_after_forward", default="true")
    parser.add_argument("--per_device_train_batch_size", type=int, default=4)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--max_steps", type=int, default=4)
    parser.add_argument("--save_steps", type=int, default=0)
    parser.add_argument("--resume_from_checkpoint", default=None)
    parser.add_argument("--kill_after_save", type=int, default=0)
    parser.add_argument("--count_gathers", action="store_true")
    parser.add_argument("--merge_check", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--save_total_limit", type=int, default=None)  # read by ds_driver.build_args
    ns = parser.parse_args(argv)
    ns.deepspeed, ns.activation_checkpointing = None, False
    return ns


def run(ns: argparse.Namespace) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, TrainerCallback

    from neat_hf.trainers import NeatTrainer

    overrides: dict[str, Any] = {}
    if ns.fsdp:
        overrides = {
            "fsdp": "full_shard auto_wrap",
            "fsdp_config": {"version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"],
                            "reshard_after_forward": ns.reshard_after_forward},
        }
    args = build_args(ns, **overrides)
    model = AutoModelForCausalLM.from_pretrained(ns.base_model, dtype=torch.bfloat16 if ns.bf16 else torch.float32)
    trainer = NeatTrainer(model, args, neat_config=neat_config(), train_dataset=fixed_dataset())

    seen: dict[str, Any] = {}

    class Inspect(TrainerCallback):
        """What the parameters look like in the middle of training (after an optimizer step)."""

        def on_step_end(self, args, state, control, model=None, **kwargs):
            from torch.distributed.tensor import DTensor

            params = dict(trainer.model.named_parameters())
            w0 = next(p for n, p in params.items() if n.endswith("q_proj.base_layer.weight"))
            adapter = next(p for n, p in params.items() if ".peanut_A." in n)
            seen.update(
                dtensor_params=sum(isinstance(p, DTensor) for p in params.values()),
                params=len(params),
                w0_local_numel=w0.to_local().numel() if isinstance(w0, DTensor) else w0.numel(),
                w0_numel=w0.numel(),
                w0_dtype=str(w0.dtype),
                adapter_dtype=str(adapter.dtype),
                wrapped=type(trainer.model_wrapped).__name__,
            )

        def on_save(self, args, state, control, **kwargs):
            if ns.kill_after_save and state.global_step == ns.kill_after_save:
                if args.process_index == 0:
                    _write_report(ns.output_dir, "killed_report.json", {"is_fsdp2_sharded": trainer.is_fsdp2_sharded,
                                                                        "during_training": seen})
                torch.distributed.barrier()  # every rank has finished writing its part of the checkpoint
                os.kill(os.getpid(), signal.SIGKILL)

    trainer.add_callback(Inspect())
    counter = GatherCounter(trainer) if ns.count_gathers else None
    trainer.train(resume_from_checkpoint=ns.resume_from_checkpoint)
    if counter is not None:
        counter.uninstall()
    trainer.save_model()
    report: dict[str, Any] = {
        "world_size": trainer.args.world_size,
        "global_step": trainer.state.global_step,
        "is_fsdp2_sharded": trainer.is_fsdp2_sharded,
        "accelerate_distributed_type": str(trainer.accelerator.distributed_type),
        "during_training": seen,
        "eval_loss_after": trainer.evaluate(fixed_dataset())["eval_loss"],
    }
    if counter is not None:
        report["gathers"] = counter.summary()
    if ns.merge_check:
        report["merge_check"] = _merged_weights(trainer, os.path.join(ns.output_dir, "merged_weights.safetensors"))
        # generate() on the sharded model (every rank, same prompt): greedy tokens, compared with an unsharded load.
        with torch.no_grad():
            prompt = torch.tensor([GENERATE_PROMPT], device=trainer.args.device)
            report["generated"] = trainer.model.generate(prompt, max_new_tokens=4, do_sample=False)[0].tolist()
        # NeatModel.save_pretrained on the sharded model, outside the Trainer (every rank calls it; rank 0 writes).
        trainer.model.save_pretrained(os.path.join(ns.output_dir, "save_pretrained"), is_main_process=trainer.args.process_index == 0)
    if trainer.args.process_index == 0:
        _write_report(ns.output_dir, "driver_report.json", report)
    return report


def _write_report(folder: str, name: str, report: dict[str, Any]) -> None:
    with open(os.path.join(folder, name), "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)


def _merged_weights(trainer, path: str) -> dict[str, Any]:
    """merge_adapter() on the sharded model; gather each merged W0 (for the comparison only), unmerge, check that
    unmerging restored W0 exactly; rank 0 saves the merged weights."""
    from safetensors.torch import save_file

    from neat_hf.parallel.dtensor import full_tensor

    model = trainer.model
    layers = _neat_layers(model)
    before = [layer.base_layer.weight.to_local().clone() for _, layer in layers]
    model.merge_adapter()
    tensors = {name: full_tensor(layer.base_layer.weight.detach()).cpu().clone() for name, layer in layers}
    model.unmerge_adapter()
    restored = all(torch.equal(layer.base_layer.weight.to_local(), w) for (_, layer), w in zip(layers, before))
    if trainer.args.process_index == 0:
        save_file(tensors, path)
    return {"unmerge_restores_exactly": restored, "w0_is_dtensor": type(layers[0][1].base_layer.weight).__name__}


class GatherCounter(TrainingStepCounter):
    """Counts the all-gathers of the last micro-batch (`training_step`): per FSDP unit and phase (forward / backward),
    from FSDP2's param-group unshard, next to every all-gather collective the process issues (c10d and functional), so
    a NEAT layer gathering W0 or an adapter weight on its own would show up as a surplus; and the gradient
    reduce-scatters of every micro-batch."""

    def __init__(self, trainer) -> None:
        import torch.distributed as dist
        from torch.distributed.fsdp._fully_shard import _fsdp_param_group as param_group
        from torch.distributed.fsdp._fully_shard._fsdp_common import TrainingState

        super().__init__()
        self.units: dict[str, dict[str, int]] = {}
        self.params: dict[str, dict[str, int]] = {}
        self.collectives = 0
        self.reduce_scatters: list[int] = []  # gradient reduce-scatters of every micro-batch of the run
        counter = self
        original_gather = param_group.foreach_all_gather
        original_unshard = param_group.FSDPParamGroup.unshard

        def unshard(group, *args, **kwargs):
            counter._group = group
            return original_unshard(group, *args, **kwargs)

        def foreach_all_gather(fsdp_params, *args, **kwargs):
            group = counter._group
            if not counter.active:
                return original_gather(fsdp_params, *args, **kwargs)
            phase = "backward" if group._training_state in (TrainingState.PRE_BACKWARD, TrainingState.POST_BACKWARD) else "forward"
            unit = group._module_fqn or "<root>"
            counter.units.setdefault(unit, {}).setdefault(phase, 0)
            counter.units[unit][phase] += 1
            for fsdp_param in fsdp_params:
                entry = counter.params.setdefault(fsdp_param._param_fqn, {})
                entry[phase] = entry.get(phase, 0) + 1
            return original_gather(fsdp_params, *args, **kwargs)

        param_group.FSDPParamGroup.unshard = unshard
        param_group.foreach_all_gather = foreach_all_gather
        self._restore += [(param_group.FSDPParamGroup, "unshard", original_unshard), (param_group, "foreach_all_gather", original_gather)]
        original_reduce_scatter = dist.reduce_scatter_single

        def reduce_scatter_single(*args, **kwargs):
            if counter.active:
                counter.reduce_scatters[-1] += 1
            return original_reduce_scatter(*args, **kwargs)

        dist.reduce_scatter_single = reduce_scatter_single
        self._restore.append((dist, "reduce_scatter_single", original_reduce_scatter))
        for owner, name in _all_gather_collectives():
            original = getattr(owner, name)

            def counted(*args, _original=original, **kwargs):
                counter.collectives += counter.active
                return _original(*args, **kwargs)

            setattr(owner, name, counted)
            self._restore.append((owner, name, original))

        self.count_training_steps(trainer)

    def start_step(self) -> None:
        """Forward + backward of one micro-batch: keep the last step's gathers, every step's reduce-scatters."""
        self.units, self.params, self.collectives = {}, {}, 0
        self.reduce_scatters.append(0)

    def summary(self) -> dict[str, Any]:
        neat = {k: v for k, v in self.params.items() if k.endswith("base_layer.weight") or ".peanut_" in k}
        return {"units": self.units, "neat_params": neat, "all_gather_collectives": self.collectives,
                "unit_gathers": sum(sum(v.values()) for v in self.units.values()), "reduce_scatters": self.reduce_scatters}


def _all_gather_collectives() -> list[tuple[Any, str]]:
    """Every all-gather entry point of torch.distributed (FSDP2 uses the first; DTensor redistribution the last)."""
    import torch.distributed as dist
    import torch.distributed._functional_collectives as funcol

    return [(dist, "all_gather_single"), (dist, "all_gather_into_tensor"), (dist, "all_gather"), (dist, "all_gather_object"),
            (funcol, "all_gather_tensor"), (funcol, "all_gather_tensor_autograd")]


def main(argv: Optional[list[str]] = None) -> None:
    run(parse_args(argv))
    _shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
