"""NeatTrainer / NeatTrainingArguments on one process: every Trainer seam that special-cases PEFT, handled for NEAT.

Each test exercises one seam (see trainers/trainer.py): model/args intake and seeding, learning-rate groups,
column/label inspection, label smoothing, checkpoint contents, resume, best-model loading with save_total_limit,
gradient checkpointing, bf16 + gradient accumulation, the saved adapter in neat-hf and stock PEFT, bad inputs.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import lm_dataset, model_inputs, model_output, stock_peft, tiny_bert_classifier, tiny_llama, tiny_vit_classifier
from datasets import Dataset
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainingArguments

from neat_hf import NeatConfig, NeatModel, get_neat_model
from neat_hf.constants import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME
from neat_hf.deepspeed_configs import DeepSpeedConfigError
from neat_hf.errors import AdapterMismatchError, NeatError
from neat_hf.trainers import NeatTrainer, NeatTrainingArguments
from neat_hf.trainers.training_args import CHECKPOINTING_FIELD

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")

BASE_FILES = {"model.safetensors", "pytorch_model.bin", "config.json", "training_args.bin", "model.safetensors.index.json"}


# ---------------------------------------------------------------------------------------------- helpers
def cls_dataset(n: int = 16, seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 128, (n, 8), generator=generator).tolist()
    labels = torch.randint(0, 2, (n,), generator=generator).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": labels})


def image_dataset(n: int = 8, seed: int = 0) -> Dataset:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(n, 3, 16, 16, generator=generator).tolist()
    labels = torch.randint(0, 3, (n,), generator=generator).tolist()
    return Dataset.from_dict({"pixel_values": pixels, "labels": labels}).with_format("torch")


def make_args(tmp_path, name: str = "out", **overrides) -> NeatTrainingArguments:
    values = dict(
        output_dir=str(tmp_path / name),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-2,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=11,
        logging_steps=1,
    )
    values.update(overrides)
    return NeatTrainingArguments(**values)


def adapter_tensors(model: NeatModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.get_adapter_state_dict().items()}


def assert_adapters_close(a: dict, b: dict, **tolerance) -> None:
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], **tolerance, msg=lambda m, key=key: f"{key}: {m}")


def assert_no_base_weights(folder: str, model: NeatModel) -> None:
    """The folder holds adapter files only: no full-model weight file, and only adapter tensors."""
    files = set(os.listdir(folder))
    assert not files & BASE_FILES, f"base/pickled files in {folder}: {files & BASE_FILES}"
    assert not [f for f in files if f.endswith((".bin", ".safetensors")) and f != ADAPTER_WEIGHTS_NAME]
    keys = set(load_file(os.path.join(folder, ADAPTER_WEIGHTS_NAME)))
    assert keys == set(model.get_adapter_state_dict())
    assert all(".peanut_" in k or "classifier" in k for k in keys)


class StopAtStep(TrainerCallback):
    """Simulates an interruption: stops training right after the checkpoint of a given step was written."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


class SnapshotAtStep(TrainerCallback):
    """Keeps a copy of the adapter after a given optimizer step."""

    def __init__(self, step: int) -> None:
        self.step = step
        self.tensors = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            self.tensors = adapter_tensors(model)


# ---------------------------------------------------------------------------------------------- intake
def test_plain_training_arguments_are_upgraded_with_every_value_kept(tmp_path):
    plain = TrainingArguments(
        output_dir=str(tmp_path / "o"), learning_rate=7e-4, lr_scheduler_type="cosine", hub_token="secret",
        use_cpu=True, report_to="none", logging_steps=3, seed=5,
    )
    trainer = NeatTrainer(tiny_llama(), plain, neat_config=NeatConfig(r=4))
    assert isinstance(trainer.args, NeatTrainingArguments)
    assert trainer.args.hub_token == "secret"  # to_dict() masks it; the upgrade must not
    for name in ("learning_rate", "lr_scheduler_type", "logging_steps", "seed", "output_dir"):
        assert getattr(trainer.args, name) == getattr(plain, name)
    assert trainer.args.neat_learning_rate is None and trainer.args.resolved_neat_learning_rate == 7e-4


def test_neat_training_arguments_defaults_that_differ():
    args = NeatTrainingArguments(output_dir="x", report_to="none", use_cpu=True)
    assert args.learning_rate == 3e-4 and args.logging_steps == 10
    assert args.overwrite_output_dir is False


def test_adapter_is_created_after_seeding_so_runs_and_ranks_agree(tmp_path):
    def first_a(seed):
        trainer = NeatTrainer(tiny_llama(), make_args(tmp_path, seed=seed), neat_config=NeatConfig(r=4))
        return next(v for k, v in trainer.model.get_adapter_state_dict().items() if "peanut_A" in k)

    torch.manual_seed(123)  # whatever the global RNG state, args.seed decides
    a = first_a(3)
    torch.manual_seed(999)
    torch.testing.assert_close(first_a(3), a, rtol=0, atol=0)
    assert not torch.equal(first_a(4), a)


def test_accepts_a_neat_model_and_rejects_ambiguous_or_missing_adapters(tmp_path):
    model = get_neat_model(tiny_llama(), NeatConfig(r=4))
    trainer = NeatTrainer(model, make_args(tmp_path))
    assert trainer.model is model
    with pytest.raises(ValueError, match="in one place"):
        NeatTrainer(get_neat_model(tiny_llama(), NeatConfig(r=4)), make_args(tmp_path), neat_config=NeatConfig(r=4))
    with pytest.raises(TypeError, match="neat_config=NeatConfig"):
        NeatTrainer(tiny_llama(), make_args(tmp_path))
    with pytest.raises(TypeError, match="model object"):
        NeatTrainer("meta-llama/Llama-2-7b-hf", make_args(tmp_path), neat_config=NeatConfig(r=4))
    with pytest.raises(TypeError, match="NeatConfig"):
        NeatTrainer(tiny_llama(), make_args(tmp_path), neat_config={"r": 4})


def test_model_init_gets_the_adapter(tmp_path):
    trainer = NeatTrainer(args=make_args(tmp_path, max_steps=1), model_init=lambda: tiny_llama(), neat_config=NeatConfig(r=4),
                          train_dataset=lm_dataset())
    assert isinstance(trainer.model, NeatModel)
    trainer.train()
    assert isinstance(trainer.model, NeatModel)


# ---------------------------------------------------------------------------------------------- optimizer groups
def test_learning_rate_groups_are_what_was_asked(tmp_path):
    args = make_args(
        tmp_path, learning_rate=1e-3, weight_decay=0.1, neat_learning_rate=3e-3, neat_weight_decay=0.02,
        head_learning_rate=5e-3, head_weight_decay=0.0,
    )
    config = NeatConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS")
    trainer = NeatTrainer(tiny_bert_classifier(), args, neat_config=config, train_dataset=cls_dataset())
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.AdamW)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    groups = [(g["lr"], g["weight_decay"], sorted(names[id(p)] for p in g["params"])) for g in optimizer.param_groups]
    neat = [n for n, p in trainer.model.named_parameters() if ".peanut_" in n]
    assert groups[0] == (3e-3, 0.02, sorted(neat))
    assert groups[1][:2] == (5e-3, 0.0) and all(".modules_to_save." in n and n.endswith("weight") for n in groups[1][2])
    assert groups[2][:2] == (5e-3, 0.0) and all(n.endswith("bias") for n in groups[2][2])  # biases never decay
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert {n for g in groups for n in g[2]} == trainable and len(groups) == 3

    # The scheduler scales every group from its own base rate; training then moves both NEAT and head weights.
    trainer.train()
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert lrs[0] / 3e-3 == pytest.approx(lrs[1] / 5e-3)


def test_defaults_and_optim_choice_are_respected(tmp_path):
    args = make_args(tmp_path, learning_rate=2e-3, weight_decay=0.05, optim="sgd")
    trainer = NeatTrainer(tiny_llama(), args, neat_config=NeatConfig(r=4))
    optimizer = trainer.create_optimizer()
    assert isinstance(optimizer, torch.optim.SGD)
    assert [(g["lr"], g["weight_decay"]) for g in optimizer.param_groups] == [(2e-3, 0.05)]
    assert trainer.create_optimizer() is optimizer  # only built when none exists


def test_per_group_rates_with_a_given_optimizer_are_refused(tmp_path):
    model = get_neat_model(tiny_llama(), NeatConfig(r=4))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with pytest.raises(ValueError, match="in one place"):
        NeatTrainer(model, make_args(tmp_path, neat_learning_rate=1e-3), optimizers=(optimizer, None))


def test_training_moves_every_adapter_weight_and_no_base_weight(tmp_path):
    config = NeatConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS", depth=1)
    trainer = NeatTrainer(tiny_bert_classifier(), make_args(tmp_path), neat_config=config, train_dataset=cls_dataset())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    for name, param in trainer.model.named_parameters():
        changed = not torch.equal(param, before[name])
        assert changed == param.requires_grad, name


# ---------------------------------------------------------------------------------------------- model inspection
def test_unused_columns_are_dropped_by_the_base_models_signature(tmp_path):
    # NeatModel.forward takes **kwargs; inspecting it would drop *every* column and training would fail.
    trainer = NeatTrainer(tiny_llama(), make_args(tmp_path, max_steps=1), neat_config=NeatConfig(r=4),
                          train_dataset=lm_dataset(extra_column=True))
    trainer.train()
    assert "input_ids" in trainer._signature_columns and "text" not in trainer._signature_columns


def test_eval_computes_a_loss_from_the_base_models_labels(tmp_path):
    trainer = NeatTrainer(tiny_llama(), make_args(tmp_path), neat_config=NeatConfig(r=4), eval_dataset=lm_dataset(8))
    assert trainer.label_names == ["labels"]  # from LlamaForCausalLM; NeatModel.forward(**kwargs) names none
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and metrics["eval_loss"] > 0


def test_label_smoothing_shifts_causal_lm_labels(tmp_path):
    args = make_args(tmp_path, label_smoothing_factor=0.1)
    trainer = NeatTrainer(tiny_llama(), args, neat_config=NeatConfig(r=4, init_weights=False))
    batch = {k: torch.tensor(v) for k, v in lm_dataset(2)[:2].items()}
    loss = trainer.compute_loss(trainer.model, dict(batch))
    logits = trainer.model(input_ids=batch["input_ids"]).logits
    shifted = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, 128), batch["labels"][:, 1:].reshape(-1), label_smoothing=0.1
    )
    unshifted = torch.nn.functional.cross_entropy(logits.reshape(-1, 128), batch["labels"].reshape(-1), label_smoothing=0.1)
    assert abs(shifted - unshifted) > 1e-3  # the check below can tell the two apart
    torch.testing.assert_close(loss, shifted, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- checkpoints
def test_checkpoints_hold_adapter_and_training_state_but_no_base_weights(tmp_path):
    args = make_args(tmp_path, save_strategy="steps", save_steps=2)
    trainer = NeatTrainer(tiny_llama(), args, neat_config=NeatConfig(r=4), train_dataset=lm_dataset())
    trainer.train()
    checkpoint = os.path.join(args.output_dir, "checkpoint-2")
    files = set(os.listdir(checkpoint))
    expected = {ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, "optimizer.pt", "scheduler.pt", "rng_state.pth",
                "trainer_state.json", "training_args.json"}
    assert expected <= files, files
    assert_no_base_weights(checkpoint, trainer.model)
    # The optimizer state covers the adapter only (the Trainer's own file; weights_only=True loads it safely).
    state = torch.load(os.path.join(checkpoint, "optimizer.pt"), weights_only=True)
    n_trainable = sum(1 for p in trainer.model.parameters() if p.requires_grad)
    assert len(state["state"]) == n_trainable
    json.loads(open(os.path.join(checkpoint, "training_args.json")).read())


@pytest.mark.parametrize("interrupt_at", [2, 4])
def test_resume_equals_uninterrupted(tmp_path, interrupt_at):
    # Dropout and a shuffled sampler make the result depend on the restored RNG and data position too.
    def trainer_for(name, callbacks=None):
        args = make_args(tmp_path, name, max_steps=6, save_strategy="steps", save_steps=2,
                         per_device_train_batch_size=2, gradient_accumulation_steps=2, lr_scheduler_type="cosine")
        return NeatTrainer(tiny_llama(), args, neat_config=NeatConfig(r=4, depth=1, dropout=0.2),
                           train_dataset=lm_dataset(), callbacks=callbacks)

    full = trainer_for("full")
    full.train()
    interrupted = trainer_for("interrupted", callbacks=[StopAtStep(interrupt_at)])
    interrupted.train()
    assert interrupted.state.global_step == interrupt_at
    resumed = trainer_for("interrupted")
    resumed.train(resume_from_checkpoint=os.path.join(tmp_path, "interrupted", f"checkpoint-{interrupt_at}"))
    assert resumed.state.global_step == 6
    assert_adapters_close(adapter_tensors(resumed.model), adapter_tensors(full.model), rtol=1e-5, atol=1e-6)
    assert not torch.equal(*(next(iter(adapter_tensors(m).values())) for m in (interrupted.model, full.model)))


def test_resume_from_a_checkpoint_with_other_settings_is_refused(tmp_path):
    args = make_args(tmp_path, save_strategy="steps", save_steps=2, max_steps=2)
    NeatTrainer(tiny_llama(), args, neat_config=NeatConfig(r=4, act_fn="relu"), train_dataset=lm_dataset()).train()
    other = NeatTrainer(tiny_llama(), make_args(tmp_path, max_steps=4), neat_config=NeatConfig(r=4, act_fn="gelu"),
                        train_dataset=lm_dataset())
    with pytest.raises(AdapterMismatchError, match="act_fn='relu'"):
        other.train(resume_from_checkpoint=os.path.join(args.output_dir, "checkpoint-2"))


def test_resuming_a_finished_run_with_a_lower_limit_leaves_what_the_limit_allows(tmp_path):
    """The Python API does what `neat-train` does: resuming a run that already reached max_steps trains nothing and
    deletes the older checkpoints beyond save_total_limit, keeping the newest."""
    args = make_args(tmp_path, save_strategy="steps", save_steps=2, max_steps=4)
    NeatTrainer(tiny_llama(), args, neat_config=NeatConfig(r=4), train_dataset=lm_dataset()).train()
    assert sorted(os.listdir(args.output_dir)) >= ["checkpoint-2", "checkpoint-4"]
    again = NeatTrainer(tiny_llama(), make_args(tmp_path, save_strategy="steps", save_steps=2, max_steps=4,
                                                save_total_limit=1),
                        neat_config=NeatConfig(r=4), train_dataset=lm_dataset())
    again.train(resume_from_checkpoint=os.path.join(args.output_dir, "checkpoint-4"))
    assert again.state.global_step == 4
    assert [d for d in sorted(os.listdir(args.output_dir)) if d.startswith("checkpoint-")] == ["checkpoint-4"]


def test_load_best_model_at_end_with_save_total_limit(tmp_path):
    scores = iter([1.0, 5.0, 2.0])  # evaluation at steps 2, 4, 6: step 4 is best

    def compute_metrics(_):
        return {"score": next(scores)}

    args = make_args(
        tmp_path, max_steps=6, eval_strategy="steps", eval_steps=2, save_strategy="steps", save_steps=2,
        load_best_model_at_end=True, metric_for_best_model="score", greater_is_better=True, save_total_limit=1,
    )
    snapshot = SnapshotAtStep(6)
    trainer = NeatTrainer(tiny_llama(), args, neat_config=NeatConfig(r=4), train_dataset=lm_dataset(),
                          eval_dataset=lm_dataset(4, seed=1), compute_metrics=compute_metrics, callbacks=[snapshot])
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-4")
    assert sorted(os.listdir(args.output_dir)) == ["checkpoint-4"]  # save_total_limit=1 keeps only the best
    best = load_file(os.path.join(args.output_dir, "checkpoint-4", ADAPTER_WEIGHTS_NAME))
    assert_adapters_close(adapter_tensors(trainer.model), best, rtol=0, atol=0)
    assert not torch.equal(snapshot.tensors[next(iter(best))], best[next(iter(best))])  # the last step differed


# ---------------------------------------------------------------------------------------------- precision, memory
def test_gradient_checkpointing_with_frozen_embeddings_trains_every_adapter_weight(tmp_path):
    # ViT takes pixel_values, for which transformers does not enable input gradients itself; with reentrant
    # checkpointing the adapter weights inside the checkpointed blocks would get no gradient at all.
    args = make_args(tmp_path, max_steps=2,
                     **{CHECKPOINTING_FIELD: True, f"{CHECKPOINTING_FIELD}_kwargs": {"use_reentrant": True}})
    config = NeatConfig(r=4, modules_to_save=["classifier"])
    trainer = NeatTrainer(tiny_vit_classifier(), args, neat_config=config, train_dataset=image_dataset())
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    unchanged = [n for n, p in trainer.model.named_parameters() if p.requires_grad and torch.equal(p, before[n])]
    assert not unchanged, unchanged


def test_bf16_with_gradient_accumulation(tmp_path):
    args = make_args(tmp_path, bf16=True, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    trainer = NeatTrainer(tiny_llama(), args, neat_config=NeatConfig(r=4), train_dataset=lm_dataset())
    before = adapter_tensors(trainer.model)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    after = adapter_tensors(trainer.model)
    assert all(t.dtype == torch.float32 for t in after.values())  # adapter weights stay fp32 under autocast
    assert any(not torch.equal(before[k], after[k]) for k in after)


def test_gradient_accumulation_equals_the_large_batch(tmp_path):
    def train(name, batch, accumulation):
        args = make_args(tmp_path, name, per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation,
                         max_steps=3)
        trainer = NeatTrainer(tiny_llama(), args, neat_config=NeatConfig(r=4), train_dataset=lm_dataset(12))
        trainer.train()
        return adapter_tensors(trainer.model)

    assert_adapters_close(train("accumulated", 2, 2), train("large", 4, 1), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------- the saved adapter
def test_save_model_writes_an_adapter_neat_hf_and_stock_peft_load(tmp_path):
    peft = pytest.importorskip("peft")
    trainer = NeatTrainer(tiny_llama(), make_args(tmp_path), neat_config=NeatConfig(r=4, depth=1),
                          train_dataset=lm_dataset())
    trainer.train()
    out = str(tmp_path / "final")
    trainer.save_model(out)
    assert_no_base_weights(out, trainer.model)
    inputs = model_inputs("llama")
    trainer.model.eval()
    expected = model_output(trainer.model, inputs)
    assert (expected - model_output(tiny_llama(), inputs)).abs().max() > 1e-4  # training changed the model
    torch.testing.assert_close(model_output(NeatModel.from_pretrained(tiny_llama(), out), inputs), expected)
    with stock_peft():
        stock = peft.PeftModel.from_pretrained(tiny_llama(), out).eval()
    torch.testing.assert_close(model_output(stock, inputs), expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- bad inputs
def _saved_adapter_for(folder, base_name: str) -> None:
    model = get_neat_model(tiny_llama(), NeatConfig(r=4, base_model_name_or_path=base_name))
    model.save_pretrained(folder)


def test_output_dir_with_an_adapter_for_another_base_model_is_refused(tmp_path):
    args = make_args(tmp_path, max_steps=1)
    _saved_adapter_for(args.output_dir, "org/other-base")
    config = NeatConfig(r=4, base_model_name_or_path="org/this-base")
    before = open(os.path.join(args.output_dir, ADAPTER_WEIGHTS_NAME), "rb").read()
    with pytest.raises(NeatError, match="org/other-base.*overwrite_output_dir"):
        NeatTrainer(tiny_llama(), args, neat_config=config, train_dataset=lm_dataset())
    # Same base model (a rerun) is fine; so is a different one with overwrite_output_dir.
    NeatTrainer(tiny_llama(), args, neat_config=NeatConfig(r=4, base_model_name_or_path="org/other-base"))
    trainer = NeatTrainer(tiny_llama(), make_args(tmp_path, max_steps=1, overwrite_output_dir=True),
                          neat_config=config, train_dataset=lm_dataset())
    assert open(os.path.join(args.output_dir, ADAPTER_WEIGHTS_NAME), "rb").read() == before  # refused run wrote nothing
    trainer.train()
    trainer.save_model()
    assert json.load(open(os.path.join(args.output_dir, ADAPTER_CONFIG_NAME)))["base_model_name_or_path"] == "org/this-base"


def test_checkpoint_for_another_base_model_is_refused(tmp_path):
    args = make_args(tmp_path)
    _saved_adapter_for(os.path.join(args.output_dir, "checkpoint-2"), "org/other-base")
    with pytest.raises(NeatError, match="checkpoint-2"):
        NeatTrainer(tiny_llama(), args, neat_config=NeatConfig(r=4, base_model_name_or_path="org/this-base"))


def test_missing_or_invalid_deepspeed_config_fails_when_the_arguments_are_built(tmp_path):
    with pytest.raises(DeepSpeedConfigError, match="not found.*zero3"):
        make_args(tmp_path, deepspeed=str(tmp_path / "nope.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"zero_optimization": {"stage": 3,}}')
    with pytest.raises(DeepSpeedConfigError, match="not valid JSON: .* line 1"):
        make_args(tmp_path, deepspeed=str(bad))
    bad.write_text('{"zero_optimization": {"stage": 4}}')
    with pytest.raises(DeepSpeedConfigError, match="stage must be 0, 1, 2 or 3, got 4"):
        make_args(tmp_path, deepspeed=str(bad))
    bad.write_text('{"optimizer": {"type": "AdamW", "params": {"lr": "auto"}}, "zero_optimization": {"stage": 2}}')
    with pytest.raises(DeepSpeedConfigError, match="neat_learning_rate"):
        make_args(tmp_path, deepspeed=str(bad), neat_learning_rate=1e-3)


def test_negative_group_learning_rate_is_refused(tmp_path):
    with pytest.raises(ValueError, match="head_learning_rate must be a non-negative number"):
        make_args(tmp_path, head_learning_rate=-1.0)


def test_plain_transformers_trainer_trains_a_neat_model_like_neat_trainer(tmp_path):
    """A NeatModel is a PeftModel: the plain Trainer keeps the columns its base model takes (dropping the extra text
    column) and checkpoints the adapter only, as NeatTrainer does (tests/test_peft_integration.py: exact resume)."""
    from transformers import Trainer

    for name, trainer_cls in (("plain", Trainer), ("neat", NeatTrainer)):
        output_dir = tmp_path / name
        args = TrainingArguments(str(output_dir), max_steps=1, use_cpu=True, report_to="none")
        model = get_neat_model(tiny_llama(), NeatConfig(r=4))
        trainer_cls(model=model, args=args, train_dataset=lm_dataset(extra_column=True)).train()
        checkpoint = os.listdir(output_dir / "checkpoint-1")
        assert ADAPTER_WEIGHTS_NAME in checkpoint and "model.safetensors" not in checkpoint, (name, checkpoint)
