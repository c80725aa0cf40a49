"""Every ``OTEL_ML_*`` environment variable, parsed and validated in one place.

Each variable is declared once in ``VARIABLES``; :func:`load` reads them into a frozen :class:`Config`
and raises :class:`ConfigError` naming the variable and the bad value. The launcher lists them through
the ``opentelemetry_environment_variables`` entry point (this module's ``ENVIRONMENT_VARIABLES``).

>>> load({"OTEL_ML_MAX_FEATURES": "8"}).max_features
8
>>> load({"OTEL_ML_MAX_FEATURES": "eight"})
Traceback (most recent call last):
...
otel_ml.config.ConfigError: OTEL_ML_MAX_FEATURES='eight': expected an integer >= 1
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

INFERENCE_METHODS = ("predict", "predict_proba", "predict_log_proba", "decision_function", "transform", "score")
TRAINING_METHODS = ("fit", "fit_transform", "fit_predict", "partial_fit")
DRIFT_METHODS = ("psi", "jensen_shannon", "wasserstein")  # otel_ml.drift.DISTANCE_METHODS


class ConfigError(ValueError):
    """An ``OTEL_ML_*`` variable holds a value otel-ml cannot use."""


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def int_at_least(minimum: int) -> Callable[[Any], int]:
    """A parser of integers >= ``minimum``, from an environment string or a config file's value.

    >>> int_at_least(2)("5"), int_at_least(2)(7)
    (5, 7)
    """
    def parse(raw: Any) -> int:
        try:
            value = int(raw)
        except (TypeError, ValueError):
            value = minimum - 1
        if value < minimum or isinstance(raw, bool):
            raise ValueError(f"expected an integer >= {minimum}")
        return value

    return parse


def fraction(raw: Any) -> float:
    """A number from 0 to 1, from an environment string or a config file's value."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = -1.0
    if not 0.0 <= value <= 1.0 or isinstance(raw, bool):
        raise ValueError("expected a number from 0 to 1")
    return value


def positive_float(raw: Any) -> float:
    """A number > 0, from an environment string or a config file's value."""
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = -1.0
    if value <= 0 or isinstance(raw, bool):
        raise ValueError("expected a number > 0")
    return value


def _choices(allowed: tuple[str, ...], what: str = "method") -> Callable[[str], tuple[str, ...]]:
    def parse(raw: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in raw.split(",") if n.strip())
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise ValueError(f"unknown {what} {unknown[0]!r}; choose from {', '.join(allowed)}")
        return names

    return parse


def _text(raw: str) -> str:
    return raw.strip()


def _names(raw: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in raw.split(",") if n.strip())


DISABLED = ""  # a name variable set to "none" (any case): the feature it names is off


def _name_or_none(raw: str) -> str:
    """A header or field name; ``none`` turns the feature off (an empty value means the default)."""
    value = raw.strip()
    return DISABLED if value.lower() == "none" else value


@dataclass(frozen=True)
class Variable:
    env: str
    field: str
    default: Any
    parse: Callable[[str], Any]
    doc: str


VARIABLES: tuple[Variable, ...] = (
    Variable("OTEL_ML_MODEL_NAME", "model_name", None, _text,
             "Model name for every instrumented model (default: the file stem it was loaded from, else the class)."),
    Variable("OTEL_ML_MODEL_VERSION", "model_version", None, _text,
             "Model version (default: unset, reported as 'unknown')."),
    Variable("OTEL_ML_INFERENCE_METHODS", "inference_methods", INFERENCE_METHODS, _choices(INFERENCE_METHODS),
             "Comma-separated inference methods to instrument."),
    Variable("OTEL_ML_TRAINING_ENABLED", "training_enabled", True, _bool,
             "Trace fit, fit_transform, fit_predict and partial_fit."),
    Variable("OTEL_ML_TRAINING_METHODS", "training_methods", TRAINING_METHODS, _choices(TRAINING_METHODS),
             "Comma-separated training methods to instrument when training is enabled."),
    Variable("OTEL_ML_FEATURE_SUMMARIES", "feature_summaries", True, _bool,
             "Put per-feature summaries (count, missing, mean, std) on spans of large enough batches."),
    Variable("OTEL_ML_SUMMARY_MIN_ROWS", "summary_min_rows", 10, int_at_least(2),
             "Smallest batch that gets per-feature summaries: below it a summary would reveal rows."),
    Variable("OTEL_ML_MAX_FEATURES", "max_features", 32, int_at_least(1),
             "Most features named in span arrays and metric attributes; the rest are counted, not named."),
    Variable("OTEL_ML_MAX_CLASSES", "max_classes", 32, int_at_least(1),
             "Most class labels used as metric attribute values; further labels are reported as 'other'."),
    Variable("OTEL_ML_SUMMARY_MAX_ROWS", "summary_max_rows", 1000, int_at_least(10),
             "Batches larger than this are summarised (means, bins, validation) on an evenly spaced sample "
             "of this many rows; row counts, class counts and scores stay exact."),
    Variable("OTEL_ML_CAPTURE_RAW", "capture_raw", False, _bool,
             "Opt in to raw feature values (min/max, violating values, prediction-record inputs)."),
    Variable("OTEL_ML_MASK_FEATURES", "mask_features", (), _names,
             "Features masked even when raw capture is on (comma-separated)."),
    Variable("OTEL_ML_MAX_CHILD_SPANS", "max_child_spans", 64, int_at_least(0),
             "Most child spans (pipeline steps, search-CV fits) under one outer model span."),
    Variable("OTEL_ML_BASELINE_PATH", "baseline_path", None, _text,
             "Baseline JSON file (default: <model file stem>.baseline.json next to the model file)."),
    Variable("OTEL_ML_CAPTURE_BASELINE", "capture_baseline", False, _bool,
             "Capture a baseline from the training data when fit runs, stored inside the fitted model."),
    Variable("OTEL_ML_BASELINE_BINS", "baseline_bins", 10, int_at_least(2),
             "Quantile bins per numeric feature of a baseline captured at fit."),
    Variable("OTEL_ML_BASELINE_TOP_K", "baseline_top_k", 20, int_at_least(1),
             "Categories kept per categorical feature of a baseline captured at fit (the rest: __other__)."),
    Variable("OTEL_ML_DRIFT_WINDOW_ROWS", "drift_window_rows", 1000, int_at_least(10),
             "Rows in a drift window; a window also closes after OTEL_ML_DRIFT_WINDOW_SECONDS."),
    Variable("OTEL_ML_DRIFT_WINDOW_SECONDS", "drift_window_seconds", 300.0, positive_float,
             "Seconds after which a drift window with at least OTEL_ML_DRIFT_MIN_ROWS rows closes."),
    Variable("OTEL_ML_DRIFT_MIN_ROWS", "drift_min_rows", 100, int_at_least(1),
             "Fewest rows a time-closed window needs to be scored."),
    Variable("OTEL_ML_DRIFT_THRESHOLD_PSI", "drift_threshold_psi", 0.1, positive_float,
             "PSI above which a feature counts as drifted."),
    Variable("OTEL_ML_DRIFT_THRESHOLD_JS", "drift_threshold_js", 0.1, positive_float,
             "Jensen-Shannon distance above which a feature counts as drifted."),
    Variable("OTEL_ML_DRIFT_THRESHOLD_WASSERSTEIN", "drift_threshold_wasserstein", 0.1, positive_float,
             "Normalised Wasserstein distance above which a feature counts as drifted."),
    Variable("OTEL_ML_DRIFT_ALERT_ON_PVALUE", "drift_alert_on_pvalue", False, _bool,
             "Also flag drift when a KS / chi-square p-value is below OTEL_ML_DRIFT_PVALUE."),
    Variable("OTEL_ML_DRIFT_PVALUE", "drift_pvalue", 0.05, fraction,
             "p-value threshold used when OTEL_ML_DRIFT_ALERT_ON_PVALUE is on."),
    Variable("OTEL_ML_DRIFT_SHARE_THRESHOLD", "drift_share_threshold", 0.5, fraction,
             "Share of drifted features at or above which the dataset counts as drifted."),
    Variable("OTEL_ML_DRIFT_METHODS", "drift_methods", DRIFT_METHODS, _choices(DRIFT_METHODS, "drift method"),
             "Distances that flag a feature as drifted (all are computed and exported)."),
    Variable("OTEL_ML_VALIDATION_ENABLED", "validation_enabled", True, _bool,
             "Check every call's inputs against the model's baseline (on otel-ml's background thread; in "
             "strict mode before the model runs); off keeps drift and data-quality metrics."),
    Variable("OTEL_ML_VALIDATION_STRICT", "validation_strict", False, _bool,
             "Raise InputValidationError before the model runs when an input violates the baseline."),
    Variable("OTEL_ML_VALIDATION_RANGE_MARGIN", "validation_range_margin", 0.1, fraction,
             "A value is out of range when it lies beyond the baseline's min/max by more than this share "
             "of the baseline's range."),
    Variable("OTEL_ML_VALIDATION_COMPLETENESS_TOLERANCE", "validation_completeness_tolerance", 0.05, fraction,
             "Completeness may fall this far below the baseline's before it is a violation."),
    Variable("OTEL_ML_MAX_VIOLATION_EVENTS", "max_violation_events", 5, int_at_least(0),
             "Most validation-violation span events on one span."),
    Variable("OTEL_ML_PREDICT_ROUTES", "predict_routes", (), _names,
             "Flask routes (url rules, comma-separated) treated as predict routes even before they call a model."),
    Variable("OTEL_ML_PREDICTION_ID_HEADER", "prediction_id_header", "X-Prediction-Id", _name_or_none,
             "Response header carrying the prediction id(s) of a predict request; 'none' disables it."),
    Variable("OTEL_ML_PREDICTION_ID_FIELD", "prediction_id_field", DISABLED, _name_or_none,
             "JSON field (e.g. prediction_id) added to JSON predict responses with the prediction id(s); "
             "'none' (the default) leaves response bodies as the app made them."),
    Variable("OTEL_ML_PREDICTION_RECORDS_RATE", "prediction_records_rate", 0.0, fraction,
             "Share of predictions emitted as prediction-record log records (0 disables)."),
    Variable("OTEL_ML_OUTCOME_MAX_PENDING", "outcome_max_pending", 100_000, int_at_least(1),
             "Most recent prediction rows kept in memory to join with outcomes in process."),
    Variable("OTEL_ML_OUTCOME_MAX_AGE_SECONDS", "outcome_max_age_seconds", 86_400.0, positive_float,
             "Oldest prediction (seconds) still joined with an arriving outcome in process."),
    Variable("OTEL_ML_PERFORMANCE_WINDOW", "performance_window", 1000, int_at_least(1),
             "Joined outcomes in the in-process performance window."),
)

ENVIRONMENT_VARIABLES = tuple(v.env for v in VARIABLES)


@dataclass(frozen=True)
class Config:
    model_name: str | None
    model_version: str | None
    inference_methods: tuple[str, ...]
    training_enabled: bool
    training_methods: tuple[str, ...]
    feature_summaries: bool
    summary_min_rows: int
    max_features: int
    max_classes: int
    summary_max_rows: int
    capture_raw: bool
    mask_features: tuple[str, ...]
    max_child_spans: int
    baseline_path: str | None
    capture_baseline: bool
    baseline_bins: int
    baseline_top_k: int
    drift_window_rows: int
    drift_window_seconds: float
    drift_min_rows: int
    drift_threshold_psi: float
    drift_threshold_js: float
    drift_threshold_wasserstein: float
    drift_alert_on_pvalue: bool
    drift_pvalue: float
    drift_share_threshold: float
    drift_methods: tuple[str, ...]
    validation_enabled: bool
    validation_strict: bool
    validation_range_margin: float
    validation_completeness_tolerance: float
    max_violation_events: int
    predict_routes: tuple[str, ...]
    prediction_id_header: str
    prediction_id_field: str
    prediction_records_rate: float
    outcome_max_pending: int
    outcome_max_age_seconds: float
    performance_window: int

    @property
    def methods(self) -> tuple[str, ...]:
        """Every method to patch: inference methods plus, when enabled, training methods."""
        return self.inference_methods + (self.training_methods if self.training_enabled else ())


assert {v.field for v in VARIABLES} == {f.name for f in fields(Config)}, "VARIABLES and Config disagree"


def load(environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
    """Read every variable from ``environ`` (default ``os.environ``); ``overrides`` win over both."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for var in VARIABLES:
        raw = environ.get(var.env)
        if raw is None or raw.strip() == "" and var.default is not None:
            values[var.field] = var.default
            continue
        try:
            values[var.field] = var.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{var.env}={raw!r}: {exc}") from None
    values.update(overrides)
    return Config(**values)


def markdown() -> str:
    """``docs/configuration.md``, generated from ``VARIABLES``: ``python -m otel_ml.config > docs/configuration.md``."""
    lines = [
        "# Configuration", "",
        "Every setting is an environment variable, read once when the instrumentor starts",
        "(`otel_ml/config.py`); an invalid value stops start-up with an error naming the variable and the value.",
        "`opentelemetry-instrument` also accepts each as a flag (`OTEL_ML_MODEL_NAME` → `--ml_model_name`).",
        "The standard `OTEL_*` variables (service name, exporters, endpoints, sampling) work as usual; two of them",
        "also set otel-ml's pace: `OTEL_BSP_SCHEDULE_DELAY` (default 5000 ms), how often its background thread",
        "writes the queued calls' spans and counts (sooner after 256 calls with spans or 4096 without), and",
        "`OTEL_METRIC_EXPORT_INTERVAL` (default 60000 ms), how often its metrics are exported.", "",
        "| variable | default | meaning |", "|---|---|---|",
    ]
    for var in VARIABLES:
        default = var.default
        if isinstance(default, tuple):
            default = ",".join(default) if default else "(empty)"
        elif default == DISABLED and var.parse is _name_or_none:
            default = "none"
        lines.append(f"| `{var.env}` | `{'(unset)' if default is None else default}` | {var.doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
