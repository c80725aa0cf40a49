"""Model spans written as finished spans, straight to the SDK's span processors.

otel-ml writes a model call's span (and its steps' spans) on its aggregator thread, after the call, with
every attribute, event and time known. The SDK's tracer would build each as a live ``Span``: a lock,
bounded attribute and event containers with locks of their own, about a dozen objects the garbage
collector tracks, which the batch span processor then holds until it exports (up to 512 spans). Held
that long they reach the collector's oldest generation, whose full collections then run more often
in the whole process (``benchmarks/bench_flask_gc.py``: a credit-risk pipeline request's eight spans
were a third of what otel-ml's work promoted there). :class:`FinishedSpanTracer` makes the same span as
one :class:`~opentelemetry.sdk.trace.ReadableSpan` (two tracked objects: the span and its context)
and hands it to the processors' ``on_end``, as the SDK's ``Span.end`` does.

It keeps what the SDK's tracer does for such a span: the provider's sampler decides (its attributes
and trace state included), the provider's resource, the attribute limits, the ``exception`` event of
``record_exception``. It applies only where nothing can tell the difference: every span processor of the
provider is the SDK's batch or simple processor, whose ``on_start`` does nothing
(:func:`finished_span_tracer` returns None otherwise, and otel-ml uses the SDK's tracer; a processor
added later sends the spans written from then on through the SDK's tracer too).

>>> from opentelemetry.sdk.trace import TracerProvider
>>> from opentelemetry.sdk.trace.export import SimpleSpanProcessor
>>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
>>> provider, exporter = TracerProvider(), InMemorySpanExporter()
>>> provider.add_span_processor(SimpleSpanProcessor(exporter))
>>> tracer = finished_span_tracer(provider.get_tracer("otel_ml"))
>>> span = tracer.start_span("predict model", attributes={"ml.input.rows": 1}, start_time=10)
>>> span.end(end_time=25)
>>> [(s.name, dict(s.attributes), s.end_time - s.start_time) for s in exporter.get_finished_spans()]
[('predict model', {'ml.input.rows': 1}, 15)]
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    SamplingResult,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags

EXPORT_ONLY_PROCESSORS = (BatchSpanProcessor, SimpleSpanProcessor)  # their on_start does nothing
_FLAGS = {flags: TraceFlags(flags) for flags in range(4)}  # one instance each: nothing more to track per span
_UNSET = Status(StatusCode.UNSET)


def finished_span_tracer(tracer: Any) -> FinishedSpanTracer | None:
    """A :class:`FinishedSpanTracer` writing to ``tracer``'s processors, when they only export; else None."""
    if not isinstance(tracer, SdkTracer) or _export_only(tracer.span_processor) is None:
        return None
    return FinishedSpanTracer(tracer)


def _export_only(processor: Any) -> tuple | None:
    """The processors of the provider's ``processor`` when each only exports, else None."""
    processors = getattr(processor, "_span_processors", None)
    if not isinstance(processors, tuple) or not all(type(p) in EXPORT_ONLY_PROCESSORS for p in processors):
        return None
    return processors


def decides_on_span_context(sampler: Any) -> bool:
    """Whether ``sampler`` decides on the parent's span context alone (the SDK's own samplers: static,
    trace-id ratio, and parent-based ones made of them), not on other values of the context."""
    if isinstance(sampler, (StaticSampler, TraceIdRatioBased)):
        return True
    if isinstance(sampler, ParentBased):
        return all(decides_on_span_context(getattr(sampler, name, None)) for name in (
            "_root", "_remote_parent_sampled", "_remote_parent_not_sampled", "_local_parent_sampled",
            "_local_parent_not_sampled"))
    return False


class FinishedSpanTracer:
    """``start_span`` as the SDK tracer's, for spans whose content is known: ``end`` hands a
    :class:`~opentelemetry.sdk.trace.ReadableSpan` to the span processors.

    ``span_context_only``: its sampler reads nothing of a parent context but the span's context, so a
    caller may keep a call's parent :class:`~opentelemetry.trace.SpanContext` instead of its whole context
    (which holds the live parent span) until the span is written, and pass :func:`context_of` it."""

    def __init__(self, tracer: SdkTracer) -> None:
        self.sampler, self.resource, self.id_generator = tracer.sampler, tracer.resource, tracer.id_generator
        self.processor, self._tracer = tracer.span_processor, tracer
        self._processors = _export_only(self.processor)  # a processor added later makes a new tuple
        self.scope = getattr(tracer, "_instrumentation_scope", None)
        self._enabled = getattr(tracer, "_is_enabled", lambda: True)
        self.limits = SpanLimits()  # read from the environment, as the provider's defaults are
        # the SDK's default sampler (and ALWAYS_ON) samples a child of a sampled local span as it is: a
        # step's span then needs no sampler call (every span otel-ml writes for a pipeline but the first)
        sampler = self.sampler
        self._children_follow_parent = sampler is ALWAYS_ON or (
            isinstance(sampler, ParentBased) and getattr(sampler, "_local_parent_sampled", None) is ALWAYS_ON)
        self.span_context_only = decides_on_span_context(sampler)

    def start_span(self, name: str, context: Any = None, kind: SpanKind = SpanKind.INTERNAL,
                   attributes: Mapping[str, Any] | None = None, start_time: int | None = None) -> Any:
        if getattr(self.processor, "_span_processors", None) is not self._processors:
            self._processors = _export_only(self.processor)
        if self._processors is None:  # a processor that must see spans start was added: the SDK's tracer
            return self._tracer.start_span(name, context, kind, attributes, start_time=start_time)
        parent_span = trace.get_current_span(context)
        parent = parent_span.get_span_context()
        if not parent.is_valid:
            parent = None
        trace_id = parent.trace_id if parent is not None else self.id_generator.generate_trace_id()
        span_id = self.id_generator.generate_span_id()
        if not self._enabled():
            return NonRecordingSpan(parent or trace.INVALID_SPAN_CONTEXT)
        if type(parent_span) is FinishedSpan and parent.trace_flags.sampled and self._children_follow_parent:
            sampling = SamplingResult(Decision.RECORD_AND_SAMPLE, None, parent.trace_state)  # a step's span
        else:
            sampling = self.sampler.should_sample(context, trace_id, name, kind, attributes, ())
        flags = TraceFlags.SAMPLED if sampling.decision.is_sampled() else TraceFlags.DEFAULT
        random_id = parent.trace_flags.random_trace_id if parent is not None else self.id_generator.is_trace_id_random()
        if random_id:
            flags |= TraceFlags.RANDOM_TRACE_ID
        span_context = SpanContext(trace_id, span_id, is_remote=False, trace_flags=_FLAGS[flags],
                                   trace_state=sampling.trace_state)
        if not sampling.decision.is_recording():
            return NonRecordingSpan(span_context)
        merged = dict(sampling.attributes or {})
        merged.update(attributes or {})
        return FinishedSpan(self, name, span_context, parent, kind, merged,
                            start_time if start_time is not None else time.time_ns())

    def write(self, span: FinishedSpan, end_time: int) -> None:
        attributes = {key: tuple(v) if type(v) is list else v for key, v in span.attributes.items()}
        limits = self.limits
        if len(attributes) > limits.max_span_attributes or limits.max_span_attribute_length is not None:
            attributes = BoundedAttributes(limits.max_span_attributes, attributes, immutable=True,
                                           max_value_len=limits.max_span_attribute_length)
        self.processor.on_end(ReadableSpan(
            name=span.name, context=span.context, parent=span.parent, resource=self.resource,
            attributes=attributes, events=tuple(span.events[: limits.max_events]), kind=span.kind,
            status=span.status, start_time=span.start_time, end_time=end_time, instrumentation_scope=self.scope))


def context_of(parent: SpanContext) -> Any:
    """A context whose current span has the ``parent`` span context (what a sampler of
    :attr:`FinishedSpanTracer.span_context_only` reads)."""
    return trace.set_span_in_context(NonRecordingSpan(parent))


class FinishedSpan(trace.Span):
    """A span being filled in by otel-ml's span writer; ``end`` writes it. Short-lived by design."""

    def __init__(self, tracer: FinishedSpanTracer, name: str, context: SpanContext, parent: SpanContext | None,
                 kind: SpanKind, attributes: dict, start_time: int) -> None:
        self._tracer, self.name, self.context, self.parent, self.kind = tracer, name, context, parent, kind
        self.attributes, self.start_time = attributes, start_time
        self.events: list[Event] = []
        self.status = _UNSET
        self._ended = False

    def get_span_context(self) -> SpanContext:
        return self.context

    def is_recording(self) -> bool:
        return not self._ended

    def set_attribute(self, key: str, value: Any) -> None:
        self.attributes[key] = value

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        self.attributes.update(attributes)

    def add_event(self, name: str, attributes: Mapping[str, Any] | None = None, timestamp: int | None = None) -> None:
        self.events.append(Event(name, dict(attributes or {}), timestamp or time.time_ns()))

    def update_name(self, name: str) -> None:
        self.name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        self.status = status if isinstance(status, Status) else Status(status, description)

    def record_exception(self, exception: BaseException, attributes: Mapping[str, Any] | None = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        """The ``exception`` event the SDK's span records."""
        cls = type(exception)
        kind = cls.__qualname__ if cls.__module__ in (None, "builtins") else f"{cls.__module__}.{cls.__qualname__}"
        event = {"exception.type": kind, "exception.message": str(exception),
                 "exception.stacktrace": "".join(traceback.format_exception(exception)),
                 "exception.escaped": str(escaped)}
        event.update(attributes or {})
        self.add_event("exception", event, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if not self._ended:
            self._ended = True
            self._tracer.write(self, end_time if end_time is not None else time.time_ns())
