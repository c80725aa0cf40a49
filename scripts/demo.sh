#!/usr/bin/env bash
# The main demo on a fresh machine: install otel-ml with its test and example extras, then run the
# credit-risk service end to end (examples/credit_risk/demo.py): local collector stack, model, the
# unchanged Flask app under opentelemetry-instrument, traffic with bad requests, a drifted segment and
# late outcomes, and a summary of what reached Jaeger, Prometheus and the gateway's log file.
# The stack keeps running afterwards (Prometheus UI: http://127.0.0.1:9090); `scripts/stack.sh stop`.
#
#   scripts/demo.sh [--requests N] [--keep-running]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e ".[test]"
exec "$PYTHON" examples/credit_risk/demo.py "$@"
