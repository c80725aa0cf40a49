"""What the processor exports: derived fleet metrics and its own health, through the OpenTelemetry SDK.

A private ``MeterProvider`` (never the global one) with a periodic reader and an OTLP exporter, cumulative
temporality for every instrument kind. Derived values are observable gauges read from the newest
:class:`Snapshot` at export time; counters are synchronous and added once per request, not per item.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    MeterProvider,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
)
from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricReader, PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource

from otel_ml import semconv
from otel_ml.processor.config import ProcessorConfig, format_duration
from otel_ml.processor.drift import DriftSnapshot
from otel_ml.version import __version__

_log = logging.getLogger("otel_ml.processor")

CUMULATIVE = {kind: AggregationTemporality.CUMULATIVE for kind in (
    Counter, UpDownCounter, Histogram, ObservableCounter, ObservableUpDownCounter, ObservableGauge)}


@dataclass
class Snapshot:
    """The newest computation; keys carry model and version first."""

    drift: DriftSnapshot = field(default_factory=DriftSnapshot)
    performance: dict[tuple, float] = field(default_factory=dict)  # (model, version, metric, window)
    estimated: dict[tuple, float] = field(default_factory=dict)  # (model, version, metric, window)
    predictions: dict[tuple, int] = field(default_factory=dict)  # (model, version, window)
    coverage: dict[tuple, float] = field(default_factory=dict)  # (model, version, window)
    computed_at: float = 0.0


def build_exporter(config: ProcessorConfig) -> Any | None:
    """The OTLP metric exporter of ``export.*`` (None when the endpoint is ``none``)."""
    endpoint = config.export_endpoint
    if endpoint is not None and endpoint.lower() == "none":
        return None
    headers = dict(config.export_headers) or None
    if config.export_protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        if endpoint is None:
            return OTLPMetricExporter(preferred_temporality=CUMULATIVE, timeout=config.export_timeout)
        return OTLPMetricExporter(endpoint=endpoint, insecure=config.export_insecure, headers=headers,
                                  preferred_temporality=CUMULATIVE, timeout=config.export_timeout)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HTTPExporter

    if endpoint is None:
        return HTTPExporter(preferred_temporality=CUMULATIVE, timeout=config.export_timeout)
    if not endpoint.rstrip("/").endswith("/v1/metrics"):
        endpoint = endpoint.rstrip("/") + "/v1/metrics"
    return HTTPExporter(endpoint=endpoint, headers=headers, preferred_temporality=CUMULATIVE,
                        timeout=config.export_timeout)


class ProcessorTelemetry:
    """Instruments of one processor instance."""

    def __init__(self, config: ProcessorConfig, snapshot: Callable[[], Snapshot], gauges: Callable[[], dict],
                 readers: Sequence[MetricReader] = ()) -> None:
        self._snapshot = snapshot
        self._gauges = gauges
        readers = list(readers)
        exporter = build_exporter(config)
        if exporter is not None:
            interval = config.export_interval * 1000
            readers.append(PeriodicExportingMetricReader(exporter, export_interval_millis=interval))
        resource = Resource.create({"service.name": config.service_name, "service.instance.id": config.instance_id,
                                    "service.version": __version__})
        views = [View(instrument_name=semconv.PROCESSOR_JOIN_DELAY,
                      aggregation=ExplicitBucketHistogramAggregation(semconv.JOIN_DELAY_BUCKETS))]
        self.provider = MeterProvider(resource=resource, metric_readers=readers, views=views)
        meter = self.provider.get_meter("otel_ml.processor", __version__)
        self.received = meter.create_counter(semconv.PROCESSOR_RECEIVED, semconv.UNIT_ITEMS,
                                             "Data points, log records and spans accepted")
        self.rejected = meter.create_counter(semconv.PROCESSOR_REJECTED, semconv.UNIT_REQUESTS,
                                             "Requests refused (malformed, too large, overloaded, stopping)")
        self.dropped = meter.create_counter(semconv.PROCESSOR_DROPPED, semconv.UNIT_ITEMS,
                                            "Items accepted, then discarded (invalid, late, duplicate, evicted ...)")
        self.joined = meter.create_counter(semconv.PROCESSOR_JOINED, semconv.UNIT_OUTCOMES,
                                           "Outcomes joined to their prediction")
        self.join_delay = meter.create_histogram(semconv.PROCESSOR_JOIN_DELAY, semconv.UNIT_SECONDS,
                                                 "Time from a prediction to its outcome being joined")
        w, m, v = semconv.WINDOW, semconv.MODEL_NAME, semconv.MODEL_VERSION

        def observe(read: Callable[[Snapshot], dict], attrs: Callable[[tuple], dict]) -> Callable:
            def callback(_: CallbackOptions) -> Iterable[Observation]:
                try:
                    values = read(self._snapshot())
                    return [Observation(value, attrs(key)) for key, value in values.items()]
                except Exception:  # a callback must not break the export of the others
                    _log.exception("otel-ml processor: observing a gauge failed")
                    return []

            return callback

        meter.create_observable_gauge(
            semconv.FLEET_DRIFT_SCORE, [observe(lambda s: s.drift.scores, lambda k: {
                m: k[0], v: k[1], semconv.FEATURE_NAME: k[2], semconv.DRIFT_METHOD: k[3], w: format_duration(k[4])})],
            semconv.UNIT_RATIO, "Drift of a feature across the fleet, per window")
        meter.create_observable_gauge(
            semconv.FLEET_DRIFT_SHARE, [observe(lambda s: s.drift.shares, lambda k: {
                m: k[0], v: k[1], semconv.DRIFT_METHOD: k[2], w: format_duration(k[3])})],
            semconv.UNIT_RATIO, "Share of a model's features drifted across the fleet, per window")
        meter.create_observable_gauge(
            semconv.FLEET_DRIFT_ROWS, [observe(lambda s: s.drift.rows, lambda k: {
                m: k[0], v: k[1], w: format_duration(k[2])})],
            semconv.UNIT_ROWS, "Rows the fleet's drift is computed on, per window")
        perf_attrs = lambda k: {m: k[0], v: k[1], semconv.METRIC_NAME: k[2], w: format_duration(k[3])}  # noqa: E731
        meter.create_observable_gauge(
            semconv.FLEET_PERFORMANCE, [observe(lambda s: s.performance, perf_attrs)], semconv.UNIT_RATIO,
            "Realised performance on predictions joined to their outcome, per prediction-time window")
        meter.create_observable_gauge(
            semconv.FLEET_PERFORMANCE_ESTIMATED, [observe(lambda s: s.estimated, perf_attrs)], semconv.UNIT_RATIO,
            "Performance estimated from prediction scores (CBPE-style), per prediction-time window")
        window_attrs = lambda k: {m: k[0], v: k[1], w: format_duration(k[2])}  # noqa: E731
        meter.create_observable_gauge(
            semconv.FLEET_PREDICTIONS, [observe(lambda s: s.predictions, window_attrs)], semconv.UNIT_PREDICTIONS,
            "Prediction records in the window")
        meter.create_observable_gauge(
            semconv.FLEET_OUTCOME_COVERAGE, [observe(lambda s: s.coverage, window_attrs)], semconv.UNIT_RATIO,
            "Share of the window's predictions whose outcome has been joined")

        def own(name: str) -> Callable:
            def callback(_: CallbackOptions) -> Iterable[Observation]:
                return [Observation(value, dict(attrs)) for attrs, value in self._gauges().get(name, [])]

            return callback

        meter.create_observable_gauge(semconv.PROCESSOR_STORE_ROWS, [own(semconv.PROCESSOR_STORE_ROWS)],
                                      semconv.UNIT_ROWS, "Rows in the store, per table")
        meter.create_observable_gauge(semconv.PROCESSOR_STORE_SIZE, [own(semconv.PROCESSOR_STORE_SIZE)],
                                      semconv.UNIT_BYTES, "Size of the store on disk")
        meter.create_observable_gauge(semconv.PROCESSOR_SERIES, [own(semconv.PROCESSOR_SERIES)],
                                      semconv.UNIT_SERIES, "Counter series tracked for fleet drift")
        meter.create_observable_gauge(semconv.PROCESSOR_LAG, [own(semconv.PROCESSOR_LAG)], semconv.UNIT_SECONDS,
                                      "Age of the newest item received, per signal")

    def shutdown(self, timeout: float = 10.0) -> None:
        """One last collection and export (the periodic reader's shutdown), bounded by ``timeout``."""
        self.provider.shutdown(timeout_millis=timeout * 1000)
