"""Model performance from joined (prediction, outcome) pairs, and its confidence-based estimate before labels.

Realised metrics are plain numpy re-implementations of scikit-learn's, so that the processor does not need
scikit-learn; ``tests/processor/test_performance.py`` checks them against ``sklearn.metrics`` on the same
pairs:

==================  =====================================================================================
classification      ``accuracy``, ``precision``, ``recall``, ``f1`` (binary: positive class = the larger
                    class, as scikit-learn's ``classes_[1]``; multiclass: ``performance.average``, macro by
                    default, over the labels present in truth or prediction), ``roc_auc`` (binary; multiclass
                    one-vs-rest from per-class scores), ``log_loss``, ``brier`` (natural log; probabilities
                    clipped to [eps, 1 - eps]; Brier halved for binary as scikit-learn's default)
regression          ``mae``, ``rmse``, ``r2`` (1.0 for a perfect fit of a constant, 0.0 otherwise, as
                    scikit-learn's ``force_finite``)
==================  =====================================================================================

A metric that is undefined on a window (ROC AUC with one class in the truth, scores missing) is left out.

Estimated metrics follow NannyML's CBPE (confidence-based performance estimation): with calibrated
probabilities ``p`` of the positive class, each prediction contributes its *expected* confusion-matrix
cell: a predicted positive is a true positive with probability ``p`` and a false positive with ``1 - p``;
a predicted negative a false negative with ``p`` and a true negative with ``1 - p``. Accuracy, precision,
recall and F1 follow from the expected counts; ROC AUC from the expected ROC curve (true positive rate
``cumsum(p) / sum(p)``, false positive rate ``cumsum(1 - p) / sum(1 - p)`` over descending scores).
Multiclass: the expected accuracy is the mean probability of the predicted class, and each class's cells
are estimated one-vs-rest. Scores are taken as calibrated, or mapped through the baseline's calibration
table when one is configured (:class:`Calibration`).

>>> import numpy as np
>>> m = classification([0, 1, 1, 0], [0, 1, 0, 0], np.array([[.8, .2], [.3, .7], [.6, .4], [.9, .1]]), [0, 1])
>>> m["accuracy"], round(m["roc_auc"], 3), round(m["f1"], 3)
(0.75, 1.0, 0.667)
>>> e = estimate([0, 1, 0, 0], np.array([[.8, .2], [.3, .7], [.6, .4], [.9, .1]]), [0, 1])
>>> round(e["accuracy"], 3)
0.75
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

CLASSIFICATION_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "brier")
REGRESSION_METRICS = ("mae", "rmse", "r2")
ESTIMATED_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?")
_BOOLS = {"True": 1, "False": 0, "true": 1, "false": 0}


def canonical(value: Any) -> Any:
    """One spelling per value, whatever the emitter's types: labels travel as strings (``str(label)``),
    actuals as given. Booleans become 0/1, integral numbers int, numeric strings numbers.

    >>> canonical(True), canonical("True"), canonical(2.0), canonical("3"), canonical("2.5"), canonical("yes")
    (1, 1, 2, 3, 2.5, 'yes')
    """
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, str):
        text = value.strip()
        if text in _BOOLS:
            return _BOOLS[text]
        if _INT.fullmatch(text):
            return int(text)
        if _FLOAT.fullmatch(text):
            number = float(text)
            return int(number) if number.is_integer() else number
    return value


def class_order(values: Any) -> list:
    """Classes sorted as ``np.unique`` sorts them (scikit-learn's ``classes_``): numbers, then strings."""
    return sorted(set(values), key=lambda v: (0, v, "") if isinstance(v, (int, float)) else (1, 0, str(v)))


# ----------------------------------------------------------------------------------------------------
# realised
# ----------------------------------------------------------------------------------------------------
def _index(values: Sequence, classes: list) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    return np.fromiter((lookup.get(v, -1) for v in values), dtype=np.int64, count=len(values))


def _prf(t: np.ndarray, p: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    tp = np.array([np.sum((t == c) & (p == c)) for c in labels], dtype=np.float64)
    fp = np.array([np.sum((t != c) & (p == c)) for c in labels], dtype=np.float64)
    fn = np.array([np.sum((t == c) & (p != c)) for c in labels], dtype=np.float64)
    return tp, fp, fn, tp + fn


def _ratios(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1e-300), 0.0)
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1e-300), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1e-300), 0.0)
    return precision, recall, f1


def binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula, ties counted half: equal to the trapezoidal AUC."""
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def classification(y_true: Sequence, y_pred: Sequence, proba: np.ndarray | None, classes: list,
                   average: str = "macro") -> dict[str, float]:
    """Realised classification metrics. ``proba`` is (n, len(classes)) in ``classes`` order, or None."""
    n = len(y_true)
    if n == 0:
        return {}
    t = _index(y_true, classes)
    p = _index(y_pred, classes)
    out = {"accuracy": float(np.mean(np.asarray(y_true, dtype=object) == np.asarray(y_pred, dtype=object)))}
    if len(classes) < 2:
        return out
    binary = len(classes) == 2
    if binary:
        pos = len(classes) - 1
        tp, fp, fn, _ = _prf(t, p, np.array([pos]))
        precision, recall, f1 = _ratios(tp, fp, fn)
        out.update(precision=float(precision[0]), recall=float(recall[0]), f1=float(f1[0]))
    else:
        labels = np.unique(np.concatenate([t[t >= 0], p[p >= 0]]))
        tp, fp, fn, support = _prf(t, p, labels)
        precision, recall, f1 = _ratios(tp, fp, fn)
        weights = support / support.sum() if average == "weighted" and support.sum() else None
        for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
            out[name] = float(np.average(values, weights=weights)) if values.size else 0.0
    if proba is None or proba.shape != (n, len(classes)) or (t < 0).any():
        return out
    onehot = np.zeros_like(proba)
    onehot[np.arange(n), t] = 1.0
    eps = np.finfo(np.float64).eps
    clipped = np.clip(proba, eps, 1 - eps)
    out["log_loss"] = float(np.mean(-np.sum(onehot * np.log(clipped), axis=1)))
    brier = float(np.mean(np.sum((onehot - proba) ** 2, axis=1)))
    out["brier"] = brier * 0.5 if binary else brier
    if binary:
        auc = binary_auc(t == 1, proba[:, 1])
    else:
        per_class = np.array([binary_auc(t == k, proba[:, k]) for k in range(len(classes))])
        if np.isnan(per_class).any():
            auc = float("nan")
        elif average == "weighted":
            support = np.bincount(t, minlength=len(classes)).astype(float)
            auc = float(np.average(per_class, weights=support))
        else:
            auc = float(per_class.mean())
    if math.isfinite(auc):
        out["roc_auc"] = auc
    return out


def regression(y_true: Sequence[float], y_pred: Sequence[float]) -> dict[str, float]:
    t = np.asarray(y_true, dtype=np.float64)
    p = np.asarray(y_pred, dtype=np.float64)
    if t.size == 0:
        return {}
    err = t - p
    ss_res = float(np.sum(err**2))
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    if ss_tot != 0:
        r2 = 1.0 - ss_res / ss_tot
    else:
        r2 = 1.0 if ss_res == 0 else 0.0
    return {"mae": float(np.mean(np.abs(err))), "rmse": float(np.sqrt(np.mean(err**2))), "r2": r2}


# ----------------------------------------------------------------------------------------------------
# estimated (CBPE)
# ----------------------------------------------------------------------------------------------------
def expected_auc(p: np.ndarray, score: np.ndarray) -> float:
    """AUC of the expected ROC curve: each row is a positive with probability ``p`` (calibrated)."""
    order = np.argsort(-score, kind="stable")
    p, s = p[order], score[order]
    # group ties: the curve moves diagonally through rows with equal scores
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]
    tps = np.cumsum(p)[last]
    fps = np.cumsum(1 - p)[last]
    if tps[-1] <= 0 or fps[-1] <= 0:
        return float("nan")
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def estimate(y_pred: Sequence, proba: np.ndarray, classes: list, average: str = "macro") -> dict[str, float]:
    """CBPE-style expected metrics from predicted labels and (calibrated) per-class probabilities."""
    n = len(y_pred)
    if n == 0 or proba is None or proba.shape != (n, len(classes)) or len(classes) < 2:
        return {}
    p = _index(y_pred, classes)
    if (p < 0).any():
        return {}
    rows = np.arange(n)
    out = {"accuracy": float(np.mean(proba[rows, p]))}
    if len(classes) == 2:
        pos = proba[:, 1]
        predicted_pos = p == 1
        tp = float(pos[predicted_pos].sum())
        fp = float((1 - pos[predicted_pos]).sum())
        fn = float(pos[~predicted_pos].sum())
        precision, recall, f1 = _ratios(np.array([tp]), np.array([fp]), np.array([fn]))
        out.update(precision=float(precision[0]), recall=float(recall[0]), f1=float(f1[0]))
        auc = expected_auc(pos, pos)
    else:
        labels = np.unique(p)
        tp = np.array([proba[p == k, k].sum() for k in labels])
        fp = np.array([(1 - proba[p == k, k]).sum() for k in labels])
        fn = np.array([proba[p != k, k].sum() for k in labels])
        precision, recall, f1 = _ratios(tp, fp, fn)
        support = tp + fn
        weights = support / support.sum() if average == "weighted" and support.sum() > 0 else None
        out.update(precision=float(np.average(precision, weights=weights)),
                   recall=float(np.average(recall, weights=weights)),
                   f1=float(np.average(f1, weights=weights)))
        aucs = np.array([expected_auc(proba[:, k], proba[:, k]) for k in range(len(classes))])
        auc = float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")
    if math.isfinite(auc):
        out["roc_auc"] = auc
    return out


class Calibration:
    """A baseline's calibration table: per score bin, the observed positive rate (binary) or accuracy
    (top-class confidence). ``apply`` maps scores to calibrated probabilities; bins without labelled
    reference rows keep the score as it is.

    >>> c = Calibration([0.5], rows=[10, 10], hits=[2, 9], kind="binary")
    >>> c.apply(np.array([0.3, 0.7])).tolist()
    [0.2, 0.9]
    """

    def __init__(self, edges: Sequence[float], rows: Sequence[int], hits: Sequence[float], kind: str) -> None:
        self.edges = np.asarray(edges, dtype=np.float64)
        rows_a = np.asarray(rows, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.rate = np.where(rows_a > 0, np.asarray(hits, dtype=np.float64) / np.maximum(rows_a, 1), np.nan)
        self.kind = kind

    def apply(self, scores: np.ndarray) -> np.ndarray:
        idx = np.searchsorted(self.edges, scores, side="left")
        rate = self.rate[np.clip(idx, 0, self.rate.size - 1)]
        return np.where(np.isnan(rate), scores, rate)

    @classmethod
    def from_baseline_file(cls, path: str | Path) -> Calibration | None:
        """The calibration of an otel-ml baseline JSON (``calibration`` and ``prediction.score_edges``)."""
        doc = json.loads(Path(path).read_text())
        cal = doc.get("calibration") or (doc.get("body") or {}).get("calibration")
        prediction = doc.get("prediction") or (doc.get("body") or {}).get("prediction") or {}
        edges = prediction.get("score_edges")
        if not cal or edges is None:
            return None
        return cls(edges, cal["rows"], cal["hits"], cal.get("kind", "binary"))

    def calibrate(self, proba: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """Calibrated per-class probabilities: binary tables remap the positive column; confidence tables
        remap the predicted class's probability and spread the rest in proportion."""
        out = proba.copy()
        if self.kind == "binary" and proba.shape[1] == 2:
            out[:, 1] = self.apply(proba[:, 1])
            out[:, 0] = 1 - out[:, 1]
            return out
        rows = np.arange(proba.shape[0])
        top = proba[rows, predicted]
        new_top = self.apply(top)
        rest = 1 - top
        scale = np.divide(1 - new_top, rest, out=np.zeros_like(rest), where=rest > 0)
        out *= scale[:, None]
        out[rows, predicted] = new_top
        return out
