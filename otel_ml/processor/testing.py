"""Building the telemetry the processor consumes, without an instrumented app: for tests, benchmarks, demos.

The shapes are those of the instrumented apps (see ``docs/processor.md``, "What it consumes"): per-process
resource with ``service.name`` and ``service.instance.id``; ``ml.feature.bin.count`` cumulative sums;
``ml.baseline.bin.fraction`` gauges; ``ml.prediction.score`` histograms; prediction and outcome log records.

>>> req = records_request({"service.name": "s"}, [prediction("id-1", "m", "1", label=1, scores=[0.2, 0.8])])
>>> len(req.resource_logs[0].scope_logs[0].log_records)
1
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from otel_ml import semconv
from otel_ml.processor.otlp import CUMULATIVE, SCORE_FEATURE


def any_value(value: Any) -> common_pb2.AnyValue:
    if isinstance(value, bool):
        return common_pb2.AnyValue(bool_value=value)
    if isinstance(value, int):
        return common_pb2.AnyValue(int_value=value)
    if isinstance(value, float):
        return common_pb2.AnyValue(double_value=value)
    if isinstance(value, (list, tuple)):
        return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[any_value(v) for v in value]))
    return common_pb2.AnyValue(string_value=str(value))


def key_values(attrs: Mapping[str, Any]) -> list[common_pb2.KeyValue]:
    return [common_pb2.KeyValue(key=k, value=any_value(v)) for k, v in attrs.items() if v is not None]


def prediction_id() -> str:
    """An id shaped like the instrumentation's: ``<32 hex trace id>-<16 hex span id>-<row>``."""
    return f"{os.urandom(16).hex()}-{os.urandom(8).hex()}-0"


def prediction(pid: str, model: str, version: str, label: Any = None, score: float | None = None,
               scores: Sequence[float] | None = None, time_ns: int | None = None) -> dict[str, Any]:
    attrs = {semconv.RECORD_KIND: semconv.RECORD_KIND_PREDICTION, semconv.PREDICTION_ID: pid,
             semconv.MODEL_NAME: model, semconv.MODEL_VERSION: version, semconv.PREDICTION_LABEL: label,
             semconv.PREDICTION_SCORE: score, semconv.PREDICTION_SCORES: list(scores) if scores is not None else None}
    return {"time_ns": time_ns or time.time_ns(), "attributes": attrs}


def outcome(pid: str, model: str, version: str, actual: Any, time_ns: int | None = None) -> dict[str, Any]:
    attrs = {semconv.RECORD_KIND: semconv.RECORD_KIND_OUTCOME, semconv.PREDICTION_ID: pid,
             semconv.MODEL_NAME: model, semconv.MODEL_VERSION: version, semconv.OUTCOME_ACTUAL: actual}
    return {"time_ns": time_ns or time.time_ns(), "attributes": attrs}


def records_request(resource: Mapping[str, Any], records: Sequence[dict]) -> logs_service_pb2.ExportLogsServiceRequest:
    logs = [logs_pb2.LogRecord(time_unix_nano=r["time_ns"], observed_time_unix_nano=r["time_ns"],
                               severity_number=9, severity_text="INFO", attributes=key_values(r["attributes"]))
            for r in records]
    return logs_service_pb2.ExportLogsServiceRequest(resource_logs=[logs_pb2.ResourceLogs(
        resource=resource_pb2.Resource(attributes=key_values(resource)),
        scope_logs=[logs_pb2.ScopeLogs(scope=common_pb2.InstrumentationScope(name="otel_ml"), log_records=logs)])])


def drift_request(resource: Mapping[str, Any], model: str, version: str, start_ns: int, time_ns: int,
                  counts: Mapping[str, Sequence[float]] | None = None,
                  baseline: Mapping[str, Sequence[float]] | None = None,
                  score_counts: Sequence[int] | None = None, temporality: int = CUMULATIVE,
                  operation: str = "predict_proba") -> metrics_service_pb2.ExportMetricsServiceRequest:
    """One replica's export: bin counters per feature, baseline fractions per feature (the score's under
    ``__prediction_score__``) and a score histogram whose buckets are ``score_counts``."""
    ident = {semconv.MODEL_NAME: model, semconv.MODEL_VERSION: version}
    metrics = []
    if counts:
        points = [metrics_pb2.NumberDataPoint(
            attributes=key_values({**ident, semconv.FEATURE_NAME: f, semconv.BIN_INDEX: b}),
            start_time_unix_nano=start_ns, time_unix_nano=time_ns, as_int=int(v))
            for f, values in counts.items() for b, v in enumerate(values)]
        metrics.append(metrics_pb2.Metric(name=semconv.FEATURE_BIN_COUNT, unit=semconv.UNIT_ROWS, sum=metrics_pb2.Sum(
            data_points=points, aggregation_temporality=temporality, is_monotonic=True)))
    if baseline:
        points = [metrics_pb2.NumberDataPoint(
            attributes=key_values({**ident, semconv.FEATURE_NAME: f, semconv.BIN_INDEX: b}),
            time_unix_nano=time_ns, as_double=float(v)) for f, values in baseline.items() for b, v in enumerate(values)]
        metrics.append(metrics_pb2.Metric(name=semconv.BASELINE_BIN_FRACTION, unit=semconv.UNIT_RATIO,
                                          gauge=metrics_pb2.Gauge(data_points=points)))
    if score_counts is not None:
        bounds = list(semconv.SCORE_BUCKETS)
        point = metrics_pb2.HistogramDataPoint(
            attributes=key_values({**ident, semconv.OPERATION_NAME: operation}), start_time_unix_nano=start_ns,
            time_unix_nano=time_ns, count=int(sum(score_counts)), bucket_counts=[int(c) for c in score_counts],
            explicit_bounds=bounds)
        metrics.append(metrics_pb2.Metric(name=semconv.PREDICTION_SCORE_METRIC, unit=semconv.UNIT_RATIO,
                                          histogram=metrics_pb2.Histogram(data_points=[point],
                                                                          aggregation_temporality=temporality)))
    return metrics_service_pb2.ExportMetricsServiceRequest(resource_metrics=[metrics_pb2.ResourceMetrics(
        resource=resource_pb2.Resource(attributes=key_values(resource)),
        scope_metrics=[metrics_pb2.ScopeMetrics(scope=common_pb2.InstrumentationScope(name="otel_ml"),
                                                metrics=metrics)])])


__all__ = ["SCORE_FEATURE", "GrpcSender", "drift_request", "outcome", "prediction", "prediction_id",
           "records_request"]


class GrpcSender:
    """Sends serialized OTLP requests (bytes or messages) over gRPC without re-encoding."""

    _METHODS = {"metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
                "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
                "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export"}

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 * 1024**2)])
        self._calls = {s: self.channel.unary_unary(m, request_serializer=None, response_deserializer=None)
                       for s, m in self._METHODS.items()}

    def send(self, signal: str, request: Any, timeout: float = 10.0) -> bytes:
        body = request if isinstance(request, bytes) else request.SerializeToString()
        return self._calls[signal](body, timeout=timeout)

    def close(self) -> None:
        self.channel.close()
