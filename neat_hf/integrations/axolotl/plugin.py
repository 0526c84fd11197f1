"""`NeatPlugin`: NEAT as an Axolotl adapter method (`adapter: neat`), with no change to Axolotl.

Axolotl (>= 0.18) takes adapter methods from plugins: a plugin declares the adapter name
(`BasePlugin.get_adapter_capabilities`), which makes config validation accept `adapter: neat`, and builds the model
in `BasePlugin.load_adapter(model, cfg, inference, config_only)`, returning `(PeftModel, PeftConfig)`
(`axolotl/loaders/adapter.py::load_adapter`, example `axolotl/integrations/mora/`). The model built here is a
`peft.PeftModel` whose PEANUT layers are neat-hf's factored NEAT layers (`neat_hf.peft_patch.apply_neat_to_peft`), so
Axolotl's trainer saves it with PEFT: the output folder is a PEANUT adapter that `NeatModel.from_pretrained` and stock
PEFT load.

```yaml
plugins:
  - neat_hf.integrations.axolotl.NeatPlugin
adapter: neat
neat_r: 8
neat_depth: 1
neat_act_fn: relu
neat_target_modules: [q_proj, k_proj, v_proj, up_proj, down_proj]
```

Keys: the `neat_*` keys of [`NeatArgs`] (`neat-train`'s NEAT flags); Axolotl's own `peft_layers_to_transform` and
`peft_layers_pattern` apply when the `neat_` ones are unset, and `lora_model_dir` (Axolotl's key for an adapter to
continue from) loads a saved NEAT/PEANUT adapter instead of creating one. `lora_*` keys do not configure NEAT.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import peft
from axolotl.integrations.base import AdapterCapabilities, BasePlugin

from neat_hf.errors import NeatError
from neat_hf.peft_patch import apply_neat_to_peft
from neat_hf.trainers.neat_arguments import NeatArguments

from neat_hf.integrations.axolotl.args import NeatArgs

logger = logging.getLogger(__name__)

#: The `adapter:` value this plugin serves.
ADAPTER_NAME = "neat"


def neat_arguments(cfg: Any) -> NeatArguments:
    """`neat-train`'s NEAT arguments from an Axolotl config (`DictDefault`: a missing key reads as None)."""
    values = {name: getattr(cfg, name, None) for name in NeatArgs.model_fields}
    for ours, axolotls in (("neat_layers_to_transform", "peft_layers_to_transform"),
                           ("neat_layers_pattern", "peft_layers_pattern")):
        if values[ours] is None:
            values[ours] = getattr(cfg, axolotls, None)
    return NeatArguments(**{name: value for name, value in values.items() if value is not None})


def _task(model: Any) -> str:
    # Axolotl picks PEFT's task type from the model class the same way (loaders/adapter.py::_get_peft_task_type).
    return "sequence-classification" if "SequenceClassification" in type(model).__name__ else "causal-lm"


class NeatPlugin(BasePlugin):
    """Axolotl plugin for NEAT adapters (see the module docstring).

    Raises:
        NeatError: (from `load_adapter` / `pre_model_load`) a NEAT key with a bad value (named, with what is
            accepted), `adapter: neat` on a GPTQ base, or a `lora_model_dir` that holds no adapter_config.json.
    """

    def get_input_args(self) -> str:
        return f"{NeatArgs.__module__}.NeatArgs"

    def get_adapter_capabilities(self) -> list[AdapterCapabilities]:
        # Not LoRA-like: Axolotl must not build a LoraConfig for it, nor run ReLoRA restarts (they merge LoRA weights).
        return [AdapterCapabilities(name=ADAPTER_NAME, lora_like=False, relora=False)]

    def pre_model_load(self, cfg: Any) -> None:
        """Check the NEAT keys before Axolotl spends time loading the base model."""
        if cfg.adapter != ADAPTER_NAME:
            return
        if getattr(cfg, "gptq", None):
            raise NeatError("adapter: neat needs the base model's nn.Linear weights; GPTQ bases are not supported.")
        neat_arguments(cfg).to_neat_config()  # raises on a bad value, naming the key's NeatConfig field

    def load_adapter(
        self, model: Any, cfg: Any, inference: bool = False, config_only: bool = False
    ) -> tuple[Any, Any] | None:
        """Build the NEAT `PeftModel` (or load `lora_model_dir`) for `adapter: neat`; None for other adapters.

        Returns:
            `(peft.PeftModel, NeatConfig)`, or `(None, NeatConfig)` with `config_only=True` (Axolotl asks for the
            config alone when it only needs the adapter's settings).
        """
        if cfg.adapter != ADAPTER_NAME:
            return None
        config = neat_arguments(cfg).to_neat_config(
            task=_task(model), base_model_name_or_path=getattr(cfg, "base_model", None)
        )
        if config_only:
            return None, config
        apply_neat_to_peft()  # PEFT's PEANUT type builds neat-hf's factored layers from here on
        if cfg.lora_model_dir:
            if not os.path.isfile(os.path.join(os.fspath(cfg.lora_model_dir), "adapter_config.json")):
                raise NeatError(f"lora_model_dir {cfg.lora_model_dir!r} holds no adapter_config.json of a NEAT adapter.")
            peft_model = peft.PeftModel.from_pretrained(model, cfg.lora_model_dir, is_trainable=not inference)
            config = peft_model.peft_config["default"]
        else:
            peft_model = peft.get_peft_model(model, config)
        if int(os.environ.get("LOCAL_RANK", "0")) == 0:
            peft_model.print_trainable_parameters()
        return peft_model, config
