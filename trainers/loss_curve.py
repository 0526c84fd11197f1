"""The losses of a training run for its record and card: final losses and the loss curve.

[`NeatHubMixin`](neat_hf.trainers.hub_mixin) calls these when it writes `training_info.json` and the card (the tracker
run's address comes from `neat_hf.trainers.trackers`):

- [`loss_facts`]: the final training loss, the final evaluation loss and the mean training loss, from the Trainer's
  `state.log_history`.
- [`write_training_curve`]: `training_curve.png`, training loss per optimizer step and evaluation loss, drawn with
  matplotlib from the same log history; the card shows it and Hub pushes upload it with the card.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from neat_hf.constants import TRAINING_CURVE_NAME
from neat_hf.io import atomic_write_bytes

logger = logging.getLogger(__name__)


def _points(log_history: Sequence[Mapping[str, Any]], key: str) -> list[tuple[int, float]]:
    return [
        (int(entry["step"]), float(entry[key]))
        for entry in log_history
        if isinstance(entry.get(key), (int, float)) and isinstance(entry.get("step"), (int, float))
    ]


def loss_facts(log_history: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """`final_train_loss` (the last logged training loss), `final_eval_loss` (the last evaluation loss) and
    `train_loss` (the Trainer's mean over the whole run), rounded to 6 digits; keys without a logged value are left
    out."""
    facts: dict[str, float] = {}
    for key, name in (("loss", "final_train_loss"), ("eval_loss", "final_eval_loss"), ("train_loss", "train_loss")):
        values = [entry[key] for entry in log_history if isinstance(entry.get(key), (int, float))]
        if values:
            facts[name] = round(float(values[-1]), 6)
    return facts


def write_training_curve(log_history: Sequence[Mapping[str, Any]], directory: str | os.PathLike) -> Path | None:
    """Draw the training loss per step (and the evaluation loss, when logged) into `directory/training_curve.png`.

    Returns the path, or None when nothing was logged (no file is written). The PNG is written atomically and carries
    no timestamp, so the same history gives the same bytes.
    """
    train, evaluation = _points(log_history, "loss"), _points(log_history, "eval_loss")
    if not train and not evaluation:
        return None
    from matplotlib.figure import Figure  # lazy: matplotlib is only needed when a card is written

    figure = Figure(figsize=(6.4, 3.6), dpi=100)
    axes = figure.subplots()
    for points, label, style in ((train, "training loss", "-o" if len(train) == 1 else "-"),
                                 (evaluation, "evaluation loss", "o--")):
        if points:
            steps, values = zip(*points)
            axes.plot(steps, values, style, label=label)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", metadata={"Software": None})
    path = Path(directory) / TRAINING_CURVE_NAME
    atomic_write_bytes(path, buffer.getvalue())
    return path
