"""NEAT on quantized base models: bitsandbytes 4-bit (QLoRA's nf4/fp4) and 8-bit (LLM.int8) layers.

A bitsandbytes `Linear4bit` / `Linear8bitLt` stores W0 packed (uint8 / int8 plus scales), so NEAT cannot read it as
is: H = σ(W0ᵀAᵀ) needs the real W0. This module gives the NEAT layer what it needs, and nothing more:

* [`a_times_w0`]: A·W0 with W0 dequantized by bitsandbytes' own functions (`dequantize_4bit`, and for int8
  `int8_vectorwise_dequant`, as PEFT's `dequantize_bnb_weight` does), in the compute dtype. It is a custom
  `torch.autograd.Function` that saves nothing for backward and dequantizes again there, so a dequantized W0 lives
  only while its own product runs: at most one layer's full-precision W0 exists at a time, and none is kept between
  forward and backward (plain autograd would keep one for every adapted layer: the whole model in 16 bit).
* [`dequantize_weight`]: W0 as a dense tensor, for merging and inspection.
* [`check_quantized_model`]: refuses quantizers other than bitsandbytes (GPTQ, AWQ, HQQ, torchao, quanto, …) and
  layers NEAT cannot read, before anything is changed.
* [`prepare_model_for_kbit_training`]: PEFT's function of the same name, for NEAT users.
* [`dequantize_model`] / [`requantize_layer`]: what `NeatModel.merge_and_unload` does on a quantized base.
* [`bnb_config_from_kwargs`] / [`quantization_settings`]: the `load_in_4bit=True`-style flags of the CLIs, and the
  settings recorded in `training_info.json` and the model card.

bitsandbytes is optional (`pip install "neat-hf[bnb]"`); it is imported lazily, only for models that hold
bitsandbytes layers, and the error when it is missing names the extra.
"""

from __future__ import annotations

import enum
import functools
import logging
from typing import Any

import torch
from torch import nn
from transformers import BitsAndBytesConfig

from neat_hf.errors import MissingDependencyError, UnsupportedQuantizationError

logger = logging.getLogger(__name__)

#: What neat-hf can adapt, for error messages.
SUPPORTED_QUANTIZATION = (
    "bitsandbytes 4-bit (BitsAndBytesConfig(load_in_4bit=True), nf4 or fp4, with or without double quantization) "
    "and 8-bit (BitsAndBytesConfig(load_in_8bit=True))"
)
#: `BitsAndBytesConfig` fields the CLIs accept as flags / `--model_args` keys (lm-eval's spelling).
BNB_FLAGS = (
    "load_in_4bit",
    "load_in_8bit",
    "bnb_4bit_quant_type",
    "bnb_4bit_compute_dtype",
    "bnb_4bit_use_double_quant",
)
#: `quantization_config` keys recorded with an adapter (training_info.json, model card).
_RECORDED_SETTINGS = (
    "quant_method",
    "load_in_4bit",
    "load_in_8bit",
    "bnb_4bit_quant_type",
    "bnb_4bit_compute_dtype",
    "bnb_4bit_use_double_quant",
    "bnb_4bit_quant_storage",
    "llm_int8_threshold",
)
_BNB_LAYER_NAMES = ("Linear4bit", "Linear8bitLt")


def import_bitsandbytes() -> Any:
    """`import bitsandbytes`, or an error naming the extra that installs it."""
    try:
        import bitsandbytes  # optional dependency: only quantized bases need it
    except ImportError as err:
        raise MissingDependencyError(
            "This model holds bitsandbytes-quantized layers, but bitsandbytes is not installed; "
            'install it with pip install "bitsandbytes>=0.45" (the neat-hf[bnb] extra; from a clone: pip install -e ".[bnb]").'
        ) from err
    return bitsandbytes


@functools.lru_cache(maxsize=None)
def _bnb_kind(cls: type) -> str | None:
    """"Linear4bit", "Linear8bitLt" or None for a module class (cached: NEAT's forward asks for every layer)."""
    for base in cls.__mro__:
        if base.__module__.startswith("bitsandbytes") and base.__name__ in _BNB_LAYER_NAMES:
            return base.__name__
    return None


def is_bnb_layer(module: nn.Module) -> bool:
    """Whether `module` is a bitsandbytes `Linear4bit` / `Linear8bitLt` (checked without importing bitsandbytes)."""
    return _bnb_kind(type(module)) is not None


def is_4bit_layer(module: nn.Module) -> bool:
    """Whether `module` is a bitsandbytes `Linear4bit`."""
    return _bnb_kind(type(module)) == "Linear4bit"


def prepare_quantized_layer(layer: nn.Module) -> None:
    """Make a bitsandbytes layer's W0 readable by [`dequantize_weight`] for the life of the NEAT layer around it.

    On CPUs with AVX512-BF16, `Linear4bit` repacks its weight on the first inference call into a layout only its own
    kernel reads (and rounds the block scales to bf16). NEAT reads W0 in every forward, so the repacking is switched
    off for wrapped layers, and an already repacked weight is converted back with bitsandbytes' own inverse (what
    `Linear4bit._save_to_state_dict` does before saving). No-op on GPUs and for 8-bit layers.
    """
    if not is_4bit_layer(layer):
        return
    if hasattr(layer, "support_avx512bf16_for_cpu"):
        layer.support_avx512bf16_for_cpu = False
    _unpack_cpu_format(layer)


def prepare_quantized_model(model: nn.Module) -> None:
    """[`prepare_quantized_layer`] on every bitsandbytes layer of `model`, adapted or not: merging reads them all,
    and a repacked layer would make the model's outputs depend on whether an inference call happened before (the
    repacking rounds its block scales to bf16)."""
    for module in model.modules():
        if is_bnb_layer(module):
            prepare_quantized_layer(module)


def _unpack_cpu_format(layer: nn.Module) -> None:
    """Undo `Linear4bit`'s AVX512-BF16 CPU repacking, if it happened (see [`prepare_quantized_layer`])."""
    weight = layer.weight
    if getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False):
        bnb = import_bitsandbytes()
        weight.data, weight.quant_state = bnb.functional._convert_weight_packed_for_cpu_inverse(
            weight.data, weight.quant_state
        )


def dequantize_weight(layer: nn.Module, dtype: torch.dtype | None = None) -> torch.Tensor:
    """W0 of a bitsandbytes layer as a dense out×in tensor (a new allocation), in `dtype` if given.

    Uses bitsandbytes' dequantization: `dequantize_4bit(weight.data, weight.quant_state)` for 4-bit, and
    `int8_vectorwise_dequant(CB, SCB)` for 8-bit (PEFT's `dequantize_bnb_weight`). The layer is not modified (PEFT's
    helper copies SCB into the layer's state; this one only reads it), except that a 4-bit weight repacked for
    bitsandbytes' CPU kernel is converted back first, as bitsandbytes does before saving it.
    """
    bnb = import_bitsandbytes()
    weight = layer.weight
    if is_4bit_layer(layer):
        _unpack_cpu_format(layer)  # a layer NEAT does not wrap may have been repacked by an inference call
        dense = bnb.functional.dequantize_4bit(weight.data, weight.quant_state)
    elif weight.dtype.is_floating_point:  # Linear8bitLt(has_fp16_weights=True): not quantized (yet)
        dense = weight.data
    else:
        state = getattr(layer, "state", None)
        scb = state.SCB if state is not None and state.SCB is not None else weight.SCB
        dense = bnb.functional.int8_vectorwise_dequant(weight.data, scb.to(weight.device))
    return dense if dtype is None or dense.dtype == dtype else dense.to(dtype)


def compute_dtype(layer: nn.Module, input_dtype: torch.dtype) -> torch.dtype:
    """The dtype A·W0 is computed in: `bnb_4bit_compute_dtype` for a 4-bit layer (what its own matmul uses), the
    activations' dtype otherwise (LLM.int8 has no compute dtype of its own)."""
    dtype = getattr(layer, "compute_dtype", None) if is_4bit_layer(layer) else None
    return dtype or input_dtype


class _DequantizedMatmul(torch.autograd.Function):
    """A·W0 for a quantized W0, recomputing the dequantization in backward instead of saving W0.

    Only dL/dA is needed (W0 is frozen): dL/dA = dL/d(AW0)·W0ᵀ. Nothing is saved for backward except a reference
    to the layer, so no out×in tensor outlives the forward of this product.
    """

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, layer: nn.Module) -> torch.Tensor:
        ctx.layer = layer
        return a @ dequantize_weight(layer, a.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None]:
        if not ctx.needs_input_grad[0]:
            return None, None
        return grad_output @ dequantize_weight(ctx.layer, grad_output.dtype).t(), None


def a_times_w0(layer: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """A·W0 (r×in) for a bitsandbytes layer, computed in `a.dtype`, without keeping the dequantized W0 (see
    [`_DequantizedMatmul`])."""
    return _DequantizedMatmul.apply(a, layer)


class _FusedBaseAndWeightNetwork(torch.autograd.Function):
    """W0·x (+ bias) and A·W0 of a 4-bit layer from ONE dequantization of W0 in forward and one in backward.

    In training, a 4-bit layer's own matmul (bitsandbytes' `MatMul4Bit`) dequantizes W0 in backward for dL/dx, and
    its forward (`gemm_4bit`) is itself a dequantization plus `F.linear` for training-sized batches (bitsandbytes
    0.50: always on CPU, and on CUDA beyond a per-GPU row count, e.g. a few rows on H100). Running [`a_times_w0`] next
    to it would double the dequantizations. This function computes both products from the same dequantized W0, in
    the compute dtype, and its backward dequantizes once for dL/dx = dL/dy·W0 and dL/dA = dL/d(AW0)·W0ᵀ. Like
    [`_DequantizedMatmul`], it saves no tensor for backward.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, a: torch.Tensor, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.layer = layer
        # In the compute dtype even under autocast, as bitsandbytes' own 4-bit matmul (and NEAT's A·W0) compute.
        with torch.autocast(device_type=x.device.type, enabled=False):
            weight = dequantize_weight(layer, x.dtype)
            bias = None if layer.bias is None else layer.bias.to(x.dtype)
            return torch.nn.functional.linear(x, weight, bias), a @ weight

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor, grad_aw: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        need_x, need_a, _ = ctx.needs_input_grad
        if not (need_x or need_a):
            return None, None, None
        weight = dequantize_weight(ctx.layer, grad_out.dtype)
        grad_x = grad_out @ weight if need_x else None
        grad_a = grad_aw @ weight.t() if need_a else None
        return grad_x, grad_a, None


def can_fuse_base_forward(layer: nn.Module) -> bool:
    """Whether [`base_and_a_times_w0`] may stand in for the 4-bit `layer`'s own forward: training (grad enabled) and
    nothing hooked to the layer (accelerate's offloading hooks, user hooks), since the layer's `__call__` is skipped.
    """
    return (
        is_4bit_layer(layer)
        and torch.is_grad_enabled()
        and not layer._forward_hooks
        and not layer._forward_pre_hooks
        and not hasattr(layer, "_hf_hook")
        and not nn.modules.module._global_forward_hooks
        and not nn.modules.module._global_forward_pre_hooks
    )


def base_and_a_times_w0(layer: nn.Module, x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the 4-bit `layer`'s output for `x`, A·W0) from one dequantization of W0 (see [`_FusedBaseAndWeightNetwork`]).

    The output is in `x`'s dtype, A·W0 in the layer's compute dtype, as `layer(x)` and [`a_times_w0`] give them.
    """
    dtype = compute_dtype(layer, x.dtype)
    out, a_w0 = _FusedBaseAndWeightNetwork.apply(x.to(dtype), a.to(dtype), layer)
    return out.to(x.dtype), a_w0


# ---------------------------------------------------------------------------------------------------- model checks
def quantization_method(model: nn.Module) -> str | None:
    """The transformers quantization method of `model` ("bitsandbytes", "gptq", "awq", …), or None."""
    config = getattr(getattr(model, "config", None), "quantization_config", None)
    method = getattr(model, "quantization_method", None) or (
        config.get("quant_method") if isinstance(config, dict) else getattr(config, "quant_method", None)
    )
    if method is None and getattr(model, "hqq_quantized", False):
        method = "hqq"
    return None if method is None else str(getattr(method, "value", method))


def is_quantized_model(model: nn.Module) -> bool:
    """Whether `model` holds bitsandbytes layers or says it is quantized."""
    return quantization_method(model) is not None or any(is_bnb_layer(m) for m in model.modules())


def check_quantized_model(model: nn.Module) -> None:
    """Refuse, before anything is changed, a base NEAT cannot adapt: a quantizer other than bitsandbytes, or
    bitsandbytes layers without bitsandbytes installed.

    Raises:
        UnsupportedQuantizationError: the model is quantized with another method (the message lists what works).
        MissingDependencyError: the model holds bitsandbytes layers but bitsandbytes cannot be imported.
    """
    method = quantization_method(model)
    if method is not None and method != "bitsandbytes":
        raise UnsupportedQuantizationError(
            f"The base model is quantized with {method!r}, which NEAT does not support: NEAT reads every adapted "
            f"weight W0, and only bitsandbytes layers can be dequantized for it. Supported: {SUPPORTED_QUANTIZATION}, "
            "or an unquantized bf16/fp16/fp32 base."
        )
    if any(is_bnb_layer(m) for m in model.modules()):
        import_bitsandbytes()


def check_deepspeed_stage(model: nn.Module, stage: int) -> None:
    """Refuse DeepSpeed ZeRO on a quantized base, before anything is built.

    ZeRO-3 partitions every parameter into flat fp16/bf16 shards, which a bitsandbytes layer cannot compute with
    (transformers' `bnb_4bit_quant_storage` route around that is not supported by neat-hf). ZeRO-2 with a quantized
    base is refused too: it is untested with NEAT, and a frozen quantized base leaves ZeRO-2 little to shard (only the
    adapters' gradients and optimizer states, which are small).

    Raises:
        UnsupportedQuantizationError: `stage` is 2 or 3 and `model` holds bitsandbytes layers or is quantized.
    """
    if stage < 2 or not is_quantized_model(model):
        return
    raise UnsupportedQuantizationError(
        f"DeepSpeed ZeRO-{stage} is not supported with a quantized (bitsandbytes 4-bit/8-bit) base model"
        + (
            ": ZeRO-3 shards every weight into flat 16-bit partitions that bitsandbytes layers cannot compute with."
            if stage == 3
            else ": this combination is untested with NEAT."
        )
        + " Train the quantized base on one GPU without --deepspeed (QLoRA-style), or "
        "load the base in bf16 and use --deepspeed zero3 to shard it across GPUs."
    )


def unsupported_weight_message(layer: nn.Module) -> str:
    """The error text for an adapted layer whose weight is neither floating point nor a bitsandbytes layer."""
    return (
        f"NEAT needs to read the weight of each adapted layer; {type(layer).__name__} holds {layer.weight.dtype} "
        f"weights it cannot dequantize. Supported quantized bases: {SUPPORTED_QUANTIZATION}; otherwise load the base "
        "model in bf16/fp16/fp32."
    )


def quantization_settings(model: Any) -> dict[str, Any] | None:
    """The base model's quantization settings (bitsandbytes fields of its `quantization_config`), as JSON scalars,
    or None for an unquantized base. Recorded in `training_info.json` and the model card, never in
    adapter_config.json (stock PEFT warns about unknown keys there)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(getattr(base, "config", None), "quantization_config", None)
    if config is None:
        return None
    data = config if isinstance(config, dict) else config.to_dict()
    settings = {}
    for key in _RECORDED_SETTINGS:
        value = data.get(key)
        if (key.startswith("bnb_4bit") and not data.get("load_in_4bit")) or (
            key.startswith("llm_int8") and not data.get("load_in_8bit")
        ):
            continue
        if isinstance(value, torch.dtype):
            value = str(value).removeprefix("torch.")
        if isinstance(value, enum.Enum):  # transformers' QuantizationMethod: record "bitsandbytes", not its repr
            value = value.value
        if value is not None:
            settings[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return settings or None


def bnb_config_from_kwargs(kwargs: dict[str, Any]) -> Any:
    """Pop the `load_in_4bit=True`-style keys ([`BNB_FLAGS`]) from `kwargs` and return the `BitsAndBytesConfig`
    they describe (None when neither `load_in_4bit` nor `load_in_8bit` is set). Strings are accepted, as they come
    from command lines (`"true"`, `"bfloat16"`).

    Raises:
        UnsupportedQuantizationError: both 4-bit and 8-bit, or `bnb_4bit_*` settings without `load_in_4bit`.
    """
    flags = {key: kwargs.pop(key) for key in BNB_FLAGS if key in kwargs}
    for key in ("load_in_4bit", "load_in_8bit", "bnb_4bit_use_double_quant"):
        if isinstance(flags.get(key), str):
            flags[key] = flags[key].strip().lower() in ("1", "true", "yes")
    load_4bit, load_8bit = bool(flags.pop("load_in_4bit", False)), bool(flags.pop("load_in_8bit", False))
    if load_4bit and load_8bit:
        raise UnsupportedQuantizationError("Pass load_in_4bit or load_in_8bit, not both.")
    settings = {k: v for k, v in flags.items() if v is not None}
    if not load_4bit and settings:
        raise UnsupportedQuantizationError(f"{sorted(settings)} only apply with load_in_4bit=True.")
    if not (load_4bit or load_8bit):
        return None
    import_bitsandbytes()
    dtype = settings.get("bnb_4bit_compute_dtype")
    if isinstance(dtype, str):
        settings["bnb_4bit_compute_dtype"] = getattr(torch, dtype.removeprefix("torch."))
    return BitsAndBytesConfig(load_in_4bit=load_4bit, load_in_8bit=load_8bit, **settings)


# ---------------------------------------------------------------------------------------------------- training prep
def prepare_model_for_kbit_training(
    model: nn.Module,
    use_gradient_checkpointing: bool = True,
    gradient_checkpointing_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """PEFT's `prepare_model_for_kbit_training`, same name, arguments and behaviour, for a model NEAT will adapt.

    1. Freezes every parameter of the base model.
    2. Casts the fp16/bf16 parameters that are not 4-bit packed weights (embeddings, norms, head) to fp32, for stable
       training of what runs around the quantized layers.
    3. With `use_gradient_checkpointing=True` on a quantized model: makes the embeddings' output require grad (so
       checkpointed blocks pass gradients to the adapters although the embeddings are frozen; not needed with
       `use_reentrant=False`) and enables gradient checkpointing.

    Returns the same model (changed in place). Call it before [`get_neat_model`], as with PEFT; `neat-train
    --load_in_4bit` does.

    Example:

    ```python
    >>> from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    >>> from neat_hf import NeatConfig, get_neat_model, prepare_model_for_kbit_training
    >>> base = AutoModelForCausalLM.from_pretrained(
    ...     "meta-llama/Meta-Llama-3-8B", quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")
    ... )
    >>> model = get_neat_model(prepare_model_for_kbit_training(base), NeatConfig(r=32))
    ```
    """
    check_quantized_model(model)
    kwargs = dict(gradient_checkpointing_kwargs or {})
    for param in model.parameters():
        param.requires_grad = False
    for param in model.parameters():
        if param.dtype in (torch.float16, torch.bfloat16) and type(param).__name__ != "Params4bit":
            param.data = param.data.to(torch.float32)
    if is_quantized_model(model) and use_gradient_checkpointing:
        if kwargs.get("use_reentrant", True):
            model.enable_input_require_grads()
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5's name
            model.activation_checkpointing_enable(kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model


# ---------------------------------------------------------------------------------------------------- merging
def dequantized_linear(layer: nn.Module, dtype: torch.dtype) -> nn.Linear:
    """A frozen `nn.Linear` in `dtype` holding the dequantized W0 (and the bias) of a bitsandbytes layer."""
    weight = dequantize_weight(layer, dtype)
    bias = layer.bias
    linear = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach().to(dtype), requires_grad=False)
    return linear


def dequantize_model(model: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Replace every bitsandbytes layer of `model` (NEAT-wrapped or not) by its dequantized `nn.Linear` in `dtype`
    (default: the dtype the model was loaded in, `config.dtype`, as `PreTrainedModel.dequantize` does; fp32 without one),
    and drop transformers' quantization markers (`hf_quantizer`, `config.quantization_config`, `is_quantized`), as
    `PreTrainedModel.dequantize` does, so that `save_pretrained` writes a plain checkpoint. Returns the number of
    layers replaced.

    transformers' `dequantize_and_replace` is not used because it raises UnboundLocalError on a model without a
    bitsandbytes layer left (transformers 5.24), e.g. when NEAT adapted every quantized layer.
    """
    if dtype is None:
        dtype = getattr(getattr(model, "config", None), "dtype", None)
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        dtype = dtype if isinstance(dtype, torch.dtype) and dtype.is_floating_point else torch.float32
    replaced = 0
    for name, module in list(model.named_modules()):
        if name and is_bnb_layer(module):
            model.set_submodule(name, dequantized_linear(module, dtype))
            replaced += 1
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit"):
        if getattr(model, flag, False):
            setattr(model, flag, False)
    return replaced


@torch.no_grad()
def requantize_layer(layer: nn.Module, weight: torch.Tensor) -> None:
    """Quantize `weight` (out×in, full precision) into the bitsandbytes `layer` in place, with the layer's own
    settings (quant type, block size, double quantization, storage): PEFT's bitsandbytes LoRA merge
    (peft/tuners/lora/bnb.py). Lossy: the result is rounded to the 4-bit / 8-bit grid again."""
    bnb = import_bitsandbytes()
    old = layer.weight
    device = old.device
    if is_4bit_layer(layer):
        kwargs = {k: v for k, v in old.__dict__.items() if not k.startswith("_")}
        kwargs.pop("data", None)
        kwargs.update(bnb_quantized=False, requires_grad=False)
        kwargs.pop("quant_state", None)
        layer.weight = bnb.nn.Params4bit(weight.to("cpu", old.quant_state.dtype), **kwargs).to(device)
    else:
        layer.weight = bnb.nn.Int8Params(
            weight.to("cpu", torch.float16), requires_grad=False, has_fp16_weights=old.has_fp16_weights
        ).to(device)
        layer.state.reset_grads()
        layer.state.CB, layer.state.SCB = None, None
