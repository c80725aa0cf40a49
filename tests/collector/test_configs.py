"""Tests of the collector configs in collector-config/ and of the local stack (scripts/stack.sh).

* Every otelcol-ml config passes ``otelcol-ml validate`` (dummy secrets in the environment).
* Every otelcol-ml config also starts ("Everything is ready") on free loopback ports, with vendor
  endpoints pointed at a closed loopback port: some settings (tail-sampling OTTL conditions, for one)
  are only checked when the components are created, not by ``validate``.
* The Jaeger and Prometheus configs and the Prometheus rule files pass their own checkers.
* End to end (marker ``e2e``, needs ``scripts/stack.sh start``): spans sent with the OpenTelemetry SDK
  to the agent (127.0.0.1:4317) reach Jaeger through the gateway, with raw ML values deleted and PII
  masked on the way; tail sampling keeps error / drift / low-confidence traces; routing by
  ml.business_unit stamps otel_ml.route; span metrics reach Prometheus by remote write; log records
  land in the gateway's file exporter.

Binaries come from .stack/bin (scripts/build-collector.sh, scripts/build-backends.sh). When a binary
or the running stack is missing, the tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = ROOT / "collector-config"
STACK_BIN = ROOT / ".stack" / "bin"
IN_CI = os.environ.get("CI", "").lower() == "true"

# Dummy values for every secret / required endpoint a backend config reads. Endpoints point at a
# closed loopback port: nothing ever leaves the machine.
DUMMY_ENV = {
    "TEMPO_OTLP_ENDPOINT": "127.0.0.1:1",
    "GRAFANA_CLOUD_OTLP_ENDPOINT": "http://127.0.0.1:1/otlp",
    "GRAFANA_CLOUD_BASIC_AUTH": "ZHVtbXk6ZHVtbXk=",
    "DD_OTLP_ENDPOINT": "http://127.0.0.1:1",
    "DD_API_KEY": "dummy-dd-api-key",
    "HONEYCOMB_OTLP_ENDPOINT": "127.0.0.1:1",
    "HONEYCOMB_API_KEY": "dummy-honeycomb-key",
    "NEW_RELIC_OTLP_ENDPOINT": "http://127.0.0.1:1",
    "NEW_RELIC_LICENSE_KEY": "dummy-newrelic-key",
    "ELASTIC_OTLP_ENDPOINT": "127.0.0.1:1",
    "ELASTIC_API_KEY": "dummy-elastic-key",
    "OTLP_ENDPOINT": "http://127.0.0.1:1",
    "OTLP_AUTHORIZATION": "Bearer dummy",
}

# otelcol-ml configs: everything YAML under collector-config/ except the builder manifest and the
# configs of other programs (Jaeger's own config, Prometheus files).
# processor-tier.yaml is an overlay, merged into a gateway config (scripts/stack.sh does).
PROCESSOR_TIER = CONFIG_DIR / "processor-tier.yaml"
OTELCOL_CONFIGS = sorted(
    p
    for p in CONFIG_DIR.rglob("*.yaml")
    if p.name != "builder-config.yaml" and p.parent.name not in {"jaeger", "prometheus"} and p != PROCESSOR_TIER
)
GATEWAYS = [CONFIG_DIR / "gateway.yaml", *sorted((CONFIG_DIR / "backends").glob("*.yaml"))]
# every config alone, and every gateway (the default and each backend) with the processor tier merged in
CONFIG_SETS = [(c,) for c in OTELCOL_CONFIGS] + [(g, PROCESSOR_TIER) for g in GATEWAYS]


def _missing(message: str) -> None:
    if IN_CI:
        pytest.fail(f"{message} (CI=true: run scripts/stack.sh start first)")
    pytest.skip(message)


def _binary(name: str) -> Path:
    path = STACK_BIN / name
    if not (path.exists() and os.access(path, os.X_OK)):
        _missing(f"{path} not built (scripts/build-collector.sh / scripts/build-backends.sh)")
    return path


@pytest.fixture(scope="session")
def otelcol() -> Path:
    return _binary("otelcol-ml")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rel(path: Path) -> str:
    return str(path.relative_to(CONFIG_DIR))


def _set_id(configs: tuple[Path, ...]) -> str:
    return "+".join(_rel(c) for c in configs)


def _config_args(configs: tuple[Path, ...]) -> list[str]:
    return [f"--config={c}" for c in configs]


def test_config_inventory():
    names = {_rel(p) for p in OTELCOL_CONFIGS}
    expected_backends = {
        "jaeger", "tempo", "prometheus", "grafana-cloud", "datadog", "honeycomb", "newrelic",
        "elastic", "otlp",
    }  # fmt: skip
    assert {"agent.yaml", "gateway.yaml"} <= names
    assert {f"backends/{b}.yaml" for b in expected_backends} <= names


@pytest.mark.parametrize("configs", CONFIG_SETS, ids=_set_id)
def test_config_validates(otelcol, configs):
    env = {**os.environ, **DUMMY_ENV}
    result = subprocess.run(
        [str(otelcol), "validate", *_config_args(configs)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.parametrize("config", [*OTELCOL_CONFIGS, PROCESSOR_TIER], ids=_rel)
def test_config_secrets_only_from_env(config):
    """No literal credentials: every header value of an exporter is an ${env:...} reference."""
    text = config.read_text()
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            continue
        key = stripped.split(":", 1)[0].lower()
        if key in {"dd-api-key", "x-honeycomb-team", "api-key", "authorization"}:
            assert "${env:" in stripped, f"{config}: literal secret in {stripped!r}"


@pytest.mark.parametrize("configs", CONFIG_SETS, ids=_set_id)
def test_config_starts(otelcol, configs, tmp_path):
    """The collector builds every component of the config and reports ready on free ports.

    A port found free can be taken by someone's outgoing connection before the collector binds it (the
    running stack makes many): such a start is retried on new ports, any other failure is not."""
    for _ in range(3):
        text, ready = _start_once(otelcol, configs, tmp_path, _start_env(tmp_path))
        if ready or "address already in use" not in text:
            break
    assert ready, f"{_set_id(configs)} did not start:\n{text[-3000:]}"


def _start_env(tmp_path):
    env = {**os.environ, **DUMMY_ENV}
    # free ports: the running stack (scripts/stack.sh) holds the defaults, the processor tier's included
    for prefix in ("OTEL_ML_AGENT", "OTEL_ML_GATEWAY", "OTEL_ML_LB", "OTEL_ML_PROCESSOR_LB"):
        env[f"{prefix}_GRPC_ENDPOINT"] = f"127.0.0.1:{_free_port()}"
        env[f"{prefix}_HTTP_ENDPOINT"] = f"127.0.0.1:{_free_port()}"
        env[f"{prefix}_HEALTH_ENDPOINT"] = f"127.0.0.1:{_free_port()}"
        env[f"{prefix}_TELEMETRY_PORT"] = str(_free_port())
    env["OTEL_ML_PROCESSOR_LB_DERIVED_ENDPOINT"] = f"127.0.0.1:{_free_port()}"
    closed = "127.0.0.1:1"
    env.update(
        OTEL_ML_PROCESSOR_TIER_ENDPOINT=closed,
        OTEL_ML_PROCESSORS=f"[{closed}]",
        OTEL_ML_GATEWAY_ENDPOINT=closed,
        OTEL_ML_JAEGER_OTLP_ENDPOINT=closed,
        OTEL_ML_ROUTED_TRACES_ENDPOINT=closed,
        OTEL_ML_PROMETHEUS_RW_ENDPOINT=f"http://{closed}/api/v1/write",
        OTEL_ML_GATEWAY_LOGS_FILE=str(tmp_path / "logs.jsonl"),
        OTEL_ML_GATEWAY_BU_LOGS_FILE=str(tmp_path / "logs-bu.jsonl"),
        OTEL_ML_LB_GATEWAYS=f"[{closed}]",
        JAEGER_OTLP_ENDPOINT=closed,
        PROMETHEUS_REMOTE_WRITE_URL=f"http://{closed}/api/v1/write",
    )
    return env


def _start_once(otelcol, configs, tmp_path, env) -> tuple[str, bool]:
    log_path = tmp_path / "collector.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(otelcol), *_config_args(configs)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if "Everything is ready" in log_path.read_text():
                break
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        text = log_path.read_text()
        return text, "Everything is ready" in text and proc.poll() is None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_jaeger_config_validates():
    jaeger = _binary("jaeger")
    result = subprocess.run(
        [str(jaeger), "validate", f"--config={CONFIG_DIR / 'jaeger' / 'jaeger.yaml'}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout


def test_prometheus_config_and_rules():
    promtool = _binary("promtool")
    prom_dir = CONFIG_DIR / "prometheus"
    rules = sorted(prom_dir.glob("*.rules.yml"))
    assert rules, "no collector-config/prometheus/*.rules.yml"
    result = subprocess.run(
        [str(promtool), "check", "config", str(prom_dir / "prometheus.yml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    assert f"{len(rules)} rule files found" in result.stdout + result.stderr
    result = subprocess.run(
        [str(promtool), "check", "rules", *map(str, rules)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr + result.stdout


# ----------------------------------------------------------------------------------------------
# End to end through the running stack
# ----------------------------------------------------------------------------------------------
AGENT_OTLP = "127.0.0.1:4317"
JAEGER_API = "http://127.0.0.1:16686"
PROMETHEUS_API = "http://127.0.0.1:9090"
HEALTH = {
    "agent": "http://127.0.0.1:13133/",
    "gateway": "http://127.0.0.1:13134/",
    "jaeger": f"{JAEGER_API}/api/services",
    "prometheus": f"{PROMETHEUS_API}/-/ready",
}


def _healthy(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="module")
def stack() -> dict[str, str]:
    """The stack of scripts/stack.sh must be running; skip (fail under CI=true) otherwise."""
    down = [name for name, url in HEALTH.items() if not _healthy(url)]
    if down:
        _missing(f"stack not running ({', '.join(down)} down): scripts/stack.sh start")
    return HEALTH


def _send_spans(service: str, spans: list[dict], resource: dict | None = None) -> list[str]:
    """Send one trace per entry of ``spans`` to the agent; returns the trace ids (hex)."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.trace import Status, StatusCode

    provider = TracerProvider(resource=Resource.create({"service.name": service, **(resource or {})}))
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=AGENT_OTLP, insecure=True)))
    tracer = provider.get_tracer("otel-ml-collector-tests")
    ids = []
    try:
        for spec in spans:
            with tracer.start_as_current_span(spec.get("name", "predict")) as span:
                for key, value in spec.get("attributes", {}).items():
                    span.set_attribute(key, value)
                if spec.get("error"):
                    span.set_status(Status(StatusCode.ERROR, "test error"))
                ids.append(format(span.get_span_context().trace_id, "032x"))
    finally:
        provider.shutdown()
    return ids


def _jaeger_traces(service: str, expect: int, timeout: float = 45, settle: float = 0) -> list[dict]:
    """Traces of ``service`` in Jaeger once at least ``expect`` are there (then wait ``settle`` s more)."""
    deadline = time.monotonic() + timeout
    data: list[dict] = []
    while time.monotonic() < deadline:
        resp = requests.get(f"{JAEGER_API}/api/traces", params={"service": service, "limit": 1000}, timeout=5)
        if resp.status_code == 200:
            data = resp.json().get("data") or []
            if len(data) >= expect:
                break
        time.sleep(1)
    if settle and len(data) >= expect:
        time.sleep(settle)
        resp = requests.get(f"{JAEGER_API}/api/traces", params={"service": service, "limit": 1000}, timeout=5)
        data = resp.json().get("data") or []
    return data


def _tags(trace: dict) -> tuple[dict, dict]:
    """(span tags of the first span, process tags) of a Jaeger trace as plain dicts."""
    span = trace["spans"][0]
    process = trace["processes"][span["processID"]]
    return {t["key"]: t["value"] for t in span["tags"]}, {t["key"]: t["value"] for t in process["tags"]}


# a prediction id whose span-id part is 16 decimal digits starting like a Visa number
CARD_LIKE_PREDICTION_ID = "4bf92f3577b34da6a3ce929d0e0e4736-4111111111111111-0"


@pytest.mark.e2e
def test_span_passes_agent_and_gateway_to_jaeger(stack):
    service = f"otel-ml-e2e-{uuid.uuid4().hex[:8]}"
    (trace_id,) = _send_spans(
        service,
        [
            {
                "name": "predict",
                "error": True,  # kept by the tail sampler's error policy
                "attributes": {
                    "ml.model.name": "iris-clf",
                    "ml.model.version": "3",
                    "ml.operation.name": "predict",
                    "ml.input.raw": "[[5.1, 3.5, 1.4, 0.2]]",
                    "ml.input.feature.min": [5.1, 3.5],
                    "user.email": "alice@example.com",
                    "payment.card": "4111 1111 1111 1111",
                    "customer.ssn": "123-45-6789",
                    "enduser.id": "user-42",
                    "ml.prediction.id": CARD_LIKE_PREDICTION_ID,
                },
            }
        ],
    )
    traces = _jaeger_traces(service, expect=1)
    assert traces, f"trace of {service} did not reach Jaeger"
    assert traces[0]["traceID"] == trace_id
    tags, process = _tags(traces[0])
    assert tags["ml.model.name"] == "iris-clf"
    # agent: raw ML values deleted, PII masked, user ids hashed
    assert "ml.input.raw" not in tags and "ml.input.feature.min" not in tags
    assert "alice@example.com" not in json.dumps(traces[0])
    assert "****" in tags["user.email"]
    assert "1111 1111" not in tags["payment.card"]
    assert "123-45-6789" not in tags["customer.ssn"]
    assert tags["enduser.id"] != "user-42"
    assert tags["ml.prediction.id"] == CARD_LIKE_PREDICTION_ID  # an id, not a card: left alone
    # gateway: default route (no ml.business_unit)
    assert process.get("otel_ml.route") == "default"


@pytest.mark.e2e
def test_tail_sampling_keeps_interesting_traces(stack):
    service = f"otel-ml-e2e-sampling-{uuid.uuid4().hex[:8]}"
    kept_specs = [
        {"name": "drift", "attributes": {"ml.drift.detected": True}},
        {"name": "low-confidence", "attributes": {"ml.prediction.confidence.min": 0.42}},
        {"name": "error", "error": True},
    ]
    plain = [{"name": "plain", "attributes": {"ml.prediction.confidence.min": 0.97}} for _ in range(30)]
    ids = _send_spans(service, kept_specs + plain)
    kept_ids = set(ids[: len(kept_specs)])
    traces = _jaeger_traces(service, expect=len(kept_specs), settle=8)
    found = {t["traceID"] for t in traces}
    assert kept_ids <= found, f"missing kept traces: {kept_ids - found}"
    plain_kept = len(found - kept_ids)
    # 10 % probabilistic share of 30 plain traces: P(>= 20 kept) is negligible.
    assert plain_kept < 20, f"{plain_kept} of 30 plain traces kept: tail sampling is not sampling"


@pytest.mark.e2e
def test_business_unit_routing(stack):
    service = f"otel-ml-e2e-bu-{uuid.uuid4().hex[:8]}"
    _send_spans(service, [{"name": "predict", "error": True}], resource={"ml.business_unit": "risk"})
    traces = _jaeger_traces(service, expect=1)
    assert traces, "routed trace did not reach Jaeger"
    _, process = _tags(traces[0])
    assert process.get("ml.business_unit") == "risk"
    assert process.get("otel_ml.route") == "business_unit"


@pytest.mark.e2e
def test_span_metrics_reach_prometheus(stack):
    service = f"otel-ml-e2e-metrics-{uuid.uuid4().hex[:8]}"
    _send_spans(
        service,
        [{"name": "predict", "attributes": {"ml.model.name": "churn", "ml.model.version": "7",
                                            "ml.operation.name": "predict"}}] * 3,
    )  # fmt: skip
    query = f'traces_span_metrics_calls_total{{service_name="{service}",ml_model_name="churn"}}'
    deadline = time.monotonic() + 60
    result: list = []
    while time.monotonic() < deadline:
        resp = requests.get(f"{PROMETHEUS_API}/api/v1/query", params={"query": query}, timeout=5)
        result = resp.json()["data"]["result"]
        if result and float(result[0]["value"][1]) >= 3:
            break
        time.sleep(2)
    assert result, f"no span metrics in Prometheus for {query}"
    metric = result[0]["metric"]
    assert metric["ml_model_version"] == "7" and metric["ml_operation_name"] == "predict"
    assert float(result[0]["value"][1]) == 3


@pytest.mark.e2e
def test_log_records_reach_gateway_file(stack):
    from opentelemetry._logs import LogRecord, SeverityNumber
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    service = f"otel-ml-e2e-logs-{uuid.uuid4().hex[:8]}"
    provider = LoggerProvider(resource=Resource.create({"service.name": service}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=AGENT_OTLP, insecure=True)))
    try:
        provider.get_logger("otel-ml-collector-tests").emit(
            LogRecord(
                body="prediction record",
                severity_number=SeverityNumber.INFO,
                attributes={"ml.model.name": "churn", "ml.record.kind": "prediction", "ml.input.raw": "[[1, 2]]"},
            )
        )
    finally:
        provider.shutdown()

    path = Path(os.environ.get("OTEL_ML_GATEWAY_LOGS_FILE", ROOT / ".stack" / "gateway" / "logs.jsonl"))
    deadline = time.monotonic() + 30
    record = None
    while time.monotonic() < deadline and record is None:
        if path.exists():
            for line in path.read_text().splitlines():
                if service in line:
                    record = json.loads(line)
        time.sleep(0.5)
    assert record is not None, f"log record of {service} not in {path}"
    attrs = {
        a["key"]: a["value"]
        for rl in record["resourceLogs"]
        for sl in rl["scopeLogs"]
        for lr in sl["logRecords"]
        for a in lr.get("attributes", [])
    }
    assert attrs["ml.model.name"] == {"stringValue": "churn"}
    assert "ml.input.raw" not in attrs

    # The count connector turns log records into ml_log_records_total (delta -> cumulative -> remote write).
    query = f'ml_log_records_total{{service_name="{service}",ml_model_name="churn",ml_record_kind="prediction"}}'
    deadline = time.monotonic() + 60
    result: list = []
    while time.monotonic() < deadline:
        response = requests.get(f"{PROMETHEUS_API}/api/v1/query", params={"query": query}, timeout=5)
        result = response.json()["data"]["result"]
        if result and float(result[0]["value"][1]) >= 1:
            break
        time.sleep(2)
    assert result and float(result[0]["value"][1]) == 1, f"{query}: {result}"
