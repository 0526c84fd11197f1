"""Training NEAT adapters with the Hugging Face `Trainer`: [`NeatTrainer`] and [`NeatTrainingArguments`]."""

from .trainer import NeatTrainer
from .training_args import NeatTrainingArguments

__all__ = ["NeatTrainer", "NeatTrainingArguments"]
