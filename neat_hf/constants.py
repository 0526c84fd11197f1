"""File names, key prefixes and per-architecture default targets shared across neat-hf.

Everything here is part of the on-disk contract with PEFT's PEANuT implementation (peft >= 0.19), so changing a value
breaks interoperability with stock `peft`.
"""

from __future__ import annotations

#: The package version, written only here: `neat_hf.__version__`, the Hub user agent and the distribution's
#: metadata (pyproject.toml reads this literal) all take it from this line.
LIBRARY_VERSION = "0.1.0"

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
MODEL_CARD_NAME = "README.md"
#: neat-hf's record of how an adapter was trained, next to its config (stock PEFT does not read it).
TRAINING_INFO_NAME = "training_info.json"
#: Training and evaluation loss per step, drawn by NeatTrainer next to the record and shown in the model card.
TRAINING_CURVE_NAME = "training_curve.png"

#: `peft_type` written into adapter_config.json. Stock PEFT dispatches on it.
PEFT_TYPE = "PEANUT"
#: Parameter-name prefix of every adapter tensor (PEFT's `PeanutModel.prefix`).
PREFIX = "peanut_"
#: Prefix PEFT puts in front of module paths in adapter_model.safetensors (`PeftModel.base_model.model`).
FILE_KEY_PREFIX = "base_model.model."
#: Name of the adapter created when none is given, as in PEFT.
DEFAULT_ADAPTER_NAME = "default"

#: Default `target_modules` per `config.model_type` (entries that match no layer of the model at hand are dropped, so
#: one preset can list the names of several transformers versions). Decoder LLMs follow the paper (q, k, v, up, down: arXiv
#: 2410.01870, Table 10); encoders follow the paper's GLUE/ViT setups (query, value). PEFT's own PEANuT mapping
#: only lists q/v for LLMs, so we do not reuse it.
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    "llama": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
    "mixtral": ["q_proj", "k_proj", "v_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
    "qwen3": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
    "gemma": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
    "gemma2": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "gate_up_proj", "down_proj"],
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "deberta-v2": ["query_proj", "value_proj"],
    "distilbert": ["q_lin", "v_lin"],
    "vit": ["query", "value", "q_proj", "v_proj"],  # transformers 4.x names, then 5.x names
    "gpt2": ["c_attn"],
}

#: Names of `nn.ModuleList`s that hold transformer blocks, tried in order by `layers_to_transform` (as in PEFT).
COMMON_LAYERS_PATTERN = ["layers", "h", "block", "blocks", "layer"]

#: PEFT's task types (`peft.TaskType`).
TASK_TYPES = frozenset({"SEQ_CLS", "SEQ_2_SEQ_LM", "CAUSAL_LM", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION"})

#: Heads made trainable and saved automatically per task type, added to `modules_to_save` as PEFT's
#: PeftModelForSequenceClassification / TokenClassification / QuestionAnswering do.
TASK_HEAD_NAMES: dict[str, list[str]] = {
    "SEQ_CLS": ["classifier", "score"],
    "TOKEN_CLS": ["classifier", "score"],
    "QUESTION_ANS": ["qa_outputs"],
}
