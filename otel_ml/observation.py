"""What one model call produced, and the few numbers read off its output.

An :class:`Observation` is built once per outermost model call and feeds everything else: span
attributes (:mod:`otel_ml.telemetry`), metrics, drift and validation (the aggregator), outcome joins
and prediction records.

The *score* of a row is what a dashboard plots: for a binary classifier the probability of the
positive class (``classes_[1]``), for a multiclass classifier the probability of the predicted class,
for a regressor the predicted value. The *confidence* of a classification is the top-class
probability; ``ml.prediction.confidence.min`` is its lowest value in the call.

>>> import numpy as np
>>> p = read_predictions("predict_proba", np.array([[0.9, 0.1], [0.2, 0.8]]), ["good", "bad"])
>>> p.labels.tolist(), p.scores.tolist(), p.confidence_min
(['good', 'bad'], [0.1, 0.8], 0.8)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

PREDICTING_OPERATIONS = frozenset({"predict", "predict_proba", "predict_log_proba", "decision_function",
                                   "fit_predict"})


@dataclass(slots=True)
class Predictions:
    labels: np.ndarray | None  # predicted labels as strings, or None (regression, decision scores)
    scores: np.ndarray | None  # float64 per row, see the module docstring
    confidence_min: float | None


@dataclass(slots=True)
class Observation:
    """One outermost model call."""

    model: Any  # the ModelState of the estimator (otel_ml.telemetry)
    operation: str
    inputs: Any  # X as the caller passed it (not copied)
    output: Any  # the return value; None when the call raised
    duration: float  # seconds
    n_rows: int
    error_type: str | None
    prediction_id: str  # <trace id>-<span id>; row i's id is <prediction_id>-<i>
    validation: Any = None  # ValidationResult when a baseline was checked
    predictions: Predictions | None = None  # filled at most once, by whoever needs it first

    def row_id(self, row: int) -> str:
        """The prediction id of one row: ``<trace id>-<span id>-<row>``."""
        return f"{self.prediction_id}-{row}"

    def prediction_ids(self) -> list[str]:
        return [f"{self.prediction_id}-{i}" for i in range(self.n_rows)]

    def read_predictions(self) -> Predictions | None:
        if self.predictions is None and self.output is not None and self.operation in PREDICTING_OPERATIONS:
            self.predictions = read_predictions(self.operation, self.output, self.model.class_labels,
                                                self.model.is_classifier)
        return self.predictions


def read_predictions(operation: str, output: Any, class_labels: list[str] | None,
                     is_classifier: bool = True) -> Predictions | None:
    """Labels, scores and the lowest confidence from a model method's return value."""
    out = output[0] if isinstance(output, tuple) else output
    arr = np.asarray(out) if not isinstance(out, np.ndarray) else out
    if operation in ("predict_proba", "predict_log_proba"):
        if arr.ndim != 2 or arr.shape[1] == 0 or arr.dtype.kind not in "fc":
            return None
        proba = np.exp(arr) if operation == "predict_log_proba" else arr
        top = proba.argmax(axis=1)
        confidence = proba[np.arange(len(proba)), top]
        scores = proba[:, 1] if proba.shape[1] == 2 else confidence
        labels = None
        if class_labels is not None and len(class_labels) == proba.shape[1]:
            labels = np.asarray(class_labels, dtype=object)[top]
        return Predictions(labels, scores.astype(np.float64, copy=False),
                           float(confidence.min()) if len(confidence) else None)
    if operation == "decision_function":
        if arr.ndim == 1 and arr.dtype.kind in "fiu":
            return Predictions(None, arr.astype(np.float64, copy=False), None)
        return None
    # predict / fit_predict
    if arr.ndim != 1 and not (arr.ndim == 2 and arr.shape[1] == 1):
        return None  # multi-output: not summarised
    arr = arr.reshape(-1)
    if is_classifier or arr.dtype.kind not in "fc":
        return Predictions(arr.astype(str) if arr.dtype.kind != "U" else arr, None, None)
    return Predictions(None, arr.astype(np.float64, copy=False), None)
