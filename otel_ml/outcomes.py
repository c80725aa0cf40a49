"""Outcomes (the ground truth, known later) joined with recent predictions: performance metrics and records.

Usage: return the prediction id with the prediction (the Flask integration does it for you, in the
``X-Prediction-Id`` header), and when the truth is known::

    import otel_ml
    otel_ml.record_outcome("4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0", actual=1)

Each call does three things:

1. emits an **outcome log record** (``otel_ml.records``): prediction id, actual value, model identity and
   trace link, so a central processor can join outcomes that reach another replica than the one that
   predicted (the shape is in ``docs/outcomes.md``);
2. looks the prediction up among the **recent predictions of this process**, kept in bounded memory:
   at most ``OTEL_ML_OUTCOME_MAX_PENDING`` rows (default 100,000) no older than
   ``OTEL_ML_OUTCOME_MAX_AGE_SECONDS`` (default one day); the oldest go first. Each outcome is counted in
   ``ml.outcome.count`` with ``ml.outcome.joined`` true or false (false: unknown id, another replica's,
   evicted, too old, or a second outcome for the same row);
3. adds a joined pair to the model's **performance window**, the last ``OTEL_ML_PERFORMANCE_WINDOW`` pairs
   (default 1,000), from which the gauge ``ml.performance`` is computed when metrics are exported (never
   on the request path), one series per ``ml.performance.metric``:

   * classifiers: ``accuracy``, ``precision``, ``recall``, ``f1`` (binary: of the positive class
     ``classes_[1]``; multiclass: macro averages), ``roc_auc`` (multiclass: one-vs-rest macro),
     ``log_loss`` and ``brier`` (binary: of the positive class; multiclass: summed over classes);
   * regressors: ``mae``, ``rmse``, ``r2``.

   Each equals ``sklearn.metrics`` on the same pairs (``tests/test_outcomes.py`` checks it). A metric is
   left out while undefined (ROC AUC with one class in the window, log loss without probabilities).

These are per-process numbers over a recent window; the fleet-wide figures, over outcomes that reach any
replica, are the collector-side processor's (it joins the log records). Memory: a pending prediction
keeps the model's output array alive and takes about 470 bytes of bookkeeping; 100,000 single-row
``predict_proba`` predictions take about 60 MB (measured).

>>> classification_metrics(["1", "0", "1", "1"], labels=np.array(["1", "0", "0", "1"]),
...                        scores=np.array([0.9, 0.2, 0.4, 0.7]), classes=["0", "1"])["f1"]
0.8
>>> regression_metrics(np.array([3.0, 5.0]), np.array([2.5, 5.0]))["mae"]
0.25
"""

from __future__ import annotations

import collections
import contextvars
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from otel_ml import config as config_module
from otel_ml import semconv
from otel_ml.aggregator import QUEUE_LIMIT
from otel_ml.metrics import GaugeState
from otel_ml.observation import PREDICTING_OPERATIONS, PROBABILITY_OPERATIONS, Observation, read_predictions
from otel_ml.records import RecordEmitter, parse_prediction_id

_log = logging.getLogger("otel_ml")

OUTCOME_COUNT_DESCRIPTION = "Outcomes recorded, by whether they met their prediction in this process"

# Observations of the request in progress, set by a web integration (otel_ml.instrumentation.flask):
# while it is set, predictions are collected there and handed over as one prediction at the request's end.
COLLECTING: contextvars.ContextVar[list | None] = contextvars.ContextVar("otel_ml_collecting", default=None)


# -- one prediction ------------------------------------------------------------------------------------
@dataclass(slots=True)
class Readout:
    """Per-row values of a prediction: labels (str), scores (float) and class probabilities (rows x classes)."""

    labels: np.ndarray | None
    scores: np.ndarray | None
    proba: np.ndarray | None
    confidence_min: float | None


class Prediction:
    """The model call(s) that answered one request; row ``i``'s id is ``<prediction_id>-<i>``.

    Several calls of the same model on the same rows in one request (``predict`` then ``predict_proba``)
    are one prediction: the ids are the first call's, labels and scores come from whichever call has them.
    """

    __slots__ = ("state", "prediction_id", "n_rows", "operation", "outputs", "time_ns", "monotonic",
                 "_readout", "_joined")

    def __init__(self, state: Any, prediction_id: str, n_rows: int, outputs: list[tuple[str, Any]],
                 time_ns: int | None = None) -> None:
        self.state, self.prediction_id, self.n_rows = state, prediction_id, n_rows
        self.outputs = tuple(outputs)  # (operation, output) of each call; tuples the collector stops tracking
        self.operation = outputs[0][0]
        now_ns = time.time_ns()
        self.time_ns = time_ns or now_ns
        self.monotonic = time.monotonic() - max(0, now_ns - self.time_ns) / 1e9  # its age counts from time_ns
        self._readout: Readout | None = None
        self._joined: bytearray | None = None

    @classmethod
    def from_observations(cls, observations: Sequence[Observation]) -> tuple[Prediction, list[Observation]]:
        """The prediction of the first observation, merged with the others of the same model and rows;
        returns it and the observations that belong to other predictions."""
        first = observations[0]
        outputs = [(first.operation, first.output)]
        others = []
        for obs in observations[1:]:
            if obs.model is first.model and obs.n_rows == first.n_rows:
                outputs.append((obs.operation, obs.output))
            else:
                others.append(obs)
        return cls(first.model, first.prediction_id, first.n_rows, outputs, first.end_ns), others

    def row_id(self, row: int) -> str:
        return f"{self.prediction_id}-{row}"

    def ids(self) -> list[str]:
        prefix = self.prediction_id
        return [f"{prefix}-{i}" for i in range(self.n_rows)]

    def read(self) -> Readout:
        if self._readout is None:
            self._readout = self._read()
        return self._readout

    def _read(self) -> Readout:
        state = self.state
        labels = scores = proba = None
        confidence = None
        scores_from_proba = False
        for operation, output in self.outputs:
            predictions = read_predictions(operation, output, state.class_labels, state.is_classifier)
            if predictions is None:
                continue
            is_proba = operation in PROBABILITY_OPERATIONS
            if labels is None and predictions.labels is not None:
                labels = predictions.labels
            if predictions.scores is not None and (scores is None or (is_proba and not scores_from_proba)):
                scores, scores_from_proba = predictions.scores, is_proba
            if confidence is None:
                confidence = predictions.confidence_min
            if proba is None and is_proba:
                matrix = np.asarray(output[0] if isinstance(output, tuple) else output, dtype=np.float64)
                proba = np.exp(matrix) if operation == "predict_log_proba" else matrix
        return Readout(labels, scores, proba, confidence)

    def mark_joined(self, row: int) -> bool:
        """Record that ``row`` met its outcome; False when it already had one."""
        if self._joined is None:
            self._joined = bytearray(self.n_rows)
        if self._joined[row]:
            return False
        self._joined[row] = 1
        return True


class PendingPredictions:
    """Recent predictions by id, at most ``max_rows`` rows no older than ``max_age`` seconds (oldest go first).

    Filled off the request path (see :meth:`OutcomeTracker.defer`), read by outcome lookups.

    >>> pending = PendingPredictions(max_rows=3, max_age=60)
    >>> for i in range(3):
    ...     _ = pending.add(_Stub(f"{i:032x}-{i:016x}", n_rows=2))
    >>> len(pending), pending.find(f"{0:032x}-{0:016x}") is None   # the oldest made room
    (1, True)
    """

    def __init__(self, max_rows: int, max_age: float) -> None:
        self.max_rows, self.max_age = max_rows, max_age
        self._items: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._rows = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._evict(time.monotonic())
            return len(self._items)

    @property
    def rows(self) -> int:
        with self._lock:
            self._evict(time.monotonic())
            return self._rows

    def add(self, prediction: Any) -> bool:
        n_rows = prediction.n_rows
        if n_rows > self.max_rows or n_rows <= 0:
            return False
        with self._lock:
            self._items[prediction.prediction_id] = prediction
            self._rows += n_rows
            self._evict(time.monotonic())
        return True

    def _evict(self, now: float) -> None:
        items = self._items
        oldest_allowed = now - self.max_age
        while items:
            oldest = next(iter(items.values()))
            if self._rows <= self.max_rows and oldest.monotonic >= oldest_allowed:
                break
            items.popitem(last=False)
            self._rows -= oldest.n_rows

    def find(self, prefix: str) -> Any:
        with self._lock:
            self._evict(time.monotonic())
            return self._items.get(prefix)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._rows = 0


class _Stub:  # for the doctest above
    def __init__(self, prediction_id: str, n_rows: int) -> None:
        self.prediction_id, self.n_rows, self.monotonic = prediction_id, n_rows, time.monotonic()


# -- performance metrics, equal to sklearn.metrics --------------------------------------------------------
def _safe_div(num: float, den: float) -> float:
    return num / den if den else 0.0  # sklearn's zero_division default: 0.0 (with a warning)


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of binary ``y_true`` (bool) by ``scores``: the Mann-Whitney U statistic
    with average ranks for ties, which is what ``sklearn.metrics.roc_auc_score`` integrates exactly.
    NaN when ``y_true`` holds one class.

    >>> roc_auc(np.array([False, False, True, True]), np.array([0.1, 0.4, 0.35, 0.8]))
    0.75
    """
    n_pos = int(y_true.sum())
    n_neg = len(y_true) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def classification_metrics(y_true: Sequence[str], labels: np.ndarray | None = None,
                           scores: np.ndarray | None = None, proba: np.ndarray | None = None,
                           classes: Sequence[str] | None = None) -> dict[str, float]:
    """Accuracy, precision, recall, F1, ROC AUC, log loss and Brier score of string labels.

    Binary (two ``classes``): precision, recall and F1 of the positive class ``classes[1]``; ROC AUC of
    ``scores`` (its probability or decision value); log loss and Brier score of ``proba``. Otherwise
    macro averages over the labels seen in ``y_true`` and ``labels``, one-vs-rest macro ROC AUC.
    Pass ``labels``, ``scores`` and ``proba`` row-aligned with ``y_true`` (or None).
    """
    y = np.asarray(y_true, dtype=object).astype(str)
    out: dict[str, float] = {}
    binary = classes is not None and len(classes) == 2
    if labels is not None and len(y):
        pred = np.asarray(labels).astype(str)
        out["accuracy"] = float(np.mean(y == pred))
        if binary:
            pos = classes[1]
            tp = float(np.sum((pred == pos) & (y == pos)))
            fp = float(np.sum((pred == pos) & (y != pos)))
            fn = float(np.sum((pred != pos) & (y == pos)))
            precision, recall = _safe_div(tp, tp + fp), _safe_div(tp, tp + fn)
            out["precision"], out["recall"] = precision, recall
            out["f1"] = _safe_div(2 * tp, 2 * tp + fp + fn)
        else:
            precisions, recalls, f1s = [], [], []
            for label in np.unique(np.concatenate([y, pred])):
                tp = float(np.sum((pred == label) & (y == label)))
                fp = float(np.sum((pred == label) & (y != label)))
                fn = float(np.sum((pred != label) & (y == label)))
                precisions.append(_safe_div(tp, tp + fp))
                recalls.append(_safe_div(tp, tp + fn))
                f1s.append(_safe_div(2 * tp, 2 * tp + fp + fn))
            out["precision"], out["recall"], out["f1"] = (float(np.mean(precisions)), float(np.mean(recalls)),
                                                          float(np.mean(f1s)))
    if binary and scores is not None and len(y):
        out["roc_auc"] = roc_auc(y == classes[1], np.asarray(scores, dtype=np.float64))
    if proba is not None and classes is not None and len(y) and proba.shape[1] == len(classes):
        column = {c: j for j, c in enumerate(classes)}
        if all(v in column for v in y):
            onehot = np.zeros(proba.shape, dtype=np.float64)
            onehot[np.arange(len(y)), [column[v] for v in y]] = 1.0
            if not binary:
                aucs = [roc_auc(onehot[:, j].astype(bool), proba[:, j]) for j in range(len(classes))]
                out["roc_auc"] = float(np.mean(aucs)) if not any(math.isnan(a) for a in aucs) else math.nan
            eps = np.finfo(np.float64).eps
            clipped = np.clip(proba, eps, 1 - eps)
            out["log_loss"] = float(np.mean(-np.sum(onehot * np.log(clipped), axis=1)))
            brier = float(np.mean(np.sum((onehot - proba) ** 2, axis=1)))
            out["brier"] = brier * 0.5 if binary else brier
    return out


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """MAE, RMSE and R² as ``sklearn.metrics`` computes them (R² needs two or more pairs)."""
    if not len(y_true):
        return {}
    error = y_true - y_pred
    out = {"mae": float(np.mean(np.abs(error))), "rmse": float(np.sqrt(np.mean(error ** 2)))}
    if len(y_true) >= 2:
        ss_res = float(np.sum(error ** 2))
        ss_tot = float(np.sum((y_true - np.mean(y_true)) ** 2))
        out["r2"] = (1.0 - ss_res / ss_tot) if ss_tot else (1.0 if ss_res == 0 else 0.0)
    return out


def _label_of(actual: Any, classes: frozenset[str] | None) -> str:
    """The string form of a class label, as ``ModelState.class_labels`` holds it (1.0 -> "1" for int classes)."""
    if isinstance(actual, np.generic):
        actual = actual.item()
    text = str(actual)
    if classes is not None and text not in classes and isinstance(actual, float) and actual.is_integer():
        as_int = str(int(actual))
        if as_int in classes:
            return as_int
    return text


class PerformanceWindow:
    """The last ``size`` joined pairs of one model, and the metrics computed over them."""

    def __init__(self, state: Any, size: int) -> None:
        self.state = state
        self.classes = frozenset(state.class_labels) if state.class_labels else None
        self.pairs: collections.deque[tuple[Any, Any, float | None, np.ndarray | None]] = collections.deque(
            maxlen=size)
        self.dirty = False
        self.lock = threading.Lock()

    def add(self, actual: Any, readout: Readout, row: int) -> bool:
        """Add one pair; False when the actual value does not fit the model (a label for a regressor)."""
        label = str(readout.labels[row]) if readout.labels is not None else None
        score = float(readout.scores[row]) if readout.scores is not None else None
        proba = readout.proba[row] if readout.proba is not None else None
        if self.state.is_classifier:
            truth: Any = _label_of(actual, self.classes)
        else:
            try:
                truth = float(actual)
            except (TypeError, ValueError):
                return False
            if score is None or not math.isfinite(truth):
                return False
        with self.lock:
            self.pairs.append((truth, label, score, proba))
            self.dirty = True
        return True

    def compute(self) -> dict[str, float]:
        with self.lock:
            pairs = list(self.pairs)
            self.dirty = False
        if not pairs:
            return {}
        if not self.state.is_classifier:
            return regression_metrics(np.array([p[0] for p in pairs]), np.array([p[2] for p in pairs]))
        classes = self.state.class_labels
        out: dict[str, float] = {}
        with_labels = [p for p in pairs if p[1] is not None]
        if with_labels:
            out.update(classification_metrics([p[0] for p in with_labels], labels=np.array([p[1] for p in with_labels]),
                                              classes=classes))
        with_scores = [p for p in pairs if p[2] is not None]
        if with_scores and classes is not None and len(classes) == 2:
            out.update(classification_metrics([p[0] for p in with_scores],
                                              scores=np.array([p[2] for p in with_scores]), classes=classes))
        with_proba = [p for p in pairs if p[3] is not None]
        if with_proba:  # log loss, Brier score (and multiclass ROC AUC)
            out.update(classification_metrics([p[0] for p in with_proba], proba=np.vstack([p[3] for p in with_proba]),
                                              classes=classes))
        return out


class _PerformanceGauge(GaugeState):
    """``ml.performance``: recomputes the windows that changed when the export loop collects."""

    def __init__(self, name: str, unit: str, description: str) -> None:
        super().__init__(name, unit, description)
        self.trackers: weakref.WeakSet[OutcomeTracker] = weakref.WeakSet()

    def _points(self, start: int, now: int) -> Any:
        for tracker in list(self.trackers):
            tracker.refresh_performance(self)
        return super()._points(start, now)


# -- the tracker attached to one Telemetry ------------------------------------------------------------------
MAX_NAMED_MODELS = 100  # distinct ml.model.name values an outcome may bring into ml.outcome.count
OTHER_MODEL = "__other__"


class OutcomeTracker:
    """Recent predictions, outcome joins, performance windows and records of one instrumented process.

    Attached to a :class:`~otel_ml.telemetry.Telemetry` as a listener; :func:`record_outcome` and the
    Flask integration reach it through :func:`tracker`.
    """

    def __init__(self, telemetry: Any = None, logger_provider: Any = None, config: Any = None) -> None:
        self._telemetry = weakref.ref(telemetry) if telemetry is not None else None
        config = config or (telemetry.config if telemetry is not None else config_module.load())
        self.config = config
        self.pending = PendingPredictions(config.outcome_max_pending, config.outcome_max_age_seconds)
        self.records = RecordEmitter(config, logger_provider)
        self.window_size = config.performance_window
        self._windows: dict[tuple, PerformanceWindow] = {}
        self._models: dict[tuple, Any] = {}  # metric key -> latest ModelState that predicted
        self._named: set[str] = set()  # names given with outcomes of models that never predicted here
        self._last_state: Any = None  # the model of the latest prediction (skips _remember)
        self._lock = threading.Lock()
        self._incoming: collections.deque[Sequence[Observation]] = collections.deque()  # see defer()
        self._take_lock = threading.Lock()

    @property
    def telemetry(self) -> Any:
        return self._telemetry() if self._telemetry is not None else None

    # -- predictions ------------------------------------------------------------------------------------
    def on_observation(self, obs: Observation) -> None:
        """Telemetry listener: each outermost model call, in the caller's thread."""
        if obs.error_type is not None or obs.operation not in PREDICTING_OPERATIONS or obs.n_rows <= 0:
            return
        collecting = COLLECTING.get()
        if collecting is not None:
            collecting.append(obs)
            return
        self.defer((obs,))

    def defer(self, observations: Sequence[Observation]) -> None:
        """The request path's part: queue the calls that answered one request (a ``deque.append``).
        :meth:`take_predictions` makes them pending predictions and records, on the aggregator thread
        after each drain (within ``OTEL_BSP_SCHEDULE_DELAY``), or first thing when an outcome finds no
        prediction. Past ``QUEUE_LIMIT`` queued requests (the aggregator thread is stuck) they are not kept."""
        if observations and len(self._incoming) < QUEUE_LIMIT:
            self._incoming.append(observations)

    def take_predictions(self) -> None:
        """Turn the deferred calls into pending predictions (and their sampled prediction records)."""
        incoming = self._incoming
        if not incoming:
            return
        with self._take_lock:  # an outcome lookup waits for predictions another thread is taking
            while incoming:
                try:
                    self.on_prediction(incoming.popleft())
                except IndexError:
                    break
                except Exception as exc:
                    self._internal_error("outcomes", exc)

    def on_prediction(self, observations: Sequence[Observation]) -> Prediction | None:
        """Remember a prediction for joins and emit its sampled records; other models' calls separately."""
        if not observations:
            return None
        prediction, others = Prediction.from_observations(observations)
        state = prediction.state
        if state is not self._last_state:
            self._remember(state)
        self.pending.add(prediction)
        if self.records.rate > 0.0:
            try:
                self.records.emit_predictions(prediction, observations[0].inputs)
            except Exception as exc:
                self._internal_error("prediction_records", exc)
        for obs in others:
            self.on_prediction((obs,))
        return prediction

    def _remember(self, state: Any) -> None:
        """The latest model state under its metric key (outcomes without a prediction here are counted under it)."""
        with self._lock:
            if len(self._models) < 1000 or state.metric_key in self._models:
                self._models[state.metric_key] = state
        self._last_state = state

    # -- outcomes ---------------------------------------------------------------------------------------
    def record(self, prediction_id: str, actual: Any, model: Any = None, timestamp_ns: int | None = None) -> bool:
        """See :func:`record_outcome`."""
        parsed = parse_prediction_id(prediction_id)
        telemetry = self.telemetry
        if telemetry is not None:
            telemetry._ensure_started()  # a forked worker resets the metric store before anything is counted
        prediction = self.pending.find(parsed.prefix)
        if prediction is None and self._incoming:  # made moments ago, maybe not taken yet
            self.take_predictions()
            prediction = self.pending.find(parsed.prefix)
        joined = (prediction is not None and parsed.row < prediction.n_rows and prediction.mark_joined(parsed.row))
        state = prediction.state if prediction is not None else self._state_for(model)
        # a model named by the caller that never predicted here (a labelling job): its name is all we know,
        # and the collector-side processor needs it (its load balancer routes outcomes by ml.model.name)
        named = model if state is None and isinstance(model, str) and model else None
        if joined:
            window = self._window(state)
            window.add(actual, prediction.read(), parsed.row)
        try:
            self.records.emit_outcome(parsed, prediction_id.strip(), actual, state, prediction if joined else None,
                                      timestamp_ns, model_name=named)
        except Exception as exc:
            self._internal_error("outcome_record", exc)
        if telemetry is not None:
            if named and named not in self._named:  # a client names these (Flask feedback): keep them few
                with self._lock:
                    if len(self._named) < MAX_NAMED_MODELS:
                        self._named.add(named)
                if named not in self._named:
                    named = OTHER_MODEL
            identity = state.metric_key if state is not None else ((semconv.MODEL_NAME, named),) if named else ()
            key = identity + ((semconv.OUTCOME_JOINED, joined),)
            telemetry.store.counter(semconv.OUTCOME_COUNT, semconv.UNIT_OUTCOMES, OUTCOME_COUNT_DESCRIPTION).add(key, 1)
            if joined:
                self._gauge(telemetry)
        return joined

    def _state_for(self, model: Any) -> Any:
        """The model an unjoined outcome is about: the one named, else the only one that predicted here."""
        with self._lock:
            states = list(self._models.values())
        if model is None:
            return states[0] if len({s.identity.name for s in states}) == 1 else None
        if isinstance(model, str):
            named = [s for s in states if s.identity.name == model]
            return named[-1] if named else None
        telemetry = self.telemetry
        return telemetry.states.get(model) if telemetry is not None else None

    def _window(self, state: Any) -> PerformanceWindow:
        with self._lock:
            window = self._windows.get(state.metric_key)
            if window is None or window.state is not state and window.state.class_labels != state.class_labels:
                window = self._windows[state.metric_key] = PerformanceWindow(state, self.window_size)
            return window

    def _gauge(self, telemetry: Any) -> None:
        gauge = telemetry.store._get(semconv.PERFORMANCE, lambda: _PerformanceGauge(
            semconv.PERFORMANCE, semconv.UNIT_GAUGE,
            "Model performance over the recent joined outcomes of this process, by ml.performance.metric"))
        if isinstance(gauge, _PerformanceGauge):
            gauge.trackers.add(self)
        else:  # somebody declared a plain gauge under this name: compute now
            self.refresh_performance(gauge)

    def refresh_performance(self, gauge: GaugeState) -> None:
        """Recompute the windows that changed since the last export (export thread)."""
        with self._lock:
            windows = [w for w in self._windows.values() if w.dirty]
        for window in windows:
            try:
                values = window.compute()
            except Exception as exc:
                self._internal_error("performance", exc)
                continue
            names = semconv.PERFORMANCE_CLASSIFICATION if window.state.is_classifier else semconv.PERFORMANCE_REGRESSION
            for name in names:
                gauge.set(window.state.metric_key + ((semconv.METRIC_NAME, name),), values.get(name, math.nan))

    def performance(self, model_name: str | None = None) -> dict[str, float]:
        """The current window's metrics of one model (the only one when ``model_name`` is None)."""
        with self._lock:
            windows = [w for w in self._windows.values() if model_name in (None, w.state.identity.name)]
        return windows[0].compute() if len(windows) == 1 else {}

    def _internal_error(self, where: str, exc: BaseException) -> None:
        telemetry = self.telemetry
        if telemetry is not None:
            telemetry.internal_error(where, exc)
        else:
            _log.warning("otel-ml: %s failed", where, exc_info=exc)

    def reset(self) -> None:
        """Forget everything (a forked child starts empty)."""
        self._incoming = collections.deque()
        self._take_lock = threading.Lock()
        self.pending.clear()
        self._lock = threading.Lock()
        self._windows = {}
        self._models = {}
        self._last_state = None


# -- finding the tracker -------------------------------------------------------------------------------
_trackers: weakref.WeakKeyDictionary[Any, OutcomeTracker] = weakref.WeakKeyDictionary()
_standalone: list[OutcomeTracker] = []  # a process without an instrumented model: records only
_registry_lock = threading.Lock()
_logger_provider: Any = None


def configure(logger_provider: Any = None) -> None:
    """The logger provider records are emitted with (default: the global one). Applies to new trackers."""
    global _logger_provider
    _logger_provider = logger_provider


def tracker(telemetry: Any = None, logger_provider: Any = None) -> OutcomeTracker:
    """The tracker of ``telemetry`` (default: the running one), attached on first use.

    ``logger_provider`` replaces the one its records are emitted with (default: :func:`configure`'s).
    """
    if telemetry is None:
        from otel_ml.instrumentation.sklearn import active_telemetry

        telemetry = active_telemetry()
    with _registry_lock:
        if telemetry is None:
            if not _standalone:
                _standalone.append(OutcomeTracker(None, _logger_provider))
            return _standalone[0]
        found = _trackers.get(telemetry)
        if found is None:
            found = _trackers[telemetry] = OutcomeTracker(telemetry, logger_provider or _logger_provider)
            telemetry.listeners.append(found.on_observation)
            telemetry.aggregator.after_drain.append(found.take_predictions)
        elif logger_provider is not None:
            found.records = RecordEmitter(found.config, logger_provider)
        return found


def detach(telemetry: Any) -> None:
    """Stop tracking ``telemetry``'s predictions (uninstrument)."""
    with _registry_lock:
        found = _trackers.pop(telemetry, None)
        _standalone.clear()
    if found is not None and found.on_observation in telemetry.listeners:
        telemetry.listeners.remove(found.on_observation)
    if found is not None and found.take_predictions in telemetry.aggregator.after_drain:
        telemetry.aggregator.after_drain.remove(found.take_predictions)


def record_outcome(prediction_id: str, actual: Any, *, model: Any = None, timestamp_ns: int | None = None) -> bool:
    """Record the ground truth of one prediction; returns True when it met its prediction in this process.

    ``prediction_id`` is the id returned with the prediction (``<trace id>-<span id>-<row>``); ``actual``
    the true label (classifiers: compared with the predicted label as a string) or value (regressors).
    ``model`` (a model object or name) names the model when the prediction is not in this process and
    more than one model predicts here. ``timestamp_ns`` is when the outcome happened (default: now).
    Raises ``ValueError`` for a malformed prediction id; never for telemetry failures.

    Call it after the prediction was made: outcomes for predictions this process has not seen are still
    emitted as log records (for the collector-side join) and counted with ``ml.outcome.joined=false``.
    """
    return tracker().record(prediction_id, actual, model=model, timestamp_ns=timestamp_ns)


def _after_fork_in_child() -> None:
    for found in list(_trackers.values()) + _standalone:
        found.reset()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
