"""Per-request latency of a Flask predict service: plain, with Flask's instrumentation only, with otel-ml.

    python benchmarks/bench_flask.py [--runs 5] [--rounds 1500] [--json benchmarks/results/flask.json]

Real HTTP servers on loopback (gunicorn, one ``gthread`` worker with one thread, keep-alive), one per
variant, serve ``POST /predict`` with one JSON row. A load generator in another process sends requests
one after the other, one keep-alive connection per server, visiting the servers in turn (round ``i``
sends a block of requests to each variant, in a rotating order), and times each request (closed loop:
latency, not throughput). Interleaving means that whatever else the machine does hits every variant
alike, which matters on a shared machine. Each run starts fresh servers, warms them up, then measures
``--rounds`` requests per variant in each of two regimes (``--blocks``):

- **steady load** (blocks of 50 requests): a server answers requests back to back, as a service under
  load does, its working set in the CPU caches;
- **cold caches** (blocks of 1): between two requests of a server the three others each answer one,
  and four Python servers' working sets do not fit in this machine's shared 32 MiB L3: every request
  starts with its code and data evicted (the same request path measured in process costs about 3x more
  with the caches flushed between requests than without). A service idling between requests is there.

The orchestrator also reads each server's CPU time (user + system, worker and master, background
threads included) over each measured part. Figures per variant and regime: the median over runs of the
median request latency within a run; the median over runs of the median *paired* difference to
``flask`` (the requests of one round and block position are neighbours in time); and CPU µs per request.

Variants (the three instrumented ones run under ``opentelemetry-instrument`` exporting OTLP/HTTP to a
sink process that discards everything; spans through the SDK's BatchSpanProcessor):

- ``plain``: ``gunicorn app:app``;
- ``flask``: only ``opentelemetry-instrumentation-flask`` (otel-ml's instrumentors disabled with
  ``OTEL_PYTHON_DISABLED_INSTRUMENTATIONS``): the reference the target is measured against;
- ``flask_sklearn``: plus otel-ml's scikit-learn instrumentor (model span, metrics): what the core costs;
- ``otel_ml``: plus otel-ml's Flask instrumentor with its defaults (server-span attributes, prediction
  ids in the response header, outcome bookkeeping): all of otel-ml. ``--otel-env
  OTEL_ML_PREDICTION_ID_FIELD=prediction_id`` measures the ids in the JSON body too.

Scenarios (the model the service calls for each request):

- ``small``: LogisticRegression on the 30 numeric breast-cancer features, numpy input: a leaf model,
  one model span;
- ``credit``: the credit-risk pipeline of ``examples/credit_risk`` (ColumnTransformer with imputer,
  scaler and one-hot encoder, then LogisticRegression) on a pandas row: one model span plus a child
  span per pipeline step.

Target: ``otel_ml`` adds at most 50 µs per single-row request over ``flask``, in each regime.

``--otel-env KEY=VALUE`` runs every instrumented variant with a setting, to measure the overhead under
it: ``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` with ``OTEL_TRACES_SAMPLER_ARG=0.1`` (head sampling),
or ``OTEL_BSP_SCHEDULE_DELAY=600000`` with ``OTEL_BSP_MAX_QUEUE_SIZE`` and
``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` of ``200000`` (no span export while measuring: what the export's work
on the server's other threads does to latency). ``--no-background`` goes further: no span export, no
metric export and no wake of otel-ml's aggregator thread while measuring (the spans, counts and drift
of the run wait in their queues), so that what remains over ``flask`` is the request path alone.
``--otel-env BENCH_WAKE_SPANS=8`` has otel-ml's aggregator thread drain after every 8 calls with spans
instead of 256 (what holding calls longer costs in garbage collection, against what draining more often
costs in latency), and ``--otel-env BENCH_GC_OFF=1`` turns the garbage collector off in every
instrumented server (attribution only: memory grows), and ``--otel-env BENCH_SWITCH_INTERVAL=0.001``
sets the interpreter's switch interval (``sys.setswitchinterval``; 5 ms by default) in each of them.
``--pin`` keeps the servers on the last CPU and the
load generator and sink on the others: without it the scheduler moves them between this machine's two
vCPUs, and one run's figure with cold caches moved by up to 80 µs (14 µs pinned, 5 runs each, 12-04).
Write those runs elsewhere with ``--json``.

``--baseline PATH`` compares two versions of otel-ml in one run: the ``flask_sklearn`` variant then runs
all of otel-ml imported from the checkout at ``PATH`` (for example ``git worktree add /tmp/base <commit>``),
so its row is the baseline's and ``otel_ml``'s the working tree's.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import pickle
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("plain", "flask", "flask_sklearn", "otel_ml")
DISABLED = {"flask": "sklearn_ml,flask_ml", "flask_sklearn": "flask_ml", "otel_ml": ""}
TARGET_US = 50.0
REGIMES = {50: "steady load", 1: "cold caches"}  # block size -> name
NO_BACKGROUND = {  # --no-background: every instrumented variant's background threads idle through a run
    "OTEL_BSP_SCHEDULE_DELAY": "600000", "OTEL_BSP_MAX_QUEUE_SIZE": "200000",
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "200000", "OTEL_METRIC_EXPORT_INTERVAL": "600000",
    "BENCH_NO_BACKGROUND": "1",
}

APP = '''
import os
import pickle
import sys

import numpy as np
import pandas as pd
from flask import Flask, jsonify, request

with open(os.environ["BENCH_MODEL"], "rb") as fh:
    model = pickle.load(fh)
COLUMNS = os.environ.get("BENCH_COLUMNS")
COLUMNS = COLUMNS.split("|") if COLUMNS else None
NUMERIC = set(os.environ.get("BENCH_NUMERIC", "").split("|"))
app = Flask(__name__)
aggregator = sys.modules.get("otel_ml.aggregator")  # loaded by the launcher when otel-ml instruments
if aggregator is not None and os.environ.get("BENCH_NO_BACKGROUND"):  # the aggregator waits out the run
    aggregator.WAKE_EVERY = aggregator.WAKE_SPANS = 10**9
if aggregator is not None and os.environ.get("BENCH_WAKE_SPANS"):  # how many calls with spans wake it
    aggregator.WAKE_SPANS = int(os.environ["BENCH_WAKE_SPANS"])
if os.environ.get("BENCH_GC_OFF"):  # attribution only: what the garbage collector's share is
    import gc
    gc.disable()
if os.environ.get("BENCH_SWITCH_INTERVAL"):  # seconds a thread may hold the GIL while another waits
    sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))


@app.post("/predict")
def predict():
    row = request.get_json()
    if COLUMNS is None:
        X = np.asarray([row["x"]], dtype=float)
    else:
        X = pd.DataFrame([[row[c] for c in COLUMNS]], columns=COLUMNS)
        X = X.astype({c: "float64" for c in COLUMNS if c in NUMERIC})
    p = float(model.predict_proba(X)[0, 1])
    return jsonify(probability=p)
'''


# -- helpers run in their own processes ---------------------------------------------------------------
def sink(port_file: str) -> None:
    """An OTLP/HTTP endpoint that accepts and discards everything."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Path(port_file).write_text(str(server.server_address[1]))
    server.serve_forever()


def client(ports: str, body_file: str, requests: int, block: int) -> None:
    """Send ``requests`` requests to every server in rounds of one block of ``block`` requests per server
    (rotating order), one keep-alive connection per server; print each server's latencies in µs as JSON."""
    body = Path(body_file).read_bytes()
    headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
    targets = [int(p) for p in ports.split(",")]
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for port in targets]
    latencies: list[list[float]] = [[] for _ in targets]
    order = list(range(len(targets)))
    for i in range(max(1, requests // block)):
        shift = i % len(order)
        for k in order[shift:] + order[:shift]:
            connection = connections[k]
            for _ in range(block):
                start = time.perf_counter()
                connection.request("POST", "/predict", body, headers)
                response = connection.getresponse()
                response.read()
                elapsed = time.perf_counter() - start
                if response.status != 200:
                    raise SystemExit(f"status {response.status} from port {targets[k]}")
                latencies[k].append(elapsed * 1e6)
    print(json.dumps(latencies))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children that are still running (the gunicorn worker)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == pid or int(fields[1]) == pid:  # fields[1]: the parent pid
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


# -- the benchmark ------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
SERVER_CPUS, CLIENT_CPUS = set(CPUS[-1:]), set(CPUS[:-1] or CPUS)  # --pin: servers on the last CPU
PIN = False  # set by --pin
BASELINE: str | None = None  # set by --baseline: the checkout the flask_sklearn variant imports otel-ml from


def _pinned(cpus: set[int]) -> Any:
    """A ``preexec_fn`` keeping a child process on ``cpus`` under ``--pin`` (else None: anywhere)."""
    if not PIN or not cpus:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def _executable(name: str) -> str:
    candidate = Path(sys.executable).with_name(name)
    return str(candidate) if candidate.exists() else name


def prepare(work: Path) -> dict[str, dict]:
    """The models and request bodies of both scenarios."""
    import numpy as np
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression

    X, y = load_breast_cancer(return_X_y=True)
    with open(work / "small.pkl", "wb") as fh:
        pickle.dump(LogisticRegression(max_iter=5000).fit(X, y), fh)
    (work / "small.json").write_text(json.dumps({"x": np.round(X[7], 4).tolist()}))

    subprocess.run([sys.executable, str(ROOT / "examples" / "credit_risk" / "train.py"), "--out", str(work)],
                   check=True, capture_output=True)
    sys.path.insert(0, str(ROOT / "examples" / "credit_risk"))
    import pandas as pd
    import train

    row = pd.read_csv(work / "holdout.csv").drop(columns="default").to_dict(orient="records")[0]
    (work / "credit.json").write_text(json.dumps(row))
    (work / "app.py").write_text(APP)
    return {
        "small": {"BENCH_MODEL": str(work / "small.pkl"), "body": str(work / "small.json"),
                  "model": "LogisticRegression, 30 numeric features, numpy row"},
        "credit": {"BENCH_MODEL": str(work / "credit_risk.pkl"), "body": str(work / "credit.json"),
                   "BENCH_COLUMNS": "|".join(train.FEATURES), "BENCH_NUMERIC": "|".join(train.NUMERIC),
                   "model": "credit-risk Pipeline(ColumnTransformer(imputer+scaler, one-hot), LogisticRegression), "
                            "pandas row"},
    }


def start_server(variant: str, scenario: dict, work: Path, sink_port: int,
                 otel_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, int]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update({k: v for k, v in scenario.items() if k.startswith("BENCH_")})
    env["PYTHONPATH"] = os.pathsep.join([str(work), env.get("PYTHONPATH", "")]).strip(os.pathsep)
    disabled = DISABLED.get(variant, "")
    if variant == "flask_sklearn" and BASELINE:  # all of otel-ml, from the baseline checkout
        env["PYTHONPATH"], disabled = os.pathsep.join([str(work), BASELINE]), ""
    command = [_executable("gunicorn"), "-k", "gthread", "--threads", "1", "-w", "1", "--keep-alive", "300",
               "-b", f"127.0.0.1:{port}", "--log-level", "warning", "app:app"]
    if variant != "plain":
        env.update({
            "OTEL_SERVICE_NAME": "bench-flask", "OTEL_TRACES_EXPORTER": "otlp", "OTEL_METRICS_EXPORTER": "otlp",
            "OTEL_LOGS_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}",
            "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS": disabled,
            **(otel_env or {}),
        })
        command = [_executable("opentelemetry-instrument"), *command]
    server = subprocess.Popen(command, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              preexec_fn=_pinned(SERVER_CPUS))
    deadline = time.monotonic() + 90
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, port
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{variant} server did not start: {server.stderr.read().decode()[-2000:]}") from None
            time.sleep(0.1)


def run_once(scenario: dict, work: Path, sink_port: int, warmup: int, rounds: int,
             blocks: list[int], otel_env: dict[str, str] | None = None) -> dict[int, dict[str, dict]]:
    """Fresh servers for every variant, a warm-up, then ``rounds`` interleaved requests per variant in each
    regime (block size)."""
    servers = {}
    try:
        for variant in VARIANTS:
            servers[variant] = start_server(variant, scenario, work, sink_port, otel_env)
        ports = ",".join(str(servers[v][1]) for v in VARIANTS)
        command = [sys.executable, __file__, "--client", ports, scenario["body"]]
        subprocess.run([*command, str(warmup), "1"], capture_output=True, check=True, timeout=900,
                       preexec_fn=_pinned(CLIENT_CPUS))
        measured = {}
        for block in blocks:
            cpu_before = {v: cpu_seconds(servers[v][0].pid) for v in VARIANTS}
            out = subprocess.run([*command, str(rounds), str(block)], capture_output=True, text=True, check=True,
                                 timeout=1800, preexec_fn=_pinned(CLIENT_CPUS))
            cpu_after = {v: cpu_seconds(servers[v][0].pid) for v in VARIANTS}
            latencies = dict(zip(VARIANTS, json.loads(out.stdout)))
            measured[block] = {v: {"latencies": latencies[v],
                                   "cpu_us": (cpu_after[v] - cpu_before[v]) / len(latencies[v]) * 1e6}
                               for v in VARIANTS}
        return measured
    finally:
        for server, _ in servers.values():
            server.send_signal(signal.SIGTERM)
        for server, _ in servers.values():
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def summarize(results: dict) -> str:
    lines = [f"{results['runs']} runs x {results['rounds']} requests per variant, regime and scenario; "
             f"figures are medians over runs (µs per request)"]
    if results.get("baseline"):
        lines.append(f"--baseline: flask_sklearn is all of otel-ml from {results['baseline']} (read 'scikit-learn "
                     "instrumentor' below as that baseline, 'Flask ML layer' as the working tree minus it)")
    for name, scenario in results["scenarios"].items():
        lines.append(f"{name}: {scenario['model']}")
        for block, regime in scenario["regimes"].items():
            v = regime["variants"]
            lines.append(f"  {REGIMES.get(int(block), 'blocks')} (blocks of {block} request"
                         f"{'s' if int(block) > 1 else ''} per server)")
            lines.append(f"    {'variant':<14} {'latency':>9} {'vs flask':>9} {'p90':>9} {'p99':>9} {'server CPU':>11}")
            for variant in VARIANTS:
                x = v[variant]
                lines.append(f"    {variant:<14} {x['median_us']:9.1f} {x['paired_vs_flask_us']:+9.1f} "
                             f"{x['p90_us']:9.1f} {x['p99_us']:9.1f} {x['cpu_us']:11.1f}")
            o = regime["overhead_us"]
            met = "met" if o["otel_ml_over_flask"] <= TARGET_US else "NOT met"
            lines.append(f"    otel-ml over Flask instrumentation alone: {o['otel_ml_over_flask']:+.1f} µs latency "
                         f"(runs: {o['runs_us']}), {o['otel_ml_over_flask_cpu']:+.1f} µs CPU; "
                         f"target <= {TARGET_US:.0f} µs: {met}")
            lines.append(f"      of which the scikit-learn instrumentor {o['sklearn_over_flask']:+.1f} µs, "
                         f"the Flask ML layer {o['flask_ml_over_flask_sklearn']:+.1f} µs")
            base = o["flask_over_plain"]
            lines.append(f"    for scale: Flask's instrumentation itself costs {base:+.1f} µs over plain here; "
                         f"otel-ml adds {100 * o['otel_ml_over_flask'] / base:.0f}% of that, its Flask layer "
                         f"{100 * o['flask_ml_over_flask_sklearn'] / base:.0f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=1500, help="measured requests per variant and regime")
    parser.add_argument("--warmup", type=int, default=300, help="requests per variant before measuring")
    parser.add_argument("--blocks", default=",".join(map(str, REGIMES)),
                        help="regimes: requests sent to one server before the next (50: steady load, 1: cold)")
    parser.add_argument("--scenarios", default="small,credit")
    parser.add_argument("--otel-env", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every instrumented variant, e.g. OTEL_TRACES_SAMPLER_ARG=0.1 (repeatable)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "flask.json")
    parser.add_argument("--no-background", action="store_true",
                        help="no span export, metric export or aggregator work while measuring: the request path alone")
    parser.add_argument("--pin", action="store_true",
                        help="servers on the last CPU, load generator and sink on the others (steadier runs)")
    parser.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                        help="the flask_sklearn variant runs all of otel-ml from this checkout instead (A/B)")
    args = parser.parse_args(argv)
    global PIN, BASELINE
    PIN = args.pin
    BASELINE = str(args.baseline.resolve()) if args.baseline else None
    if any("=" not in setting for setting in args.otel_env):
        parser.error("--otel-env takes KEY=VALUE, e.g. OTEL_TRACES_SAMPLER_ARG=0.1")
    otel_env = dict(setting.split("=", 1) for setting in args.otel_env)
    if args.no_background:
        otel_env = {**NO_BACKGROUND, **otel_env}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scenarios = prepare(work)
        port_file = work / "sink.port"
        sink_process = subprocess.Popen([sys.executable, __file__, "--sink", str(port_file)],
                                        preexec_fn=_pinned(CLIENT_CPUS))
        try:
            while not port_file.exists() or not port_file.read_text():
                time.sleep(0.05)
            sink_port = int(port_file.read_text())
            blocks = [int(b) for b in args.blocks.split(",")]
            results = {"runs": args.runs, "rounds": args.rounds, "warmup": args.warmup, "otel_env": otel_env,
                       "pinned": args.pin, "baseline": BASELINE, "scenarios": {}}
            for name in args.scenarios.split(","):
                runs = []
                for r in range(args.runs):
                    runs.append(run_once(scenarios[name], work, sink_port, args.warmup, args.rounds, blocks,
                                         otel_env))
                    for block in blocks:
                        print(f"{name} run {r + 1}/{args.runs}, blocks of {block}: " + ", ".join(
                            f"{v} {statistics.median(runs[-1][block][v]['latencies']):.0f}" for v in VARIANTS)
                              + " µs", file=sys.stderr)
                results["scenarios"][name] = {
                    "model": scenarios[name]["model"],
                    "regimes": {block: scenario_result([run[block] for run in runs]) for block in blocks}}
        finally:
            sink_process.terminate()
            sink_process.wait()
    from importlib.metadata import version

    results["target_us"] = TARGET_US
    results["environment"] = {
        "python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        **{package: version(package) for package in ("flask", "gunicorn", "scikit-learn", "opentelemetry-sdk",
                                                       "opentelemetry-instrumentation-flask")},
        "server": "gunicorn gthread, 1 worker, 1 thread, keep-alive",
    }
    results["summary"] = summarize(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    args.json.with_suffix(".md").write_text(report(results))
    print(results["summary"])


def report(results: dict) -> str:
    env = results["environment"]
    return "\n".join([
        "# Flask predict service: latency with and without otel-ml",
        "",
        "Written by `python benchmarks/bench_flask.py` (see its docstring for the method); raw numbers in the",
        "JSON file next to this one.",
        "",
        f"Machine: {env['cpus']} CPUs ({env['machine']}), shared; load average at the end "
        f"{', '.join(f'{x:.1f}' for x in env['load_average'])}. Python {env['python']}, Flask {env['flask']}, "
        f"gunicorn {env['gunicorn']}, scikit-learn {env['scikit-learn']}, OpenTelemetry SDK "
        f"{env['opentelemetry-sdk']}, opentelemetry-instrumentation-flask "
        f"{env['opentelemetry-instrumentation-flask']}; {env['server']}."
        + (" Pinned (`--pin`): servers on the last CPU, load generator and sink on the others."
           if results.get("pinned") else "")
        + (f" Every instrumented variant ran with {', '.join(f'`{k}={v}`' for k, v in results['otel_env'].items())}."
           if results.get("otel_env") else ""),
        "",
        "```",
        results["summary"],
        "```",
        "",
        "Reading: the variants' requests alternate block by block, so the differences (\"vs flask\", paired",
        "within rounds) are steadier than the absolute latencies, which follow the machine's load. Under",
        "steady load a server answers requests back to back; with cold caches every request starts with the",
        "server's code and data evicted by the other servers (see the script's docstring). On a shared, busy",
        "machine everything runs several times slower than on an idle one; the ratio to the Flask",
        "instrumentation's own cost is the figure to carry to other machines.",
        "",
    ])


def scenario_result(runs: list[dict]) -> dict:
    def over_runs(values: list[float]) -> float:
        return round(statistics.median(values), 1)

    variants = {}
    for v in VARIANTS:
        variants[v] = {
            "median_us": over_runs([statistics.median(run[v]["latencies"]) for run in runs]),
            "p90_us": over_runs([statistics.quantiles(run[v]["latencies"], n=10)[-1] for run in runs]),
            "p99_us": over_runs([statistics.quantiles(run[v]["latencies"], n=100)[-1] for run in runs]),
            "paired_vs_flask_us": over_runs([statistics.median(a - b for a, b in zip(run[v]["latencies"],
                                                                                    run["flask"]["latencies"]))
                                             for run in runs]),
            "cpu_us": over_runs([run[v]["cpu_us"] for run in runs]),
            "run_medians_us": [round(statistics.median(run[v]["latencies"]), 1) for run in runs],
        }
    paired = {v: variants[v]["paired_vs_flask_us"] for v in VARIANTS}
    return {
        "variants": variants,
        "overhead_us": {
            "flask_over_plain": round(-paired["plain"], 1),
            "sklearn_over_flask": paired["flask_sklearn"],
            "flask_ml_over_flask_sklearn": round(paired["otel_ml"] - paired["flask_sklearn"], 1),
            "otel_ml_over_flask": paired["otel_ml"],
            "otel_ml_over_flask_cpu": round(variants["otel_ml"]["cpu_us"] - variants["flask"]["cpu_us"], 1),
            "runs_us": [round(statistics.median(a - b for a, b in zip(run["otel_ml"]["latencies"],
                                                                       run["flask"]["latencies"])), 1)
                        for run in runs],
        },
    }


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--report":  # rewrite the summary and .md of an existing JSON
        saved = json.loads(Path(sys.argv[2]).read_text())
        saved["summary"] = summarize(saved)
        Path(sys.argv[2]).write_text(json.dumps(saved, indent=1) + "\n")
        Path(sys.argv[2]).with_suffix(".md").write_text(report(saved))
        print(saved["summary"])
    elif len(sys.argv) > 1 and sys.argv[1] == "--sink":
        sink(sys.argv[2])
    elif len(sys.argv) > 1 and sys.argv[1] == "--client":
        client(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
