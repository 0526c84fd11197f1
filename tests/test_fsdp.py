"""FSDP2: what NeatTrainer accepts and refuses, and real 2-process FSDP2 NEAT training on CPU (gloo).

The multi-process tests launch tests/fsdp_driver.py with `torchrun` (FSDP2 asked for through the training arguments)
and with `accelerate launch --config_file <bundled fsdp2.yaml>` (through accelerate's environment), on a tiny LLaMA
saved to disk, and compare with tests/ds_driver.py run in-process without any sharding on the same global batches.
One uninterrupted run (checkpoints at steps 2 and 4, all-gathers counted, merge checked) serves most assertions;
a second run is killed right after its step-2 checkpoint and a third resumes from it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_llama
from multiprocess_helpers import assert_same_adapter, assert_same_merge, free_port, read_report, run_launcher
from safetensors.torch import load_file
from torch import nn
from transformers.training_args import ParallelMode

from neat_hf import NeatConfig, NeatModel, get_neat_model
from neat_hf.constants import ADAPTER_WEIGHTS_NAME
from neat_hf.errors import FsdpConfigError
from neat_hf.parallel.fsdp import check_shardable, fully_shard_neat_model
from neat_hf.trainers import NeatTrainer, NeatTrainingArguments
from neat_hf.trainers.fsdp_plan import ACCELERATE_FSDP2_CONFIG, fsdp_plan

DRIVER = str(Path(__file__).with_name("fsdp_driver.py"))
TARGETS = ["q_proj", "v_proj"]
#: 2 ranks × 2 sequences × 2 accumulated micro-batches: the single-process run's global batch of 8, with FSDP2's
#: gradient reduce-scatter deferred to the last micro-batch.
ACCUMULATION = ["--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2"]


# ---------------------------------------------------------------------------------------------- requests and refusals
def _args(tmp_path, **overrides) -> NeatTrainingArguments:
    return NeatTrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none", **overrides)


def test_fsdp1_is_refused_naming_fsdp2(tmp_path):
    args = _args(tmp_path, fsdp="full_shard auto_wrap", fsdp_config={"version": 1})
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FsdpConfigError, match=r"FSDP2 only, got FSDP version 1.*'version': 2.*fsdp2.yaml"):
        NeatTrainer(model, args, neat_config=NeatConfig(r=4, target_modules=TARGETS))
    assert not any("Neat" in type(m).__name__ for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fsdp2_in_a_single_process_is_refused_with_the_launch_line(tmp_path):
    args = _args(tmp_path, fsdp="full_shard auto_wrap", fsdp_config={"version": 2})
    with pytest.raises(FsdpConfigError, match="single process; launch the script with `torchrun --nproc_per_node N`"):
        NeatTrainer(tiny_llama(), args, neat_config=NeatConfig(r=4, target_modules=TARGETS))


@pytest.mark.parametrize(
    ("fsdp_config", "message"),
    [
        ({"version": 2, "auto_wrap_policy": "SIZE_BASED_WRAP", "min_num_params": 10}, "SIZE_BASED_WRAP.*TRANSFORMER_BASED_WRAP"),
        ({"version": 2, "cpu_offload": True}, "offloading .* not supported.*zero3_offload"),
        ({"version": 2, "activation_checkpointing": True}, "FSDP's own activation checkpointing.*gradient_checkpointing"),
    ],
)
def test_fsdp_settings_neat_cannot_train_with_are_named(tmp_path, fsdp_config, message):
    with pytest.raises(FsdpConfigError, match=message):
        fsdp_plan(_args(tmp_path, fsdp="full_shard auto_wrap", fsdp_config=fsdp_config))


def test_accelerate_launch_environment_is_read(tmp_path, monkeypatch):
    # What `accelerate launch --config_file fsdp2.yaml` exports; parallel_mode is faked, the launch is tested below.
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("FSDP_AUTO_WRAP_POLICY", "TRANSFORMER_BASED_WRAP")
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "LlamaDecoderLayer")
    monkeypatch.setenv("FSDP_RESHARD_AFTER_FORWARD", "false")
    args = _args(tmp_path)
    monkeypatch.setattr(type(args), "parallel_mode", property(lambda self: ParallelMode.DISTRIBUTED))
    plan = fsdp_plan(args)
    assert plan.layer_classes == ("LlamaDecoderLayer",) and plan.reshard_after_forward is False
    assert "accelerate launch" in plan.source
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(FsdpConfigError, match="FSDP version 1 from accelerate launch"):
        fsdp_plan(args)


def test_bundled_accelerate_config_asks_for_fsdp2_with_decoder_layer_units():
    with open(ACCELERATE_FSDP2_CONFIG, encoding="utf-8") as handle:
        config = yaml.safe_load(handle)
    assert config["distributed_type"] == "FSDP"
    fsdp_config = config["fsdp_config"]
    assert fsdp_config["fsdp_version"] == 2 and fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp_config["fsdp_offload_params"] is False and fsdp_config["fsdp_activation_checkpointing"] is False


def test_units_inside_a_neat_layer_are_refused_before_sharding():
    model = get_neat_model(tiny_llama(), NeatConfig(r=4, target_modules=TARGETS))
    with pytest.raises(FsdpConfigError, match="split a NEAT layer from its own weights"):
        fully_shard_neat_model(model, layer_classes=["Linear"])
    with pytest.raises(FsdpConfigError, match=r"No module of the classes \['GPT2Block'\]"):
        fully_shard_neat_model(model, layer_classes=["GPT2Block"])
    assert not any(type(m).__name__.startswith("FSDP") for m in model.modules())


def test_quantized_base_is_refused_for_fsdp2():
    bnb = pytest.importorskip("bitsandbytes")
    model = tiny_llama()
    model.model.layers[0].mlp.up_proj = bnb.nn.Linear4bit(32, 48, bias=False, quant_storage=torch.bfloat16)
    with pytest.raises(FsdpConfigError, match=r"quantized base model is not supported by NEAT yet \(model.layers.0.mlp.up_proj is a Linear4bit"):
        check_shardable(model)
    check_shardable(tiny_llama())  # a plain model passes


# ---------------------------------------------------------------------------------------------- multi-process runs
def _torchrun(driver_args: list[str], **kwargs) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port())]
    run_launcher(command + [DRIVER, *driver_args], **kwargs)


def _accelerate(driver_args: list[str], **kwargs) -> None:
    command = [
        str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file", ACCELERATE_FSDP2_CONFIG,
        "--num_processes", "2", "--main_process_port", str(free_port()),
    ]
    run_launcher(command + [DRIVER, *driver_args], **kwargs)


@pytest.fixture(scope="module")
def fsdp_run(base_model, tmp_path_factory):
    """FSDP2 through the training arguments, 2 gloo ranks, gradient accumulation, checkpoints every 2 steps, gathers
    counted, merge checked."""
    out = str(tmp_path_factory.mktemp("fsdp2"))
    _torchrun(["--base_model", base_model, "--output_dir", out, "--fsdp", "--save_steps", "2", "--count_gathers",
               "--merge_check", *ACCUMULATION])
    return out


@pytest.mark.slow
@pytest.mark.fsdp
def test_fsdp2_run_is_sharded_and_saves_the_single_process_adapter(fsdp_run, single_process):
    report = read_report(fsdp_run)
    assert report["world_size"] == 2 and report["global_step"] == 4 and report["is_fsdp2_sharded"] is True
    seen = report["during_training"]
    # Sharded for real, mid-training: every parameter a DTensor, W0 holding half its rows, no DDP wrapper.
    assert seen["dtensor_params"] == seen["params"] > 0
    assert seen["w0_local_numel"] * 2 == seen["w0_numel"]
    assert seen["wrapped"] == "FSDPNeatModel"
    assert_same_adapter(fsdp_run, single_process)  # full fp32 adapter, |difference| <= 1e-4
    # merge_adapter() on the sharded model: each rank merged its own rows of W0, unmerge restored them exactly.
    assert report["merge_check"] == {"unmerge_restores_exactly": True, "w0_is_dtensor": "DTensor"}
    assert_same_merge(fsdp_run, single_process)
    assert_same_adapter(os.path.join(fsdp_run, "save_pretrained"), fsdp_run, rtol=0, atol=0)  # model.save_pretrained
    assert report["eval_loss_after"] == pytest.approx(read_report(single_process)["eval_loss_after"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.fsdp
def test_fsdp2_gathers_each_weight_once_per_forward_and_backward(fsdp_run):
    gathers = read_report(fsdp_run)["gathers"]
    # Root once (kept unsharded from forward to backward), each decoder layer once in forward and once in backward.
    assert gathers["units"] == {
        "<root>": {"forward": 1},
        "base_model.model.model.layers.0": {"forward": 1, "backward": 1},
        "base_model.model.model.layers.1": {"forward": 1, "backward": 1},
    }
    neat = gathers["neat_params"]
    assert len([k for k in neat if k.endswith("base_layer.weight")]) == 10 and len(neat) == 50  # W0 + A, B, enc, dec
    assert all(counts == {"forward": 1, "backward": 1} for counts in neat.values()), neat
    # Nothing else all-gathers inside a training step: NEAT never gathers W0 or an adapter weight on its own.
    assert gathers["all_gather_collectives"] == gathers["unit_gathers"] == 5
    # Gradient accumulation: the decoder layers' gradients are reduce-scattered after the second micro-batch only.
    assert gathers["reduce_scatters"] == [0, 2] * 4


@pytest.mark.slow
@pytest.mark.fsdp
def test_fsdp2_checkpoints_hold_the_adapter_only(fsdp_run, base_model):
    checkpoint = os.path.join(fsdp_run, "checkpoint-2")
    files = set(os.listdir(checkpoint))
    assert {"adapter_config.json", ADAPTER_WEIGHTS_NAME, "optimizer.pt", "scheduler.pt", "trainer_state.json"} <= files
    assert not {f for f in files if f.startswith(("model", "pytorch_model", "optimizer_0"))} - {"optimizer.pt"}
    base_keys = set(load_file(os.path.join(base_model, "model.safetensors")))
    assert base_keys.isdisjoint(load_file(os.path.join(checkpoint, ADAPTER_WEIGHTS_NAME)))
    optimizer = torch.load(os.path.join(checkpoint, "optimizer.pt"), weights_only=True)
    names = list(optimizer["state"])  # one full state, keyed by parameter name, for any world size
    assert len(names) == 40 and all(".peanut_" in name for name in names)  # A, B, encoder, decoder of 10 layers
    assert all(not hasattr(t, "device_mesh") for s in optimizer["state"].values() for t in s.values())


@pytest.mark.slow
@pytest.mark.fsdp
def test_fsdp2_adapter_loads_in_stock_peft_and_neat_hf_with_the_same_logits(fsdp_run, base_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(base_model).eval()(ids).logits
        neat = NeatModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), fsdp_run).eval()(ids).logits
        peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), fsdp_run).eval()(ids).logits
    assert (neat - base).abs().max() > 1e-4  # the trained adapter changes the model
    torch.testing.assert_close(peft, neat, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.fsdp
def test_fsdp2_generate_on_the_sharded_model_matches_an_unsharded_load(fsdp_run, base_model):
    from fsdp_driver import GENERATE_PROMPT
    from transformers import AutoModelForCausalLM

    model = NeatModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model), fsdp_run).eval()
    with torch.no_grad():
        expected = model.generate(torch.tensor([GENERATE_PROMPT]), max_new_tokens=4, do_sample=False)[0].tolist()
    assert read_report(fsdp_run)["generated"] == expected and len(expected) == len(GENERATE_PROMPT) + 4


@pytest.mark.slow
@pytest.mark.fsdp
def test_fsdp2_killed_and_resumed_equals_uninterrupted(fsdp_run, base_model, tmp_path):
    # Launched by `accelerate launch --config_file fsdp2.yaml`; every rank is SIGKILLed after the step-2 checkpoint.
    killed = str(tmp_path / "killed")
    _accelerate(["--base_model", base_model, "--output_dir", killed, "--save_steps", "2", "--kill_after_save", "2", *ACCUMULATION],
                expect_failure=True)
    assert sorted(os.listdir(killed)) == ["checkpoint-2", "killed_report.json"]
    seen = read_report(killed, "killed_report.json")  # the accelerate environment alone made NeatTrainer shard
    assert seen["is_fsdp2_sharded"] is True and seen["during_training"]["dtensor_params"] == seen["during_training"]["params"]
    resumed = str(tmp_path / "resumed")
    _torchrun(["--base_model", base_model, "--output_dir", resumed, "--fsdp", "--save_steps", "2", *ACCUMULATION,
               "--resume_from_checkpoint", os.path.join(killed, "checkpoint-2")])
    report = read_report(resumed)
    assert report["global_step"] == 4 and report["during_training"]["dtensor_params"] > 0
    assert_same_adapter(resumed, fsdp_run, rtol=0, atol=1e-7)
    assert_same_adapter(os.path.join(resumed, "checkpoint-4"), os.path.join(fsdp_run, "checkpoint-4"), rtol=0, atol=1e-7)


@pytest.mark.slow
@pytest.mark.fsdp
def test_fsdp2_bf16_computes_in_bf16_and_keeps_fp32_adapter_master_weights(base_model, fsdp_run, tmp_path):
    # A bf16 base (what LLaMA-scale runs load) with --bf16: FSDP2 casts to bf16 for compute, the sharded fp32 adapter
    # weights stay the optimizer's master copy, as DeepSpeed's bf16 mode keeps fp32 master weights.
    out = str(tmp_path / "bf16")
    _torchrun(["--base_model", base_model, "--output_dir", out, "--fsdp", "--bf16"])
    report = read_report(out)
    seen = report["during_training"]
    assert seen["dtensor_params"] == seen["params"] and seen["w0_dtype"] == "torch.bfloat16"
    assert seen["adapter_dtype"] == "torch.float32"
    saved = load_file(os.path.join(out, ADAPTER_WEIGHTS_NAME))
    assert all(t.dtype == torch.float32 for t in saved.values())
    b = torch.cat([t.flatten() for k, t in saved.items() if "peanut_B" in k])
    assert b.abs().max() > 1e-2  # trained
    # fp32 updates: most trained values are not representable in bf16 (a bf16 master copy would make them all so).
    assert (b != b.to(torch.bfloat16).float()).float().mean() > 0.9
    assert report["eval_loss_after"] == pytest.approx(read_report(fsdp_run)["eval_loss_after"], rel=1e-3)


@pytest.mark.parametrize("kind", ["linear", "conv1d"])
def test_local_merge_delta_of_an_unsharded_layer_is_the_dense_delta(kind):
    # The formula FSDP2 merging applies to each rank's rows (nn.Linear: rows = outputs, partial A·W0 all-reduced;
    # GPT-2 Conv1D: rows = inputs, columns of H), checked on the whole weight against the dense ΔW.
    from transformers.pytorch_utils import Conv1D

    from neat_hf.parallel.dtensor import local_merge_delta
    from neat_hf.layer import NeatLayer

    torch.manual_seed(0)
    base = nn.Linear(24, 40, bias=False) if kind == "linear" else Conv1D(40, 24)
    layer = NeatLayer(base, "default", NeatConfig(r=4, depth=1, act_fn="gelu", init_weights=False))
    local, delta = local_merge_delta(layer, "default")
    assert local is base.weight
    dense = layer.delta_weight("default")
    expected = dense.t() if kind == "conv1d" else dense
    assert delta.abs().max() > 1e-3
    torch.testing.assert_close(delta, expected, rtol=1e-5, atol=1e-6)
