"""Documented limits of the inference servers that batch LoRA adapters, checked when a NEAT adapter is exported.

vLLM, SGLang, TGI and LoRAX serve many LoRA adapters on one base model; none of them knows NEAT, so neat-hf exports
an exact LoRA (`NeatModel.save_as_lora`). What each server refuses is checked here, before anything is written, so a
user learns at export time, not when the server fails to start. Sources (vLLM's main branch, as read when these checks were written):

- `vllm/config/lora.py`: `MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]`, `max_lora_rank` default
  16; `vllm/lora/worker_manager.py` refuses an adapter whose rank exceeds it ("LoRA rank … is greater than
  max_lora_rank …").
- `vllm/lora/peft_helper.py::PEFTHelper._validate_features`: "vLLM only supports modules_to_save being None." (and
  no DoRA).
- `vllm/lora/lora_model.py::LoRAModel.from_local_checkpoint`: every module in `adapter_model.safetensors` must have a
  last name in the model's expected LoRA modules ("expected target modules in … but received …"); for LLaMA-family
  models these are the packed `qkv_proj`/`gate_up_proj`, their parts, `o_proj`, `down_proj`, `embed_tokens`,
  `lm_head`.
- SGLang infers the rank and target modules from the adapters passed at launch (`--lora-paths`), so it needs no
  rank flag; mixing ranks is fine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

from neat_hf.errors import ServingLimitError

#: Values vLLM accepts for `--max-lora-rank` (vllm/config/lora.py, `MaxLoRARanks`).
VLLM_MAX_LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)
#: vLLM's default `--max-lora-rank`.
VLLM_DEFAULT_MAX_LORA_RANK = 16

_LLAMA_LIKE = frozenset(
    {"q_proj", "k_proj", "v_proj", "qkv_proj", "o_proj", "gate_proj", "up_proj", "gate_up_proj", "down_proj",
     "embed_tokens", "lm_head"}
)
#: Last module names vLLM applies LoRA to, per `config.model_type` (packed modules and their parts). A model type
#: missing here is not checked (a note says so).
VLLM_LORA_MODULES: dict[str, frozenset[str]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "phi3": frozenset({"qkv_proj", "o_proj", "gate_up_proj", "down_proj", "embed_tokens", "lm_head"}),
}
#: Servers `check_serving_limits` knows.
SERVERS = ("vllm", "sglang")


@dataclasses.dataclass(frozen=True)
class ServingIssue:
    """One finding: `level` is "error" (the server refuses the adapter) or "note" (it needs a flag, or is unchecked)."""

    server: str
    level: str
    message: str

    def __str__(self) -> str:
        return f"{self.server}: {self.message}"


def vllm_max_lora_rank(r: int) -> int | None:
    """The smallest `--max-lora-rank` vLLM accepts that serves rank `r` (None if `r` is above 512)."""
    return next((v for v in VLLM_MAX_LORA_RANKS if v >= r), None)


def check_serving_limits(
    *, r: int, target_paths: Sequence[str], modules_to_save: Iterable[str] | None, model_type: str | None
) -> list[ServingIssue]:
    """What vLLM and SGLang would say about a LoRA adapter of rank `r` on the modules `target_paths`.

    Args:
        r (`int`): the LoRA rank.
        target_paths (`Sequence[str]`): full paths of the adapted modules (as in `adapter_model.safetensors`).
        modules_to_save (`Iterable[str]`, *optional*): fully trained extra modules (e.g. a classification head).
        model_type (`str`, *optional*): the base model's `config.model_type`.
    """
    issues = []
    needed = vllm_max_lora_rank(r)
    if needed is None:
        issues.append(ServingIssue("vllm", "error", f"rank r={r} exceeds the largest --max-lora-rank vLLM accepts "
                                                     f"({VLLM_MAX_LORA_RANKS[-1]}; allowed {list(VLLM_MAX_LORA_RANKS)})."))
    elif needed > VLLM_DEFAULT_MAX_LORA_RANK:
        issues.append(ServingIssue("vllm", "note", f"rank r={r} needs `--max-lora-rank {needed}` (vLLM's default "
                                                    f"{VLLM_DEFAULT_MAX_LORA_RANK} refuses it)."))
    if modules_to_save:
        issues.append(ServingIssue("vllm", "error", f"vLLM refuses adapters with modules_to_save "
                                                     f"({sorted(modules_to_save)}): 'vLLM only supports "
                                                     "modules_to_save being None'. Serve it with PEFT/transformers, "
                                                     "or train without a separately saved head."))
    known = VLLM_LORA_MODULES.get(model_type or "")
    if known is None:
        issues.append(ServingIssue("vllm", "note", f"neat-hf does not know which modules vLLM adapts for "
                                                    f"model_type={model_type!r}; target modules were not checked."))
    else:
        unknown = sorted({p.rsplit(".", 1)[-1] for p in target_paths} - known)
        if unknown:
            issues.append(ServingIssue("vllm", "error", f"vLLM applies LoRA only to {sorted(known)} of a "
                                                         f"{model_type} model and refuses an adapter on {unknown}."))
    issues.append(ServingIssue("sglang", "note", "SGLang infers rank and target modules from the adapters given to "
                                                  "--lora-paths; no rank flag is needed."))
    return issues


def raise_for_server(issues: Sequence[ServingIssue], server: str) -> None:
    """Raise `ServingLimitError` listing every error `issues` holds for `server`.

    Raises:
        ServingLimitError: `server` would refuse the adapter; or `server` is not one of [`SERVERS`].
    """
    if server not in SERVERS:
        raise ServingLimitError(f"Unknown server {server!r}; limits are known for {list(SERVERS)}.")
    errors = [str(i) for i in issues if i.server == server and i.level == "error"]
    if errors:
        raise ServingLimitError("The exported LoRA would not load: " + " ".join(errors))
