"""Off the request path: observations become metrics, drift windows and data-quality counts.

The request thread appends each :class:`~otel_ml.observation.Observation` to a bounded queue (a
``deque.append``, well under a microsecond). A daemon thread drains it once ``WAKE_SPANS`` calls with a span
to write, ``WAKE_EVERY`` calls or ``WAKE_ROWS`` input rows have queued up and otherwise every
``flush_interval`` seconds (the SDK's batch
span processor delay, ``OTEL_BSP_SCHEDULE_DELAY``: it writes the model calls' spans, see
:mod:`otel_ml.telemetry`, as often as the SDK exports spans), and the metric export drains it before
collecting, so an export never misses a finished call. Nothing on the request path wakes the thread
otherwise: on this machine kind every wake of another thread while a model that releases the GIL often
runs (a random forest releases it once per tree) slows the next hundred milliseconds of that model by
up to half, and a logistic regression's one-row call by 2 to 3 µs when the thread wakes every 256
calls (measured: the median unsampled call paid +9.5 µs, +7 µs without those wakes). When the queue is
full the observation (with its span, when this thread would write it, as the SDK's batch span
processor drops spans when its own queue is full) is dropped and counted in
``ml.observations.dropped``; so is a call whose input rows would take the queue past
``QUEUE_ROW_LIMIT`` (the queue holds the callers' arrays until drained): memory stays bounded whatever
the traffic. Holding costs one thing more for inputs made of Python objects: held over 256 calls they
reach the garbage collector's oldest generation, whose full collections then run more often
(``benchmarks/bench_flask_gc.py``). Draining sooner costs more latency than that saves (BENCHMARKS.md),
so a one-row DataFrame is held as a :class:`~otel_ml.frame.RowSnapshot` of its arrays instead.

Counts are exact: rows, errors, predicted classes, prediction-score buckets and missing values are
computed over every row of every call. Batches larger than ``OTEL_ML_SUMMARY_MAX_ROWS`` are validated,
binned for drift and summarised on spans from an evenly spaced sample of that many rows (float arrays of
up to ``STACK_LIMIT`` rows are binned whole, stacked with the group's other small arrays).
"""

from __future__ import annotations

import collections
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np

from otel_ml import frame, semconv
from otel_ml.config import Config
from otel_ml.metrics import MetricStore, span_flush_seconds
from otel_ml.model_state import BASELINE_ATTRIBUTE, ModelState
from otel_ml.observation import PREDICTING_OPERATIONS, Observation, Predictions, read_predictions

_log = logging.getLogger("otel_ml")

QUEUE_LIMIT = 10_000  # observations waiting for the aggregator
QUEUE_ROW_LIMIT = 4_000_000  # input rows they may hold (inputs are referenced, not copied, until drained)
WAKE_EVERY = 4096  # queued calls that wake the aggregator thread
WAKE_SPANS = 256  # queued calls with spans to write that wake it: a burst well inside the SDK's span queue (2048)
WAKE_ROWS = 1_000_000  # queued input rows that wake it (large batches are not held for 256 calls)
OTHER = "__other__"  # attribute value for features and classes beyond the configured caps
PREDICTION_FEATURE = "__prediction_score__"  # ml.feature.name of the prediction-score bins
DROPPED = "ml.observations.dropped"


class Aggregator:
    """Turns observations into the metric store's counts; owns each model's drift monitor."""

    def __init__(self, store: MetricStore, config: Config, on_error: Callable[[str, BaseException], None],
                 write_spans: Callable[[list[Observation]], None] | None = None) -> None:
        self.store, self.config, self._on_error = store, config, on_error
        self._write_spans = write_spans  # given every drained batch first, in arrival order
        self.after_drain: list[Callable[[], None]] = []  # called after each drain (outcome bookkeeping)
        self._queue: collections.deque[Observation] = collections.deque()
        self._queued_rows = 0  # input rows of the queued calls (approximate under threads: a bound)
        self._queued_spans = 0  # queued calls whose spans this thread writes (approximate: it only wakes it)
        self._wake = threading.Event()
        self.flush_interval = span_flush_seconds()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._drain_lock = threading.Lock()
        self._labels: dict[tuple, set[str]] = {}
        self.passthrough_errors: tuple[type[BaseException], ...] = ()
        self._monitored: weakref.WeakSet[ModelState] = weakref.WeakSet()  # states with a drift monitor
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
        self.bins = s.counter(semconv.FEATURE_BIN_COUNT, semconv.UNIT_ROWS,
                              "Input values per feature and baseline bin (sum replicas for the fleet distribution)")
        self.baseline_fractions = s.gauge(semconv.BASELINE_BIN_FRACTION, semconv.UNIT_GAUGE,
                                          "Reference fraction of each baseline bin")
        self.violations = s.counter(semconv.VALIDATION_VIOLATIONS_METRIC, semconv.UNIT_VIOLATIONS,
                                    "Input violations of the baseline by feature and check")
        self.drift_scores = s.gauge(semconv.DRIFT_SCORE_METRIC, semconv.UNIT_GAUGE,
                                    "Drift of the latest closed window against the baseline, by feature and method")
        self.drift_share = s.gauge(semconv.DRIFT_SHARE_METRIC, semconv.UNIT_GAUGE,
                                   "Share of drifted features in the latest closed window")

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
        self._queued_rows = self._queued_spans = 0
        self._labels.clear()
        self._thread = None
        self._drain_lock = threading.Lock()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            self.drain()

    # -- the request thread's only call ----------------------------------------------------------------
    def submit(self, observation: Observation, with_span: bool = False) -> None:
        """Queue a finished call (``with_span``: the aggregator thread writes its spans)."""
        queue = self._queue
        before = self._queued_rows
        rows = before + observation.n_rows
        if len(queue) >= QUEUE_LIMIT or (queue and rows > QUEUE_ROW_LIMIT):  # a lone huge batch still goes
            self.dropped.add(observation.model.metric_key, 1)
            return
        self._queued_rows = rows
        queue.append(observation)
        if with_span:
            self._queued_spans += 1
            if self._queued_spans % WAKE_SPANS == 0:
                self._wake.set()
                return
        if len(queue) % WAKE_EVERY == 0 or (rows >= WAKE_ROWS > before):
            self._wake.set()

    # -- processing -----------------------------------------------------------------------------------
    def drain(self) -> None:
        """Process every queued observation, grouped by model and operation so numpy works on many calls
        at once (a thousand single-row calls cost about what one thousand-row call costs)."""
        with self._drain_lock:
            queue = self._queue
            drained = [queue.popleft() for _ in range(len(queue))]
            self._queued_spans = 0
            self._queued_rows = max(0, self._queued_rows - sum(obs.n_rows for obs in drained))
            if self._write_spans is not None and drained:
                try:
                    self._write_spans(drained)
                except Exception as exc:  # the counts below must not be lost with the spans
                    self._on_error("span", exc)
            groups: dict[tuple[int, str], list[Observation]] = {}
            for obs in drained:
                groups.setdefault((id(obs.model), obs.operation), []).append(obs)
            for observations in groups.values():
                try:
                    self._process(observations)
                except Exception as exc:
                    self._on_error("aggregate", exc)
            try:
                self._tick_drift_windows()  # windows due by time close even when traffic stopped
            except Exception as exc:
                self._on_error("drift_window", exc)
            for hook in self.after_drain:
                try:
                    hook()
                except Exception as exc:
                    self._on_error("after_drain", exc)

    def _process(self, observations: list[Observation]) -> None:
        first = observations[0]
        state: ModelState = first.model
        operation = first.operation
        _, _, op_key = state.operation(operation)
        ok, durations_by_error = [], {}
        violations: dict[tuple[str, str], int] = {}
        for obs in observations:
            validation = obs.validate()
            if validation is not None and validation.counts:
                for check, count in validation.counts.items():
                    violations[check] = violations.get(check, 0) + count
            if obs.error_type is None:
                ok.append(obs)
            durations_by_error.setdefault(obs.error_type, []).append(obs.duration)
        for error, durations in durations_by_error.items():
            key = op_key + ((semconv.ERROR_TYPE, error),) if error else op_key
            self.duration.record_many(key, np.asarray(durations))
        if violations:
            self._count_violations(state, violations)
        if not ok:
            return
        self.rows.add(op_key, sum(o.n_rows for o in ok))
        if operation in ("fit", "fit_transform", "partial_fit"):
            return
        ok = [o for o in ok if o.n_rows]
        if not ok:
            return
        self.batch_size.record_many(op_key, np.fromiter((o.n_rows for o in ok), dtype=np.float64, count=len(ok)))
        scores = None
        if operation in PREDICTING_OPERATIONS:
            scores = self._count_predictions(state, ok, op_key)
        if operation != "score":
            self._count_inputs(state, ok, scores)

    def _count_predictions(self, state: ModelState, observations: list[Observation], op_key: tuple) -> Any:
        """Score histogram and label counts of the group; returns the scores (for prediction drift)."""
        predictions = _group_predictions(state, observations)
        if not predictions:
            return None
        scored = [p.scores for p in predictions if p.scores is not None]
        scores = np.concatenate(scored) if len(scored) > 1 else (scored[0] if scored else None)
        if scores is not None:
            self.scores.record_many(op_key, scores)
        totals: dict[str, int] = {}
        for p in predictions:
            for name, count in zip(*p.label_counts()):
                totals[str(name)] = totals.get(str(name), 0) + count
        if totals:
            seen = self._labels.setdefault(state.metric_key, set())
            keys = []
            for name in totals:
                if name not in seen and len(seen) < self.config.max_classes:
                    seen.add(name)
                keys.append(state.metric_key + ((semconv.PREDICTION_LABEL, name if name in seen else OTHER),))
            self.classes.add_many(keys, list(totals.values()))
        return scores

    def _count_inputs(self, state: ModelState, observations: list[Observation], scores: Any) -> None:
        """Missing values and (with a baseline) drift bins over the group's inputs."""
        tables = _group_tables(observations)
        if not tables:
            return
        missing = tables[0].missing_counts_all_rows()
        for table in tables[1:]:
            if table.n_features == len(missing):
                missing = missing + table.missing_counts_all_rows()
        if missing.any():
            cap = self.config.max_features
            keys = [state.metric_key + ((semconv.FEATURE_NAME, n if j < cap else OTHER),)
                    for j, n in enumerate(tables[0].names)]
            self.missing.add_many(keys, missing.tolist())
        if state.baseline is not None:
            self._count_drift(state, tables, scores)

    # -- baselines, validation and drift ------------------------------------------------------------------
    def attach_baseline(self, model: Any, state: ModelState) -> None:
        """Find the model's baseline: carried inside the model (captured at fit), ``OTEL_ML_BASELINE_PATH``,
        or ``<model file stem>.baseline.json`` next to the file the model was loaded from."""
        from otel_ml.baseline import Baseline, find_baseline

        baseline = Baseline.from_model_attribute(model)
        if baseline is None:
            baseline = find_baseline(state.identity.path, self.config.baseline_path)
        if baseline is not None:
            self.use_baseline(state, baseline)

    def use_baseline(self, state: ModelState, baseline: Any) -> None:
        """Validate and monitor ``state``'s model against ``baseline`` from now on."""
        from otel_ml.drift import DriftMonitor
        from otel_ml.validation import InputValidationError, Validator

        config = self.config
        self.passthrough_errors = (InputValidationError,)
        if state.feature_names is None:
            state.feature_names = list(baseline.feature_names)
        names = list(baseline.feature_names)[: config.max_features]
        nbins = baseline.n_bins_per_feature[: len(names)]
        state.bin_keys = [state.metric_key + ((semconv.FEATURE_NAME, name), (semconv.BIN_INDEX, b))
                          for name, n in zip(names, nbins) for b in range(int(n))]
        state.bin_mask = np.zeros(baseline.reference_fractions.shape, dtype=bool)
        for j, n in enumerate(nbins):
            state.bin_mask[j, : int(n)] = True
        fractions = baseline.reference_fractions[state.bin_mask]
        for key, value in zip(state.bin_keys, fractions.tolist()):
            self.baseline_fractions.set(key, value)
        if baseline.score_fractions is not None:
            for b, value in enumerate(baseline.score_fractions.tolist()):
                self.baseline_fractions.set(state.metric_key + ((semconv.FEATURE_NAME, PREDICTION_FEATURE),
                                                                (semconv.BIN_INDEX, b)), value)
        if config.validation_enabled:
            state.validator = Validator(baseline, range_margin=config.validation_range_margin,
                                        completeness_tolerance=config.validation_completeness_tolerance,
                                        strict=config.validation_strict, max_events=config.max_violation_events)
        state.drift = DriftMonitor.from_config(baseline, config)
        state.baseline = baseline
        self._monitored.add(state)

    def capture_baseline(self, model: Any, inputs: Any, targets: Any = None, scores: Any = None) -> None:
        """Fit a baseline on training inputs and store it, as plain JSON-able data, inside the model."""
        from otel_ml.baseline import Baseline

        baseline = Baseline(n_bins=self.config.baseline_bins, top_k=self.config.baseline_top_k).fit(
            inputs, y=targets, scores=scores, feature_names=frame.feature_names_of(inputs))
        setattr(model, BASELINE_ATTRIBUTE, baseline.to_model_attribute())

    def _count_drift(self, state: ModelState, tables: list[frame.Table], scores: Any) -> None:
        baseline = state.baseline
        counts = baseline.bin_counts(tables[0])
        for table in tables[1:]:
            counts = counts + baseline.bin_counts(table)
        self.bins.add_many(state.bin_keys, counts[state.bin_mask].tolist())
        score_counts = None
        if scores is not None and baseline.score_fractions is not None:
            score_counts = baseline.score_bin_counts(scores)
        report = state.drift.add(counts, score_counts, n_rows=sum(t.rows_kept for t in tables))
        if report is not None:
            self._publish_drift(state, report)

    def _publish_drift(self, state: ModelState, report: Any) -> None:
        cap = set(list(state.baseline.feature_names)[: self.config.max_features])
        for feature, method, value in report.gauges():
            if feature in cap:
                self.drift_scores.set(state.metric_key + ((semconv.FEATURE_NAME, feature),
                                                          (semconv.DRIFT_METHOD, method)), value)
        for method, value in report.prediction_scores.items():
            if value == value:
                self.drift_scores.set(state.metric_key + ((semconv.FEATURE_NAME, PREDICTION_FEATURE),
                                                          (semconv.DRIFT_METHOD, method)), value)
        self.drift_share.set(state.metric_key, report.drift_share)
        state.drift_detected = bool(report.drifted.any() or report.prediction_drift)
        if state.drift_detected:
            state.pending_drift_event = {
                semconv.DRIFT_SHARE: float(report.drift_share),
                semconv.DRIFT_WINDOW_ROWS: int(report.n_rows),
                semconv.FEATURE_NAME: list(report.drifted_features)[: self.config.max_features],
                semconv.BASELINE_ID: report.baseline_id or "",
            }

    def _tick_drift_windows(self) -> None:
        for state in list(self._monitored):
            report = state.drift.tick()
            if report is not None:
                self._publish_drift(state, report)

    def _count_violations(self, state: ModelState, counts: dict[tuple[str, str], int]) -> None:
        """Add a group's violation counts, by (feature, check), to ``ml.validation.violations``."""
        cap = self.config.max_features
        names = list(state.baseline.feature_names)[:cap] if state.baseline is not None else []
        keys, amounts = [], []
        for (feature, check), count in counts.items():
            name = feature if feature in names or len(names) < cap else OTHER
            keys.append(state.metric_key + ((semconv.FEATURE_NAME, name), (semconv.VALIDATION_CHECK, check)))
            amounts.append(count)
        self.violations.add_many(keys, amounts)


STACK_LIMIT = 2000  # rows: small numeric array inputs of one group are stacked into one table up to this


def _group_predictions(state: ModelState, observations: list[Observation]) -> list[Predictions]:
    """Predictions of a group's outputs: those already read on the request path as they are; small array
    outputs of one shape and dtype concatenated and read at once (a stream of single-row calls costs one
    numpy pass instead of a dozen numpy calls each)."""
    found: list[Predictions] = []
    stack: list[np.ndarray] = []
    for obs in observations:
        out = obs.output
        if (obs._predictions is None and isinstance(out, np.ndarray) and 0 < out.ndim <= 2
                and out.shape[0] <= STACK_LIMIT
                and (not stack or (out.shape[1:] == stack[0].shape[1:] and out.dtype == stack[0].dtype))):
            stack.append(out)
            continue
        predictions = obs.read_predictions()
        if predictions is not None:
            found.append(predictions)
    if stack:
        outputs = np.concatenate(stack) if len(stack) > 1 else stack[0]
        predictions = read_predictions(observations[0].operation, outputs, state.class_labels, state.is_classifier)
        if predictions is not None:
            found.append(predictions)
    return found


def _group_tables(observations: list[Observation]) -> list[frame.Table]:
    """Tables of a group's inputs, as few as possible: small plain numeric arrays stacked into one (the
    usual stream of single-row calls), other tables of one layout concatenated."""
    tables: list[frame.Table] = []
    stack: list[np.ndarray] = []
    width = None
    for obs in observations:
        x = obs.inputs  # a table built earlier (strict validation) of such an array is only a view
        if (isinstance(x, np.ndarray) and x.ndim == 2 and x.dtype.kind == "f"
                and x.shape[0] <= STACK_LIMIT and (width is None or x.shape[1] == width)):
            width = x.shape[1]
            stack.append(x)
            continue
        table = obs.table()
        if table is not None:
            tables.append(table)
    if len(tables) > 1:  # e.g. one-row DataFrames: one table per layout instead of one per call
        tables = frame.concat_tables(tables)
    if stack:
        names = observations[0].model.feature_names
        tables.append(frame.as_table(np.vstack(stack) if len(stack) > 1 else stack[0], names))
    return tables
