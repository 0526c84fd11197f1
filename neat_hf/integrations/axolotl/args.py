"""`NeatArgs`: the `neat_*` keys an Axolotl YAML accepts once `NeatPlugin` is listed under `plugins:`.

Axolotl merges each plugin's pydantic model into its config schema (`axolotl.integrations.config.merge_input_args`).
The keys are `neat-train`'s NEAT flags (`neat_hf.trainers.NeatArguments`: `neat_r`, `neat_depth`,
`neat_act_fn`, `neat_scaling`, `neat_target_modules`, ...), named as Axolotl names LoRA's (`lora_r`,
`lora_target_modules`, ...). The model is built from that dataclass, so the keys, their types and their help texts
have one source; every key defaults to unset (`None`), and an unset key takes `NeatArguments`' default.
"""

from __future__ import annotations

import dataclasses
import typing

from pydantic import BaseModel, Field, create_model

from neat_hf.trainers.neat_arguments import NeatArguments


def _neat_args_model() -> type[BaseModel]:
    hints = typing.get_type_hints(NeatArguments)
    fields = {
        f.name: (hints[f.name] | None, Field(default=None, description=f.metadata.get("help")))
        for f in dataclasses.fields(NeatArguments)
    }
    return create_model(
        "NeatArgs",
        __module__=__name__,
        __doc__="The NEAT adapter of an Axolotl config (`adapter: neat`): `neat-train`'s `neat_*` keys.",
        **fields,
    )


#: Pydantic model of the `neat_*` keys (see the module docstring).
NeatArgs = _neat_args_model()
