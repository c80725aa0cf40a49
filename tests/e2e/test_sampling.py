"""Tail sampling at the gateway keeps every error and low-confidence trace and drops most healthy ones.

``apps/sampling_app.py`` makes single-row ``predict_proba`` calls under ``opentelemetry-instrument``, each its own
trace (a root span, no parent): ``HEALTHY`` confident rows, ``LOW`` rows whose top-class probability is below
0.6, and ``ERRORS`` failing calls. The gateway's span metrics count every span before sampling, so Prometheus
shows the gateway received all of them; Jaeger then holds what tail sampling kept. The policy's percentage
and decision wait are read from the running gateway's environment (defaults 10 % and 5 s).
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import pytest

from .conftest import (
    ROOT,
    instrumented_env,
    jaeger_traces,
    prom_value,
    run_instrumented,
    span_tags,
    unique_service,
    wait_for,
)

pytestmark = pytest.mark.e2e

APP = Path(__file__).parent / "apps" / "sampling_app.py"
SUMMARY_PREFIX = "SAMPLING-APP "
MODEL = "sampling_check"
SPAN_NAME = f"predict_proba {MODEL}"
HEALTHY, LOW, ERRORS = 200, 5, 20


def gateway_setting(name: str, default: str) -> str:
    """An env knob of the running gateway collector (its /proc environ), else the config's default."""
    try:
        pid = (ROOT / ".stack" / "pids" / "gateway.pid").read_text().strip()
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return default
    values = dict(e.decode(errors="replace").split("=", 1) for e in environ if b"=" in e)
    return values.get(name) or default


def _seconds(duration: str) -> float:
    """A Go duration as the collector reads it (``5s``, ``500ms``, ``1m``)."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0}
    match = re.fullmatch(r"([\d.]+)(ms|s|m)", duration.strip())
    return float(match.group(1)) * units[match.group(2)] if match else 5.0


def _kept(service: str) -> dict[str, list[dict]]:
    """Model spans in Jaeger by kind: error, low (confidence < 0.6) and healthy; plus traces with >1 span."""
    kinds: dict[str, list[dict]] = {"error": [], "low": [], "healthy": [], "multi_span_traces": []}
    for trace in jaeger_traces(service, limit=1000):
        spans = [s for s in trace["spans"] if s["operationName"] == SPAN_NAME]
        if len(trace["spans"]) != 1:
            kinds["multi_span_traces"].append(trace)
        for span in spans:
            tags = span_tags(span)
            if tags.get("otel.status_code") == "ERROR":
                kinds["error"].append(tags)
            elif tags.get("ml.prediction.confidence.min", 1.0) < 0.6:
                kinds["low"].append(tags)
            else:
                kinds["healthy"].append(tags)
    return kinds


@pytest.fixture(scope="module")
def sampled(stack):
    service = unique_service("sampling")
    env = instrumented_env(service, OTEL_ML_MODEL_NAME=MODEL, SAMPLING_HEALTHY=str(HEALTHY),
                           SAMPLING_LOW=str(LOW), SAMPLING_ERRORS=str(ERRORS))
    result = run_instrumented(APP, env)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith(SUMMARY_PREFIX))
    summary = json.loads(line[len(SUMMARY_PREFIX):])
    assert (summary["healthy"], summary["low_confidence"], summary["errors"]) == (HEALTHY, LOW, ERRORS)
    assert summary["healthy_min_confidence"] >= 0.6 and max(summary["low_confidences"]) < 0.6

    # 1. the gateway received every call: span metrics are computed before sampling
    calls = f'sum(traces_span_metrics_calls_total{{job="{service}", span_name="{SPAN_NAME}"}})'
    wait_for(lambda: prom_value(calls) == HEALTHY + LOW + ERRORS, timeout=90,
             what=f"{HEALTHY + LOW + ERRORS} calls of {service} in the gateway's span metrics")
    # 2. every decision is made after decision_wait at the latest; then Jaeger's answer must stop changing
    time.sleep(_seconds(gateway_setting("OTEL_ML_TAIL_DECISION_WAIT", "5s")) + 2)
    def all_interesting_kept() -> bool:
        kept = _kept(service)
        return len(kept["error"]) == ERRORS and len(kept["low"]) == LOW

    wait_for(all_interesting_kept, timeout=60,
             what=f"all {ERRORS} error and {LOW} low-confidence traces of {service} in Jaeger")
    previous = None
    for _ in range(10):
        kept = _kept(service)
        counts = {k: len(v) for k, v in kept.items()}
        if counts == previous:
            break
        previous = counts
        time.sleep(3)
    return kept


def test_every_call_is_its_own_trace(sampled):
    assert not sampled["multi_span_traces"]


def test_every_error_trace_is_kept(sampled):
    assert len(sampled["error"]) == ERRORS
    assert {t["error.type"] for t in sampled["error"]} == {"ValueError"}


def test_every_low_confidence_trace_is_kept(sampled):
    assert len(sampled["low"]) == LOW
    assert all(t["ml.input.rows"] == 1 for t in sampled["low"])


def test_about_the_configured_share_of_healthy_traces_is_kept(sampled):
    percent = float(gateway_setting("OTEL_ML_TRACE_SAMPLE_PERCENT", "10"))
    if percent >= 50:
        pytest.fail(f"the gateway runs with OTEL_ML_TRACE_SAMPLE_PERCENT={percent}: it keeps most healthy traces "
                    "by configuration; restart it with the default (scripts/stack.sh restart gateway)")
    kept = len(sampled["healthy"])
    # Binomial(HEALTHY, p): mean +- 5 standard deviations (10 % of 200: 20 +- 21, so 1..41 -- about 1e-6 to miss)
    p = percent / 100
    mean, sd = HEALTHY * p, math.sqrt(HEALTHY * p * (1 - p))
    low, high = max(1, math.floor(mean - 5 * sd)), math.ceil(mean + 5 * sd)
    print(f"\nhealthy traces kept {kept}/{HEALTHY} (expected {mean:.0f} at {percent:g} %, bounds {low}..{high}); "
          f"dropped {HEALTHY - kept}; error kept {len(sampled['error'])}/{ERRORS}; "
          f"low-confidence kept {len(sampled['low'])}/{LOW}")
    assert low <= kept <= high
    assert all(t["ml.prediction.confidence.min"] >= 0.6 for t in sampled["healthy"])
