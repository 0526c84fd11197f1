"""Training NEAT adapters with the Hugging Face `Trainer`: [`NeatTrainer`] and [`NeatTrainingArguments`];
[`NeatArguments`] describes an adapter as flat `neat_*` fields (command lines, Axolotl);
[`format_instruction_prompt`] renders prompts the way the instruction recipes (and the embedded default) train them.

The names load on first use (PEP 562): `neat-train` imports this package and refuses careless input before it imports
the Trainer and peft.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from neat_hf.lazy_imports import lazy_getattr

if TYPE_CHECKING:
    from neat_hf.trainers.neat_arguments import NeatArguments
    from neat_hf.trainers.prompts import format_instruction_prompt
    from neat_hf.trainers.trainer import NeatTrainer
    from neat_hf.trainers.training_args import NeatTrainingArguments

__all__ = ["NeatArguments", "NeatTrainer", "NeatTrainingArguments", "format_instruction_prompt"]

_LAZY = {"NeatArguments": "neat_arguments", "NeatTrainer": "trainer", "NeatTrainingArguments": "training_args", "format_instruction_prompt": "prompts"}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
