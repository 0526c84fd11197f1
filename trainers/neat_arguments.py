"""`NeatArguments`: a NEAT adapter as flat `neat_*` fields (`neat_r`, `neat_depth`, ...), for command lines and
configs, with [`NeatArguments.to_neat_config`]. As TRL's `ModelConfig` does for LoRA (`lora_r`, ...), it lives in the
library: `neat-train` parses it (`HfArgumentParser`), and the Axolotl plugin takes its keys (`neat_hf.integrations`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from neat_hf.config import NeatConfig

#: `--task` values (the `AutoModelFor…` class each loads) → the PEFT task type (one of `neat_hf.constants.TASK_TYPES`)
#: written into adapter_config.json; image classification has none in PEFT.
TASK_TYPE_OF_TASK: dict[str, str | None] = {
    "causal-lm": "CAUSAL_LM",
    "sequence-classification": "SEQ_CLS",
    "image-classification": None,
}
_REGEX_CHARS = re.compile(r"[\\^$*+?()\[\]{}|]")


@dataclass
class NeatArguments:
    """The NEAT adapter: each `neat_<x>` flag sets `NeatConfig.<x>`.

    Args:
        neat_r (`int`, defaults to `32`):
            Rank r, the hidden width of the weight network.
        neat_target_modules (`list[str]`, *optional*):
            Module names to adapt (suffix match), or one regex matched against full paths. Default: the preset for
            the model type (LLaMA: q,k,v,up,down; RoBERTa/ViT: query,value).
        neat_exclude_modules (`list[str]`, *optional*):
            Module names never to adapt.
        neat_depth (`int`, defaults to `0`):
            Hidden r×r layers per side (the paper's depth D = 2 + 2·depth).
        neat_act_fn (`str`, defaults to `"relu"`):
            Nonlinearity σ: a `transformers` ACT2FN key or `sin`.
        neat_scaling (`float`, defaults to `1.0`):
            Multiplier s of the adapter output (LoRA-style α/r: α=32, r=32 → 1.0).
        neat_dropout (`float`, defaults to `0.0`):
            Dropout on the adapter input during training.
        neat_modules_to_save (`list[str]`, *optional*):
            Extra modules trained in full and saved with the adapter (e.g. `classifier`); they get `head_learning_rate`.
        neat_layers_to_transform (`list[int]`, *optional*):
            Only adapt these layer indices.
        neat_layers_pattern (`str`, *optional*):
            Name of the layer list that `neat_layers_to_transform` indexes (`layers`, `layer`, `h`, …).
        neat_init_weights (`bool`, defaults to `True`):
            Zero-initialise B so that training starts from the base model.
    """

    neat_r: int = field(default=32, metadata={"help": "Rank r of the NEAT weight network."})
    neat_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Modules to adapt (names, suffix match; or one regex). Default: the model type's preset."},
    )
    neat_exclude_modules: list[str] | None = field(default=None, metadata={"help": "Modules never to adapt."})
    neat_depth: int = field(default=0, metadata={"help": "Hidden r×r layers per side (paper depth = 2 + 2·depth)."})
    neat_act_fn: str = field(default="relu", metadata={"help": "Nonlinearity: an ACT2FN name or `sin`."})
    neat_scaling: float = field(default=1.0, metadata={"help": "Multiplier s of the adapter output (α/r)."})
    neat_dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter input during training."})
    neat_modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules trained in full and saved with the adapter (e.g. `classifier`)."}
    )
    neat_layers_to_transform: list[int] | None = field(
        default=None, metadata={"help": "Only adapt these layer indices."}
    )
    neat_layers_pattern: str | None = field(
        default=None, metadata={"help": "Layer list indexed by --neat_layers_to_transform (`layers`, `layer`, `h`)."}
    )
    neat_init_weights: bool = field(
        default=True, metadata={"help": "Zero-initialise B (start from the base model). False only for tests."}
    )

    def to_neat_config(
        self, *, task: str = "causal-lm", base_model_name_or_path: str | None = None, revision: str | None = None
    ) -> NeatConfig:
        """Builds the [`~neat_hf.NeatConfig`] these arguments describe (its own checks run here, before any model is
        touched)."""
        return NeatConfig(
            r=self.neat_r,
            target_modules=_modules_value(self.neat_target_modules),
            exclude_modules=_modules_value(self.neat_exclude_modules),
            depth=self.neat_depth,
            act_fn=self.neat_act_fn,
            scaling=self.neat_scaling,
            dropout=self.neat_dropout,
            modules_to_save=list(self.neat_modules_to_save) if self.neat_modules_to_save else None,
            layers_to_transform=list(self.neat_layers_to_transform) if self.neat_layers_to_transform else None,
            layers_pattern=self.neat_layers_pattern,
            init_weights=self.neat_init_weights,
            task_type=TASK_TYPE_OF_TASK.get(task),
            base_model_name_or_path=base_model_name_or_path,
            revision=revision,
        )


def _modules_value(value: list[str] | str | None) -> list[str] | str | None:
    """A single entry that looks like a regex (or a YAML string) is passed on as a regex, as PEFT does for a `str`."""
    if value is None or isinstance(value, str):
        return value
    values = list(value)
    if len(values) == 1 and _REGEX_CHARS.search(values[0]):
        return values[0]
    return values
