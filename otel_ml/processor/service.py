"""The processor: receivers in, fleet drift and performance computed on a timer, derived metrics out.

Request path (one of ``limits.max_inflight_requests`` slots): decode, read the ML items, fold metric points
into :class:`~otel_ml.processor.drift.FleetDrift` (memory) and write log records to the
:class:`~otel_ml.processor.store.Store` (one transaction), then acknowledge. A request that finds no slot
within ``limits.queue_wait`` is refused as retryable (gRPC ``UNAVAILABLE`` with ``RetryInfo``, HTTP 503 with
``Retry-After``), so the collector's retry and queue hold the data instead of this process's memory.

Compute thread, every ``compute_interval``: evict drift slots and store rows, checkpoint drift state into the
store, recompute fleet drift and the performance of each model version whose data changed (at most every
``performance.interval``, and every model version at least every five minutes, as windows slide), and
publish the result as the new
:class:`~otel_ml.processor.telemetry.Snapshot` read by the exporter.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from opentelemetry.sdk.metrics.export import MetricReader

from otel_ml import semconv
from otel_ml.processor import otlp
from otel_ml.processor.config import ProcessorConfig, describe, format_duration
from otel_ml.processor.drift import FleetDrift
from otel_ml.processor.performance import (
    Calibration,
    canonical,
    class_order,
    classification,
    estimate,
    regression,
)
from otel_ml.processor.store import Store
from otel_ml.processor.telemetry import ProcessorTelemetry, Snapshot

_log = logging.getLogger("otel_ml.processor")

FULL_RECOMPUTE = 300.0  # seconds: every model version is recomputed at least this often (windows slide)


class OverloadedError(Exception):
    """No processing slot became free in time: the client should retry later."""


class StoppingError(Exception):
    """The processor is shutting down."""


class Processor:
    """One processor instance. ``start()`` opens the store and the receivers; ``shutdown()`` flushes."""

    def __init__(self, config: ProcessorConfig, clock: Callable[[], float] = time.time,
                 metric_readers: Sequence[MetricReader] = ()) -> None:
        self.config = config
        self.clock = clock
        self._readers = metric_readers
        self._slots = threading.BoundedSemaphore(config.max_inflight)
        self._stopping = threading.Event()
        self._started = False
        self._compute_lock = threading.Lock()
        self._wake = threading.Event()
        self._changed: set[tuple[str, str]] = set()
        self._changed_lock = threading.Lock()
        self._last_computed: dict[tuple[str, str], float] = {}
        self._performance: dict[tuple[str, str], tuple[dict, dict, dict, dict]] = {}
        self._newest: dict[str, int] = {}
        self._calibrations: dict[str, Calibration | None] = {}
        self.counters: dict[str, float] = {}  # for /status; mirrors the exported counters
        self.snapshot = Snapshot()
        self.store: Store | None = None
        self.drift = FleetDrift(windows=config.drift_windows, slot=config.drift_slot, methods=config.drift_methods,
                                thresholds=config.thresholds, min_rows=config.drift_min_rows,
                                series_ttl=config.series_ttl, max_series=config.max_series)
        self.telemetry: ProcessorTelemetry | None = None
        self._servers: list[Any] = []
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self, serve: bool = True) -> Processor:
        """Open the store, restore the drift checkpoint, start exporting and (``serve``) the receivers."""
        self.store = Store(self.config.store_path, self.config.synchronous)
        self.drift.restore(*self.store.load_drift())
        self.telemetry = ProcessorTelemetry(self.config, lambda: self.snapshot, self.own_gauges, self._readers)
        self.compute()
        self._thread = threading.Thread(target=self._run, name="otel-ml-processor-compute", daemon=True)
        self._thread.start()
        if serve:
            from otel_ml.processor.server import GrpcReceiver, HttpReceiver

            if self.config.grpc_endpoint:
                self._servers.append(GrpcReceiver(self, self.config.grpc_endpoint).start())
            if self.config.http_endpoint:
                self._servers.append(HttpReceiver(self, self.config.http_endpoint).start())
        self._started = True
        _log.info("otel-ml processor %s started: %s", self.config.instance_id,
                  ", ".join(f"{s.kind} on {s.address}" for s in self._servers) or "no receivers")
        return self

    @property
    def addresses(self) -> dict[str, str]:
        return {s.kind: s.address for s in self._servers}

    def shutdown(self, grace: float = 5.0) -> None:
        """Stop receiving (requests in flight finish), compute and checkpoint once more, export, close."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        for server in self._servers:
            server.stop(grace)
        # wait for requests still holding a slot
        for _ in range(self.config.max_inflight):
            self._slots.acquire(timeout=grace)
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=grace + 30)
        self.compute()
        if self.telemetry is not None:
            self.telemetry.shutdown()
        if self.store is not None:
            self.store.close()
        _log.info("otel-ml processor %s stopped", self.config.instance_id)

    @property
    def serving(self) -> bool:
        return self._started and not self._stopping.is_set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.config.compute_interval)
            self._wake.clear()
            if self._stopping.is_set():
                return
            try:
                self.compute(force=False)
            except Exception:  # keep computing on the next tick
                _log.exception("otel-ml processor: compute failed")

    # -- admission ----------------------------------------------------------------------------------------
    def acquire(self) -> None:
        """Take a processing slot, waiting up to ``limits.queue_wait``; raise OverloadedError / StoppingError."""
        if self._stopping.is_set():
            raise StoppingError("the processor is shutting down")
        if not self._slots.acquire(timeout=self.config.queue_wait):
            raise OverloadedError(f"all {self.config.max_inflight} processing slots busy")
        if self._stopping.is_set():
            self._slots.release()
            raise StoppingError("the processor is shutting down")

    def release(self) -> None:
        self._slots.release()

    # -- ingest -------------------------------------------------------------------------------------------
    def count(self, name: str, value: float, **attrs: Any) -> None:
        if not value:
            return
        key = name + json.dumps(attrs, sort_keys=True) if attrs else name
        self.counters[key] = self.counters.get(key, 0) + value
        if self.telemetry is not None:
            instrument = {semconv.PROCESSOR_RECEIVED: self.telemetry.received,
                          semconv.PROCESSOR_REJECTED: self.telemetry.rejected,
                          semconv.PROCESSOR_DROPPED: self.telemetry.dropped,
                          semconv.PROCESSOR_JOINED: self.telemetry.joined}[name]
            instrument.add(value, attrs)

    def reject(self, signal: str, reason: str) -> None:
        self.count(semconv.PROCESSOR_REJECTED, 1, **{semconv.PROCESSOR_SIGNAL: signal,
                                                      semconv.PROCESSOR_REASON: reason})

    def _drop(self, signal: str, reasons: dict[str, int]) -> None:
        for reason, n in reasons.items():
            self.count(semconv.PROCESSOR_DROPPED, n, **{semconv.PROCESSOR_SIGNAL: signal,
                                                         semconv.PROCESSOR_REASON: reason})

    def ingest(self, signal: str, request: Any) -> tuple[int, str]:
        """Process one decoded request; returns (rejected items, message) for ``partial_success``."""
        now = self.clock()
        if signal == "metrics":
            points, total, invalid = otlp.metric_points(request)
            dropped = self.drift.add(points, now)
            newest = max((p.time_ns for p in points), default=0)
            message = f"{invalid} ML data points lack ml.model.name, ml.feature.name or ml.bin.index" if invalid else ""
        elif signal == "logs":
            records, total, invalid, newest = otlp.log_records(request)
            result = self.store.add(records, now)
            dropped = {"duplicate": result.duplicates} if result.duplicates else {}
            self.count(semconv.PROCESSOR_JOINED, result.joined)
            for delay in result.join_delays:
                self.telemetry.join_delay.record(delay)
            if result.changed:
                with self._changed_lock:
                    self._changed |= result.changed
            message = (f"{invalid} ML records lack ml.prediction.id, ml.model.name (predictions) or "
                       "ml.outcome.actual (outcomes)" if invalid else "")
        else:
            total, invalid, newest, dropped, message = otlp.count_spans(request), 0, 0, {}, ""
        self.count(semconv.PROCESSOR_RECEIVED, total - invalid, **{semconv.PROCESSOR_SIGNAL: signal})
        if invalid:
            dropped = {**dropped, "invalid": invalid}
        self._drop(signal, dropped)
        if newest > self._newest.get(signal, 0):
            self._newest[signal] = newest
        return invalid, message

    # -- compute ------------------------------------------------------------------------------------------
    def compute(self, force: bool = True) -> Snapshot:
        """Evict, checkpoint, recompute; publishes and returns the new snapshot.

        Drift is recomputed every time (it is cheap: sums of slot arrays). A model version's performance is
        recomputed when ``force``, when it is new, when its data changed and ``performance.interval`` has
        passed since its last recomputation, or every ``FULL_RECOMPUTE`` seconds (windows slide).
        """
        with self._compute_lock:
            now = self.clock()
            cfg = self.config
            self.drift.evict(now)
            self.store.checkpoint_drift(self.drift.dirty_state())
            self.store.checkpoint_wal()
            self._drop("logs", {k: v for k, v in self.store.evict(now, cfg.retention, cfg.outcome_wait,
                                                                   cfg.max_rows).items() if v})
            drift = self.drift.compute(now)
            with self._changed_lock:
                changed = set(self._changed)
            models = set(self.store.models())
            for key in list(self._performance):
                if key not in models:
                    del self._performance[key]
                    self._last_computed.pop(key, None)
            for key in models:
                last = self._last_computed.get(key)
                if not (force or last is None or now - last >= FULL_RECOMPUTE
                        or (key in changed and now - last >= cfg.performance_interval)):
                    continue
                with self._changed_lock:
                    self._changed.discard(key)  # changes arriving from now on mark it again
                self._performance[key] = self._model_performance(key[0], key[1], now)
                self._last_computed[key] = now
            snap = Snapshot(drift=drift, computed_at=now)
            for perf, est, preds, cov in self._performance.values():
                snap.performance.update(perf)
                snap.estimated.update(est)
                snap.predictions.update(preds)
                snap.coverage.update(cov)
            self.snapshot = snap
            return snap

    def _calibration(self, model: str) -> Calibration | None:
        if model not in self._calibrations:
            path = self.config.baselines.get(model)
            cal = None
            if path:
                try:
                    cal = Calibration.from_baseline_file(path)
                except (OSError, ValueError, KeyError) as exc:
                    _log.warning("otel-ml processor: baseline %s of model %s unusable: %s", path, model, exc)
            self._calibrations[model] = cal
        return self._calibrations[model]

    def _model_performance(self, model: str, version: str, now: float) -> tuple[dict, dict, dict, dict]:
        windows = self.config.performance_windows
        rows = self.store.window(model, version, int((now - max(windows)) * 1e9))
        perf: dict[tuple, float] = {}
        est: dict[tuple, float] = {}
        preds: dict[tuple, int] = {}
        cov: dict[tuple, float] = {}
        if not rows:
            return perf, est, preds, cov
        cache: dict[str, Any] = {}

        def decode(text: str | None) -> Any:
            if text is None:
                return None
            value = cache.get(text, cache)
            if value is cache:
                value = cache[text] = canonical(json.loads(text))
            return value

        ts = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        labels = [decode(r[1]) for r in rows]
        actuals = [decode(r[5]) for r in rows]
        has_actual = np.fromiter((a is not None for a in actuals), dtype=bool, count=len(rows))
        score = np.array([np.nan if r[2] is None else r[2] for r in rows], dtype=np.float64)
        observed = [v for v in labels + actuals if v is not None]
        is_regression = any(r[4] == semconv.MODEL_TYPE_REGRESSION for r in rows) or (
            all(r[3] is None for r in rows) and (all(lbl is None for lbl in labels)
                                                 or any(isinstance(v, float) for v in observed)))
        if is_regression:
            y_pred = np.array([lbl if isinstance(lbl, (int, float)) else s for lbl, s in zip(labels, score)],
                              dtype=np.float64)
            classes, proba = [], None
        else:
            classes = self._classes(rows, observed)
            proba = self._proba(rows, score, classes)
            if proba is not None:
                cal = self._calibration(model)
                calibrated = cal.calibrate(proba, self._predicted_index(labels, classes)) if cal else proba
        for w in windows:
            key = (model, version, w)
            in_window = ts >= int((now - w) * 1e9)
            n = int(in_window.sum())
            if n == 0:
                continue
            preds[key] = n
            joined = in_window & has_actual
            m = int(joined.sum())
            cov[key] = m / n
            idx = np.nonzero(joined)[0]
            label_w = [labels[i] for i in np.nonzero(in_window)[0]]
            if is_regression:
                if m >= self.config.min_pairs:
                    t = np.array([actuals[i] for i in idx], dtype=np.float64)
                    values = regression(t, y_pred[idx])
                else:
                    values = {}
                estimated: dict[str, float] = {}
            else:
                values = {}
                if m >= self.config.min_pairs:
                    values = classification([actuals[i] for i in idx], [labels[i] for i in idx],
                                            None if proba is None else proba[idx], classes, self.config.average)
                estimated = {}
                if proba is not None and None not in label_w:
                    estimated = estimate(label_w, calibrated[in_window], classes, self.config.average)
            for metric, value in values.items():
                perf[(model, version, metric, w)] = value
            for metric, value in estimated.items():
                est[(model, version, metric, w)] = value
        return perf, est, preds, cov

    @staticmethod
    def _classes(rows: list[tuple], observed: list) -> list:
        """The model's classes in score order: ``ml.prediction.class.names`` when records carry it (the
        newest spelling) and it covers every observed class, else sorted as scikit-learn's ``classes_``."""
        texts = [r[6] for r in rows if r[6] is not None]
        if texts:
            names = [canonical(v) for v in json.loads(max(set(texts), key=texts.count))]
            if set(observed) <= set(names) and len(set(names)) == len(names):
                return names
        return class_order(observed)

    @staticmethod
    def _predicted_index(labels: list, classes: list) -> np.ndarray:
        lookup = {c: i for i, c in enumerate(classes)}
        return np.array([lookup.get(v, 0) for v in labels], dtype=np.int64)

    @staticmethod
    def _proba(rows: list[tuple], score: np.ndarray, classes: list) -> np.ndarray | None:
        """Per-class probabilities in ``classes`` order: from ``ml.prediction.scores`` when every row has as
        many scores as there are classes, else (binary) from the positive-class ``ml.prediction.score``."""
        k = len(classes)
        if k < 2:
            return None
        blobs = [r[3] for r in rows]
        if all(b is not None and len(b) == 8 * k for b in blobs):
            return np.frombuffer(b"".join(blobs), dtype=np.float64).reshape(len(rows), k).copy()
        if k == 2 and not np.isnan(score).any():
            return np.column_stack([1 - score, score])
        return None

    # -- status -------------------------------------------------------------------------------------------
    def own_gauges(self) -> dict[str, list[tuple[tuple, float]]]:
        now = self.clock()
        store = self.store
        out: dict[str, list] = {semconv.PROCESSOR_SERIES: [((), self.drift.series_count)]}
        if store is not None:
            out[semconv.PROCESSOR_STORE_ROWS] = [
                (((semconv.PROCESSOR_TABLE, "predictions"),), store.rows_predictions),
                (((semconv.PROCESSOR_TABLE, "pending_outcomes"),), store.rows_pending)]
            try:
                out[semconv.PROCESSOR_STORE_SIZE] = [((), store.size_bytes())]
            except Exception:  # the store may be closing
                pass
        out[semconv.PROCESSOR_LAG] = [(((semconv.PROCESSOR_SIGNAL, s),), max(0.0, now - t / 1e9))
                                      for s, t in self._newest.items() if t]
        return out

    def status(self) -> dict[str, Any]:
        """Everything worth looking at, as JSON-able data (served at ``/status``)."""
        snap = self.snapshot

        def rows(d: dict, names: tuple[str, ...]) -> list[dict]:
            out = []
            for k, v in sorted(d.items(), key=lambda kv: tuple(str(x) for x in kv[0])):
                row = dict(zip(names, k))
                if "window" in row:
                    row["window"] = format_duration(row["window"])
                row["value"] = v
                out.append(row)
            return out

        gauges = {name: [dict(list(a) + [("value", v)]) for a, v in values]
                  for name, values in self.own_gauges().items()}
        return {
            "instance_id": self.config.instance_id,
            "serving": self.serving,
            "receivers": self.addresses,
            "computed_at": snap.computed_at,
            "counters": dict(sorted(self.counters.items())),
            "gauges": gauges,
            "drift": {"scores": rows(snap.drift.scores, ("model", "version", "feature", "method", "window")),
                      "shares": rows(snap.drift.shares, ("model", "version", "method", "window")),
                      "rows": rows(snap.drift.rows, ("model", "version", "window"))},
            "performance": {
                "realised": rows(snap.performance, ("model", "version", "metric", "window")),
                "estimated": rows(snap.estimated, ("model", "version", "metric", "window")),
                "predictions": rows(snap.predictions, ("model", "version", "window")),
                "coverage": rows(snap.coverage, ("model", "version", "window"))},
            "config": describe(self.config),
        }
