"""The credit-risk demo, end to end: collector stack, model, service under the launcher, traffic, what arrived.

    python examples/credit_risk/demo.py [--requests 400] [--keep-running]

1. starts the local telemetry stack (``scripts/stack.sh start``: agent and gateway collectors, Jaeger,
   Prometheus; built on first use) unless it is already healthy;
2. trains the model (``train.py``) unless ``credit_risk.pkl`` exists;
3. starts ``app.py`` under ``opentelemetry-instrument`` (OTLP to the agent collector, one service name per
   run so that the numbers below are this run's);
4. runs ``traffic.py`` against it (applications, batches, a drifted segment, bad requests, late outcomes);
5. stops the app (it flushes on SIGTERM), waits for the pipeline, and prints what arrived where: traces in
   Jaeger, ML metrics in Prometheus, prediction and outcome records in the gateway's log file.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import requests

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
JAEGER = "http://127.0.0.1:16686"
PROMETHEUS = "http://127.0.0.1:9090"
HEALTH = ("http://127.0.0.1:13133/", "http://127.0.0.1:13134/", f"{JAEGER}/api/services", f"{PROMETHEUS}/-/ready")
GATEWAY_LOGS = ROOT / ".stack" / "gateway" / "logs.jsonl"


def say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def stack_healthy() -> bool:
    try:
        return all(requests.get(url, timeout=2).status_code == 200 for url in HEALTH)
    except requests.RequestException:
        return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher() -> str:
    candidate = Path(sys.executable).with_name("opentelemetry-instrument")
    return str(candidate) if candidate.exists() else "opentelemetry-instrument"


def prom(expr: str) -> list[dict]:
    body = requests.get(f"{PROMETHEUS}/api/v1/query", params={"query": expr}, timeout=10).json()
    return body.get("data", {}).get("result", [])


def by(expr: str, label: str) -> dict[str, float]:
    return {r["metric"].get(label, ""): float(r["value"][1]) for r in prom(f"sum by ({label}) ({expr})")}


def wait(probe, seconds: float):
    deadline = time.monotonic() + seconds
    while True:
        value = probe()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(2)


def start_app(service: str, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update({
        "OTEL_SERVICE_NAME": service,
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "otlp", "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_METRIC_EXPORT_INTERVAL": "5000",
        "OTEL_ML_MODEL_VERSION": "2024.11", "OTEL_ML_PREDICTION_RECORDS_RATE": "0.2",
        "OTEL_ML_PREDICT_ROUTES": "/predict", "OTEL_ML_DRIFT_WINDOW_ROWS": "200",
        "OTEL_ML_PREDICTION_ID_FIELD": "prediction_id",  # the ids in the JSON body too (the header always)
        "PORT": str(port),
    })
    log = open(HERE / "demo-app.log", "w")
    return subprocess.Popen([launcher(), sys.executable, str(HERE / "app.py")], env=env, cwd=HERE, stdout=log,
                            stderr=subprocess.STDOUT)


def summary(service: str, traffic: dict) -> None:
    job = f'job="{service}"'
    traces = requests.get(f"{JAEGER}/api/traces", params={"service": service, "limit": 2000, "lookback": "1h"},
                          timeout=20).json().get("data") or []
    spans = [s for t in traces for s in t["spans"]]
    with_model = [t for t in traces if any(s["operationName"] == "predict_proba credit_risk" for s in t["spans"])]
    say(f"sent {sum(v for k, v in traffic['requests'].items() if not k.startswith('feedback'))} predict requests "
        f"({traffic['predictions']} applicants), {traffic['outcomes_sent']} outcomes in "
        f"{traffic['requests'].get('feedback 200', 0)} feedback requests")
    print(f"\nJaeger ({JAEGER}/search?service={service}): {len(traces)} traces kept by the gateway's tail "
          f"sampling (errors, slow, low confidence, drift, 10% of the rest), {len(spans)} spans; "
          f"{len(with_model)} with a model span under POST /predict")
    if with_model:
        trace = with_model[0]
        names = sorted({s["operationName"] for s in trace["spans"]})
        print(f"  e.g. trace {trace['traceID']}: {', '.join(names)}")
    print(f"\nPrometheus ({PROMETHEUS}):")
    rows = by(f"ml_input_rows_total{{{job}}}", "ml_operation_name")
    print(f"  ml_input_rows_total by operation: {rows}")
    print(f"  ml_input_errors_total by error_type: {by(f'ml_input_errors_total{{{job}}}', 'error_type')}")
    print(f"  ml_outcome_count_total by joined: {by(f'ml_outcome_count_total{{{job}}}', 'ml_outcome_joined')}")
    performance = by(f"ml_performance{{{job}}}", "ml_performance_metric")
    print("  ml_performance: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(performance.items())))
    checks = by(f"ml_validation_violations_total{{{job}}}", "ml_validation_check")
    print(f"  ml_validation_violations_total by check: {checks}")
    drift = prom(f'topk(3, max by (ml_feature_name) (ml_drift_score{{{job}, ml_drift_method="psi"}}))')
    if drift:
        print("  ml_drift_score (PSI), top 3: " + ", ".join(
            f"{d['metric'].get('ml_feature_name')}={float(d['value'][1]):.3f}" for d in drift))
    http = by(f"http_server_duration_milliseconds_count{{{job}}}", "http_target")
    print(f"  http_server_duration_milliseconds_count by route: {http}")
    kinds: dict[str, int] = {}
    if GATEWAY_LOGS.exists():
        for line in GATEWAY_LOGS.read_text().splitlines():
            if service not in line:
                continue
            for resource in json.loads(line).get("resourceLogs", []):
                for scope in resource.get("scopeLogs", []):
                    for record in scope.get("logRecords", []):
                        for a in record.get("attributes", []):
                            if a["key"] == "ml.record.kind":
                                kind = a["value"].get("stringValue")
                                kinds[kind] = kinds.get(kind, 0) + 1
    print(f"\nGateway log file ({GATEWAY_LOGS.relative_to(ROOT)}): records by ml.record.kind: {kinds}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--keep-running", action="store_true", help="leave the app running at the end")
    args = parser.parse_args(argv)
    if not stack_healthy():
        say("starting the collector stack (scripts/stack.sh start; the first time builds it, which takes a while)")
        subprocess.run([str(ROOT / "scripts" / "stack.sh"), "start"], check=True)
    if not (HERE / "credit_risk.pkl").exists():
        say("training the model")
        subprocess.run([sys.executable, str(HERE / "train.py")], check=True)
    service = f"credit-risk-demo-{uuid.uuid4().hex[:6]}"
    port = free_port()
    say(f"starting app.py under opentelemetry-instrument as service {service} on port {port}")
    app = start_app(service, port)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait(lambda: app.poll() is None and _up(url), 60):
            sys.exit(f"the app did not start; see {HERE / 'demo-app.log'}")
        say(f"sending traffic: python traffic.py --url {url} --requests {args.requests}")
        sys.path.insert(0, str(HERE))
        import traffic

        result = traffic.main(["--url", url, "--requests", str(args.requests), "--outcome-delay", "2", "--quiet"])
    finally:
        if not args.keep_running:
            app.send_signal(signal.SIGTERM)
            app.wait(30)
    say("waiting for the pipeline (batching, tail-sampling decisions, remote write)")
    wait(lambda: prom(f'ml_performance{{job="{service}"}}'), 60)
    time.sleep(8)
    summary(service, result)
    if args.keep_running:
        say(f"the app is still running at {url} (pid {app.pid})")


def _up(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False


if __name__ == "__main__":
    main()
