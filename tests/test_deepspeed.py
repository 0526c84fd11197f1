"""DeepSpeed: the bundled configs, and real 2-process ZeRO-2/ZeRO-3 NEAT training on CPU (gloo).

The multi-process tests launch tests/ds_driver.py with `torchrun`, the `deepspeed` launcher or `accelerate launch` on a tiny
LLaMA saved to disk, and compare with the same driver run in-process without DeepSpeed: every run sees the same global
batches, so the saved adapters must agree to fp32 round-off (Adam turns round-off in near-zero gradients into a few
1e-5 of absolute difference after 4 steps; a wrong gather would be off by orders of magnitude more). The first
DeepSpeed run on a machine also compiles a small shared-memory op with g++ (about 30 s on 2 cores).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from multiprocess_helpers import assert_same_adapter as _assert_same_adapter
from multiprocess_helpers import assert_same_merge as _assert_same_merge
from multiprocess_helpers import free_port, remove_deepspeed_shm, run_launcher
from multiprocess_helpers import read_report as _report
from safetensors.torch import load_file

from neat_hf.constants import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME
from neat_hf.deepspeed_configs import (
    BUNDLED_CONFIGS,
    DeepSpeedConfigError,
    get_deepspeed_config_path,
    load_deepspeed_config,
    resolve_deepspeed_config,
)

DRIVER = str(Path(__file__).with_name("ds_driver.py"))

pytest.importorskip("deepspeed")


# ---------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", BUNDLED_CONFIGS)
def test_bundled_configs_leave_batch_precision_and_buckets_to_the_trainer(name):
    config = load_deepspeed_config(get_deepspeed_config_path(name))
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping"):
        assert config[key] == "auto", key
    assert config["bf16"]["enabled"] == "auto" and config["fp16"]["enabled"] == "auto"
    assert config["zero_optimization"]["reduce_bucket_size"] == "auto"
    # No optimizer/scheduler: the Trainer builds them, keeping the NEAT/head learning-rate groups.
    assert "optimizer" not in config and "scheduler" not in config
    stage = config["zero_optimization"]["stage"]
    assert stage == (2 if name == "zero2" else 3)
    if stage == 3:
        # Saving gathers the adapter only; never consolidate the (huge) base weights.
        assert config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is False
        assert config["zero_optimization"]["stage3_param_persistence_threshold"] == "auto"
    offload = config["zero_optimization"].get("offload_param", {}).get("device")
    assert offload == ("cpu" if name == "zero3_offload" else None)


def test_bundled_names_resolve_and_bad_values_are_named(tmp_path):
    assert resolve_deepspeed_config("zero3") == get_deepspeed_config_path("zero3")
    assert resolve_deepspeed_config("zero2.json").endswith("zero2.json")
    assert resolve_deepspeed_config('{"zero_optimization": {"stage": 2}}') == {"zero_optimization": {"stage": 2}}
    with pytest.raises(DeepSpeedConfigError, match=r"zero4.*\['zero2', 'zero3', 'zero3_offload'\]"):
        resolve_deepspeed_config("zero4")
    with pytest.raises(DeepSpeedConfigError, match="offload_param.device must be one of"):
        resolve_deepspeed_config({"zero_optimization": {"stage": 3, "offload_param": {"device": "gpu"}}})
    with pytest.raises(DeepSpeedConfigError, match="offload_param needs stage 3"):
        resolve_deepspeed_config({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}})
    with pytest.raises(DeepSpeedConfigError, match='train_batch_size must be a number or "auto"'):
        resolve_deepspeed_config({"train_batch_size": "big"})
    not_an_object = tmp_path / "list.json"
    not_an_object.write_text("[1, 2]")
    with pytest.raises(DeepSpeedConfigError, match="must be a JSON object, got list"):
        resolve_deepspeed_config(str(not_an_object))


# ---------------------------------------------------------------------------------------------- multi-process runs
def _launch(
    launcher: str,
    driver_args: list[str],
    timeout: int = 600,
    *,
    env: dict[str, str] | None = None,
    expect_failure: bool = False,
):
    port = str(free_port())
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    elif launcher == "deepspeed":  # passes --local_rank to the script
        command = [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", "2", "--master_port", port]
    else:  # accelerate: without a GPU, --use_deepspeed is what makes it start one process per rank
        config = driver_args[driver_args.index("--deepspeed") + 1]
        command = [
            str(Path(sys.executable).with_name("accelerate")), "launch", "--use_deepspeed", "--num_processes", "2",
            "--num_machines", "1", "--deepspeed_config_file", resolve_deepspeed_config(config), "--main_process_port", port,
        ]
    try:
        return run_launcher(command + [DRIVER, *driver_args], timeout=timeout, env=env, expect_failure=expect_failure)
    finally:
        remove_deepspeed_shm(port)


@pytest.fixture(scope="module")
def zero3_run(base_model, tmp_path_factory):
    """ZeRO-3 with the bundled zero3.json, model partitioned while loading (zero.Init), checkpoints every 2 steps."""
    out = str(tmp_path_factory.mktemp("zero3"))
    _launch("torchrun", ["--base_model", base_model, "--output_dir", out, "--deepspeed", "zero3", "--zero_init",
                         "--save_steps", "2", "--merge_check"])
    return out


@pytest.mark.slow
@pytest.mark.deepspeed
def test_zero3_saves_the_full_adapter_of_a_single_process_run(zero3_run, single_process):
    report = _report(zero3_run)
    assert report["world_size"] == 2 and report["zero_stage"] == 3 and report["global_step"] == 4
    assert report["partitioned_at_load"] > 0  # transformers built the model under zero.Init
    assert report["w0_numel_outside_forward"] == 0  # W0 really was a placeholder outside the forward
    _assert_same_adapter(zero3_run, single_process)
    _assert_same_merge(zero3_run, single_process)  # merge_adapter() under ZeRO-3 gathers W0 and the adapter
    assert report["eval_loss_after"] == pytest.approx(_report(single_process)["eval_loss_after"], rel=1e-5)


@pytest.mark.slow
@pytest.mark.deepspeed
def test_zero3_checkpoints_hold_no_base_weights(zero3_run, base_model):
    checkpoint = os.path.join(zero3_run, "checkpoint-2")
    files = set(os.listdir(checkpoint))
    assert {ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, "trainer_state.json", "scheduler.pt", "global_step2"} <= files
    assert not files & {"model.safetensors", "pytorch_model.bin", "config.json", "training_args.bin"}
    base_keys = set(load_file(os.path.join(base_model, "model.safetensors")))
    assert base_keys.isdisjoint(load_file(os.path.join(checkpoint, ADAPTER_WEIGHTS_NAME)))
    for rank in (0, 1):
        # DeepSpeed's own file; weights_only=True reads it without unpickling code.
        states = torch.load(
            os.path.join(checkpoint, "global_step2", f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt"),
            weights_only=True,
        )
        assert states["module"] and all(".peanut_" in key for key in states["module"]), list(states["module"])[:3]
        assert states["frozen_param_fragments"] is None and not states["frozen_param_shapes"]


@pytest.mark.slow
@pytest.mark.deepspeed
def test_zero3_resume_equals_uninterrupted(zero3_run, base_model, tmp_path):
    out = str(tmp_path / "resumed")
    _launch("torchrun", ["--base_model", base_model, "--output_dir", out, "--deepspeed", "zero3",
                         "--resume_from_checkpoint", os.path.join(zero3_run, "checkpoint-2")])
    assert _report(out)["global_step"] == 4
    _assert_same_adapter(out, zero3_run, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@pytest.mark.deepspeed
@pytest.mark.parametrize("rank,kill_at", [(0, 4), (1, 1)])
def test_zero3_rank_killed_during_checkpoint_resumes_from_the_newest_complete_one(zero3_run, base_model, tmp_path, rank, kill_at):
    """One rank is SIGKILLed at its `kill_at`-th file operation while checkpoint-4 is written (rank 0: after the
    marker, in the adapter files; rank 1: its first optimizer shard). The run fails, checkpoint-4 is left incomplete,
    and `--resume_from_checkpoint true` resumes from checkpoint-2 and ends with the uninterrupted run's adapter."""
    from neat_hf.trainers.checkpoints import is_complete, latest_complete_checkpoint

    out = str(tmp_path / "killed")
    fault = {"FAULT_ROOT": os.path.join(out, "checkpoint-4"), "FAULT_KILL_AT": str(kill_at), "FAULT_RANK": str(rank)}
    killed = _launch("torchrun", ["--base_model", base_model, "--output_dir", out, "--deepspeed", "zero3", "--zero_init",
                                  "--save_steps", "2"], env=fault, expect_failure=True)
    assert killed.returncode != 0
    assert is_complete(os.path.join(out, "checkpoint-2")) and not is_complete(os.path.join(out, "checkpoint-4"))
    assert latest_complete_checkpoint(out).endswith("checkpoint-2")
    _launch("torchrun", ["--base_model", base_model, "--output_dir", out, "--deepspeed", "zero3", "--save_steps", "2",
                         "--resume_from_checkpoint", "true"])
    assert _report(out)["global_step"] == 4
    assert is_complete(os.path.join(out, "checkpoint-4"))
    _assert_same_adapter(out, zero3_run, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
@pytest.mark.deepspeed
def test_zero3_gathers_each_neat_weight_once_per_forward_and_backward(base_model, single_process, tmp_path):
    # Model partitioned only at deepspeed.initialize (built without zero.Init); everything partitioned and released
    # right after use, so each gather shows; launched with the `deepspeed` launcher (--local_rank).
    config = load_deepspeed_config(get_deepspeed_config_path("zero3"))
    config["zero_optimization"].update({
        "stage3_param_persistence_threshold": 0, "stage3_max_live_parameters": 0, "stage3_max_reuse_distance": 0,
        "stage3_prefetch_bucket_size": 0,
    })
    config_path = tmp_path / "zero3_release_all.json"
    config_path.write_text(json.dumps(config))
    out = str(tmp_path / "counted")
    _launch("deepspeed", ["--base_model", base_model, "--output_dir", out, "--deepspeed", str(config_path),
                          "--count_gathers"])
    report = _report(out)
    assert report["zero_init"] is False and report["partitioned_at_load"] == 0 and report["zero_stage"] == 3
    gathers = report["gathers"]
    if not gathers["supported"]:
        pytest.skip("this DeepSpeed version lacks the internals the gather counter hooks")
    for step in ("first_step", "last_step"):
        counts = gathers[step]
        w0 = [k for k in counts if k.endswith("base_layer.weight")]
        assert len(w0) == 10 and len(counts) == 50, sorted(counts)  # 10 NEAT layers: W0 + A, B, encoder, decoder
        wrong = {k: v for k, v in counts.items() if v != {"forward": 1, "backward": 1}}
        assert not wrong, f"{step}: {wrong}"
    _assert_same_adapter(out, single_process)


@pytest.mark.slow
@pytest.mark.deepspeed
def test_zero2_saves_the_adapter_of_a_single_process_run(base_model, single_process, tmp_path):
    # Launched with `accelerate launch --use_deepspeed --deepspeed_config_file <zero2.json>`.
    out = str(tmp_path / "zero2")
    _launch("accelerate", ["--base_model", base_model, "--output_dir", out, "--deepspeed", "zero2", "--merge_check"])
    report = _report(out)
    assert report["world_size"] == 2 and report["zero_stage"] == 2 and report["partitioned_params"] == 0
    _assert_same_adapter(out, single_process)
    _assert_same_merge(out, single_process)
    assert report["eval_loss_after"] == pytest.approx(_report(single_process)["eval_loss_after"], rel=1e-5)
