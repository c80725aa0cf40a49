"""Off the request path: observations become metrics, drift windows and data-quality counts.

The request thread appends each :class:`~otel_ml.observation.Observation` to a bounded queue (a
``deque.append``, well under a microsecond). A daemon thread drains it every ``DRAIN_INTERVAL``
seconds, and the metric export drains it once more before collecting, so an export never misses a
finished call. When the queue is full the observation is dropped and counted in
``ml.observations.dropped``: memory stays bounded whatever the traffic.

Counts are exact: rows, errors, predicted classes, prediction-score buckets, missing values and
per-feature bin counts are computed over every row of every call. Only the per-feature summaries on
spans of very large batches use a sample (see ``OTEL_ML_SUMMARY_MAX_ROWS``).
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from otel_ml import frame, semconv
from otel_ml.config import Config
from otel_ml.metrics import MetricStore
from otel_ml.model_state import BASELINE_ATTRIBUTE, ModelState
from otel_ml.observation import PREDICTING_OPERATIONS, Observation

_log = logging.getLogger("otel_ml")

QUEUE_LIMIT = 10_000  # observations waiting for the aggregator
DRAIN_INTERVAL = 0.05  # seconds
OTHER = "__other__"  # attribute value for features and classes beyond the configured caps
DROPPED = "ml.observations.dropped"


class Aggregator:
    """Turns observations into the metric store's counts; owns each model's drift monitor."""

    def __init__(self, store: MetricStore, config: Config, on_error: Callable[[str, BaseException], None]) -> None:
        self.store, self.config, self._on_error = store, config, on_error
        self._queue: collections.deque[Observation] = collections.deque()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._drain_lock = threading.Lock()
        self._labels: dict[tuple, set[str]] = {}
        self.passthrough_errors: tuple[type[BaseException], ...] = ()
        self._declare_instruments()

    def _declare_instruments(self) -> None:
        s = self.store
        self.duration = s.histogram(semconv.OPERATION_DURATION, semconv.UNIT_SECONDS,
                                    "Duration of model operations", semconv.DURATION_BUCKETS)
        self.rows = s.counter(semconv.INPUT_ROWS_METRIC, semconv.UNIT_ROWS, "Rows passed to model operations")
        self.batch_size = s.histogram(semconv.INPUT_BATCH_SIZE, semconv.UNIT_ROWS,
                                      "Rows per model call", semconv.BATCH_SIZE_BUCKETS)
        self.scores = s.histogram(semconv.PREDICTION_SCORE_METRIC, semconv.UNIT_RATIO,
                                  "Prediction scores: positive-class probability (binary), top-class probability "
                                  "(multiclass), decision value or regression output", semconv.SCORE_BUCKETS)
        self.classes = s.counter(semconv.PREDICTION_COUNT, semconv.UNIT_PREDICTIONS, "Predictions by label")
        self.missing = s.counter(semconv.INPUT_MISSING, semconv.UNIT_VALUES,
                                 "Missing or non-finite input values by feature")
        self.dropped = s.counter(DROPPED, "{observation}",
                                 "Observations dropped because the aggregator queue was full")

    # -- threads ------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopped = False
            self._thread = threading.Thread(target=self._run, name="otel-ml-aggregator", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.drain()

    def reset(self) -> None:
        """After a fork: the child's queue and label sets start empty (the store zeroes itself)."""
        self._queue = collections.deque()
        self._labels.clear()
        self._thread = None
        self._drain_lock = threading.Lock()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(DRAIN_INTERVAL)
            self.drain()

    # -- the request thread's only call ----------------------------------------------------------------
    def submit(self, observation: Observation) -> None:
        if len(self._queue) >= QUEUE_LIMIT:
            self.dropped.add(observation.model.metric_key, 1)
            return
        self._queue.append(observation)

    # -- processing -----------------------------------------------------------------------------------
    def drain(self) -> None:
        with self._drain_lock:
            queue = self._queue
            while queue:
                observation = queue.popleft()
                try:
                    self._process(observation)
                except Exception as exc:
                    self._on_error("aggregate", exc)

    def _process(self, obs: Observation) -> None:
        state: ModelState = obs.model
        _, _, op_key = state.operation(obs.operation)
        duration_key = op_key + ((semconv.ERROR_TYPE, obs.error_type),) if obs.error_type else op_key
        self.duration.record(duration_key, obs.duration)
        if obs.error_type is not None:
            return
        self.rows.add(op_key, obs.n_rows)
        if obs.operation in ("fit", "fit_transform", "partial_fit") or obs.n_rows == 0:
            return
        self.batch_size.record(op_key, obs.n_rows)
        if obs.operation in PREDICTING_OPERATIONS:
            self._count_predictions(state, obs, op_key)
        if obs.inputs is not None and obs.operation != "score":
            self._count_inputs(state, obs)

    def _count_predictions(self, state: ModelState, obs: Observation, op_key: tuple) -> None:
        predictions = obs.read_predictions()
        if predictions is None:
            return
        if predictions.scores is not None:
            self.scores.record_many(op_key, predictions.scores)
        if predictions.labels is not None and len(predictions.labels):
            names, counts = np.unique(predictions.labels.astype(str), return_counts=True)
            seen = self._labels.setdefault(state.metric_key, set())
            keys = []
            for name in names:
                if name not in seen and len(seen) < self.config.max_classes:
                    seen.add(name)
                label = name if name in seen else OTHER
                keys.append(state.metric_key + ((semconv.PREDICTION_LABEL, label),))
            self.classes.add_many(keys, counts.tolist())

    def _count_inputs(self, state: ModelState, obs: Observation) -> None:
        names = state.feature_names or frame.feature_names_of(obs.inputs)
        table = frame.as_table(obs.inputs, names)
        missing = table.missing_counts()
        if missing.any():
            cap = self.config.max_features
            keys = [state.metric_key + ((semconv.FEATURE_NAME, n if j < cap else OTHER),)
                    for j, n in enumerate(table.names)]
            self.missing.add_many(keys, missing.tolist())
        if state.baseline is not None:
            self._count_drift(state, obs, table)
        if obs.validation is not None:
            self._count_violations(state, obs.validation)

    # -- baselines, drift and validation (filled in with otel_ml.baseline / drift / validation) ------------
    def attach_baseline(self, model: Any, state: ModelState) -> None:
        """Find the model's baseline and build its validator and drift monitor."""

    def validate(self, state: ModelState, inputs: Any, span: Any) -> Any:
        return None

    def capture_baseline(self, model: Any, inputs: Any, attribute: str = BASELINE_ATTRIBUTE) -> None:
        """Fit a baseline on training inputs and store it, as plain JSON-able data, in the model."""

    def _count_drift(self, state: ModelState, obs: Observation, table: frame.Table) -> None:
        pass

    def _count_violations(self, state: ModelState, validation: Any) -> None:
        pass
