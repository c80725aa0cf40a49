"""Turning a model call into spans, and handing its observation to the aggregator.

The request path does only this: time the model call (and the steps of a model that has steps), draw
the ids its span will have (its prediction ids are made of them), validate its inputs in strict mode
only, and append the finished :class:`Call`
(an :class:`~otel_ml.observation.Observation`) to a bounded queue. The aggregator thread
(:class:`~otel_ml.aggregator.Aggregator`) writes the call's span and its steps' child spans under the
drawn ids (:class:`PresetIds`): as finished spans handed to the SDK's span processors
(:mod:`otel_ml.spans`), or through a copy of the SDK tracer when a processor must see spans start, and
computes metrics, drift and data-quality counts. When the tracer is not the SDK's the same spans are written right
after the call. A call whose trace is not sampled gets no span and no attribute is computed for it.

Every failure inside otel-ml is caught here, counted in ``ml.instrumentation.errors`` and logged once
per place and exception type; the user's call and its exception are never altered.
"""

from __future__ import annotations

import contextvars
import copy
import functools
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode

from otel_ml import frame, semconv
from otel_ml.aggregator import Aggregator
from otel_ml.config import Config
from otel_ml.metrics import ExportLoop, MetricStore, configured_exporter, export_interval_seconds
from otel_ml.model_state import ModelState, ModelStates
from otel_ml.observation import PREDICTING_OPERATIONS, TRAINING_OPERATIONS, Observation, first_prediction
from otel_ml.spans import context_of, finished_span_tracer
from otel_ml.version import __version__

_log = logging.getLogger("otel_ml")

# numpy inputs of up to this many rows are copied when the call starts (a fraction of a microsecond):
# counts, drift bins and summaries read a call's inputs later, and a loop that refills one buffer per call
# would otherwise have every queued call read the last values. Larger inputs are read as they are then.
SNAPSHOT_MAX_ROWS = 64


# The Call or Step in progress in this context whose steps get child spans (None outside any model call,
# and inside a call whose steps get none: a leaf model, or a call without a span).
ACTIVE: contextvars.ContextVar[Call | Step | None] = contextvars.ContextVar("otel_ml_active_call", default=None)


class _Wrapping(threading.local):
    """``WRAPPING.on`` is False on a thread while a call runs on it whose inner model calls are part of it
    with nothing of their own (a leaf model, a call without a span, a leaf step, baseline capture, and
    joblib tasks they dispatch): the patched methods then skip otel-ml's wrapper. A model call runs on one
    thread from start to end (its joblib tasks are marked by the instrumentation), so a thread-local
    flag is exact here, and it is set and reset in a quarter of a context variable's time: this runs
    on every call."""

    on = True


WRAPPING = _Wrapping()
wrapping_on = functools.partial(getattr, WRAPPING, "on")  # as a callable, for wrapt's ``enabled``


class Call(Observation):
    """An outermost model call: the :class:`Observation` it becomes, plus what it needs while it runs.

    Its span is written after the call, with an explicit start time and every attribute at once, as a
    child of the span that was active when it ran: by the aggregator thread when the tracer is the SDK's
    (``span_pending``: the call drew its span's ids when it ran, see :class:`PresetIds`), else right after
    the call. A model that calls other models (``state.composite``: pipelines, column transformers,
    searches, calibration, voting, stacking) records its ``steps`` meanwhile; they become child spans.
    The finished call itself is what the listeners and the aggregator receive (``model`` is its
    :class:`~otel_ml.model_state.ModelState`).
    """

    targets: Any = None  # y of a training call
    steps: list[Step] | None = None  # the model calls inside this one, when they get spans
    # the active span's context when its trace is not sampled and this call's span would be dropped
    # too: then no span is made at all (metrics, drift and validation still count the call)
    unsampled_parent: Any = None
    parent_context: Any = None  # the context the call ran in, or its span context only: its span's parent
    span_pending = False  # whether the aggregator thread writes this call's spans
    exception: BaseException | None = None  # what the call raised, until its span is written

    def __init__(self, estimator: Any, state: ModelState, operation: str, inputs: Any, n_rows: int,
                 table_max_rows: int | None = None) -> None:
        self.model, self.operation, self.inputs, self.n_rows = state, operation, inputs, n_rows
        self._table_max_rows = table_max_rows
        self.estimator = estimator
        self.start = time.perf_counter_ns()

    @property
    def call(self) -> Call:  # the outermost call, as for a Step
        return self

    @property
    def start_ns(self) -> int:
        """When the call started, in ns since the epoch (its span's start)."""
        return self.end_ns - self.elapsed_ns

    def release(self) -> None:
        """Drop what only the spans needed once they are written (the call may wait in the aggregator's
        queue, and outcome joins keep it longer): its ids stay, for the prediction ids."""
        self.parent_context = self.exception = self.steps = None
        self.span_pending = False


class Step:
    """A model call inside another (a pipeline step, a search's candidate): a child span, nothing else."""

    __slots__ = ("estimator", "operation", "parent", "call", "start_ns", "end_ns", "error_type", "exception")

    def __init__(self, estimator: Any, operation: str, parent: Call | Step) -> None:
        self.estimator, self.operation, self.parent, self.call = estimator, operation, parent, parent.call
        self.error_type: str | None = None
        self.exception: BaseException | None = None
        self.end_ns = 0
        self.start_ns = time.time_ns()

    def finish(self, exc: BaseException | None = None) -> None:
        self.end_ns = time.time_ns()
        if exc is not None:
            self.error_type, self.exception = error_type(exc), exc


class PresetIds(IdGenerator):
    """The id generator of otel-ml's background tracer (a copy of the SDK tracer otel-ml would use).

    A model call's span is written by the aggregator thread after the call, but the call needs its ids
    when it runs: its prediction ids (``<trace id>-<span id>-<row>``) go back to the caller. So the call
    draws them from the real generator, and this one hands them to the SDK when the span is written.

    >>> from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
    >>> ids = PresetIds(RandomIdGenerator())
    >>> ids.preset(trace_id=7, span_id=9)
    >>> ids.generate_trace_id(), ids.generate_span_id(), ids.generate_span_id() != 9
    (7, 9, True)
    """

    def __init__(self, source: IdGenerator) -> None:
        self.source = source
        self._trace_id = self._span_id = 0

    def preset(self, trace_id: int, span_id: int) -> None:
        """The ids of the next span (its steps' spans get new ones)."""
        self._trace_id, self._span_id = trace_id, span_id

    def generate_trace_id(self) -> int:  # called by the SDK for a root span only
        trace_id, self._trace_id = self._trace_id, 0
        return trace_id or self.source.generate_trace_id()

    def generate_span_id(self) -> int:
        span_id, self._span_id = self._span_id, 0
        return span_id or self.source.generate_span_id()

    def is_trace_id_random(self) -> bool:
        return self.source.is_trace_id_random()


def background_tracer(provider: Any) -> tuple[Any, PresetIds] | None:
    """otel-ml's tracer from ``provider`` copied, with :class:`PresetIds`, writing finished spans when the
    provider's processors only export (:func:`~otel_ml.spans.finished_span_tracer`); None unless it is
    the SDK's."""
    tracer = provider.get_tracer("otel_ml", __version__) if hasattr(provider, "get_tracer") else None
    if not isinstance(tracer, SdkTracer) or not isinstance(getattr(tracer, "id_generator", None), IdGenerator):
        return None
    ids = PresetIds(tracer.id_generator)
    background = copy.copy(tracer)
    background.id_generator = ids
    return finished_span_tracer(background) or background, ids


def error_type(exc: BaseException) -> str:
    cls = type(exc)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def drops_unsampled_children(provider: Any) -> bool:
    """Whether ``provider``'s sampler drops every span whose parent is not sampled: the SDK's default
    ``ParentBased`` sampler does. Only then may otel-ml skip the span of a call under such a parent."""
    sampler = getattr(provider, "sampler", None)
    try:
        from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
    except ImportError:  # pragma: no cover - the API without the SDK records nothing anyway
        return False
    return (isinstance(sampler, ParentBased) and getattr(sampler, "_local_parent_not_sampled", None) is ALWAYS_OFF
            and getattr(sampler, "_remote_parent_not_sampled", None) is ALWAYS_OFF)


_RUNNING: weakref.WeakSet[Telemetry] = weakref.WeakSet()


def _forked() -> None:
    """In a forked child, every Telemetry starts again at its next call (new threads, zeroed counts)."""
    for telemetry in list(_RUNNING):
        telemetry._started = False
        telemetry._start_lock = threading.Lock()  # a parent's thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class Telemetry:
    """Spans, metrics and data health for every instrumented model in the process."""

    def __init__(self, config: Config, tracer_provider: Any = None, metric_exporter: Any = None,
                 resource: Any = None, export_interval: float | None = None) -> None:
        self.config = config
        self.tracer = trace.get_tracer("otel_ml", __version__, tracer_provider)
        self._tracer_provider = tracer_provider
        # decided at the first call (the global provider may be set after us): whether calls under an
        # unsampled parent skip their span, and the tracer that writes spans on the aggregator thread
        self._skip_unsampled = False
        self._background: tuple[Any, PresetIds] | None = None
        # whether a call keeps its parent's span context only, not the whole context (which holds the
        # live parent span, a dozen objects the garbage collector tracks, until the span is written)
        self._span_context_only = False
        # (context, its span's context, that span's trace id or 0, whether calls under it get no span)
        self._last_context: tuple[Any, Any, int, bool] = (None, None, 0, False)
        self.states = ModelStates(config, on_new_state=self._attach_data_health)
        if metric_exporter is None:
            metric_exporter, found_resource = configured_exporter()
            resource = resource or found_resource
        self.store = MetricStore(resource)
        self.aggregator = Aggregator(self.store, config, self.internal_error, write_spans=self._write_spans)
        self.exporter = None
        if metric_exporter is not None:
            self.exporter = ExportLoop(self.store, metric_exporter, export_interval or export_interval_seconds(),
                                       before_collect=self.aggregator.drain)
        self.listeners: list[Callable[[Observation], None]] = []
        self._logged: set[tuple[str, str]] = set()
        self._pid = os.getpid()
        self._started = False
        _RUNNING.add(self)
        self._start_lock = threading.Lock()

    @property
    def passthrough_errors(self) -> tuple[type[BaseException], ...]:
        """Errors otel-ml raises on purpose (strict input validation); every other error is swallowed."""
        return self.aggregator.passthrough_errors

    # -- lifecycle ------------------------------------------------------------------------------
    def _ensure_started(self) -> None:
        """Start the background threads in this process (again after a fork: see ``_forked``)."""
        if self._started:
            return
        pid = os.getpid()
        with self._start_lock:
            if self._pid != pid:  # a forked child: its parent's counts are not its own
                self.store.reset()
                self.aggregator.reset()
                self._pid = pid
            self.aggregator.start()
            if self.exporter is not None:
                self.exporter.start()
            provider = self._tracer_provider or trace.get_tracer_provider()
            self._skip_unsampled = drops_unsampled_children(provider)
            self._background = background_tracer(provider)
            self._span_context_only = getattr(self._background and self._background[0], "span_context_only", False)
            self._last_context = (None, None, 0, False)
            self._started = True

    def flush(self) -> None:
        """Process every queued observation and export metrics now (tests, shutdown)."""
        self.aggregator.drain()
        if self.exporter is not None:
            self.exporter.export_now()

    def shutdown(self) -> None:
        self.aggregator.stop()
        if self.exporter is not None:
            self.exporter.shutdown()

    # -- failures inside otel-ml --------------------------------------------------------------------
    def internal_error(self, where: str, exc: BaseException) -> None:
        """Count and log (once per place and type) a failure of otel-ml itself."""
        try:
            kind = error_type(exc)
            self.store.counter(semconv.INSTRUMENTATION_ERRORS, semconv.UNIT_ERRORS,
                               "Failures inside otel-ml (the model call itself was not affected)").add(
                ((semconv.ERROR_TYPE, kind), ("ml.instrumentation.location", where)), 1)
            if (where, kind) not in self._logged:
                self._logged.add((where, kind))
                _log.warning("otel-ml: %s failed (%s); the model call is unaffected. Counted in %s.",
                             where, kind, semconv.INSTRUMENTATION_ERRORS, exc_info=exc)
        except Exception:  # pragma: no cover - the last line of defence must not raise
            pass

    # -- data health attached to a model --------------------------------------------------------------
    def _attach_data_health(self, model: Any, state: ModelState) -> None:
        try:
            self.aggregator.attach_baseline(model, state)
        except Exception as exc:
            self.internal_error("baseline", exc)

    # -- the request path ---------------------------------------------------------------------------
    def begin(self, model: Any, operation: str, inputs: Any) -> Call:
        """Prepare an outermost call; raises only on otel-ml bugs (the caller then runs the model plainly)
        and, in strict mode, :class:`~otel_ml.validation.InputValidationError`."""
        if not self._started:
            self._ensure_started()
        state = self.states.get(model)
        if type(inputs) is np.ndarray:  # the common case, inline
            n_rows = len(inputs) if inputs.ndim else 1
            if n_rows <= SNAPSHOT_MAX_ROWS:
                inputs = inputs.copy()  # read later, off the request path: a streaming caller may refill its buffer
        else:
            n_rows = frame.n_rows_of(inputs) if inputs is not None else 0
            if n_rows == 1 and operation not in TRAINING_OPERATIONS:
                inputs = frame.snapshot(inputs)  # a one-row DataFrame: its arrays, not its ~450 objects
        call = Call(model, state, operation, inputs, n_rows, self.config.summary_max_rows)
        context = context_api.get_current()
        last = self._last_context
        if last[0] is context:  # calls in a row under one parent (a loop, a batch job) read it once
            _, parent, trace_id, unsampled = last
        else:
            parent = trace.get_current_span(context).get_span_context()
            trace_id = parent.trace_id if parent.is_valid else 0
            unsampled = self._skip_unsampled and trace_id != 0 and not parent.trace_flags.sampled
            self._last_context = (context, parent, trace_id, unsampled)
        if unsampled:
            call.unsampled_parent, call._trace_id = parent, trace_id
        else:
            call.parent_context = parent if self._span_context_only else context
            if state.composite:
                call.steps = []
            if self._background is not None:  # the spans are written later, under the ids drawn now
                ids = self._background[1].source
                call.span_pending = True
                call._trace_id = trace_id or ids.generate_trace_id()
                call._span_id = ids.generate_span_id()
        validator = state.validator
        # strict mode fails the call, so it checks now; otherwise the aggregator thread checks the inputs
        # when it counts their missing values and drift bins (small numpy inputs were copied above)
        if validator is not None and validator.strict:
            try:
                call.validate()
            except self.passthrough_errors as exc:  # the span records why, the caller gets it
                self.finish(call, exc=exc)
                raise
        return call

    def _start_attributes(self, call: Call) -> dict:
        _, attributes, _ = call.model.operation(call.operation)
        attributes = dict(attributes)
        attributes[semconv.INPUT_ROWS] = call.n_rows
        if call.inputs is not None:
            attributes[semconv.INPUT_FEATURES] = frame.n_features_of(call.inputs)
        return attributes

    def finish(self, call: Call, output: Any = None, exc: BaseException | None = None) -> None:
        """The call returned ``output`` or raised ``exc``: its time, its spans (now, unless the aggregator
        thread writes them), the call to the listeners and the aggregator, and a fitted model's new state."""
        call.elapsed_ns = time.perf_counter_ns() - call.start
        try:
            if exc is None:
                call.output = output
            else:
                call.error_type, call.exception = error_type(exc), exc
            call.end_ns = time.time_ns()
            if call.unsampled_parent is None and not call.span_pending:  # a span, and no SDK tracer: now
                self._write_spans_of(call, self.tracer)
            for listener in self.listeners:
                try:
                    listener(call)
                except Exception as error:
                    self.internal_error("listener", error)
            self.aggregator.submit(call, call.span_pending)
            if exc is None and call.operation in TRAINING_OPERATIONS:
                self._after_fit(call)
        except Exception as error:
            self.internal_error("end", error)

    def _write_spans(self, observations: list[Observation]) -> None:
        """On the aggregator thread (under its drain lock: one writer at a time), the spans of the queued
        calls that wait for them."""
        if self._background is None:
            return
        tracer, ids = self._background
        for call in observations:
            if getattr(call, "span_pending", False):
                ids.preset(call._trace_id, call._span_id)
                self._write_spans_of(call, tracer)

    def _write_spans_of(self, call: Call, tracer: Any) -> None:
        """A call's span, with every attribute at once, and its steps' spans as its children."""
        span = None
        try:
            attributes = self._start_attributes(call)
            if call.error_type is None:
                attributes.update(self._span_attributes(call))
                if call._span_id and call.operation not in TRAINING_OPERATIONS:
                    attributes[semconv.PREDICTION_ID] = call.row_id(0)
            else:
                attributes[semconv.ERROR_TYPE] = call.error_type
            context = call.parent_context
            if type(context) is SpanContext:  # kept instead of the whole context (see _span_context_only)
                context = context_of(context)
            span = tracer.start_span(call.model.operation(call.operation)[0], context=context,
                                     kind=SpanKind.INTERNAL, attributes=attributes, start_time=call.start_ns)
            if not call._span_id:  # without the SDK tracer the ids are known only now
                span_context = span.get_span_context()
                if span_context.is_valid:
                    call._trace_id, call._span_id = span_context.trace_id, span_context.span_id
                if span.is_recording() and call.error_type is None and call.operation not in TRAINING_OPERATIONS:
                    span.set_attribute(semconv.PREDICTION_ID, call.row_id(0))
            if span.is_recording():
                if call.error_type is not None:
                    self._record_error(span, call.exception, call.error_type)
                self._add_events(call, span)
                if call.steps:
                    self._write_steps(call, span, tracer)
        except Exception as exc:
            self.internal_error("span", exc)
        finally:
            if span is not None:
                span.end(end_time=call.end_ns)
            call.release()

    def _write_steps(self, call: Call, span: Any, tracer: Any) -> None:
        """The steps' spans, each under its parent's (a step starts after its parent: parents come first)."""
        written: dict[int, Any] = {id(call): span}
        for step in call.steps or ():
            parent = written.get(id(step.parent))
            if parent is None:
                continue
            model_class = type(step.estimator).__name__
            attributes = {semconv.OPERATION_NAME: step.operation, semconv.MODEL_CLASS: model_class}
            if step.error_type is not None:
                attributes[semconv.ERROR_TYPE] = step.error_type
            child = tracer.start_span(f"{step.operation} {model_class}", context=trace.set_span_in_context(parent),
                                      kind=SpanKind.INTERNAL, attributes=attributes, start_time=step.start_ns)
            if step.error_type is not None:
                self._record_error(child, step.exception, step.error_type, event=False)
            child.end(end_time=step.end_ns or call.end_ns)
            written[id(step)] = child

    def _add_events(self, call: Call, span: Any) -> None:
        """Validation violations of this call, and a drift window that closed since the last call."""
        validation = call.validate()
        if validation is not None and validation.total:
            span.set_attribute(semconv.VALIDATION_VIOLATIONS, validation.total)
            config = self.config
            for violation in validation.violations[: config.max_violation_events]:
                attributes = {semconv.FEATURE_NAME: violation.feature, semconv.VALIDATION_CHECK: violation.check}
                if config.capture_raw and violation.value is not None and violation.feature not in config.mask_features:
                    value = violation.value
                    attributes[semconv.FEATURE_VALUE] = value if isinstance(value, (int, float, str)) else str(value)
                span.add_event(semconv.EVENT_VALIDATION_VIOLATION, attributes)
        event = call.model.pending_drift_event
        if event is not None:
            call.model.pending_drift_event = None
            span.add_event(semconv.EVENT_DRIFT_WINDOW, event)

    def _span_attributes(self, call: Call) -> dict:
        state, config = call.model, self.config
        attributes = dict(prediction_summary(call, config.max_classes))
        if state.drift is not None:
            attributes[semconv.DRIFT_DETECTED] = state.drift_detected
        if (config.feature_summaries and call.n_rows >= config.summary_min_rows and call.inputs is not None
                and call.operation != "score"):
            table = call.table()
            if table is not None:
                attributes.update(self._feature_attributes(table))
        return attributes

    def _feature_attributes(self, table: frame.Table) -> dict:
        """Per-feature count, missing, mean and std of the numeric features (min/max only with raw capture)."""
        config = self.config
        kept = table.numeric_index[: config.max_features]
        numeric = table.numeric[:, : len(kept)]
        rows = numeric.shape[0]
        total = frame.column_sums(numeric)
        if rows and np.isfinite(total).all():  # the common case: nothing missing, no masks
            count = np.full(len(kept), rows)
            mean = total / rows
            std = np.sqrt(np.maximum(np.einsum("ij,ij->j", numeric, numeric) / rows - mean * mean, 0.0))
            lo, hi = (numeric.min(axis=0), numeric.max(axis=0)) if config.capture_raw else (None, None)
        else:
            finite = np.isfinite(numeric)
            count = finite.sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = np.where(finite, numeric, 0.0).sum(axis=0) / count
                std = np.sqrt((np.where(finite, numeric - mean, 0.0) ** 2).sum(axis=0) / count)
                lo = np.where(finite, numeric, np.inf).min(axis=0) if config.capture_raw else None
                hi = np.where(finite, numeric, -np.inf).max(axis=0) if config.capture_raw else None
        attributes: dict[str, Any] = {
            semconv.INPUT_FEATURE_NAMES: [table.names[j] for j in kept],
            semconv.INPUT_FEATURE_COUNT: count.tolist(),
            semconv.INPUT_FEATURE_MISSING: (rows - count).tolist(),
            semconv.INPUT_FEATURE_MEAN: _finite_list(mean),
            semconv.INPUT_FEATURE_STD: _finite_list(std),
        }
        if table.n_features > len(kept):
            attributes[semconv.INPUT_FEATURES_TRUNCATED] = table.n_features - len(kept)
        if table.sampled:
            attributes[semconv.INPUT_SAMPLED_ROWS] = rows
        if lo is not None:
            masked = [table.names[j] in config.mask_features for j in kept]
            attributes[semconv.INPUT_FEATURE_MIN] = _finite_list(np.where(masked, 0.0, lo))
            attributes[semconv.INPUT_FEATURE_MAX] = _finite_list(np.where(masked, 0.0, hi))
        return attributes

    def _after_fit(self, call: Call) -> None:
        """A refitted model gets a new state; optionally capture its baseline from the training data.

        The baseline's score distribution comes from the fitted model's own predictions on (at most
        ``CAPTURE_SCORE_ROWS`` evenly spaced rows of) the training data, computed without spans.
        """
        self.states.forget(call.estimator)
        if not (self.config.capture_baseline and call.inputs is not None and call.operation != "partial_fit"):
            return
        previous, WRAPPING.on = WRAPPING.on, False  # calls below are part of this fit: no spans, no observations
        try:
            scores = _training_scores(call.estimator, call.inputs)
            self.aggregator.capture_baseline(call.estimator, call.inputs, call.targets, scores)
        except Exception as exc:
            self.internal_error("capture_baseline", exc)
        finally:
            WRAPPING.on = previous

    # -- steps inside a composite model ----------------------------------------------------------------
    def begin_step(self, parent: Call | Step, model: Any, operation: str) -> Step | None:
        """Record a step of ``parent``'s outermost call (None past ``OTEL_ML_MAX_CHILD_SPANS``); appending
        to a list is safe from joblib's worker threads too."""
        steps = parent.call.steps
        if steps is None or len(steps) >= self.config.max_child_spans:
            return None
        step = Step(model, operation, parent)
        steps.append(step)
        return step

    def _record_error(self, span: Any, exc: BaseException, kind: str, event: bool = True) -> None:
        """Error status and exception event. scikit-learn's messages quote the offending input ("Found
        unknown categories ['...']"), so without raw capture only the exception type leaves the process."""
        if self.config.capture_raw:
            span.set_status(Status(StatusCode.ERROR, f"{kind}: {exc}"[:256]))
            if event:
                span.record_exception(exc)
            return
        span.set_status(Status(StatusCode.ERROR, kind))
        if event:
            span.add_event("exception", {"exception.type": kind, "exception.escaped": True})


CAPTURE_SCORE_ROWS = 5000
QUANTILE_SAMPLE = 1000  # score quantiles on spans use every k-th score of larger batches


def _training_scores(model: Any, inputs: Any) -> Any:
    """Scores of a fitted model on (a sample of) its training inputs, or None for non-scoring models."""
    method = getattr(model, "predict_proba", None) or getattr(model, "decision_function", None)
    if method is None:
        return None
    n = frame.n_rows_of(inputs)
    if n > CAPTURE_SCORE_ROWS:
        rows = np.linspace(0, n - 1, CAPTURE_SCORE_ROWS).astype(np.intp)
        inputs = inputs.iloc[rows] if hasattr(inputs, "iloc") else inputs[rows]
    try:
        return method(inputs)
    except Exception:  # a model that cannot score its own training data: baseline without scores
        return None


def _quantiles(values: np.ndarray) -> tuple[float, float]:
    """Median and 90th percentile by nearest rank (a partition, not a sort: np.percentile costs ~50 µs).

    >>> _quantiles(np.arange(1.0, 11.0))
    (5.0, 9.0)
    """
    n = values.size
    k50, k90 = (n - 1) // 2, min(n - 1, int(np.ceil(0.9 * n)) - 1)
    part = np.partition(values, (k50, k90))
    return float(part[k50]), float(part[k90])


def _finite_list(values: np.ndarray) -> list[float]:
    """Floats for an attribute array, with NaN and infinities (which OTLP JSON cannot carry) as 0."""
    values = values.astype(np.float64, copy=False)
    return values.tolist() if np.isfinite(values.sum()) else np.where(np.isfinite(values), values, 0.0).tolist()


def _finite(value: float) -> float:
    """``value`` as a float, NaN and infinities (which OTLP JSON cannot carry) as 0."""
    value = float(value)
    return value if value - value == 0.0 else 0.0  # NaN - NaN and inf - inf are NaN




def prediction_summary(observation: Observation, max_classes: int) -> dict[str, Any]:
    """Span attributes summarising a call's predictions: the label, score and confidence of a single row;
    class counts, lowest confidence and score statistics of a batch. Read once per call (the model span and
    a Flask server span both show them): the dict is the call's, to be copied, not changed."""
    summary = observation.span_summary
    if summary is None:
        summary = observation.span_summary = _prediction_summary(observation, max_classes)
    return summary


def _prediction_summary(observation: Observation, max_classes: int) -> dict[str, Any]:
    if observation.output is None or observation.operation not in PREDICTING_OPERATIONS:
        return {}
    if observation.n_rows == 1:
        state = observation.model
        first = first_prediction(observation.operation, observation.output, state.class_labels, state.is_classifier)
        return _row_attributes(*first) if first is not None else {}
    predictions = observation.read_predictions()
    return _batch_attributes(predictions, max_classes) if predictions is not None else {}


def _row_attributes(label: str | None, score: float | None, confidence: float | None) -> dict:
    """Span attributes of a one-row prediction (the row's label, score and confidence; NaN and infinities,
    which OTLP JSON cannot carry, as 0)."""
    attributes: dict[str, Any] = {}
    if label is not None:
        attributes[semconv.PREDICTION_LABEL] = label
    if score is not None:
        attributes[semconv.PREDICTION_SCORE] = _finite(score)
    if confidence is not None:
        attributes[semconv.PREDICTION_CONFIDENCE_MIN] = _finite(confidence)
    return attributes


def _batch_attributes(predictions: Any, max_classes: int) -> dict:
    """Span attributes of a batch's predictions: class counts, lowest confidence, score statistics."""
    attributes: dict[str, Any] = {}
    if predictions.confidence_min is not None:
        attributes[semconv.PREDICTION_CONFIDENCE_MIN] = _finite(predictions.confidence_min)
    names, counts = predictions.label_counts()
    if names:
        order = sorted(range(len(names)), key=lambda i: -counts[i])[:max_classes]
        attributes[semconv.PREDICTION_CLASS_NAMES] = [str(names[i]) for i in order]
        attributes[semconv.PREDICTION_CLASS_COUNTS] = [int(counts[i]) for i in order]
    scores = predictions.scores
    if scores is not None and len(scores):
        total = float(scores.sum())
        if not math.isfinite(total):
            scores = scores[np.isfinite(scores)]
            total = float(scores.sum())
        if scores.size:
            p50, p90 = _quantiles(scores[:: max(1, scores.size // QUANTILE_SAMPLE)])  # sampled beyond 1000
            attributes.update({
                semconv.PREDICTION_SCORE_MEAN: total / scores.size,
                semconv.PREDICTION_SCORE_MIN: float(scores.min()),
                semconv.PREDICTION_SCORE_MAX: float(scores.max()),
                semconv.PREDICTION_SCORE_P50: p50,
                semconv.PREDICTION_SCORE_P90: p90,
            })
    return attributes
