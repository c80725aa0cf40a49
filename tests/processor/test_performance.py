"""Realised performance equals sklearn.metrics on the same pairs; the CBPE estimate tracks it when calibrated."""

from __future__ import annotations

import time

import numpy as np
import pytest
from sklearn import metrics as skm

from otel_ml import semconv
from otel_ml.processor import performance as perf
from otel_ml.processor import testing as t

from .conftest import exported


def sklearn_classification(y_true, y_pred, proba, classes, average="macro") -> dict[str, float]:
    binary = len(classes) == 2
    kw = {"pos_label": classes[1]} if binary else {"average": average}
    out = {"accuracy": skm.accuracy_score(y_true, y_pred),
           "precision": skm.precision_score(y_true, y_pred, zero_division=0, **kw),
           "recall": skm.recall_score(y_true, y_pred, zero_division=0, **kw),
           "f1": skm.f1_score(y_true, y_pred, zero_division=0, **kw),
           "log_loss": skm.log_loss(y_true, y_proba=proba, labels=classes)}
    if binary:
        out["roc_auc"] = skm.roc_auc_score(np.asarray(y_true) == classes[1], proba[:, 1])
        out["brier"] = skm.brier_score_loss(y_true, y_proba=proba[:, 1], pos_label=classes[1])
    else:
        out["roc_auc"] = skm.roc_auc_score(y_true, proba, multi_class="ovr", average=average, labels=classes)
        out["brier"] = skm.brier_score_loss(y_true, y_proba=proba, labels=classes)
    return out


def random_classification(rng, n, k):
    logits = rng.normal(0, 1.5, (n, k))
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    proba = np.round(proba, 3)  # ties in the scores, as real models have
    proba[:, -1] = 1 - proba[:, :-1].sum(axis=1)
    y_pred = proba.argmax(axis=1)
    y_true = np.array([rng.choice(k, p=np.clip(p, 0, 1) / np.clip(p, 0, 1).sum()) for p in proba])
    return y_true, y_pred, proba


@pytest.mark.parametrize("k,average", [(2, "macro"), (3, "macro"), (4, "weighted")])
def test_classification_equals_sklearn(k, average):
    rng = np.random.default_rng(k)
    y_true, y_pred, proba = random_classification(rng, 700, k)
    classes = list(range(k))
    ours = perf.classification(list(y_true), list(y_pred), proba, classes, average)
    theirs = sklearn_classification(y_true, y_pred, proba, classes, average)
    assert set(ours) == set(theirs)
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, rel=1e-9, abs=1e-12), name


def test_string_labels_and_degenerate_windows():
    y_true = ["no", "yes", "yes", "no", "yes"]
    y_pred = ["no", "yes", "no", "no", "no"]
    proba = np.array([[.9, .1], [.2, .8], [.6, .4], [.7, .3], [.55, .45]])
    ours = perf.classification(y_true, y_pred, proba, ["no", "yes"])
    theirs = sklearn_classification(y_true, y_pred, proba, ["no", "yes"])
    for name, value in theirs.items():
        assert ours[name] == pytest.approx(value, rel=1e-9), name
    one_class = perf.classification(["yes", "yes"], ["yes", "no"], proba[:2], ["no", "yes"])
    assert "roc_auc" not in one_class and one_class["accuracy"] == 0.5
    assert set(perf.classification(["a"], ["b"], None, ["a", "b"])) == {"accuracy", "precision", "recall", "f1"}


def test_regression_equals_sklearn():
    rng = np.random.default_rng(7)
    y_true = rng.normal(10, 3, 500)
    y_pred = y_true + rng.normal(0, 1, 500)
    ours = perf.regression(y_true, y_pred)
    assert ours["mae"] == pytest.approx(skm.mean_absolute_error(y_true, y_pred), rel=1e-12)
    assert ours["rmse"] == pytest.approx(skm.root_mean_squared_error(y_true, y_pred), rel=1e-12)
    assert ours["r2"] == pytest.approx(skm.r2_score(y_true, y_pred), rel=1e-12)
    assert perf.regression([2.0, 2.0], [2.0, 2.0])["r2"] == skm.r2_score([2.0, 2.0], [2.0, 2.0])


@pytest.mark.parametrize("k", [2, 3])
def test_estimate_tracks_realised_on_calibrated_scores(k):
    rng = np.random.default_rng(11 + k)
    n = 20_000
    logits = rng.normal(0, 1.2, (n, k))
    proba = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y_true = (rng.random(n)[:, None] > np.cumsum(proba, axis=1)).sum(axis=1)  # drawn from the probabilities
    y_pred = proba.argmax(axis=1)
    est = perf.estimate(list(y_pred), proba, list(range(k)))
    real = perf.classification(list(y_true), list(y_pred), proba, list(range(k)))
    for name in perf.ESTIMATED_METRICS:
        assert est[name] == pytest.approx(real[name], abs=0.02), name


def test_calibration_table_corrects_overconfident_scores():
    rng = np.random.default_rng(5)
    n = 20_000
    true_p = rng.uniform(0, 1, n)
    y_true = (rng.random(n) < true_p).astype(int)
    reported = np.clip(0.5 + (true_p - 0.5) * 1.6, 0.001, 0.999)  # overconfident scores
    edges = list(semconv.SCORE_BUCKETS)
    idx = np.searchsorted(edges, reported, side="left")
    cal = perf.Calibration(edges, np.bincount(idx, minlength=20), np.bincount(idx, weights=y_true, minlength=20),
                           "binary")
    proba = np.column_stack([1 - reported, reported])
    y_pred = (reported > 0.5).astype(int)
    real = perf.classification(list(y_true), list(y_pred), proba, [0, 1])["accuracy"]
    naive = perf.estimate(list(y_pred), proba, [0, 1])["accuracy"]
    calibrated = perf.estimate(list(y_pred), cal.calibrate(proba, y_pred), [0, 1])["accuracy"]
    assert abs(calibrated - real) < 0.01 < abs(naive - real)


def test_processor_performance_equals_sklearn_per_window(make_processor):
    """Records through the processor: realised metrics per window equal sklearn on the joined pairs of the
    window; predictions without outcomes count in the estimate and in the coverage only."""
    now = time.time()
    processor, reader = make_processor(performance_windows=(3600.0, 86400.0), clock=lambda: now)
    rng = np.random.default_rng(1)
    n = 600
    y_true, y_pred, proba = random_classification(rng, n, 3)
    classes = ["bronze", "gold", "silver"]
    ages = np.where(np.arange(n) < 200, 7200.0, 60.0)  # 200 predictions 2 h old, 400 one minute old
    ids = [t.prediction_id() for _ in range(n)]
    preds = [t.prediction(ids[i], "tier", "2", label=classes[y_pred[i]], scores=list(proba[i]),
                          time_ns=int((now - ages[i]) * 1e9)) for i in range(n)]
    labelled = rng.random(n) < 0.7
    outs = [t.outcome(ids[i], "tier", "2", actual=classes[y_true[i]]) for i in range(n) if labelled[i]]
    res = {"service.name": "tier-api", "service.instance.id": "r1"}
    for i in range(0, n, 150):
        processor.ingest("logs", t.records_request(res, preds[i:i + 150]))
    processor.ingest("logs", t.records_request({**res, "service.instance.id": "r2"}, outs))
    snap = processor.compute()
    for window, in_window in ((3600.0, ages < 3600), (86400.0, ages < 86400)):
        m = in_window & labelled
        expected = sklearn_classification([classes[i] for i in y_true[m]], [classes[i] for i in y_pred[m]],
                                          proba[m], classes)
        for name, value in expected.items():
            assert snap.performance[("tier", "2", name, window)] == pytest.approx(value, rel=1e-9), (name, window)
        assert snap.predictions[("tier", "2", window)] == in_window.sum()
        assert snap.coverage[("tier", "2", window)] == pytest.approx(m.sum() / in_window.sum())
        est = perf.estimate([classes[i] for i in y_pred[in_window]], proba[in_window], classes)
        assert snap.estimated[("tier", "2", "accuracy", window)] == pytest.approx(est["accuracy"])
    points = exported(reader, semconv.FLEET_PERFORMANCE)
    f1 = [p.value for a, p in points if a[semconv.METRIC_NAME] == "f1" and a[semconv.WINDOW] == "1h"]
    assert f1 == [pytest.approx(snap.performance[("tier", "2", "f1", 3600.0)])]
    assert exported(reader, semconv.FLEET_PERFORMANCE_ESTIMATED)


def test_binary_string_labels_from_the_emitter_and_regression(make_processor):
    """The emitter sends labels as strings ("1") and actuals as given (1); a regressor's records carry the
    value in ml.prediction.score and no label."""
    processor, _ = make_processor()
    rng = np.random.default_rng(2)
    res = {"service.name": "api", "service.instance.id": "x"}
    p1 = rng.uniform(0, 1, 300)
    y_pred = (p1 > 0.5).astype(int)
    y_true = (rng.random(300) < p1).astype(int)
    ids = [t.prediction_id() for _ in range(300)]
    processor.ingest("logs", t.records_request(res, [
        t.prediction(ids[i], "churn", "1", label=str(y_pred[i]), score=float(p1[i]),
                     scores=[1 - float(p1[i]), float(p1[i])]) for i in range(300)]))
    processor.ingest("logs", t.records_request(res, [t.outcome(ids[i], "churn", "1", int(y_true[i]))
                                                     for i in range(300)]))
    values = rng.normal(50, 10, 200)
    truth = values + rng.normal(0, 2, 200)
    rids = [t.prediction_id() for _ in range(200)]
    processor.ingest("logs", t.records_request(res, [t.prediction(rids[i], "price", "1", score=float(values[i]))
                                                     for i in range(200)]))
    processor.ingest("logs", t.records_request(res, [t.outcome(rids[i], "price", "1", float(truth[i]))
                                                     for i in range(200)]))
    snap = processor.compute()
    w = 86400.0
    assert snap.performance[("churn", "1", "roc_auc", w)] == pytest.approx(skm.roc_auc_score(y_true, p1))
    assert snap.performance[("churn", "1", "f1", w)] == pytest.approx(skm.f1_score(y_true, y_pred))
    assert snap.performance[("price", "1", "rmse", w)] == pytest.approx(skm.root_mean_squared_error(truth, values))
    assert snap.performance[("price", "1", "r2", w)] == pytest.approx(skm.r2_score(truth, values))
    assert ("price", "1", "accuracy", w) not in snap.performance
