"""The Flask predict request's own cost, in process: Flask's instrumentation alone, + otel-ml's scikit-learn
instrumentor, + otel-ml's Flask layer, side by side.

    python benchmarks/bench_flask_wsgi.py [--rounds 30] [--block 100] [--json benchmarks/results/flask_wsgi.json]

The companion of ``bench_flask.py`` (the issue's benchmark: real servers over HTTP), for attribution:
over loopback HTTP one run's figure moves by ±25-50 µs on this shared machine, the size of the target,
while here the noise of the network stack, the load generator and the server loop is gone. The app
and the scenarios are ``bench_flask.py``'s (``small``: LogisticRegression on a numpy row; ``credit``: the
credit-risk pipeline on a pandas row). Each request goes through the app's WSGI callable (werkzeug's
request parsing, Flask's dispatch, ``opentelemetry-instrumentation-flask``'s server span, the JSON
response), called directly with a prepared environ.

Variants: ``flask`` (``opentelemetry-instrumentation-flask`` alone: the reference), ``flask_sklearn``
(+ otel-ml's scikit-learn instrumentor), ``otel_ml`` (+ otel-ml's Flask layer, default settings), and
what returning the prediction ids costs: ``otel_ml_id_field`` (the ids in the JSON body too,
``OTEL_ML_PREDICTION_ID_FIELD=prediction_id``) and ``otel_ml_no_ids`` (the header off too).

In a round every variant answers one block of ``--block`` requests, in an order shuffled from round to
round (seeded); otel-ml is instrumented and uninstrumented around its blocks. Figures: the median over
rounds of (the variant's median request time in the round - the Flask instrumentation's), and the
same for process CPU per request (every thread: otel-ml's aggregator and the span processor included,
drained at the end of each block). Spans go through a ``BatchSpanProcessor`` to an exporter that
discards them (OTLP encoding is not measured here; ``bench_flask.py`` includes it).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import sys
import tempfile
import types
from pathlib import Path

from opentelemetry import trace
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_flask import APP, TARGET_US, prepare  # noqa: E402
from bench_overhead import DiscardMetrics, _provider, _time_block  # noqa: E402

from otel_ml import config  # noqa: E402
from otel_ml.instrumentation.flask import FlaskMLInstrumentor  # noqa: E402
from otel_ml.instrumentation.sklearn import SklearnInstrumentor  # noqa: E402

VARIANTS = ("flask", "flask_sklearn", "otel_ml", "otel_ml_id_field", "otel_ml_no_ids")
FLASK_ML = {  # variant -> otel-ml settings of its Flask layer (the last two: what returning the ids costs)
    "otel_ml": {},
    "otel_ml_id_field": {"OTEL_ML_PREDICTION_ID_FIELD": "prediction_id"},
    "otel_ml_no_ids": {"OTEL_ML_PREDICTION_ID_HEADER": "none"},
}


def load_app(scenario: dict) -> object:
    """``bench_flask.py``'s app for one scenario, as a module of its own."""
    os.environ.update({k: v for k, v in scenario.items() if k.startswith("BENCH_")})
    for key in ("BENCH_COLUMNS", "BENCH_NUMERIC"):
        if key not in scenario:
            os.environ.pop(key, None)
    module = types.ModuleType("bench_app")
    exec(compile(APP, "bench_app.py", "exec"), module.__dict__)  # noqa: S102
    return module.app


def requester(app: object, body: bytes):
    """One POST /predict through the app's WSGI callable; raises unless it answers 200."""
    status: list[str] = []

    def start_response(line: str, headers: list, exc_info: object = None) -> None:
        status.append(line)

    def request(_: object = None) -> None:
        environ = {
            "REQUEST_METHOD": "POST", "PATH_INFO": "/predict", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.url_scheme": "http", "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
            "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
            "HTTP_HOST": "127.0.0.1:8000", "REMOTE_ADDR": "127.0.0.1",
        }
        status.clear()
        chunks = app(environ, start_response)
        b"".join(chunks)
        getattr(chunks, "close", lambda: None)()
        if not status or not status[0].startswith("200"):
            raise RuntimeError(f"/predict answered {status}")

    return request


class Bench:
    def __init__(self) -> None:
        self.provider = _provider(ALWAYS_ON)
        trace.set_tracer_provider(self.provider)
        FlaskInstrumentor().instrument(tracer_provider=self.provider)  # before the apps are made
        self.sklearn, self.flask_ml = SklearnInstrumentor(), FlaskMLInstrumentor()
        self.configs = {variant: config.load(settings) for variant, settings in FLASK_ML.items()}
        self.config = self.configs["otel_ml"]

    def block(self, variant: str, request, calls: int) -> tuple[float, float, float]:
        if variant != "flask":
            self.sklearn.instrument(tracer_provider=self.provider, metric_exporter=DiscardMetrics(),
                                    config=self.config, export_interval=5)
        if variant in FLASK_ML:
            self.flask_ml.instrument(config=self.configs[variant])
        telemetry = self.sklearn.telemetry if variant != "flask" else None

        def finish() -> None:  # what the block's requests left to otel-ml's aggregator and the span processor
            if telemetry is not None:
                telemetry.aggregator.drain()
            self.provider.force_flush()

        try:
            for _ in range(5):
                request()
            finish()
            return _time_block(request, None, calls, finish)
        finally:
            if variant in FLASK_ML:
                self.flask_ml.uninstrument()
            if variant != "flask":
                self.sklearn.uninstrument()

    def scenario(self, name: str, request, rounds: int, block: int, variants: list[str]) -> dict:
        order = random.Random(name)
        measured: dict[str, list[tuple[float, float, float]]] = {v: [] for v in variants}
        for _ in range(rounds):
            for variant in order.sample(variants, len(variants)):
                measured[variant].append(self.block(variant, request, block))
        result = {}
        for v in variants:
            result[v] = {
                "median_us": round(statistics.median(m[0] for m in measured[v]), 1),
                "vs_flask_us": round(statistics.median(a[0] - b[0] for a, b in zip(measured[v], measured["flask"])), 1),
                "cpu_us": round(statistics.median(m[1] for m in measured[v]), 1),
                "cpu_vs_flask_us": round(statistics.median(a[1] - b[1] for a, b in zip(measured[v],
                                                                                      measured["flask"])), 1),
            }
        return result


def summarize(results: dict) -> str:
    lines = [f"{results['rounds']} rounds x {results['block']} requests per variant and scenario, in process "
             f"(WSGI callable); medians over rounds, µs per request"]
    for name, scenario in results["scenarios"].items():
        lines.append(f"{name}: {scenario['model']}")
        lines.append(f"    {'variant':<20} {'latency':>9} {'vs flask':>9} {'CPU':>9} {'CPU vs flask':>13}")
        for v, x in scenario["variants"].items():
            lines.append(f"    {v:<20} {x['median_us']:9.1f} {x['vs_flask_us']:+9.1f} {x['cpu_us']:9.1f} "
                         f"{x['cpu_vs_flask_us']:+13.1f}")
        if "otel_ml" not in scenario["variants"]:
            continue
        over = scenario["variants"]["otel_ml"]["vs_flask_us"]
        lines.append(f"    otel-ml over the Flask instrumentation: {over:+.1f} µs per request in process "
                     f"(the issue's target, {TARGET_US:.0f} µs, is judged over HTTP by bench_flask.py)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--block", type=int, default=100, help="requests per variant in a round")
    parser.add_argument("--scenarios", default="small,credit")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="flask (the reference) and any of "
                        + ", ".join(VARIANTS[1:]))
    parser.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "flask_wsgi.json")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    if "flask" not in variants or not set(variants) <= set(VARIANTS):
        parser.error(f"--variants: flask and any of {', '.join(VARIANTS[1:])}")
    bench = Bench()
    results = {"rounds": args.rounds, "block": args.block, "scenarios": {}}
    with tempfile.TemporaryDirectory() as tmp:
        scenarios = prepare(Path(tmp))
        for name in args.scenarios.split(","):
            scenario = scenarios[name]
            request = requester(load_app(scenario), Path(scenario["body"]).read_bytes())
            results["scenarios"][name] = {"model": scenario["model"],
                                          "variants": bench.scenario(name, request, args.rounds, args.block,
                                                                                variants)}
            print(f"{name} done", file=sys.stderr)
    results["environment"] = {"load_average": os.getloadavg(), "cpus": os.cpu_count()}
    results["summary"] = summarize(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(results["summary"])
    return results


if __name__ == "__main__":
    main()
