"""The experiment-tracker run of a training (Trackio, Weights & Biases, Comet) and its address, which the card shows as a
badge (and, for Trackio, a `trackio:<url>` tag), as TRL's cards do: [`live_tracker_runs`], [`tracker_urls`].

The run is read while it is live (`NeatHubMixin.log`): the Trainer's Trackio callback ends it (`trackio.finish()`)
before the final card is written.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

logger = logging.getLogger(__name__)

#: Where `trackio show` serves its dashboard unless told otherwise (Gradio's default port).
TRACKIO_LOCAL_DASHBOARD = "http://127.0.0.1:7860/"


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
