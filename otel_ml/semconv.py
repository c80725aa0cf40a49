"""Every name otel-ml puts on the wire: span and log attributes, metric names, units and buckets.

This module is the single source of truth; ``docs/semantic-conventions.md`` documents each name and
``tests/test_semconv.py`` checks that the document and this module agree. Names follow OpenTelemetry's
conventions (dot-separated namespaces, ``error.type`` from the general registry) under an ``ml.`` namespace.

>>> MODEL_NAME
'ml.model.name'
>>> prometheus_name(OPERATION_DURATION, "s")
'ml_operation_duration_seconds'
"""

from __future__ import annotations

# --------------------------------------------------------------------------------------------
# Attributes: model identity (spans, metrics, logs)
# --------------------------------------------------------------------------------------------
MODEL_NAME = "ml.model.name"
MODEL_VERSION = "ml.model.version"
MODEL_ID = "ml.model.id"
MODEL_CLASS = "ml.model.class"
MODEL_TYPE = "ml.model.type"
OPERATION_NAME = "ml.operation.name"
ERROR_TYPE = "error.type"  # from the general OpenTelemetry registry

# Values of ml.model.type
MODEL_TYPE_BINARY = "binary_classification"
MODEL_TYPE_MULTICLASS = "multiclass_classification"
MODEL_TYPE_REGRESSION = "regression"
MODEL_TYPE_CLUSTERING = "clustering"
MODEL_TYPE_TRANSFORMER = "transformer"
MODEL_TYPE_UNKNOWN = "unknown"

# --------------------------------------------------------------------------------------------
# Attributes: inputs (spans)
# --------------------------------------------------------------------------------------------
INPUT_ROWS = "ml.input.rows"
INPUT_FEATURES = "ml.input.features"
INPUT_SAMPLED_ROWS = "ml.input.sampled_rows"  # rows the per-feature summaries were computed on
INPUT_FEATURE_NAMES = "ml.input.feature.names"  # parallel arrays, capped at max_features
INPUT_FEATURE_COUNT = "ml.input.feature.count"
INPUT_FEATURE_MISSING = "ml.input.feature.missing"
INPUT_FEATURE_MEAN = "ml.input.feature.mean"
INPUT_FEATURE_STD = "ml.input.feature.std"
INPUT_FEATURE_MIN = "ml.input.feature.min"  # raw capture only: one row's value
INPUT_FEATURE_MAX = "ml.input.feature.max"  # raw capture only: one row's value
INPUT_FEATURES_TRUNCATED = "ml.input.features_truncated"  # features left out of the arrays
INPUT_RAW = "ml.input.raw"  # JSON of the (masked) rows, raw capture only

# --------------------------------------------------------------------------------------------
# Attributes: predictions (spans, logs)
# --------------------------------------------------------------------------------------------
PREDICTION_ID = "ml.prediction.id"  # one row: the id; a batch: the id of row 0 (rows are id:0..n-1)
PREDICTION_LABEL = "ml.prediction.label"  # one row only
PREDICTION_SCORE = "ml.prediction.score"  # one row: score of the predicted class (or the regression value)
PREDICTION_CONFIDENCE_MIN = "ml.prediction.confidence.min"  # lowest top-class probability in the call
PREDICTION_CLASS_NAMES = "ml.prediction.class.names"  # batch: parallel arrays
PREDICTION_CLASS_COUNTS = "ml.prediction.class.counts"
PREDICTION_SCORE_MEAN = "ml.prediction.score.mean"
PREDICTION_SCORE_MIN = "ml.prediction.score.min"
PREDICTION_SCORE_MAX = "ml.prediction.score.max"
PREDICTION_SCORE_P50 = "ml.prediction.score.p50"
PREDICTION_SCORE_P90 = "ml.prediction.score.p90"

# --------------------------------------------------------------------------------------------
# Attributes: data health (spans, metrics, span events)
# --------------------------------------------------------------------------------------------
FEATURE_NAME = "ml.feature.name"
FEATURE_VALUE = "ml.feature.value"  # raw capture only
BIN_INDEX = "ml.bin.index"
VALIDATION_CHECK = "ml.validation.check"
VALIDATION_VIOLATIONS = "ml.validation.violations"
DRIFT_METHOD = "ml.drift.method"
DRIFT_DETECTED = "ml.drift.detected"
DRIFT_SCORE = "ml.drift.score"
DRIFT_PVALUE = "ml.drift.p_value"
DRIFT_SHARE = "ml.drift.share"
DRIFT_WINDOW_ROWS = "ml.drift.window.rows"
BASELINE_ID = "ml.baseline.id"
METRIC_NAME = "ml.performance.metric"  # accuracy, f1, roc_auc, mae, ...

# Span event names
EVENT_VALIDATION_VIOLATION = "ml.validation.violation"
EVENT_DRIFT_WINDOW = "ml.drift.window"

# --------------------------------------------------------------------------------------------
# Attributes: outcomes and prediction records (logs)
# --------------------------------------------------------------------------------------------
OUTCOME_ACTUAL = "ml.outcome.actual"
OUTCOME_DELAY = "ml.outcome.delay"  # seconds between prediction and outcome, when known
RECORD_KIND = "ml.record.kind"  # "prediction" or "outcome"
RECORD_KIND_PREDICTION = "prediction"
RECORD_KIND_OUTCOME = "outcome"
PREDICTION_SCORES = "ml.prediction.scores"  # per-class scores of one row (prediction records)
BUSINESS_UNIT = "ml.business_unit"  # resource attribute used by the gateway's routing

# --------------------------------------------------------------------------------------------
# Metrics: (name, unit). Prometheus names follow the collector's translation (see prometheus_name).
# --------------------------------------------------------------------------------------------
OPERATION_DURATION = "ml.operation.duration"  # histogram, s
INPUT_ROWS_METRIC = "ml.input.rows"  # counter, {row}
INPUT_BATCH_SIZE = "ml.input.batch.size"  # histogram, {row}
INPUT_MISSING = "ml.input.missing"  # counter, {value}; attr ml.feature.name
INPUT_ERRORS = "ml.input.errors"  # counter, {request}; attr error.type (rejected requests)
PREDICTION_SCORE_METRIC = "ml.prediction.score"  # histogram, 1
PREDICTION_COUNT = "ml.prediction.count"  # counter, {prediction}; attr ml.prediction.label
FEATURE_BIN_COUNT = "ml.feature.bin.count"  # counter, {row}; attrs ml.feature.name, ml.bin.index
BASELINE_BIN_FRACTION = "ml.baseline.bin.fraction"  # gauge, no unit; attrs ml.feature.name, ml.bin.index
VALIDATION_VIOLATIONS_METRIC = "ml.validation.violations"  # counter, {violation}
DRIFT_SCORE_METRIC = "ml.drift.score"  # gauge, no unit; attrs ml.feature.name, ml.drift.method
DRIFT_SHARE_METRIC = "ml.drift.share"  # gauge, no unit
PERFORMANCE = "ml.performance"  # gauge, no unit; attr ml.performance.metric
OUTCOME_COUNT = "ml.outcome.count"  # counter, {outcome}; attr ml.outcome.joined (true/false)
INSTRUMENTATION_ERRORS = "ml.instrumentation.errors"  # counter, {error}; attr error.type

UNIT_SECONDS = "s"
UNIT_ROWS = "{row}"
UNIT_VALUES = "{value}"
UNIT_REQUESTS = "{request}"
UNIT_PREDICTIONS = "{prediction}"
UNIT_VIOLATIONS = "{violation}"
UNIT_OUTCOMES = "{outcome}"
UNIT_ERRORS = "{error}"
UNIT_RATIO = "1"  # histograms of dimensionless values
UNIT_GAUGE = ""  # dimensionless gauges: no unit, so Prometheus adds no "_ratio" suffix

# Explicit bucket boundaries
DURATION_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 50000, 100000)
SCORE_BUCKETS = tuple(round(i / 20, 2) for i in range(1, 20))  # 0.05 .. 0.95: suits probabilities

# Attribute on ml.outcome.count
OUTCOME_JOINED = "ml.outcome.joined"

_UNIT_SUFFIX = {"s": "seconds", "1": "ratio"}


def prometheus_name(metric: str, unit: str, counter: bool = False) -> str:
    """The name the collector's Prometheus translation gives an OTel metric.

    Dots become underscores, a known unit is appended as a word, ``{annotations}`` are dropped and
    counters end in ``_total``.

    >>> prometheus_name(INPUT_ROWS_METRIC, UNIT_ROWS, counter=True)
    'ml_input_rows_total'
    """
    name = metric.replace(".", "_")
    suffix = _UNIT_SUFFIX.get(unit)
    if suffix and suffix != "ratio" and not name.endswith(suffix):
        name = f"{name}_{suffix}"
    if counter:
        name += "_total"
    return name


# --------------------------------------------------------------------------------------------
# Flask predict routes, prediction records and outcomes
# Names put on the wire by otel_ml.instrumentation.flask, otel_ml.records and otel_ml.outcomes;
# documented in docs/semantic-conventions.md ("Predict routes, records and outcomes"),
# docs/flask.md and docs/outcomes.md.
# --------------------------------------------------------------------------------------------
HTTP_ROUTE = "http.route"  # from the general registry; on ml.input.errors
EVENT_PREDICTION_RECORD = "ml.prediction.record"  # log record event name, ml.record.kind=prediction
EVENT_OUTCOME_RECORD = "ml.outcome.record"  # log record event name, ml.record.kind=outcome
INPUT_ERROR_INVALID_JSON = "invalid_json"  # error.type on ml.input.errors; otherwise the HTTP status code
PERFORMANCE_CLASSIFICATION = ("accuracy", "precision", "recall", "f1", "roc_auc", "log_loss", "brier")
PERFORMANCE_REGRESSION = ("mae", "rmse", "r2")  # values of ml.performance.metric


# --------------------------------------------------------------------------------------------
# Processor
# Names put on the wire by the collector-side processor (otel_ml.processor); documented in
# docs/processor.md. Gauges carry ml.model.name and ml.model.version plus the attributes noted.
# --------------------------------------------------------------------------------------------
WINDOW = "ml.window"  # attribute: the window a fleet value covers, e.g. "1h", "7d"
FLEET_DRIFT_SCORE = "ml.fleet.drift.score"  # gauge, 1; attrs ml.feature.name, ml.drift.method, ml.window
FLEET_DRIFT_SHARE = "ml.fleet.drift.share"  # gauge, 1; attrs ml.drift.method, ml.window
FLEET_DRIFT_ROWS = "ml.fleet.drift.rows"  # gauge, {row}; attr ml.window: rows the window's drift is computed on
FLEET_PERFORMANCE = "ml.fleet.performance"  # gauge, 1; attrs ml.performance.metric, ml.window (realised)
FLEET_PERFORMANCE_ESTIMATED = "ml.fleet.performance.estimated"  # gauge, 1; same attrs (CBPE-style estimate)
FLEET_PREDICTIONS = "ml.fleet.predictions"  # gauge, {prediction}; attr ml.window: prediction records in window
FLEET_OUTCOME_COVERAGE = "ml.fleet.outcome.coverage"  # gauge, 1; attr ml.window: share of them with an outcome

PROCESSOR_SIGNAL = "ml.processor.signal"  # attribute: metrics, logs or traces
PROCESSOR_REASON = "ml.processor.reason"  # attribute: why a request was rejected or an item dropped
PROCESSOR_TABLE = "ml.processor.table"  # attribute: predictions or pending_outcomes
PROCESSOR_RECEIVED = "ml.processor.received"  # counter, {item}: data points / log records / spans accepted
PROCESSOR_REJECTED = "ml.processor.rejected"  # counter, {request}: requests refused (attr ml.processor.reason)
PROCESSOR_DROPPED = "ml.processor.dropped"  # counter, {item}: items accepted or stored, then discarded
PROCESSOR_JOINED = "ml.processor.joined"  # counter, {outcome}: outcomes joined to their prediction
PROCESSOR_STORE_ROWS = "ml.processor.store.rows"  # gauge, {row}; attr ml.processor.table
PROCESSOR_STORE_SIZE = "ml.processor.store.size"  # gauge, By: database file size (with WAL)
PROCESSOR_SERIES = "ml.processor.series"  # gauge, {series}: counter series tracked for fleet drift
PROCESSOR_LAG = "ml.processor.lag"  # gauge, s; attr ml.processor.signal: now - newest timestamp received
PROCESSOR_JOIN_DELAY = "ml.processor.join.delay"  # histogram, s: prediction time -> its outcome joined

UNIT_ITEMS = "{item}"
UNIT_SERIES = "{series}"
UNIT_BYTES = "By"
JOIN_DELAY_BUCKETS = (
    1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 3 * 86400.0, 7 * 86400.0, 30 * 86400.0,
)  # fmt: skip
