"""ML metrics kept in the process's own arrays and exported as OpenTelemetry metric data.

Why not the SDK's synchronous instruments: one ``histogram.record`` costs 5-10 µs on this machine kind,
and a single-row prediction would need several. otel-ml instead adds into plain counters and bucket
arrays (well under a microsecond, off the request path, many rows at once with numpy) and builds the
OpenTelemetry data model (``MetricsData``: sums, gauges and explicit-bucket histograms, cumulative
temporality) at export time, handing it to the same kind of exporter the SDK was configured with.
Everything exported is a count that adds up across replicas, so a backend can merge the fleet.

>>> store = MetricStore()
>>> rows = store.counter("ml.input.rows", "{row}", "Rows passed to models")
>>> rows.add((("ml.model.name", "m"),), 5)
>>> rows.add((("ml.model.name", "m"),), 2)
>>> [p.value for p in store.collect(now_ns=1).resource_metrics[0].scope_metrics[0].metrics[0].data.data_points]
[7]
"""

from __future__ import annotations

import bisect
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from otel_ml.version import __version__

_log = logging.getLogger("otel_ml")

AttrKey = tuple[tuple[str, Any], ...]  # attributes as a hashable, ordered tuple of pairs
OVERFLOW_KEY: AttrKey = (("otel.metric.overflow", True),)  # the OTel spec's cardinality-overflow series
MAX_SERIES = 4000  # per metric; past it, values go to the overflow series


class _Instrument:
    def __init__(self, name: str, unit: str, description: str) -> None:
        self.name, self.unit, self.description = name, unit, description
        self._lock = threading.Lock()

    def _key(self, series: dict, key: AttrKey) -> AttrKey:
        return key if key in series or len(series) < MAX_SERIES else OVERFLOW_KEY

    def _series_dict(self) -> dict:
        raise NotImplementedError

    def clear(self) -> None:
        with self._lock:
            self._series_dict().clear()


class CounterState(_Instrument):
    """A monotonic sum per attribute set."""

    def __init__(self, name: str, unit: str, description: str) -> None:
        super().__init__(name, unit, description)
        self._values: dict[AttrKey, float] = {}

    def add(self, key: AttrKey, amount: float) -> None:
        with self._lock:
            key = self._key(self._values, key)
            self._values[key] = self._values.get(key, 0) + amount

    def add_many(self, keys: Sequence[AttrKey], amounts: Iterable[float]) -> None:
        with self._lock:
            for key, amount in zip(keys, amounts):
                if amount:
                    key = self._key(self._values, key)
                    self._values[key] = self._values.get(key, 0) + amount

    def value(self, key: AttrKey) -> float:
        with self._lock:
            return self._values.get(key, 0)

    def _series_dict(self) -> dict:
        return self._values

    def _points(self, start: int, now: int) -> Metric | None:
        with self._lock:
            points = [NumberDataPoint(dict(k), start, now, _number(v)) for k, v in self._values.items()]
        if not points:
            return None
        return Metric(self.name, self.description, self.unit,
                      Sum(points, AggregationTemporality.CUMULATIVE, is_monotonic=True))


class GaugeState(_Instrument):
    """The last value per attribute set; ``forget`` drops series that no longer apply."""

    def __init__(self, name: str, unit: str, description: str) -> None:
        super().__init__(name, unit, description)
        self._values: dict[AttrKey, float] = {}

    def set(self, key: AttrKey, value: float) -> None:
        with self._lock:
            self._values[self._key(self._values, key)] = value

    def value(self, key: AttrKey) -> float | None:
        with self._lock:
            return self._values.get(key)

    def _series_dict(self) -> dict:
        return self._values

    def _points(self, start: int, now: int) -> Metric | None:
        with self._lock:
            points = [NumberDataPoint(dict(k), start, now, _number(v)) for k, v in self._values.items()
                      if not math.isnan(v)]
        return Metric(self.name, self.description, self.unit, Gauge(points)) if points else None


class HistogramState(_Instrument):
    """Explicit-bucket histograms per attribute set; ``record_many`` takes a numpy batch in one step."""

    def __init__(self, name: str, unit: str, description: str, bounds: Sequence[float]) -> None:
        super().__init__(name, unit, description)
        self.bounds = tuple(float(b) for b in bounds)
        self._bounds_array = np.asarray(self.bounds)
        # key -> [bucket_counts (list), sum, count, min, max]
        self._series: dict[AttrKey, list] = {}

    def _series_dict(self) -> dict:
        return self._series

    def _state(self, key: AttrKey) -> list:
        key = self._key(self._series, key)
        state = self._series.get(key)
        if state is None:
            state = self._series[key] = [[0] * (len(self.bounds) + 1), 0.0, 0, math.inf, -math.inf]
        return state

    def record(self, key: AttrKey, value: float) -> None:
        with self._lock:
            state = self._state(key)
            state[0][bisect.bisect_left(self.bounds, value)] += 1
            state[1] += value
            state[2] += 1
            if value < state[3]:
                state[3] = value
            if value > state[4]:
                state[4] = value

    def record_many(self, key: AttrKey, values: np.ndarray) -> None:
        if not np.isfinite(values.sum()):
            values = values[np.isfinite(values)]
        if values.size == 0:
            return
        counts = np.bincount(np.searchsorted(self._bounds_array, values, side="left"),
                             minlength=len(self.bounds) + 1)
        with self._lock:
            state = self._state(key)
            state[0] = [a + b for a, b in zip(state[0], counts.tolist())]
            state[1] += float(values.sum())
            state[2] += int(values.size)
            state[3] = min(state[3], float(values.min()))
            state[4] = max(state[4], float(values.max()))

    def snapshot(self, key: AttrKey) -> tuple[list[int], float, int] | None:
        with self._lock:
            state = self._series.get(key)
            return (list(state[0]), state[1], state[2]) if state else None

    def _points(self, start: int, now: int) -> Metric | None:
        with self._lock:
            points = [HistogramDataPoint(dict(k), start, now, s[2], s[1], list(s[0]), self.bounds, s[3], s[4])
                      for k, s in self._series.items()]
        if not points:
            return None
        return Metric(self.name, self.description, self.unit,
                      Histogram(points, AggregationTemporality.CUMULATIVE))


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else float(value)


class MetricStore:
    """The instruments of one process, collected into ``MetricsData`` on demand."""

    def __init__(self, resource: Resource | None = None) -> None:
        self.resource = resource or Resource.create()
        self.scope = InstrumentationScope("otel_ml", __version__)
        self._instruments: dict[str, _Instrument] = {}
        self._start_ns = time.time_ns()
        self._lock = threading.Lock()

    def _get(self, name: str, factory: Callable[[], _Instrument]) -> Any:
        with self._lock:
            instrument = self._instruments.get(name)
            if instrument is None:
                instrument = self._instruments[name] = factory()
            return instrument

    def counter(self, name: str, unit: str, description: str) -> CounterState:
        return self._get(name, lambda: CounterState(name, unit, description))

    def gauge(self, name: str, unit: str, description: str) -> GaugeState:
        return self._get(name, lambda: GaugeState(name, unit, description))

    def histogram(self, name: str, unit: str, description: str, bounds: Sequence[float]) -> HistogramState:
        return self._get(name, lambda: HistogramState(name, unit, description, bounds))

    def reset(self) -> None:
        """Forget every value: a forked child starts from zero, with a new start time and its own
        ``service.instance.id`` (pre-fork servers would otherwise export colliding cumulative series)."""
        with self._lock:
            for instrument in self._instruments.values():
                instrument.clear()
            self._start_ns = time.time_ns()
            self.resource = self.resource.merge(Resource({"service.instance.id": str(uuid.uuid4())}))

    def collect(self, now_ns: int | None = None) -> MetricsData:
        now = now_ns or time.time_ns()
        with self._lock:
            instruments = list(self._instruments.values())
        metrics = [m for m in (i._points(self._start_ns, now) for i in instruments) if m is not None]
        return MetricsData([ResourceMetrics(self.resource, [ScopeMetrics(self.scope, metrics, "")], "")])


class ExportLoop:
    """Exports a store's ``MetricsData`` every ``interval`` seconds on a daemon thread, and at exit."""

    def __init__(self, store: MetricStore, exporter: MetricExporter, interval: float,
                 before_collect: Callable[[], None] | None = None) -> None:
        self.store, self.exporter, self.interval = store, exporter, interval
        self._before_collect = before_collect
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._stopped = False
                self._thread = threading.Thread(target=self._run, name="otel-ml-metrics-export", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait(self.interval)
            self._wake.clear()
            self.export_now()

    def export_now(self, timeout_millis: float = 10_000) -> bool:
        try:
            if self._before_collect is not None:
                self._before_collect()
            data = self.store.collect()
            if not data.resource_metrics[0].scope_metrics[0].metrics:
                return True
            result = self.exporter.export(data, timeout_millis=timeout_millis)
            return getattr(result, "name", "SUCCESS") == "SUCCESS"
        except Exception:  # an exporter must never take the process down
            _log.warning("otel-ml: metric export failed", exc_info=True)
            return False

    def shutdown(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.interval + 15)
        self.export_now()


def export_interval_seconds() -> float:
    """The SDK's ``OTEL_METRIC_EXPORT_INTERVAL`` (milliseconds, default 60000) in seconds."""
    return _sdk_milliseconds("OTEL_METRIC_EXPORT_INTERVAL", 60000) / 1000.0


def span_flush_seconds() -> float:
    """The SDK's ``OTEL_BSP_SCHEDULE_DELAY`` (milliseconds, default 5000) in seconds."""
    return _sdk_milliseconds("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000.0


def _sdk_milliseconds(name: str, default: float) -> float:
    """An SDK interval variable, at least 50 ms; its default when unset or not a number (as the SDK does).

    >>> _sdk_milliseconds("OTEL_ML_UNSET_FOR_THIS_EXAMPLE", 5000)
    5000.0
    """
    try:
        return max(50.0, float(os.environ.get(name, default)))
    except ValueError:
        return float(default)


def configured_exporter() -> tuple[MetricExporter | None, Resource | None]:
    """A new exporter of the kind the global SDK MeterProvider exports with, and its resource.

    Under ``opentelemetry-instrument`` that is the OTLP exporter built from the ``OTEL_EXPORTER_OTLP_*``
    variables; a fresh instance reads the same variables, so both go to the same endpoint.
    """
    from opentelemetry import metrics

    provider = metrics.get_meter_provider()
    sdk_config = getattr(provider, "_sdk_config", None)
    if sdk_config is None:
        return None, None
    for reader in getattr(provider, "_metric_readers", ()):
        exporter = getattr(reader, "_exporter", None)
        if exporter is None:
            continue
        try:
            return type(exporter)(), sdk_config.resource
        except Exception:  # exporters built with arguments we cannot repeat: share the instance
            return exporter, sdk_config.resource
    return None, sdk_config.resource
