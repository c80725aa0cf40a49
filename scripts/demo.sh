#!/usr/bin/env bash
# The credit-risk demo, end to end on this machine:
#   1. install otel-ml and start the local stack (agent + gateway collectors, Jaeger, Prometheus);
#   2. train the example model if it is missing (examples/credit_risk/train.py);
#   3. start the unchanged Flask app under opentelemetry-instrument;
#   4. drive traffic: applications, malformed requests, a drifted segment, outcomes arriving later;
#   5. print what reached Jaeger and Prometheus.
# The stack keeps running afterwards (Prometheus UI: http://127.0.0.1:9090); stop it with
# `scripts/stack.sh stop`, or pass --stop to stop it at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
PORT="${PORT:-8080}"
SERVICE="${OTEL_SERVICE_NAME:-credit-risk-demo}"
REQUESTS="${DEMO_REQUESTS:-400}"
EXAMPLE="$ROOT/examples/credit_risk"

"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[test]"
scripts/stack.sh start
[ -f "$EXAMPLE/credit_risk.pkl" ] || "$PYTHON" "$EXAMPLE/train.py"

mkdir -p .stack/logs
RUN_ID="demo-$(date +%s)"  # service.instance.id of this run, so the report counts this run only
export OTEL_SERVICE_NAME="$SERVICE"
export OTEL_RESOURCE_ATTRIBUTES="service.instance.id=$RUN_ID,deployment.environment.name=demo,ml.business_unit=risk"
export OTEL_TRACES_EXPORTER=otlp OTEL_METRICS_EXPORTER=otlp OTEL_LOGS_EXPORTER=otlp
export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 OTEL_EXPORTER_OTLP_PROTOCOL=grpc
export OTEL_METRIC_EXPORT_INTERVAL=2000 OTEL_BSP_SCHEDULE_DELAY=500
export OTEL_ML_MODEL_VERSION="${OTEL_ML_MODEL_VERSION:-2024.11}" OTEL_ML_DRIFT_WINDOW_ROWS=200
export OTEL_ML_PREDICTION_RECORDS_RATE=1.0 PORT
set -m  # job control: the app keeps SIGINT (Ctrl-C), which a plain background job would ignore
"$(dirname "$(command -v "$PYTHON")")/opentelemetry-instrument" "$PYTHON" "$EXAMPLE/app.py" \
  >.stack/logs/demo-app.log 2>&1 &
APP_PID=$!
set +m
cleanup() {
  kill "$APP_PID" 2>/dev/null && wait "$APP_PID" 2>/dev/null || true
  if [ "${1:-}" = "--stop" ]; then scripts/stack.sh stop; fi
}
trap 'cleanup "${STOP_ARG:-}"' EXIT
STOP_ARG="${1:-}"

for _ in $(seq 1 60); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  kill -0 "$APP_PID" 2>/dev/null || { tail -30 .stack/logs/demo-app.log; exit 1; }
  sleep 0.5
done
echo "[demo] app up on :$PORT (log: .stack/logs/demo-app.log); sending $REQUESTS requests"
"$PYTHON" "$EXAMPLE/traffic.py" --url "http://127.0.0.1:$PORT" --requests "$REQUESTS" \
  --summary .stack/demo-traffic.json
kill -INT "$APP_PID" && wait "$APP_PID" 2>/dev/null || true   # Ctrl-C: the app flushes its telemetry on exit
"$PYTHON" scripts/demo_report.py --service "$SERVICE" --instance "$RUN_ID" --traffic .stack/demo-traffic.json
