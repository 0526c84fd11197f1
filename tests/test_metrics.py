"""`neat_hf.cli.train.metrics`: the numpy fallback gives scikit-learn's/scipy's numbers, and `evaluate` is used when its
metric loads (monkeypatched here: `evaluate.load` needs the network, which tests never use)."""

from __future__ import annotations

import evaluate
import numpy as np
import pytest

from neat_hf.cli.train import metrics


@pytest.fixture(autouse=True)
def fresh_load_cache():
    metrics.load_evaluate_metric.cache_clear()
    yield
    metrics.load_evaluate_metric.cache_clear()


@pytest.fixture
def offline(monkeypatch):
    """`evaluate.load` fails as it does without the network; counts the attempts."""
    calls = []

    def fail(name, *args, **kwargs):
        calls.append(name)
        raise FileNotFoundError(f"Couldn't find a module script for {name!r} (offline)")

    monkeypatch.setattr(evaluate, "load", fail)
    return calls


class Prediction:
    def __init__(self, predictions, label_ids):
        self.predictions, self.label_ids = predictions, label_ids


LABELS = [1, 1, 1, 1, 0, 0, 0, 1, 0, 1]
PREDS = [1, 1, 0, 1, 0, 1, 0, 1, 0, 0]


def test_fallback_gives_known_values(offline):
    # tp=4, tn=3, fp=1, fn=2: MCC = (4·3 − 1·2) / sqrt(5·5·6·4) = 10 / sqrt(600); F1 = 2·4 / (2·4 + 1 + 2)
    assert metrics.compute_metric("matthews_correlation", LABELS, PREDS) == pytest.approx(10 / 600**0.5)
    assert metrics.compute_metric("accuracy", LABELS, PREDS) == pytest.approx(0.7)
    assert metrics.compute_metric("f1", LABELS, PREDS) == pytest.approx(8 / 11)
    assert metrics.compute_metric("pearson", [1.0, 2.0, 3.0], [2.0, 4.0, 7.0]) == pytest.approx(0.9933992677987828)
    # Undefined cases are 0.0, as in scikit-learn (MCC, F1); scipy would give NaN for Pearson.
    assert metrics.compute_metric("matthews_correlation", [0, 1, 0, 1], [0, 0, 0, 0]) == 0.0
    assert metrics.compute_metric("f1", [0, 0, 1], [0, 0, 0]) == 0.0
    assert metrics.compute_metric("pearson", [1.0, 2.0, 3.0], [5.0, 5.0, 5.0]) == 0.0
    assert metrics.metric_backend("accuracy") == "numpy"


def test_fallback_matches_sklearn_and_scipy(offline):
    sk = pytest.importorskip("sklearn.metrics")
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for num_classes in (2, 3, 5):
        labels = rng.integers(0, num_classes, 200)
        preds = np.where(rng.random(200) < 0.6, labels, rng.integers(0, num_classes, 200))
        assert metrics.compute_metric("accuracy", labels, preds) == pytest.approx(sk.accuracy_score(labels, preds))
        assert metrics.compute_metric("matthews_correlation", labels, preds) == pytest.approx(
            sk.matthews_corrcoef(labels, preds))
    labels, preds = rng.integers(0, 2, 100), rng.integers(0, 2, 100)
    assert metrics.compute_metric("f1", labels, preds) == pytest.approx(sk.f1_score(labels, preds))
    x, y = rng.normal(size=50), rng.normal(size=50)
    assert metrics.compute_metric("pearson", x, y) == pytest.approx(stats.pearsonr(y, x)[0])


def test_failed_load_is_tried_once_per_metric(offline):
    for _ in range(3):
        metrics.classification_metrics(Prediction(np.eye(2)[PREDS], np.array(LABELS)))
    assert sorted(offline) == ["accuracy", "matthews_correlation"]


def test_evaluate_is_used_when_its_metric_loads(monkeypatch):
    loaded = []

    class FakeModule:
        def __init__(self, name):
            self.name = name

        def compute(self, predictions, references):
            assert list(predictions) == PREDS and list(references) == LABELS
            return {self.name: 0.125}  # not what numpy computes: proves this path was taken

    def load(name, *args, **kwargs):
        loaded.append(name)
        return FakeModule(name)

    monkeypatch.setattr(evaluate, "load", load)
    assert metrics.compute_metric("matthews_correlation", LABELS, PREDS) == 0.125
    assert metrics.compute_metric("matthews_correlation", LABELS, PREDS) == 0.125
    assert metrics.compute_metric("accuracy", LABELS, PREDS, use_evaluate=False) == pytest.approx(0.7)
    assert loaded == ["matthews_correlation"]  # cached; never loaded when use_evaluate=False
    assert metrics.metric_backend("matthews_correlation") == f"evaluate {evaluate.__version__}"
    assert metrics.metric_backend("matthews_correlation", use_evaluate=False) == "numpy"


def test_unknown_metric_lists_the_known_ones():
    with pytest.raises(ValueError, match="expected one of .*matthews_correlation"):
        metrics.compute_metric("auc", LABELS, PREDS)


def test_classification_metrics_on_logits_and_regression(offline):
    logits = np.eye(2)[PREDS] * 3.0
    result = metrics.classification_metrics(Prediction((logits, None), np.array(LABELS)))
    assert result == {"accuracy": pytest.approx(0.7), "matthews_correlation": pytest.approx(10 / 600**0.5)}
    regression = metrics.classification_metrics(Prediction(np.array([[2.0], [4.0], [7.0]]), np.array([1.0, 2.0, 3.0])))
    assert regression == {"pearson": pytest.approx(0.9933992677987828)}
