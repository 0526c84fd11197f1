"""Training NEAT adapters with the Hugging Face `Trainer`: [`NeatTrainer`] and [`NeatTrainingArguments`];
[`format_instruction_prompt`] renders prompts the way the instruction recipes (and the embedded default) train them."""

from __future__ import annotations

from neat_hf.trainers.prompts import format_instruction_prompt
from neat_hf.trainers.trainer import NeatTrainer
from neat_hf.trainers.training_args import NeatTrainingArguments

__all__ = ["NeatTrainer", "NeatTrainingArguments", "format_instruction_prompt"]
