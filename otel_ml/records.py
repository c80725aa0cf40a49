"""Prediction records and outcome records: OpenTelemetry log records a central processor joins.

Two kinds of log record, emitted through the OpenTelemetry logs API (``opentelemetry._logs``), so they
travel with the process's other telemetry (under ``opentelemetry-instrument``: OTLP to the collector):

* a **prediction record** for a sampled share of prediction rows (``OTEL_ML_PREDICTION_RECORDS_RATE``,
  default 0: none): the row's prediction id, label, score and per-class scores, the model's identity
  and, only with ``OTEL_ML_CAPTURE_RAW=true``, the row's inputs with ``OTEL_ML_MASK_FEATURES`` masked;
* an **outcome record** for every :func:`otel_ml.record_outcome`: the prediction id, the actual value,
  the model's identity when known and, when the outcome met its prediction in this process, the
  prediction's label and scores, so a processor can score it without the prediction record.

Both carry ``ml.record.kind`` and ``ml.prediction.id`` (the join key) and the trace link of the
prediction: the log record's trace and span ids are those of the model span that made the prediction
(they are the first two parts of the prediction id ``<trace id>-<span id>-<row>``). Every attribute,
its type and when it is present is listed in ``docs/outcomes.md``; that document is the contract.

>>> trace_context_of("4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-3").span_id == 0x00f067aa0ba902b7
True
>>> masked_row({"age": 31, "income": 5200.0, "name": "x"}, frozenset({"name"}))
'{"age": 31, "income": 5200.0, "name": "<masked>"}'
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from opentelemetry import _logs, trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from otel_ml import frame, semconv
from otel_ml.config import Config
from otel_ml.version import __version__

MASKED = "<masked>"  # the value of a masked feature in ml.input.raw
MAX_RECORDS_PER_CALL = 1000  # prediction records one model call emits at most (big batches are sampled further)


class ParsedId:
    """A prediction id split into its parts: ``<trace id>-<span id>-<row>``."""

    __slots__ = ("prefix", "row", "trace_id", "span_id")

    def __init__(self, prefix: str, row: int, trace_id: int, span_id: int) -> None:
        self.prefix, self.row, self.trace_id, self.span_id = prefix, row, trace_id, span_id


def parse_prediction_id(prediction_id: str) -> ParsedId:
    """Split a prediction id; raises ``ValueError`` naming the id when it is not one.

    >>> p = parse_prediction_id("4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-12")
    >>> p.prefix, p.row
    ('4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7', 12)
    """
    if not isinstance(prediction_id, str):
        raise ValueError(f"prediction id must be a string, got {type(prediction_id).__name__}")
    parts = prediction_id.strip().split("-")
    if len(parts) != 3 or len(parts[0]) != 32 or len(parts[1]) != 16 or not parts[2].isdigit():
        raise ValueError(f"not a prediction id (<32 hex trace id>-<16 hex span id>-<row>): {prediction_id!r}")
    try:
        trace_id, span_id = int(parts[0], 16), int(parts[1], 16)
    except ValueError:
        raise ValueError(f"not a prediction id (trace and span ids must be hex): {prediction_id!r}") from None
    return ParsedId(f"{parts[0]}-{parts[1]}".lower(), int(parts[2]), trace_id, span_id)


def ids_of_header(value: str) -> list[str]:
    """The prediction ids a response's ``X-Prediction-Id`` header names: one id, ids separated by commas,
    or the range ``<trace id>-<span id>-0..<n-1>`` of a batch larger than 100 rows.

    >>> ids_of_header("4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0..2")[2]
    '4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-2'
    >>> one = "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"
    >>> len(ids_of_header(f"{one}-0, {one}-1"))
    2
    """
    prefix, dots, last = value.strip().rpartition("..")
    if dots:
        prefix, _, first = prefix.rpartition("-")
        return [f"{prefix}-{row}" for row in range(int(first), int(last) + 1)]
    return [part.strip() for part in value.split(",") if part.strip()]


def trace_context_of(prediction_id: str) -> SpanContext:
    """The span context (trace link) a prediction id names."""
    parsed = parse_prediction_id(prediction_id)
    return SpanContext(parsed.trace_id, parsed.span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))


def _link(trace_id: int, span_id: int) -> Any:
    context = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(context))


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return _json_value(value.item())
    return str(value)


def masked_row(row: dict[str, Any], masked: frozenset[str]) -> str:
    """One input row as the JSON text of ``ml.input.raw``, masked features replaced."""
    return json.dumps({k: MASKED if k in masked else _json_value(v) for k, v in row.items()})


def attribute_value(value: Any) -> Any:
    """A value as an OpenTelemetry attribute: str, bool, int or float kept; numpy scalars unwrapped; else str."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


def row_attributes(readout: Any, row: int, class_labels: Sequence[str] | None) -> dict[str, Any]:
    """The prediction of one row: label, score, and every class's score when probabilities exist."""
    attributes: dict[str, Any] = {}
    if readout.labels is not None:
        attributes[semconv.PREDICTION_LABEL] = str(readout.labels[row])
    if readout.scores is not None:
        score = float(readout.scores[row])
        if math.isfinite(score):
            attributes[semconv.PREDICTION_SCORE] = score
    if readout.proba is not None:
        attributes[semconv.PREDICTION_SCORES] = [float(p) for p in readout.proba[row]]
        if class_labels is not None and len(class_labels) == readout.proba.shape[1]:
            attributes[semconv.PREDICTION_CLASS_NAMES] = list(class_labels)
    return attributes


class RecordEmitter:
    """Builds and emits prediction and outcome records for one process."""

    def __init__(self, config: Config, logger_provider: Any = None) -> None:
        self.rate = config.prediction_records_rate
        self.capture_raw = config.capture_raw
        self.masked = frozenset(config.mask_features)
        self.logger = _logs.get_logger("otel_ml", __version__, logger_provider=logger_provider)
        self._random = random.Random()

    # -- prediction records ---------------------------------------------------------------------------
    def sample_rows(self, n_rows: int) -> np.ndarray:
        """Row indices to record: each row with probability ``rate``, at most ``MAX_RECORDS_PER_CALL``."""
        if self.rate <= 0.0 or n_rows <= 0:
            return np.empty(0, dtype=np.intp)
        if n_rows == 1:
            return np.zeros(1, dtype=np.intp) if self.rate >= 1.0 or self._random.random() < self.rate \
                else np.empty(0, dtype=np.intp)
        rows = np.arange(n_rows) if self.rate >= 1.0 else np.flatnonzero(
            np.random.default_rng(self._random.getrandbits(64)).random(n_rows) < self.rate)
        if len(rows) > MAX_RECORDS_PER_CALL:
            rows = np.sort(np.random.default_rng(self._random.getrandbits(64)).choice(
                rows, MAX_RECORDS_PER_CALL, replace=False))
        return rows

    def emit_predictions(self, prediction: Any, inputs: Any = None) -> int:
        """Emit the sampled rows of a prediction (see :class:`otel_ml.outcomes.Prediction`); returns how many."""
        rows = self.sample_rows(prediction.n_rows)
        if not len(rows):
            return 0
        state = prediction.state
        readout = prediction.read()
        base = {semconv.RECORD_KIND: semconv.RECORD_KIND_PREDICTION, **state.identity_attributes,
                semconv.OPERATION_NAME: prediction.operation}
        raw = self._raw_rows(inputs, rows, state) if self.capture_raw and inputs is not None else None
        trace_hex, span_hex = prediction.prediction_id.split("-")
        context = _link(int(trace_hex, 16), int(span_hex, 16))
        for k, row in enumerate(rows.tolist()):
            attributes = dict(base)
            attributes[semconv.PREDICTION_ID] = prediction.row_id(row)
            attributes.update(row_attributes(readout, row, state.class_labels))
            if raw is not None:
                attributes[semconv.INPUT_RAW] = raw[k]
            self.logger.emit(timestamp=prediction.time_ns, context=context, severity_number=SeverityNumber.INFO,
                             severity_text="INFO", event_name=semconv.EVENT_PREDICTION_RECORD,
                             attributes=attributes)
        return len(rows)

    def _raw_rows(self, inputs: Any, rows: np.ndarray, state: Any) -> list[str]:
        inputs = frame.materialize(inputs)
        if hasattr(inputs, "iloc"):
            subset = inputs.iloc[rows]
        elif hasattr(inputs, "tocsr"):
            subset = inputs.tocsr()[rows]
        else:
            subset = np.asarray(inputs, dtype=object if isinstance(inputs, list) else None)[rows]
        names = frame.feature_names_of(inputs) or state.feature_names
        table = frame.as_table(subset, names)
        out = []
        for i in range(len(rows)):
            row: dict[str, Any] = {}
            for j, name in enumerate(table.names):
                if j in table.categorical:
                    row[name] = table.categorical[j][i]
            for position, j in enumerate(table.numeric_index):
                row[table.names[j]] = float(table.numeric[i, position])
            out.append(masked_row({n: row.get(n) for n in table.names}, self.masked))
        return out

    # -- outcome records ------------------------------------------------------------------------------
    def emit_outcome(self, parsed: ParsedId, prediction_id: str, actual: Any, state: Any = None,
                     prediction: Any = None, timestamp_ns: int | None = None, model_name: str | None = None) -> None:
        """Emit one outcome record; ``prediction`` is the joined :class:`~otel_ml.outcomes.Prediction`, if any;
        ``model_name`` names the model when ``state`` (the model's identity) is not known in this process."""
        now = time.time_ns()
        attributes: dict[str, Any] = {
            semconv.RECORD_KIND: semconv.RECORD_KIND_OUTCOME,
            semconv.PREDICTION_ID: prediction_id,
            semconv.OUTCOME_ACTUAL: attribute_value(actual),
        }
        if state is not None:
            attributes.update(state.identity_attributes)
        elif model_name:
            attributes[semconv.MODEL_NAME] = model_name
        if prediction is not None:
            attributes.update(row_attributes(prediction.read(), parsed.row, prediction.state.class_labels))
            attributes[semconv.OUTCOME_DELAY] = max(0.0, ((timestamp_ns or now) - prediction.time_ns) / 1e9)
        self.logger.emit(timestamp=timestamp_ns or now, observed_timestamp=now,
                         context=_link(parsed.trace_id, parsed.span_id), severity_number=SeverityNumber.INFO,
                         severity_text="INFO", event_name=semconv.EVENT_OUTCOME_RECORD, attributes=attributes)
