"""Evaluation metrics of `neat-train` and of the benchmarks: accuracy, Matthews correlation, F1 and Pearson r for
classification/regression, and token accuracy/exact match for causal LMs.

Each classification metric is computed by Hugging Face `evaluate` (`evaluate.load(name)`) when its metric loads.
`evaluate.load` fetches the metric script from the Hub, so without the network (CI, air-gapped clusters) it fails;
then the same formula is computed here with numpy (the `*_score` functions below, which give the same numbers as
`evaluate`'s scikit-learn/scipy implementations, 0.0 where those are undefined). The load is tried once per metric and
process ([`load_evaluate_metric`] is cached), not at every evaluation.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any

import numpy as np
import torch

from neat_hf.cli.train.data import IGNORE_INDEX

logger = logging.getLogger(__name__)


def accuracy_score(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Share of predictions equal to the label (0.0 for no examples)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    return float((labels == predictions).mean()) if labels.size else 0.0


def matthews_correlation_score(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Matthews correlation for binary or multi-class labels (scikit-learn's definition; 0.0 when undefined, e.g. for
    a constant prediction). CoLA's metric."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    classes = np.union1d(labels, predictions)
    confusion = np.zeros((len(classes), len(classes)))
    np.add.at(confusion, (np.searchsorted(classes, labels), np.searchsorted(classes, predictions)), 1)
    t_sum, p_sum = confusion.sum(axis=1), confusion.sum(axis=0)
    n, correct = confusion.sum(), np.trace(confusion)
    denominator = np.sqrt((n**2 - (p_sum**2).sum()) * (n**2 - (t_sum**2).sum()))
    return float((correct * n - (p_sum * t_sum).sum()) / denominator) if denominator else 0.0


def f1_score(labels: Sequence[int], predictions: Sequence[int]) -> float:
    """Binary F1 of the positive class 1 (scikit-learn's default; 0.0 without a true positive)."""
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    tp = int(((labels == 1) & (predictions == 1)).sum())
    fp = int(((labels != 1) & (predictions == 1)).sum())
    fn = int(((labels == 1) & (predictions != 1)).sum())
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def pearson_score(labels: Sequence[float], predictions: Sequence[float]) -> float:
    """Pearson correlation of predictions and labels (0.0 when either is constant, where it is undefined)."""
    labels, predictions = np.asarray(labels, dtype=float), np.asarray(predictions, dtype=float)
    if np.std(predictions) == 0 or np.std(labels) == 0:
        return 0.0
    return float(np.corrcoef(predictions, labels)[0, 1])


#: Metric name → (`evaluate` metric id and result key, numpy implementation).
METRICS: dict[str, tuple[str, Callable[[Sequence[Any], Sequence[Any]], float]]] = {
    "accuracy": ("accuracy", accuracy_score),
    "matthews_correlation": ("matthews_correlation", matthews_correlation_score),
    "f1": ("f1", f1_score),
    "pearson": ("pearsonr", pearson_score),
}


@functools.cache
def load_evaluate_metric(name: str) -> Any | None:
    """`evaluate.load` of metric `name` (a key of `METRICS`): an `evaluate.EvaluationModule`, or None when it does not
    load (offline, no script).

    Cached: the attempt (which may wait on the network) is made once per process, not at every evaluation.
    """
    # Imported here, not at the top: `evaluate` imports transformers.pipelines, seconds that `neat-train --help` and
    # runs without a classification metric should not pay.
    import evaluate

    metric_id = METRICS[name][0]
    try:
        return evaluate.load(metric_id)
    except Exception as error:  # noqa: BLE001 - any failure (offline, missing script, bad cache) means "use numpy"
        logger.info("evaluate.load(%r) is unavailable (%s); computing %s with numpy.", metric_id,
                    type(error).__name__, name)
        return None


def compute_metric(name: str, labels: Sequence[Any], predictions: Sequence[Any], *, use_evaluate: bool = True) -> float:
    """Metric `name` of `predictions` against `labels`: `evaluate`'s when it loads (and `use_evaluate`), else numpy's.

    Raises:
        ValueError: `name` is not a key of `METRICS` (the message lists them).
    """
    if name not in METRICS:
        raise ValueError(f"Unknown metric {name!r}; expected one of {tuple(METRICS)}.")
    metric_id, reference = METRICS[name]
    module = load_evaluate_metric(name) if use_evaluate else None
    if module is None or (name == "pearson" and reference(labels, predictions) == 0.0):
        # Pearson r is undefined for a constant input: scipy gives NaN, we report 0.0 on both paths.
        return reference(labels, predictions)
    return float(module.compute(predictions=list(predictions), references=list(labels))[metric_id])


def metric_backend(name: str, *, use_evaluate: bool = True) -> str:
    """What computes metric `name`: `"evaluate <version>"` or `"numpy"` (recorded next to benchmark numbers)."""
    if use_evaluate and load_evaluate_metric(name) is not None:
        return f"evaluate {metadata.version('evaluate')}"
    return "numpy"


def logits_to_predictions(logits: Any) -> np.ndarray:
    """Class ids (argmax over the last axis) of a classifier's eval logits (the first element of a tuple)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return np.asarray(logits).argmax(axis=-1)


def classification_metrics(eval_pred: Any) -> dict[str, float]:
    """`compute_metrics` for classification: accuracy and Matthews correlation (CoLA's metric); Pearson r for a
    one-output regression head."""
    logits, labels = eval_pred.predictions, np.asarray(eval_pred.label_ids)
    if isinstance(logits, tuple):
        logits = logits[0]
    logits = np.asarray(logits)
    if logits.ndim == 1 or logits.shape[-1] == 1:
        return {"pearson": compute_metric("pearson", labels.astype(float), logits.reshape(-1))}
    predictions = logits.argmax(axis=-1)
    return {"accuracy": compute_metric("accuracy", labels, predictions),
            "matthews_correlation": compute_metric("matthews_correlation", labels, predictions)}


def argmax_logits(logits: Any, labels: Any) -> torch.Tensor:
    """`preprocess_logits_for_metrics` for causal LMs: keeps the argmax token ids instead of the full logits."""
    if isinstance(logits, tuple):
        logits = logits[0]
    return logits.argmax(dim=-1)


def causal_lm_metrics(eval_pred: Any) -> dict[str, float]:
    """Response-token accuracy and exact match under teacher forcing.

    `exact_match` is the share of rows whose every response token is the argmax given the true prefix, which is the
    same as greedy decoding reproducing the whole response.
    """
    predictions, labels = eval_pred.predictions, eval_pred.label_ids
    predictions, labels = np.asarray(predictions)[:, :-1], np.asarray(labels)[:, 1:]
    mask = labels != IGNORE_INDEX
    correct = (predictions == labels) & mask
    rows = mask.any(axis=1)
    exact = (correct.sum(axis=1) == mask.sum(axis=1)) & rows
    return {
        "token_accuracy": float(correct.sum() / max(mask.sum(), 1)),
        "exact_match": float(exact.sum() / max(rows.sum(), 1)),
    }
