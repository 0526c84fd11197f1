"""What a training run adds to an adapter's record and card: final losses, the loss curve and the tracker run.

[`NeatHubMixin`](neat_hf.trainers.hub_mixin) calls these when it writes `training_info.json` and the card:

- [`loss_facts`]: the final training loss, the final evaluation loss and the mean training loss, from the Trainer's
  `state.log_history`.
- [`write_training_curve`]: `training_curve.png`, training loss per optimizer step and evaluation loss, drawn with
  matplotlib from the same log history; the card shows it and Hub pushes upload it with the card.
- [`live_tracker_runs`], [`tracker_urls`]: the experiment-tracker run of the training (Trackio, Weights & Biases,
  Comet) and its address, which the card shows as a badge (and, for Trackio, a `trackio:<url>` tag), as TRL's cards
  do. The run is read while it is live: the Trainer's Trackio callback ends it (`trackio.finish()`) before the final
  card is written.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from neat_hf.constants import TRAINING_CURVE_NAME
from neat_hf.io import atomic_write_bytes

logger = logging.getLogger(__name__)

#: Where `trackio show` serves its dashboard unless told otherwise (Gradio's default port).
TRACKIO_LOCAL_DASHBOARD = "http://127.0.0.1:7860/"


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


def trackio_run_url(project: str, run: str | None, space_id: str | None = None) -> str:
    """Address of a Trackio run: its Hub Space (as TRL links it) or, for a local run, the local dashboard."""
    query = urlencode({"project": project, **({"runs": run} if run else {}), "sidebar": "collapsed"})
    if space_id:
        return f"https://{space_id.replace('/', '-')}.hf.space/?{query}"
    return f"{TRACKIO_LOCAL_DASHBOARD}?{query}"


def live_tracker_runs(report_to: Sequence[str] | str | None = None) -> dict[str, Any]:
    """The tracker runs live in this process: `{"trackio": (project, run name, Space id or None), "wandb_url": ...,
    "comet_url": ...}` (absent keys: no such run), for the trackers in `report_to` only (a run another trainer of
    the same process left open is not this one's; None asks every tracker).

    Only trackers already imported are asked (the Trainer's reporting callbacks import them), so this costs nothing
    when none is used.
    """
    runs: dict[str, Any] = {}
    asked = None if report_to is None else {report_to} if isinstance(report_to, str) else set(report_to)

    def reported(tracker: str) -> bool:
        return asked is None or tracker in asked or "all" in asked

    if "trackio" in sys.modules and reported("trackio"):
        from trackio import context_vars

        run = context_vars.current_run.get()
        if run is not None:
            # `_space_id` is how TRL reads a run's Space too (trl.trainer.utils.get_trackio_space_url).
            runs["trackio"] = (run.project, run.name, getattr(run, "_space_id", None))
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None and reported("wandb"):
        runs["wandb_url"] = wandb.run.url
    comet_ml = sys.modules.get("comet_ml")
    if comet_ml is not None and hasattr(comet_ml, "get_running_experiment") and reported("comet_ml"):
        experiment = comet_ml.get_running_experiment()
        if experiment is not None:
            runs["comet_url"] = experiment.url
    return runs


def tracker_urls(runs: Mapping[str, Any], callbacks: Sequence[Any] = ()) -> dict[str, str]:
    """`training_info` entries (`trackio_url`, `wandb_url`, `comet_url`) for the runs [`live_tracker_runs`] saw.

    A Trackio run links its Hub Space when there is one: the run's own, or the static Space that transformers'
    `TrackioCallback` syncs the logs to when the model is pushed (it keeps the id in `_static_space_id`); else the
    local dashboard.
    """
    urls = {key: str(runs[key]) for key in ("wandb_url", "comet_url") if runs.get(key)}
    if runs.get("trackio"):
        project, name, space_id = runs["trackio"]
        for callback in callbacks:
            if type(callback).__name__ == "TrackioCallback":
                space_id = getattr(callback, "_static_space_id", None) or getattr(callback, "_space_id", None) or space_id
        urls["trackio_url"] = trackio_run_url(project, name, space_id)
    return urls
