"""What one model call produced, and the few numbers read off its output.

Each outermost model call is one :class:`Observation` (``otel_ml.telemetry.Call`` extends it with
what the call needs while it runs), and it feeds everything else: span
attributes (:mod:`otel_ml.telemetry`), metrics, drift and validation (:mod:`otel_ml.aggregator`),
outcome joins and prediction records. Whatever is derived from it (the predictions' labels and
scores, the input :class:`~otel_ml.frame.Table`, the prediction id) is computed at most once, by
whoever needs it first, so the request path pays only for what the span shows.

The *score* of a row is what a dashboard plots: for a binary classifier the probability of the
positive class (``classes_[1]``), for a multiclass classifier the probability of the predicted class,
for a regressor the predicted value. The *confidence* of a classification is the top-class
probability; ``ml.prediction.confidence.min`` is its lowest value in the call.

>>> import numpy as np
>>> p = read_predictions("predict_proba", np.array([[0.9, 0.1], [0.2, 0.8]]), ["good", "bad"])
>>> p.labels.tolist(), p.scores.tolist(), p.confidence_min
(['good', 'bad'], [0.1, 0.8], 0.8)
>>> p.label_counts()
(['good', 'bad'], [1, 1])
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np

from otel_ml import frame
from otel_ml.config import TRAINING_METHODS

PROBABILITY_OPERATIONS = ("predict_proba", "predict_log_proba")
PREDICTING_OPERATIONS = frozenset({"predict", "predict_proba", "predict_log_proba", "decision_function",
                                   "fit_predict"})
TRAINING_OPERATIONS = frozenset(TRAINING_METHODS)


class Predictions:
    """Labels, scores and lowest confidence of one call's output rows."""

    __slots__ = ("scores", "confidence_min", "_top", "_classes", "_labels")

    def __init__(self, scores: np.ndarray | None, confidence_min: float | None, top: np.ndarray | None = None,
                 classes: list[str] | None = None, labels: np.ndarray | None = None) -> None:
        self.scores = scores  # float64 per row, see the module docstring
        self.confidence_min = confidence_min
        self._top, self._classes, self._labels = top, classes, labels

    @property
    def labels(self) -> np.ndarray | None:
        """Predicted label per row as strings (None for regression and decision values)."""
        if self._labels is None and self._top is not None and self._classes is not None:
            self._labels = np.asarray(self._classes, dtype=object)[self._top]
        return self._labels

    def first_label(self) -> str | None:
        if self._top is not None and self._classes is not None:
            return self._classes[int(self._top[0])]
        labels = self._labels
        return str(labels[0]) if labels is not None and len(labels) else None

    def label_counts(self) -> tuple[list[str], list[int]]:
        """(labels, counts) over the rows, without sorting strings when class indices are known."""
        if self._top is not None and self._classes is not None:
            if len(self._classes) == 2:  # binary: counting the positives beats a bincount
                positives = int(np.count_nonzero(self._top))
                counts = [len(self._top) - positives, positives]
            else:
                counts = np.bincount(self._top, minlength=len(self._classes)).tolist()
            return [c for c, n in zip(self._classes, counts) if n], [n for n in counts if n]
        labels = self._labels
        if labels is None or not len(labels):
            return [], []
        names, counts = np.unique(labels.astype(str), return_counts=True)
        return names.tolist(), counts.tolist()


class Observation:
    """One outermost model call, made by ``otel_ml.telemetry.Call`` (which sets the first five fields).
    What most calls leave as it is has a class-level default: a call on the request path sets only what
    it has."""

    model: Any  # the ModelState of the estimator (otel_ml.model_state)
    operation: str
    inputs: Any  # X as the caller passed it (a copy of a small numpy array: see telemetry)
    n_rows: int
    _table_max_rows: int | None  # inputs read as a table: an evenly spaced sample of larger batches
    output: Any = None  # the return value; None when the call raised
    elapsed_ns = 0  # how long the call took
    end_ns = 0  # when it ended, in ns since the epoch
    error_type: str | None = None
    validation: Any = None  # ValidationResult when a baseline was checked (see validate())
    _validated = False
    _trace_id = 0  # of the call's span, or of the unsampled trace it ran in (0: none)
    _span_id = 0  # of the call's span (0: the call has no span)
    _prediction_id: str | None = None
    _predictions: Predictions | None = None
    _table: frame.Table | None = None
    span_summary: dict | None = None  # the predictions' span attributes, once read (model and server span)

    @property
    def duration(self) -> float:
        """Seconds the call took."""
        return self.elapsed_ns / 1e9

    @property
    def prediction_id(self) -> str:
        """``<trace id>-<span id>`` of the call's span; row ``i``'s prediction id is ``<prediction_id>-<i>``.

        A call without a span of its own (its trace was not sampled) gets its trace's id and a random
        64-bit part in the span id's place; without any trace (no SDK), random 128 and 64 bits."""
        if self._prediction_id is None:
            if self._span_id:
                self._prediction_id = f"{self._trace_id:032x}-{self._span_id:016x}"
            else:
                trace_id = self._trace_id or random.getrandbits(128)
                self._prediction_id = f"{trace_id:032x}-{random.getrandbits(64):016x}"
        return self._prediction_id

    def row_id(self, row: int) -> str:
        """The prediction id of one row: ``<trace id>-<span id>-<row>``."""
        return f"{self.prediction_id}-{row}"

    def prediction_ids(self) -> list[str]:
        prefix = self.prediction_id
        return [f"{prefix}-{i}" for i in range(self.n_rows)]

    def read_predictions(self) -> Predictions | None:
        if self._predictions is None and self.output is not None and self.operation in PREDICTING_OPERATIONS:
            self._predictions = read_predictions(self.operation, self.output, self.model.class_labels,
                                                 self.model.is_classifier)
        return self._predictions

    def validate(self) -> Any:
        """The inputs checked against the model's baseline, once: a
        :class:`~otel_ml.validation.ValidationResult`, or None (no baseline, no inputs, a training call, or
        a strict check that raised :class:`~otel_ml.validation.InputValidationError`, which is not repeated).
        In strict mode telemetry checks before the model runs (the call fails then); otherwise the aggregator
        thread checks when it reads the inputs for missing values and drift bins."""
        if not self._validated:
            self._validated = True
            validator = self.model.validator
            if validator is not None and self.inputs is not None and self.operation not in TRAINING_OPERATIONS:
                table = self.table()
                if table is not None:
                    self.validation = validator.check(table)
        return self.validation

    def table(self) -> frame.Table | None:
        """The inputs as a Table (an evenly spaced sample of rows for very large batches), built once."""
        if self._table is None and self.inputs is not None:
            self._table = frame.as_table(self.inputs, frame.feature_names_of(self.inputs) or self.model.feature_names,
                                         max_rows=self._table_max_rows)
        return self._table


def read_predictions(operation: str, output: Any, class_labels: list[str] | None,
                     is_classifier: bool = True) -> Predictions | None:
    """Labels, scores and the lowest confidence from a model method's return value."""
    out = output[0] if isinstance(output, tuple) else output
    arr = out if isinstance(out, np.ndarray) else np.asarray(out)
    if operation in PROBABILITY_OPERATIONS:
        if arr.ndim != 2 or arr.shape[1] == 0 or arr.dtype.kind not in "fc":
            return None
        proba = np.exp(arr) if operation == "predict_log_proba" else arr
        if proba.shape[1] == 2:  # row-wise argmax over two columns is slow in numpy: compare instead
            scores = proba[:, 1]
            top = (scores > proba[:, 0]).view(np.int8)  # 0 or 1: an index array without a copy
            confidence = np.maximum(proba[:, 0], scores)
        else:
            top = proba.argmax(axis=1)
            confidence = proba.max(axis=1)
            scores = confidence
        classes = class_labels if class_labels is not None and len(class_labels) == proba.shape[1] else None
        return Predictions(scores.astype(np.float64, copy=False),
                           float(confidence.min()) if len(confidence) else None, top=top, classes=classes)
    if operation == "decision_function":
        if arr.ndim == 1 and arr.dtype.kind in "fiu":
            return Predictions(arr.astype(np.float64, copy=False), None)
        return None
    # predict / fit_predict
    if arr.ndim != 1 and not (arr.ndim == 2 and arr.shape[1] == 1):
        return None  # multi-output: not summarised
    arr = arr.reshape(-1)
    if is_classifier or arr.dtype.kind not in "fc":
        return Predictions(None, None, labels=arr)
    return Predictions(arr.astype(np.float64, copy=False), None)


def first_prediction(operation: str, output: Any, class_labels: list[str] | None,
                     is_classifier: bool = True) -> tuple[str | None, float | None, float | None] | None:
    """(label, score, confidence) of the first output row by the rules of :func:`read_predictions`, read
    with plain Python where that is safe (probabilities without NaN): one ``tolist`` where the numpy route
    makes a handful of arrays. None when ``read_predictions`` returns None.

    >>> first_prediction("predict_proba", np.array([[0.9, 0.1]]), ["good", "bad"])
    ('good', 0.1, 0.9)
    >>> first_prediction("predict", np.array([2.5]), None, is_classifier=False)
    (None, 2.5, None)
    """
    out = output[0] if type(output) is tuple else output
    if (operation in PROBABILITY_OPERATIONS and type(out) is np.ndarray and out.ndim == 2 and len(out)
            and out.dtype.kind == "f"):
        row = out.tolist()[0] if len(out) == 1 else out[0].tolist()
        if row:
            if operation == "predict_log_proba":
                row = [math.exp(v) for v in row]
            top = -1
            if len(row) == 2:  # binary: the positive class's probability
                p0, p1 = row
                if p0 == p0 and p1 == p1:  # NaN: the numpy route below
                    top, score, confidence = (1, p1, p1) if p1 > p0 else (0, p1, p0)
            else:
                total = sum(row)
                if total == total:
                    confidence = score = max(row)
                    top = row.index(confidence)
            if top >= 0:
                label = class_labels[top] if class_labels is not None and len(class_labels) == len(row) else None
                return label, score, confidence
    predictions = read_predictions(operation, output, class_labels, is_classifier)
    if predictions is None:
        return None
    scores = predictions.scores
    return (predictions.first_label(), float(scores[0]) if scores is not None and len(scores) else None,
            predictions.confidence_min)
