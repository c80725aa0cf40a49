"""Sentinel raw input values never leave the host: not in Jaeger, Prometheus or any collector output.

``apps/privacy_app.py`` runs under ``opentelemetry-instrument`` and puts three sentinels into model inputs: a
number (single-row and batch calls of a leaf model and of a pandas pipeline), an unseen string category and an
e-mail-like string (both through a ColumnTransformer). Baseline capture and prediction records (rate 1.0) are
on, so every path that could carry a value is exercised: span summaries, validation-violation events,
prediction log records, metrics. Each scenario runs as one trace that tail sampling keeps (it has an error
span), so Jaeger holds every span the app made.

1. Default settings: the sentinels are nowhere, and the data did arrive (spans, records, metrics).
2. ``OTEL_ML_CAPTURE_RAW=true`` in the app: the app does export ``ml.input.feature.min/max``,
   ``ml.feature.value`` and ``ml.input.raw`` with the sentinels (its console exporter shows them); the agent's
   ``transform/raw_ml_values`` deletes them (``OTEL_ML_ALLOW_RAW_CAPTURE`` is not set), so nothing arrives.
3. Errors whose scikit-learn message quotes the input ("Found unknown categories ['...']", "could not convert
   string to float: '...'"): otel-ml exports only the exception type unless raw capture is on, and the agent
   keeps only the exception type of model-call spans as a second line of defence.

What is scanned: Jaeger's raw JSON of every trace of the service; every label value and the series and sample
values of the services in Prometheus; what the agent, the gateway (incl. its debug exporter) and the other
stack processes appended to ``.stack/logs/*.log`` and the gateway's file exporter to ``.stack/gateway/*.jsonl``
during this module.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import requests

from .conftest import (
    JAEGER,
    PROMETHEUS,
    ROOT,
    instrumented_env,
    prom_value,
    run_instrumented,
    span_tags,
    unique_service,
    wait_for,
)

pytestmark = pytest.mark.e2e

APP = Path(__file__).parent / "apps" / "privacy_app.py"
_spec = importlib.util.spec_from_file_location("privacy_app", APP)
privacy_app = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(privacy_app)  # constants only: the app runs under ``if __name__ == "__main__"``

# The number as Python, Go and float32 print it (987654.321, 987654.3209999999, 987654.3125), the category,
# and the e-mail's local part (so a half-masked address is caught too).
SENTINEL = re.compile("|".join([r"987654\.3[0-2]", re.escape(privacy_app.CATEGORY), r"jane\.sentinel"]))
RAW_KEYS = ("ml.input.feature.min", "ml.input.feature.max", "ml.feature.value", "ml.input.raw")
STACK_OUTPUTS = [ROOT / ".stack" / "logs", ROOT / ".stack" / "gateway"]
COMMON = {"OTEL_ML_CAPTURE_BASELINE": "true", "OTEL_ML_PREDICTION_RECORDS_RATE": "1.0"}
CONSOLE = {"OTEL_TRACES_EXPORTER": "otlp,console", "OTEL_LOGS_EXPORTER": "otlp,console"}


def _stack_files() -> list[Path]:
    return [f for d in STACK_OUTPUTS if d.is_dir() for f in sorted(d.iterdir()) if f.suffix in (".log", ".jsonl")]


@pytest.fixture(scope="module")
def stack_offsets(stack) -> dict[Path, int]:
    """Sizes of the stack's output files before the apps run: the scan reads what was appended after."""
    return {f: f.stat().st_size for f in _stack_files()}


def _appended(offsets: dict[Path, int]) -> dict[Path, str]:
    out = {}
    for f in _stack_files():
        start = offsets.get(f, 0)
        if f.stat().st_size < start:  # restarted component: its log was rewritten
            start = 0
        with f.open("rb") as fh:
            fh.seek(start)
            out[f] = fh.read().decode("utf-8", "replace")
    return out


class Run:
    def __init__(self, service: str, summary: dict, stdout: str) -> None:
        self.service, self.summary, self.stdout = service, summary, stdout

    def jaeger_json(self) -> str:
        response = requests.get(f"{JAEGER}/api/traces",
                                params={"service": self.service, "limit": 100, "lookback": "1h"}, timeout=10)
        return response.text if response.status_code == 200 else ""

    def spans(self) -> list[dict]:
        text = self.jaeger_json()
        return [s for t in json.loads(text).get("data") or [] for s in t["spans"]] if text else []

    def model_spans(self) -> list[dict]:
        """Spans of outermost predict / predict_proba calls (steps inside a pipeline carry no model name)."""
        return [s for s in self.spans() if s["operationName"].startswith(("predict ", "predict_proba "))
                and "ml.model.name" in span_tags(s)]

    def records(self) -> list[dict]:
        """Log records of this service in the gateway's file (OTLP JSON, one batch per line)."""
        path = ROOT / ".stack" / "gateway" / "logs.jsonl"
        found = []
        for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
            if self.service not in line:
                continue
            for resource_logs in json.loads(line)["resourceLogs"]:
                names = [a["value"].get("stringValue") for a in resource_logs["resource"]["attributes"]
                         if a["key"] == "service.name"]
                if names == [self.service]:
                    found += [r for s in resource_logs["scopeLogs"] for r in s["logRecords"]]
        return found


def _run(scenario: str, prefix: str, **extra: str) -> Run:
    service = unique_service(prefix)
    env = instrumented_env(service, PRIVACY_SCENARIO=scenario, **COMMON, **extra)
    result = run_instrumented(APP, env)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith(privacy_app.SUMMARY_PREFIX))
    run = Run(service, json.loads(line[len(privacy_app.SUMMARY_PREFIX):]), result.stdout)
    # Tail sampling keeps the scenario's trace (it has an error span); wait for all of it.
    wait_for(lambda: len(run.model_spans()) >= run.summary["model_calls"], timeout=60,
             what=f"the {run.summary['model_calls']} model spans of {service} in Jaeger")
    if run.summary["predicted_rows"]:
        wait_for(lambda: len(run.records()) >= run.summary["predicted_rows"], timeout=60,
                 what=f"{run.summary['predicted_rows']} prediction records of {service} in the gateway's file")
    wait_for(lambda: prom_value(f'sum(ml_operation_duration_seconds_count{{job="{service}", '
                                f'ml_operation_name=~"predict.*"}})') == run.summary["model_calls"],
             timeout=60, what=f"ml_operation_duration_seconds_count of {service} in Prometheus")
    return run


@pytest.fixture(scope="module")
def default_run(stack_offsets) -> Run:
    return _run("inputs", "privacy-default")


@pytest.fixture(scope="module")
def raw_run(stack_offsets) -> Run:
    return _run("inputs", "privacy-raw", OTEL_ML_CAPTURE_RAW="true", **CONSOLE)


@pytest.fixture(scope="module")
def errors_run(stack_offsets) -> Run:
    return _run("errors", "privacy-errors", **CONSOLE)


def _hits(text: str) -> list[str]:
    return [text[max(0, m.start() - 120): m.end() + 40] for m in SENTINEL.finditer(text)][:5]


def _prometheus_text(services: list[str]) -> str:
    """Every label value Prometheus holds, plus the series and current samples of ``services``."""
    parts = []
    names = requests.get(f"{PROMETHEUS}/api/v1/labels", timeout=10).json()["data"]
    for name in names:
        parts.append(requests.get(f"{PROMETHEUS}/api/v1/label/{name}/values", timeout=10).text)
    selector = f'{{job=~"{"|".join(services)}"}}'
    parts.append(requests.get(f"{PROMETHEUS}/api/v1/series", params={"match[]": selector}, timeout=30).text)
    parts.append(requests.get(f"{PROMETHEUS}/api/v1/query", params={"query": selector}, timeout=30).text)
    return "\n".join(parts)


def test_default_settings_send_no_raw_value_anywhere(default_run, stack_offsets):
    spans = default_run.spans()
    # the data did arrive: every model call, its summaries and violation events, the records
    assert len(default_run.model_spans()) == default_run.summary["model_calls"] == 8
    tags = [span_tags(s) for s in spans]
    assert any("ml.input.feature.mean" in t for t in tags)
    events = [f["value"] for s in spans for log in s.get("logs", []) for f in log["fields"] if f["key"] == "event"]
    assert "ml.validation.violation" in events
    assert len(default_run.records()) == default_run.summary["predicted_rows"]

    assert not _hits(default_run.jaeger_json()), "a sentinel reached Jaeger"
    assert not any(key in default_run.jaeger_json() for key in RAW_KEYS)
    assert not _hits(_prometheus_text([default_run.service])), "a sentinel reached Prometheus"
    for path, text in _appended(stack_offsets).items():
        assert not _hits(text), f"a sentinel reached {path}: {_hits(text)}"


def test_raw_capture_is_deleted_by_the_agent(raw_run, stack_offsets):
    # what the app exported (its console exporter): raw values with the sentinels
    for key in RAW_KEYS:
        assert f'"{key}"' in raw_run.stdout, f"the app did not export {key}: nothing for the agent to delete"
    assert re.search(r"987654\.3[0-2]", raw_run.stdout) and privacy_app.CATEGORY in raw_run.stdout
    assert privacy_app.EMAIL in raw_run.stdout

    # what left the agent: the same spans and records, without the raw attributes
    text = raw_run.jaeger_json()
    assert len(raw_run.model_spans()) == raw_run.summary["model_calls"]
    assert "ml.input.feature.mean" in text, "the non-raw summaries must survive the deletion"
    leaked = [key for key in RAW_KEYS if key in text]
    assert not leaked, f"{leaked} reached Jaeger (is the agent running with OTEL_ML_ALLOW_RAW_CAPTURE=true?)"
    assert not _hits(text), f"a sentinel reached Jaeger: {_hits(text)}"
    records = raw_run.records()
    assert len(records) == raw_run.summary["predicted_rows"]
    assert not any(a["key"] == "ml.input.raw" for r in records for a in r["attributes"])
    assert not _hits(_prometheus_text([raw_run.service])), "a sentinel reached Prometheus"
    for path, text in _appended(stack_offsets).items():
        assert not _hits(text), f"a sentinel reached {path}: {_hits(text)}"


def test_error_messages_quoting_inputs_do_not_leave_the_host(errors_run, stack_offsets):
    spans = errors_run.model_spans()
    assert len(spans) == errors_run.summary["failed_calls"] == 2
    for span in spans:
        tags = span_tags(span)
        assert tags["otel.status_code"] == "ERROR" and tags["error.type"] == "ValueError"
        exception = [{f["key"]: f["value"] for f in log["fields"]} for log in span.get("logs", [])
                     if any(f["key"] == "event" and f["value"] == "exception" for f in log["fields"])]
        assert exception and exception[0]["exception.type"] == "ValueError"  # the type stays, the text goes
    text = errors_run.jaeger_json()
    assert not _hits(text), f"a sentinel reached Jaeger: {_hits(text)}"
    assert not _hits(_prometheus_text([errors_run.service])), "a sentinel reached Prometheus"
    for path, text in _appended(stack_offsets).items():
        assert not _hits(text), f"a sentinel reached {path}: {_hits(text)}"


def test_otel_ml_exports_no_input_value_in_error_messages(errors_run):
    # what otel-ml handed to the exporter, before any collector (the app's console exporter)
    exported = errors_run.stdout.split(privacy_app.SUMMARY_PREFIX, 1)[-1]
    assert not _hits(exported), f"otel-ml exported raw input values in error text: {_hits(exported)}"


def test_scan_covers_the_collector_outputs(stack_offsets, default_run):
    """The file scan is not vacuous: the gateway's file exporter wrote this module's records."""
    appended = _appended(stack_offsets)
    gateway_file = ROOT / ".stack" / "gateway" / "logs.jsonl"
    assert default_run.service in appended.get(gateway_file, "")
    assert any(p.name.startswith(("agent", "gateway")) for p in appended)
