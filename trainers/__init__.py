"""Training NEAT adapters with the Hugging Face `Trainer`: [`NeatTrainer`] and [`NeatTrainingArguments`]."""

from __future__ import annotations

from neat_hf.trainers.trainer import NeatTrainer
from neat_hf.trainers.training_args import NeatTrainingArguments

__all__ = ["NeatTrainer", "NeatTrainingArguments"]
