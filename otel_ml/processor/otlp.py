"""OTLP in: decoding requests (protobuf or JSON) and reading the ML items out of them.

Only what the processor uses is read: the three ML metrics (:data:`DRIFT_METRICS`) and log records with
``ml.record.kind``. Everything else in a valid request is accepted and ignored. An attribute is looked up on
the data point or log record first, then on its scope, then on its resource.

OTLP/JSON differs from protobuf's canonical JSON in one way that matters here: trace and span ids are hex,
not base64 (OTLP specification, "JSON Protobuf Encoding"); :func:`decode` converts them before parsing and
ignores unknown fields, as receivers must.
"""

from __future__ import annotations

import base64
import gzip
import json
import time
import zlib
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from otel_ml import semconv

SIGNALS = {
    "metrics": (metrics_service_pb2.ExportMetricsServiceRequest, metrics_service_pb2.ExportMetricsServiceResponse),
    "logs": (logs_service_pb2.ExportLogsServiceRequest, logs_service_pb2.ExportLogsServiceResponse),
    "traces": (trace_service_pb2.ExportTraceServiceRequest, trace_service_pb2.ExportTraceServiceResponse),
}
DRIFT_METRICS = (semconv.FEATURE_BIN_COUNT, semconv.BASELINE_BIN_FRACTION, semconv.PREDICTION_SCORE_METRIC)
SCORE_FEATURE = "__prediction_score__"  # ml.feature.name of the score bins in ml.baseline.bin.fraction
CUMULATIVE = 2  # AggregationTemporality enum
DELTA = 1
_HEX_ID_KEYS = frozenset({"traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id"})


class MalformedRequestError(ValueError):
    """The request body is not a valid OTLP message of the expected type."""


class RequestTooLargeError(ValueError):
    """The (decompressed) request is larger than the configured limit."""


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo ``Content-Encoding`` gzip / deflate, refusing to inflate past ``limit`` bytes (zip bombs)."""
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise MalformedRequestError(f"unsupported Content-Encoding {encoding!r} (gzip, deflate or identity)")
    inflater = zlib.decompressobj(zlib.MAX_WBITS | (16 if encoding == "gzip" else 0))
    try:
        out = inflater.decompress(body, limit + 1)
    except (zlib.error, gzip.BadGzipFile) as exc:
        raise MalformedRequestError(f"body is not valid {encoding}: {exc}") from None
    if len(out) > limit:
        raise RequestTooLargeError(f"decompressed body exceeds {limit} bytes")
    return out


def _hex_ids_to_base64(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k in _HEX_ID_KEYS and isinstance(v, str):
                try:
                    v = base64.b64encode(bytes.fromhex(v)).decode()
                except ValueError:
                    raise MalformedRequestError(f"{k} {v!r} is not hex") from None
            else:
                v = _hex_ids_to_base64(v)
            out[k] = v
        return out
    if isinstance(node, list):
        return [_hex_ids_to_base64(v) for v in node]
    return node


def decode(signal: str, body: bytes, json_body: bool = False) -> Message:
    """The ``Export*ServiceRequest`` of ``signal`` ('metrics', 'logs', 'traces') from protobuf or OTLP/JSON."""
    request_type = SIGNALS[signal][0]
    if not json_body:
        try:
            return request_type.FromString(body)
        except (DecodeError, RuntimeError, ValueError) as exc:
            raise MalformedRequestError(f"not an OTLP {request_type.__name__} (protobuf): {exc}") from None
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedRequestError(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise MalformedRequestError("OTLP/JSON body must be an object")
    message = request_type()
    try:
        json_format.ParseDict(_hex_ids_to_base64(doc), message, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError) as exc:
        raise MalformedRequestError(f"not an OTLP {request_type.__name__} (JSON): {exc}") from None
    return message


def encode_response(signal: str, rejected: int = 0, message: str = "", json_body: bool = False) -> bytes:
    """An ``Export*ServiceResponse``, with ``partial_success`` when items were rejected."""
    response = SIGNALS[signal][1]()
    if rejected:
        field_name = {"metrics": "rejected_data_points", "logs": "rejected_log_records", "traces": "rejected_spans"}
        setattr(response.partial_success, field_name[signal], rejected)
        response.partial_success.error_message = message
    if json_body:
        return json_format.MessageToJson(response, indent=None).encode()
    return response.SerializeToString()


def encode_status(code: int, message: str, json_body: bool = False) -> bytes:
    """A ``google.rpc.Status`` body, as OTLP/HTTP error responses carry."""
    status = status_pb2.Status(code=code, message=message)
    if json_body:
        return json_format.MessageToJson(status, indent=None).encode()
    return status.SerializeToString()


# ----------------------------------------------------------------------------------------------------
# values and attributes
# ----------------------------------------------------------------------------------------------------
def any_value(v: Any) -> Any:
    """A Python value from an ``AnyValue`` (arrays become lists, kvlists dicts, bytes stay bytes)."""
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return v.int_value
    if kind == "double_value":
        return v.double_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value
    return None


def _wanted_value(v: Any) -> Any:
    """``any_value`` for the shapes ML records use (scalars, arrays of scalars), with fewer calls."""
    kind = v.WhichOneof("value")
    if kind == "array_value":
        out = []
        for x in v.array_value.values:
            k = x.WhichOneof("value")
            out.append(getattr(x, k) if k in _SCALAR_KINDS else any_value(x))
        return out
    if kind in _SCALAR_KINDS:
        return getattr(v, kind)
    return any_value(v)


_SCALAR_KINDS = frozenset({"string_value", "int_value", "double_value", "bool_value"})


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


def resource_key(resource_attrs: dict[str, Any]) -> str:
    """Identity of a sender (a replica): its resource attributes, canonically ordered."""
    return json.dumps(sorted((k, v) for k, v in resource_attrs.items() if not isinstance(v, (dict, bytes))),
                      default=str, separators=(",", ":"))


# ----------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class BinPoint:
    """One data point of an ML drift metric, flattened."""

    metric: str
    stream: str  # resource + scope + metric + attributes: one counter series
    model: str
    version: str
    feature: str
    start_ns: int
    time_ns: int
    temporality: int  # CUMULATIVE, DELTA, or 0 for gauges
    values: tuple  # one value per bin, starting at bin ``first_bin``
    first_bin: int


def metric_points(request: Message) -> tuple[list[BinPoint], int, int]:
    """The drift-relevant points of an ``ExportMetricsServiceRequest``: (points, total points, invalid points).

    ``ml.feature.bin.count`` and ``ml.baseline.bin.fraction`` points hold one bin (``ml.bin.index``);
    an ``ml.prediction.score`` histogram point holds all its buckets, which are the score bins.
    """
    points: list[BinPoint] = []
    total = invalid = 0
    for rm in request.resource_metrics:
        res = attributes(rm.resource.attributes)
        rkey = resource_key(res)
        for sm in rm.scope_metrics:
            scope = attributes(sm.scope.attributes)
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                data = getattr(m, kind) if kind else None
                n = len(data.data_points) if data is not None and hasattr(data, "data_points") else 0
                total += n
                if m.name not in DRIFT_METRICS or data is None:
                    continue
                for dp in data.data_points:
                    point = _bin_point(m.name, kind, data, dp, res, scope, rkey, sm.scope.name)
                    if point is None:
                        invalid += 1
                    else:
                        points.append(point)
    return points, total, invalid


def _lookup(key: str, *layers: dict[str, Any]) -> Any:
    for layer in layers:
        value = layer.get(key)
        if value is not None:
            return value
    return None


def _bin_point(name: str, kind: str, data: Any, dp: Any, res: dict, scope: dict, rkey: str,
               scope_name: str) -> BinPoint | None:
    attrs = attributes(dp.attributes)
    model = _lookup(semconv.MODEL_NAME, attrs, scope, res)
    if model is None:
        return None
    version = _lookup(semconv.MODEL_VERSION, attrs, scope, res)
    version = "" if version is None else str(version)
    stream = f"{rkey}|{scope_name}|{name}|{resource_key(attrs)}"
    if name == semconv.PREDICTION_SCORE_METRIC:
        if kind != "histogram":
            return None
        return BinPoint(name, stream, str(model), version, SCORE_FEATURE, dp.start_time_unix_nano,
                        dp.time_unix_nano, data.aggregation_temporality, tuple(dp.bucket_counts), 0)
    feature = attrs.get(semconv.FEATURE_NAME)
    index = attrs.get(semconv.BIN_INDEX)
    if feature is None or index is None:
        return None
    try:
        index = int(index)
    except (TypeError, ValueError):
        return None
    if index < 0 or index > 10_000:
        return None
    number = dp.as_double if dp.WhichOneof("value") == "as_double" else dp.as_int
    if name == semconv.FEATURE_BIN_COUNT:
        if kind != "sum":
            return None
        return BinPoint(name, stream, str(model), version, str(feature), dp.start_time_unix_nano,
                        dp.time_unix_nano, data.aggregation_temporality, (float(number),), index)
    if kind not in ("gauge", "sum"):
        return None
    return BinPoint(name, stream, str(model), version, str(feature), dp.start_time_unix_nano, dp.time_unix_nano,
                    0, (float(number),), index)


# ----------------------------------------------------------------------------------------------------
# logs
# ----------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Record:
    """A prediction or outcome record.

    An outcome record may carry its prediction too (``label``, ``score``, ``scores``, ``class_names`` and
    ``delay``: what ``otel_ml.records`` adds when the outcome met its prediction in the emitting process);
    the processor then needs no prediction record for it.
    """

    kind: str
    id: str
    model: str
    version: str
    time_ns: int
    label: Any = None
    score: float | None = None
    scores: list | None = None
    class_names: list | None = None
    model_type: str | None = None
    actual: Any = None
    delay: float | None = None  # seconds from prediction to outcome (outcome records)

    @property
    def has_prediction(self) -> bool:
        return self.label is not None or self.score is not None or self.scores is not None


_WANTED = frozenset({semconv.RECORD_KIND, semconv.PREDICTION_ID, semconv.MODEL_NAME, semconv.MODEL_VERSION,
                     semconv.PREDICTION_LABEL, semconv.PREDICTION_SCORE, semconv.PREDICTION_SCORES,
                     semconv.PREDICTION_CLASS_NAMES, semconv.OUTCOME_ACTUAL, semconv.OUTCOME_DELAY,
                     semconv.MODEL_TYPE})


def log_records(request: Message) -> tuple[list[Record], int, int, int]:
    """The prediction and outcome records of an ``ExportLogsServiceRequest``.

    Returns (records, log records in the request, invalid ML records, newest timestamp). A record with
    ``ml.record.kind`` but no prediction id, a prediction without model name, or an outcome without
    ``ml.outcome.actual`` is invalid (reported as rejected in ``partial_success``); log records without
    ``ml.record.kind`` are ignored. An outcome without model name (``otel_ml.outcomes`` leaves it out when
    the process never ran the model and was not given ``model=``) gets model "" and is joined by its
    prediction id alone.
    """
    records: list[Record] = []
    total = invalid = newest = 0
    kinds = (semconv.RECORD_KIND_PREDICTION, semconv.RECORD_KIND_OUTCOME)
    for rl in request.resource_logs:
        res: dict[str, Any] | None = None
        for sl in rl.scope_logs:
            scope: dict[str, Any] | None = None
            for lr in sl.log_records:
                total += 1
                a = {}
                for kv in lr.attributes:
                    key = kv.key
                    if key in _WANTED:
                        v = kv.value
                        value_kind = v.WhichOneof("value")
                        a[key] = getattr(v, value_kind) if value_kind in _SCALAR_KINDS else _wanted_value(v)
                kind = a.get(semconv.RECORD_KIND)
                if kind not in kinds:
                    continue
                if res is None:
                    res = {k: v for k, v in attributes(rl.resource.attributes).items() if k in _WANTED}
                if scope is None:
                    scope = {k: v for k, v in attributes(sl.scope.attributes).items() if k in _WANTED}
                    scope_type = _lookup(semconv.MODEL_TYPE, scope, res)
                pid = a.get(semconv.PREDICTION_ID)
                model = a.get(semconv.MODEL_NAME)
                if model is None:
                    model = _lookup(semconv.MODEL_NAME, scope, res)
                t = lr.time_unix_nano or lr.observed_time_unix_nano or time.time_ns()  # no time: received now
                if t > newest:
                    newest = t
                is_outcome = kind == semconv.RECORD_KIND_OUTCOME
                if not pid or (model is None and not is_outcome):
                    invalid += 1
                    continue
                if model is None:  # an outcome recorded where its model is unknown: joined by id alone
                    model = ""
                version = a.get(semconv.MODEL_VERSION)
                if version is None:
                    version = _lookup(semconv.MODEL_VERSION, scope, res)
                version = "" if version is None else str(version)
                if is_outcome and a.get(semconv.OUTCOME_ACTUAL) is None:
                    invalid += 1
                    continue
                score = a.get(semconv.PREDICTION_SCORE)
                scores = a.get(semconv.PREDICTION_SCORES)
                names = a.get(semconv.PREDICTION_CLASS_NAMES)
                delay = a.get(semconv.OUTCOME_DELAY)
                if not isinstance(score, (int, float)) or isinstance(score, bool) or score != score:
                    score = None
                if scores is not None and not (isinstance(scores, list) and all(
                        type(s) is float or (isinstance(s, (int, float)) and not isinstance(s, bool))
                        for s in scores)):
                    scores = None
                if not isinstance(names, list) or scores is None or len(names) != len(scores):
                    names = None
                if not isinstance(delay, (int, float)) or isinstance(delay, bool) or not delay >= 0:
                    delay = None
                records.append(Record(kind, str(pid), str(model), version, t, a.get(semconv.PREDICTION_LABEL),
                                      score, scores, names, a.get(semconv.MODEL_TYPE) or scope_type,
                                      a.get(semconv.OUTCOME_ACTUAL) if is_outcome else None, delay))
    return records, total, invalid, newest


def count_spans(request: Message) -> int:
    return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)

