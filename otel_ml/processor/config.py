"""The processor's configuration: one YAML (or TOML) file, then ``OTEL_ML_PROCESSOR_*`` variables on top.

Every key, its default and its variable are in :data:`FIELDS`; ``docs/processor.md`` has the same table.
The file may use the collector's ``${env:NAME}`` and ``${env:NAME:-default}`` substitution. Durations are
numbers of seconds or strings with a unit (``500ms``, ``30s``, ``5m``, ``2h``, ``7d``); sizes are bytes or
strings with ``KiB``/``MiB``/``GiB``.

>>> cfg = load(env={"OTEL_ML_PROCESSOR_DRIFT_WINDOWS": "1h,1d", "OTEL_ML_PROCESSOR_STORE_PATH": ":memory:"})
>>> cfg.drift_windows, cfg.store_path, cfg.grpc_endpoint
((3600.0, 86400.0), ':memory:', '127.0.0.1:4717')
>>> load(env={"OTEL_ML_PROCESSOR_PERFORMANCE_HORIZON": "soon"})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
otel_ml.processor.config.ProcessorConfigError: performance.horizon (...)='soon': expected a duration such as 30s, ...
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from otel_ml.config import int_at_least, positive_float

CONFIG_ENV = "OTEL_ML_PROCESSOR_CONFIG"
DEFAULT_GRPC_ENDPOINT = "127.0.0.1:4717"
DEFAULT_HTTP_ENDPOINT = "127.0.0.1:4718"


class ProcessorConfigError(ValueError):
    """A configuration value the processor cannot use; the message names the key, the variable and the value."""


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_SIZES = {"": 1, "b": 1, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "kb": 1000, "mb": 1000**2, "gb": 1000**3}


def parse_duration(raw: Any) -> float:
    """Seconds from ``90``, ``"90s"``, ``"1.5m"``, ``"2h"`` or ``"7d"``.

    >>> parse_duration("1.5m"), parse_duration(2), parse_duration("250ms")
    (90.0, 2.0, 0.25)
    """
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        value = float(raw)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|h|d|w)?\s*", str(raw))
        if not m:
            raise ValueError("expected a duration such as 30s, 5m, 2h or 7d")
        value = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    if value <= 0:
        raise ValueError("expected a duration > 0")
    return value


def format_duration(seconds: float) -> str:
    """The short label of a window, as put in the ``ml.window`` attribute.

    >>> format_duration(3600), format_duration(86400 * 7), format_duration(90)
    ('1h', '7d', '90s')
    """
    for unit in ("w", "d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size and float(seconds / size).is_integer():
            return f"{int(seconds // size)}{unit}" if unit != "w" else f"{int(seconds // 86400)}d"
    return f"{seconds:g}s"


def _size(raw: Any) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        value = raw
    else:
        m = re.fullmatch(r"\s*([0-9]+)\s*([kmg]i?b|b)?\s*", str(raw).lower())
        if not m:
            raise ValueError("expected a size in bytes, or with KiB / MiB / GiB")
        value = int(m.group(1)) * _SIZES[m.group(2) or ""]
    if value < 1:
        raise ValueError("expected a size >= 1 byte")
    return value


def _durations(raw: Any) -> tuple[float, ...]:
    items = raw if isinstance(raw, (list, tuple)) else [s for s in str(raw).split(",") if s.strip()]
    if not items:
        raise ValueError("expected at least one duration")
    return tuple(sorted({parse_duration(i) for i in items}))


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        value = str(raw).strip().lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return value

    return parse


def _methods(raw: Any) -> tuple[str, ...]:
    items = raw if isinstance(raw, (list, tuple)) else [s.strip() for s in str(raw).split(",") if s.strip()]
    allowed = ("psi", "jensen_shannon")
    bad = [m for m in items if m not in allowed]
    if bad or not items:
        raise ValueError(f"expected methods from {', '.join(allowed)}")
    return tuple(dict.fromkeys(items))


def _str(raw: Any) -> str:
    return str(raw)


def _optional_str(raw: Any) -> str | None:
    value = str(raw).strip() if raw is not None else ""
    return value or None


def _headers(raw: Any) -> dict[str, str]:
    if isinstance(raw, Mapping):
        return {str(k): str(v) for k, v in raw.items()}
    pairs = [p for p in str(raw).split(",") if p.strip()]
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ValueError("expected key=value pairs separated by commas")
        k, v = pair.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _baselines(raw: Any) -> dict[str, str]:
    if isinstance(raw, Mapping):
        return {str(k): str(v) for k, v in raw.items()}
    try:
        return _headers(raw)
    except ValueError:
        raise ValueError("expected a mapping of model name to baseline file (variable: model=path,...)") from None


@dataclass(frozen=True)
class Field:
    attr: str  # ProcessorConfig attribute
    key: str  # dotted key in the file
    env: str  # environment variable
    default: Any
    parse: Callable[[Any], Any]
    doc: str


FIELDS: tuple[Field, ...] = (
    Field("instance_id", "instance_id", "OTEL_ML_PROCESSOR_INSTANCE_ID", None, _optional_str,
          "service.instance.id of this instance (default: a new UUID per start)"),
    Field("service_name", "service_name", "OTEL_ML_PROCESSOR_SERVICE_NAME", "otel-ml-processor", _str,
          "service.name on everything the processor exports"),
    Field("grpc_endpoint", "receivers.grpc.endpoint", "OTEL_ML_PROCESSOR_GRPC_ENDPOINT", DEFAULT_GRPC_ENDPOINT,
          _optional_str, "OTLP/gRPC listen address (empty: no gRPC receiver)"),
    Field("http_endpoint", "receivers.http.endpoint", "OTEL_ML_PROCESSOR_HTTP_ENDPOINT", DEFAULT_HTTP_ENDPOINT,
          _optional_str, "OTLP/HTTP listen address; also serves /health and /status"),
    Field("max_request_bytes", "receivers.max_request_bytes", "OTEL_ML_PROCESSOR_MAX_REQUEST_BYTES", 16 * 1024**2,
          _size, "largest request accepted, after decompression (gRPC RESOURCE_EXHAUSTED / HTTP 413 above)"),
    Field("max_inflight", "limits.max_inflight_requests", "OTEL_ML_PROCESSOR_MAX_INFLIGHT", 2, int_at_least(1),
          "requests processed at once; others wait for queue_wait, then are refused with UNAVAILABLE / 503"),
    Field("queue_wait", "limits.queue_wait", "OTEL_ML_PROCESSOR_QUEUE_WAIT", 0.5, parse_duration,
          "how long a request may wait for a processing slot"),
    Field("retry_after", "limits.retry_after", "OTEL_ML_PROCESSOR_RETRY_AFTER", 2.0, parse_duration,
          "back-off asked of clients when overloaded (Retry-After, gRPC RetryInfo)"),
    Field("max_connections", "limits.max_http_connections", "OTEL_ML_PROCESSOR_MAX_HTTP_CONNECTIONS", 64,
          int_at_least(1), "open HTTP connections; more are answered 503 and closed"),
    Field("export_endpoint", "export.endpoint", "OTEL_ML_PROCESSOR_EXPORT_ENDPOINT", None, _optional_str,
          "OTLP endpoint for derived metrics (default: the SDK's OTEL_EXPORTER_OTLP_* variables; 'none': off)"),
    Field("export_protocol", "export.protocol", "OTEL_ML_PROCESSOR_EXPORT_PROTOCOL", "grpc",
          _choice("grpc", "http/protobuf"), "OTLP protocol of the export"),
    Field("export_interval", "export.interval", "OTEL_ML_PROCESSOR_EXPORT_INTERVAL", 15.0, parse_duration,
          "metric export interval"),
    Field("export_timeout", "export.timeout", "OTEL_ML_PROCESSOR_EXPORT_TIMEOUT", 5.0, parse_duration,
          "deadline of one export, retries included (also bounds the final export at shutdown)"),
    Field("export_headers", "export.headers", "OTEL_ML_PROCESSOR_EXPORT_HEADERS", {}, _headers,
          "extra export headers (file: mapping; variable: k=v,k2=v2)"),
    Field("export_insecure", "export.insecure", "OTEL_ML_PROCESSOR_EXPORT_INSECURE", True,
          lambda r: str(r).strip().lower() in ("1", "true", "yes", "on"), "plaintext gRPC export"),
    Field("compute_interval", "compute_interval", "OTEL_ML_PROCESSOR_COMPUTE_INTERVAL", 10.0, parse_duration,
          "how often fleet drift and performance are recomputed and state is checkpointed"),
    Field("drift_windows", "drift.windows", "OTEL_ML_PROCESSOR_DRIFT_WINDOWS", (3600.0, 86400.0), _durations,
          "drift windows (each a multiple of drift.slot)"),
    Field("drift_slot", "drift.slot", "OTEL_ML_PROCESSOR_DRIFT_SLOT", 300.0, parse_duration,
          "time resolution of drift windows"),
    Field("drift_methods", "drift.methods", "OTEL_ML_PROCESSOR_DRIFT_METHODS", ("psi", "jensen_shannon"),
          _methods, "distances computed per feature"),
    Field("threshold_psi", "drift.thresholds.psi", "OTEL_ML_PROCESSOR_THRESHOLD_PSI", 0.1, positive_float,
          "a feature counts as drifted in ml.fleet.drift.share at PSI >= this"),
    Field("threshold_js", "drift.thresholds.jensen_shannon", "OTEL_ML_PROCESSOR_THRESHOLD_JS", 0.1,
          positive_float, "same for the Jensen-Shannon distance"),
    Field("drift_min_rows", "drift.min_rows", "OTEL_ML_PROCESSOR_DRIFT_MIN_ROWS", 100, int_at_least(1),
          "fewest rows in a window for a feature's drift to be reported"),
    Field("series_ttl", "drift.series_ttl", "OTEL_ML_PROCESSOR_SERIES_TTL", 6 * 3600.0, parse_duration,
          "a counter series not seen for this long is forgotten (its counts stay in the windows)"),
    Field("max_series", "drift.max_series", "OTEL_ML_PROCESSOR_MAX_SERIES", 500_000, int_at_least(1),
          "counter series tracked at most; data points of further series are dropped (reason series_limit)"),
    Field("performance_windows", "performance.windows", "OTEL_ML_PROCESSOR_PERFORMANCE_WINDOWS",
          (86400.0, 7 * 86400.0), _durations, "performance windows, over prediction time"),
    Field("horizon", "performance.horizon", "OTEL_ML_PROCESSOR_PERFORMANCE_HORIZON", 30 * 86400.0, parse_duration,
          "how long a prediction waits for its outcome"),
    Field("outcome_wait", "performance.outcome_wait", "OTEL_ML_PROCESSOR_OUTCOME_WAIT", 86400.0, parse_duration,
          "how long an outcome waits for a prediction that has not arrived yet"),
    Field("average", "performance.average", "OTEL_ML_PROCESSOR_AVERAGE", "macro", _choice("macro", "weighted"),
          "multiclass averaging of precision, recall, F1 and ROC AUC"),
    Field("performance_interval", "performance.interval", "OTEL_ML_PROCESSOR_PERFORMANCE_INTERVAL", 30.0,
          parse_duration, "shortest time between two recomputations of a model version's performance (each "
          "reads the window's rows from the store)"),
    Field("min_pairs", "performance.min_pairs", "OTEL_ML_PROCESSOR_MIN_PAIRS", 1, int_at_least(1),
          "fewest joined pairs in a window for realised performance to be reported"),
    Field("baselines", "performance.baselines", "OTEL_ML_PROCESSOR_BASELINES", {}, _baselines,
          "model name -> baseline JSON with a calibration table, for the estimate (optional)"),
    Field("store_path", "store.path", "OTEL_ML_PROCESSOR_STORE_PATH", "otel-ml-processor.db", _str,
          "SQLite file (':memory:' keeps nothing across restarts)"),
    Field("max_rows", "store.max_rows", "OTEL_ML_PROCESSOR_STORE_MAX_ROWS", 2_000_000, int_at_least(100),
          "predictions + waiting outcomes kept at most; the oldest predictions are evicted first"),
    Field("synchronous", "store.synchronous", "OTEL_ML_PROCESSOR_STORE_SYNCHRONOUS", "normal",
          _choice("normal", "full"), "SQLite synchronous mode (normal: safe against process crashes, full: "
          "also against power loss)"),
)
_BY_ATTR = {f.attr: f for f in FIELDS}


@dataclass(frozen=True)
class ProcessorConfig:
    """Effective configuration. Build it with :func:`load`; ``replace`` from ``dataclasses`` for tests."""

    instance_id: str | None = None
    service_name: str = "otel-ml-processor"
    grpc_endpoint: str | None = DEFAULT_GRPC_ENDPOINT
    http_endpoint: str | None = DEFAULT_HTTP_ENDPOINT
    max_request_bytes: int = 16 * 1024**2
    max_inflight: int = 2
    queue_wait: float = 0.5
    retry_after: float = 2.0
    max_connections: int = 64
    export_endpoint: str | None = None
    export_protocol: str = "grpc"
    export_interval: float = 15.0
    export_timeout: float = 5.0
    export_headers: dict = field(default_factory=dict)
    export_insecure: bool = True
    compute_interval: float = 10.0
    drift_windows: tuple = (3600.0, 86400.0)
    drift_slot: float = 300.0
    drift_methods: tuple = ("psi", "jensen_shannon")
    threshold_psi: float = 0.1
    threshold_js: float = 0.1
    drift_min_rows: int = 100
    series_ttl: float = 6 * 3600.0
    max_series: int = 500_000
    performance_windows: tuple = (86400.0, 7 * 86400.0)
    horizon: float = 30 * 86400.0
    outcome_wait: float = 86400.0
    average: str = "macro"
    performance_interval: float = 30.0
    min_pairs: int = 1
    baselines: dict = field(default_factory=dict)
    store_path: str = "otel-ml-processor.db"
    max_rows: int = 2_000_000
    synchronous: str = "normal"

    def __post_init__(self) -> None:
        if self.instance_id is None:
            object.__setattr__(self, "instance_id", str(uuid.uuid4()))
        for w in self.drift_windows:
            if abs(w / self.drift_slot - round(w / self.drift_slot)) > 1e-9 or w < self.drift_slot:
                raise ProcessorConfigError(f"drift.windows: {format_duration(w)} is not a multiple of drift.slot "
                                           f"{format_duration(self.drift_slot)}")

    @property
    def thresholds(self) -> dict[str, float]:
        return {"psi": self.threshold_psi, "jensen_shannon": self.threshold_js}

    @property
    def retention(self) -> float:
        """How long a prediction is kept: the horizon or the longest performance window, whichever is longer."""
        return max(self.horizon, max(self.performance_windows))


_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def substitute_env(text: str, env: Mapping[str, str]) -> str:
    """The collector's ``${env:NAME}`` / ``${env:NAME:-default}`` substitution.

    >>> substitute_env("a: ${env:X:-1}, b: ${env:Y}", {"Y": "2"})
    'a: 1, b: 2'
    """
    return _ENV_REF.sub(lambda m: env.get(m.group(1), m.group(2) if m.group(2) is not None else ""), text)


def read_file(path: str | os.PathLike[str], env: Mapping[str, str]) -> dict[str, Any]:
    """A YAML (``.yaml``/``.yml``) or TOML (``.toml``) configuration file as a nested dict."""
    p = Path(path)
    try:
        text = substitute_env(p.read_text(), env)
    except OSError as exc:
        raise ProcessorConfigError(f"cannot read configuration file {p}: {exc.strerror}") from None
    if p.suffix == ".toml":
        import tomllib

        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ProcessorConfigError(f"{p}: {exc}") from None
    else:
        try:
            import yaml
        except ImportError:  # pragma: no cover - PyYAML is in the processor extra
            raise ProcessorConfigError(f"{p}: reading YAML needs PyYAML (pip install pyyaml), or use TOML") from None
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ProcessorConfigError(f"{p}: {exc}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ProcessorConfigError(f"{p}: expected a mapping at the top level")
    return doc


def _flatten(doc: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in doc.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and key not in ("export.headers", "performance.baselines"):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def load(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> ProcessorConfig:
    """File (``path``, else ``$OTEL_ML_PROCESSOR_CONFIG``, else none), then variables, then defaults."""
    env = os.environ if env is None else env
    path = path or env.get(CONFIG_ENV) or None
    flat = _flatten(read_file(path, env)) if path else {}
    known = {f.key for f in FIELDS}
    unknown = sorted(k for k in flat if k not in known)
    if unknown:
        raise ProcessorConfigError(f"{path}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(known))}")
    values: dict[str, Any] = {}
    for f in FIELDS:
        source, raw = None, None
        if f.env in env and env[f.env] != "":
            source, raw = f.env, env[f.env]
        elif f.key in flat:
            source, raw = f.key, flat[f.key]
        if source is None:
            continue
        try:
            values[f.attr] = f.parse(raw)
        except ValueError as exc:
            raise ProcessorConfigError(f"{f.key} ({f.env})={raw!r}: {exc}") from None
    return ProcessorConfig(**values)


def describe(config: ProcessorConfig) -> dict[str, Any]:
    """The effective configuration as a flat mapping of file keys (secrets in headers masked)."""
    out = {}
    for f in fields(config):
        spec = _BY_ATTR[f.name]
        value = getattr(config, f.name)
        if f.name == "export_headers":
            value = {k: "***" for k in value}
        out[spec.key] = list(value) if isinstance(value, tuple) else value
    return out
