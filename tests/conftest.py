"""Shared fixtures: an instrumented process with in-memory span and metric exporters."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otel_ml import config as config_module
from otel_ml.instrumentation.sklearn import SklearnInstrumentor


@dataclass
class MemoryMetricExporter:
    """Keeps every MetricsData it is given; ``points(name)`` reads the newest export."""

    exports: list = field(default_factory=list)

    def export(self, metrics_data: Any, timeout_millis: float = 0, **_: Any) -> None:
        self.exports.append(metrics_data)

    def metrics(self) -> dict[str, Any]:
        if not self.exports:
            return {}
        scope = self.exports[-1].resource_metrics[0].scope_metrics[0]
        return {m.name: m for m in scope.metrics}

    def points(self, name: str) -> list:
        metric = self.metrics().get(name)
        return list(metric.data.data_points) if metric else []

    def value(self, name: str, **attributes: Any) -> float:
        """Sum of the points of ``name`` whose attributes include ``attributes`` (dots as underscores)."""
        wanted = {k.replace("__", "."): v for k, v in attributes.items()}
        total = 0
        for point in self.points(name):
            if all(point.attributes.get(k) == v for k, v in wanted.items()):
                total += point.value if hasattr(point, "value") else point.count
        return total


@dataclass
class Instrumented:
    spans: InMemorySpanExporter
    metrics: MemoryMetricExporter
    instrumentor: SklearnInstrumentor

    @property
    def telemetry(self) -> Any:
        return self.instrumentor.telemetry

    def finished(self) -> list:
        """Every span so far, after the aggregator thread wrote the spans of the calls queued for it."""
        if self.telemetry is not None:
            self.telemetry.aggregator.drain()
        return list(self.spans.get_finished_spans())

    def clear_spans(self) -> None:
        """Forget every span so far (including those the aggregator thread has yet to write)."""
        self.finished()
        self.spans.clear()

    def roots(self) -> list:
        return [s for s in self.finished() if s.parent is None]

    def flush(self) -> MemoryMetricExporter:
        self.telemetry.flush()
        return self.metrics


def make_instrumented(sampler: Any = None, **overrides: Any) -> Instrumented:
    spans = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler)
    provider.add_span_processor(SimpleSpanProcessor(spans))
    metrics = MemoryMetricExporter()
    instrumentor = SklearnInstrumentor()
    cfg = config_module.load({k: v for k, v in os.environ.items() if not k.startswith("OTEL_ML_")}, **overrides)
    instrumentor.instrument(tracer_provider=provider, metric_exporter=metrics, config=cfg, export_interval=3600)
    return Instrumented(spans, metrics, instrumentor)


@pytest.fixture
def instrumented():
    inst = make_instrumented()
    yield inst
    inst.instrumentor.uninstrument()


@pytest.fixture
def make():
    """Instrument with config overrides, ``make(capture_raw=True)``, and a sampler: ``make(sampler=...)``."""
    made: list[Instrumented] = []

    def factory(**overrides: Any) -> Instrumented:
        inst = make_instrumented(**overrides)
        made.append(inst)
        return inst

    yield factory
    for inst in made:
        inst.instrumentor.uninstrument()


@pytest.fixture(scope="session")
def breast_cancer():
    from sklearn.datasets import load_breast_cancer

    return load_breast_cancer(return_X_y=True, as_frame=True)
