"""The local collector stack (``scripts/stack.sh start``) and helpers to query its backends.

End-to-end tests cross a real wire: app -> agent collector (127.0.0.1:4317) -> gateway collector ->
Jaeger (query API on 127.0.0.1:16686) and Prometheus (127.0.0.1:9090). When the stack is not up
they fail under CI (``CI=true``) and are skipped elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
AGENT_OTLP_GRPC = "http://127.0.0.1:4317"
JAEGER = "http://127.0.0.1:16686"
PROMETHEUS = "http://127.0.0.1:9090"
HEALTH = {
    "agent collector": "http://127.0.0.1:13133/",
    "gateway collector": "http://127.0.0.1:13134/",
    "jaeger": f"{JAEGER}/api/services",
    "prometheus": f"{PROMETHEUS}/-/ready",
}


def require_healthy(health: dict[str, str], what: str) -> None:
    """Fail (under CI) or skip unless every component's health URL answers 200."""
    down = []
    for name, url in health.items():
        try:
            if requests.get(url, timeout=2).status_code != 200:
                down.append(name)
        except requests.RequestException:
            down.append(name)
    if down:
        message = f"{what} not running ({', '.join(down)}): run scripts/stack.sh start"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def stack() -> None:
    require_healthy(HEALTH, "collector stack")


def wait_for(probe: Callable[[], Any], timeout: float = 60, interval: float = 1.0, what: str = "") -> Any:
    """Call ``probe`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what or probe}; last answer: {last!r}")


def jaeger_traces(service: str, limit: int = 500) -> list[dict]:
    response = requests.get(f"{JAEGER}/api/traces", params={"service": service, "limit": limit, "lookback": "1h"},
                            timeout=10)
    return response.json().get("data") or [] if response.status_code == 200 else []


def span_tags(span: dict) -> dict[str, Any]:
    return {t["key"]: t["value"] for t in span.get("tags", [])}


def prom_query(expr: str) -> list[dict]:
    response = requests.get(f"{PROMETHEUS}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    return body["data"]["result"] if body.get("status") == "success" else []


def prom_value(expr: str) -> float | None:
    result = prom_query(expr)
    return float(result[0]["value"][1]) if result else None


def unique_service(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def instrumented_env(service: str, **extra: str) -> dict[str, str]:
    """Environment for ``opentelemetry-instrument`` exporting OTLP/gRPC to the agent collector."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "OTEL_ML_"))}
    env.update({
        "OTEL_SERVICE_NAME": service,
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_METRICS_EXPORTER": "otlp",
        "OTEL_LOGS_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": AGENT_OTLP_GRPC,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_METRIC_EXPORT_INTERVAL": "1000",
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def launcher() -> list[str]:
    """The ``opentelemetry-instrument`` launcher of this interpreter."""
    candidate = Path(sys.executable).with_name("opentelemetry-instrument")
    return [str(candidate)] if candidate.exists() else ["opentelemetry-instrument"]


def run_instrumented(script: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*launcher(), sys.executable, str(script)], env=env, cwd=script.parent,
                          capture_output=True, text=True, timeout=timeout, check=False)
