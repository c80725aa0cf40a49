"""Print what the demo's telemetry looks like in the backends: Jaeger traces, Prometheus metrics, log records.

    python scripts/demo_report.py --service credit-risk-demo [--traffic .stack/demo-traffic.json]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import requests

JAEGER = "http://127.0.0.1:16686"
PROMETHEUS = "http://127.0.0.1:9090"
LOGS = Path(__file__).resolve().parents[1] / ".stack" / "gateway"


def prom(expr: str) -> list[dict]:
    body = requests.get(f"{PROMETHEUS}/api/v1/query", params={"query": expr}, timeout=10).json()
    return body.get("data", {}).get("result", [])


def prom_scalar(expr: str) -> float | None:
    result = prom(expr)
    return float(result[0]["value"][1]) if result else None


def traces(service: str) -> list[dict]:
    response = requests.get(f"{JAEGER}/api/traces", params={"service": service, "limit": 2000, "lookback": "1h"},
                            timeout=20)
    return response.json().get("data") or []


def _instance_of(trace: dict) -> str | None:
    for process in trace.get("processes", {}).values():
        for tag in process.get("tags", []):
            if tag["key"] == "service.instance.id":
                return tag["value"]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", required=True)
    parser.add_argument("--instance", help="service.instance.id of the run to report (default: every run)")
    parser.add_argument("--traffic", type=Path)
    parser.add_argument("--wait", type=float, default=12.0, help="seconds for tail sampling and exports")
    args = parser.parse_args()
    time.sleep(args.wait)
    sel = f'job="{args.service}"' + (f', service_instance_id="{args.instance}"' if args.instance else "")
    found = [t for t in traces(args.service) if not args.instance or _instance_of(t) == args.instance]
    spans = [s for t in found for s in t["spans"]]
    model_spans = [s for s in spans if any(t["key"] == "ml.model.name" for t in s["tags"]) and
                   s["operationName"].split(" ")[0] in ("predict", "predict_proba")]
    errors = [t for t in found if any(any(g["key"] == "error" and g["value"] for g in s["tags"]) for s in t["spans"])]
    print("\n=== otel-ml demo: what arrived where ===")
    if args.traffic and args.traffic.exists():
        sent = json.loads(args.traffic.read_text())
        requests_sent = sent.get("requests", {})
        print(f"traffic sent:      {sum(requests_sent.values())} requests ("
              + ", ".join(f"{k}: {v}" for k, v in sorted(requests_sent.items())) + ")")
        print(f"                   {sent.get('predictions', 0)} predictions, {sent.get('outcomes_sent', 0)} outcomes "
              f"({sent.get('outcomes_joined', 0)} joined in process)")
    print(f"Jaeger:            {len(found)} traces kept by tail sampling ({len(errors)} with errors), "
          f"{len(model_spans)} model spans")
    if model_spans:
        tags = {t["key"]: t["value"] for t in model_spans[0]["tags"]}
        keys = ("ml.model.name", "ml.model.version", "ml.model.id", "ml.prediction.id", "ml.prediction.score")
        print("  e.g. span        " + ", ".join(f"{k}={tags[k]}" for k in keys if k in tags))
    rows = prom_scalar(f"sum(ml_input_rows_total{{{sel}}})")
    rejected = prom(f"sum by (error_type) (ml_input_errors_total{{{sel}}})")
    p95 = prom_scalar(f"histogram_quantile(0.95, sum by (le) (ml_operation_duration_seconds_bucket{{{sel}}}))")
    print(f"Prometheus:        {rows or 0:.0f} rows predicted; p95 model latency "
          f"{(p95 or 0) * 1000:.2f} ms; rejected requests "
          + (", ".join(f"{r['metric'].get('error_type')}={float(r['value'][1]):.0f}" for r in rejected) or "none"))
    drift = prom(f"topk(3, max by (ml_feature_name) (ml_drift_score{{{sel}, ml_drift_method=\"psi\"}}))")
    if drift:
        print("  drift (PSI)      " + ", ".join(f"{d['metric']['ml_feature_name']}={float(d['value'][1]):.3f}"
                                                 for d in drift))
    perf = prom(f"ml_performance{{{sel}}}")
    if perf:
        perf.sort(key=lambda p: p["metric"]["ml_performance_metric"])
        print("  performance      " + ", ".join(f"{p['metric']['ml_performance_metric']}={float(p['value'][1]):.3f}"
                                                 for p in perf))
    records = 0
    for path in LOGS.glob("logs*.jsonl"):
        records += sum(line.count('"ml.record.kind"') for line in path.read_text().splitlines())
    print(f"log records:       {records} prediction/outcome records written by the gateway (.stack/gateway/)")
    print("Prometheus UI: http://127.0.0.1:9090   Jaeger API: http://127.0.0.1:16686/api/traces?service="
          + args.service)


if __name__ == "__main__":
    main()
