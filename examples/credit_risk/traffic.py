"""Drive the credit-risk service with realistic traffic: applications, bad requests, a drifted segment, late outcomes.

    python traffic.py --url http://127.0.0.1:8080 --requests 400

What it sends (applicants are the held-out rows of holdout.csv, with their true outcome):

* single applications (most requests) and small batches (2-8 applicants);
* a drifted segment: a broker campaign bringing younger applicants asking for much larger, longer loans
  for business, who default more often (``--drift-share``, default 15% of applications);
* malformed requests (``--bad-share``, default 8%): a body that is not JSON, a missing attribute, a
  mistyped attribute, too many applicants in one batch. The service answers 400 / 413;
* outcomes arriving later: for ``--outcome-share`` of the predictions (default 80%), the true outcome is
  posted to /feedback ``--outcome-delay`` seconds (on average) after the prediction, in small batches;
  plus a few outcomes for predictions this service never made (another replica's), which cannot join.

At the end it prints what it did and, with ``--summary FILE``, writes it as JSON (every outcome sent with
the prediction's probability, so the performance the service reports can be checked against sklearn).
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import requests

from otel_ml.records import ids_of_header

HERE = Path(__file__).resolve().parent
BAD_KINDS = ("invalid_json", "missing_field", "mistyped_field", "too_many_rows")


class Traffic:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.url = args.url.rstrip("/")
        self.rng = random.Random(args.seed)
        frame = pd.read_csv(args.holdout)
        self.actual = frame.pop("default").astype(int).tolist()
        self.applicants = frame.to_dict(orient="records")
        self.session = requests.Session()
        self.pending: list[tuple[float, int, str, int]] = []  # (due time, seq, prediction id, actual) heap
        self.seq = 0
        self.counts: Counter[str] = Counter()
        self.outcomes: list[dict[str, Any]] = []  # what was sent, with the prediction's probability
        self.probability: dict[str, float] = {}
        self.joined = 0
        self.predictions = 0

    # -- applications -------------------------------------------------------------------------------
    def pick(self, drifted: bool) -> tuple[dict, int]:
        i = self.rng.randrange(len(self.applicants))
        row, actual = dict(self.applicants[i]), self.actual[i]
        if drifted:
            row["credit_amount"] = float(row["credit_amount"]) * self.rng.uniform(2.5, 4.0)
            row["duration_in_month"] = min(72.0, float(row["duration_in_month"]) * 2)
            row["age_in_years"] = float(self.rng.randint(19, 26))
            row["purpose"] = "business"
            actual = 1 if actual or self.rng.random() < 0.3 else 0
        return row, actual

    def predict(self, body: Any, actuals: list[int], kind: str) -> None:
        response = self.session.post(f"{self.url}/predict", json=body, timeout=10)
        self.counts[f"{kind} {response.status_code}"] += 1
        if response.status_code != 200:
            return
        payload = response.json()
        ids = ids_of_header(response.headers.get("X-Prediction-Id", ""))
        results = payload["results"] if "results" in payload else [payload]
        self.predictions += len(results)
        for prediction_id, actual, result in zip(ids, actuals, results):  # no ids without otel-ml
            self.probability[prediction_id] = result["default_probability"]
            if self.rng.random() < self.args.outcome_share:
                due = time.monotonic() + self.args.outcome_delay * self.rng.uniform(0.5, 1.5)
                heapq.heappush(self.pending, (due, self.seq, prediction_id, actual))
                self.seq += 1

    def bad_request(self) -> None:
        kind = self.rng.choice(BAD_KINDS)
        row, _ = self.pick(False)
        if kind == "invalid_json":
            response = self.session.post(f"{self.url}/predict", data='{"credit_amount": 1000,',
                                         headers={"Content-Type": "application/json"}, timeout=10)
        else:
            if kind == "missing_field":
                row.pop(self.rng.choice(sorted(row)))
                body: Any = row
            elif kind == "mistyped_field":
                row["credit_amount"] = "a lot"
                body = row
            else:
                body = [row] * 150
            response = self.session.post(f"{self.url}/predict", json=body, timeout=10)
        self.counts[f"bad:{kind} {response.status_code}"] += 1

    # -- outcomes ------------------------------------------------------------------------------------
    def send_due_outcomes(self, everything: bool = False) -> None:
        now = time.monotonic()
        batch = []
        while self.pending and (everything or self.pending[0][0] <= now):
            _, _, prediction_id, actual = heapq.heappop(self.pending)
            batch.append({"prediction_id": prediction_id, "actual": actual})
        for start in range(0, len(batch), 20):
            self.post_outcomes(batch[start:start + 20])

    def post_outcomes(self, items: list[dict[str, Any]], known: bool = True) -> None:
        response = self.session.post(f"{self.url}/feedback", json=items, timeout=10)
        self.counts[f"feedback {response.status_code}"] += 1
        if response.status_code == 200:
            self.joined += response.json()["joined"]
            if known:
                self.outcomes += [{**item, "probability": self.probability[item["prediction_id"]]} for item in items]

    # -- the run ---------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        args = self.args
        interval = 1.0 / args.rate if args.rate > 0 else 0.0
        started = time.monotonic()
        for n in range(args.requests):
            r = self.rng.random()
            if r < args.bad_share:
                self.bad_request()
            elif r < args.bad_share + args.batch_share:
                drawn = [self.pick(self.rng.random() < args.drift_share) for _ in range(self.rng.randint(2, 8))]
                self.predict({"applicants": [d[0] for d in drawn]}, [d[1] for d in drawn], "batch")
            else:
                drifted = self.rng.random() < args.drift_share
                row, actual = self.pick(drifted)
                self.predict(row, [actual], "drifted" if drifted else "single")
            self.send_due_outcomes()
            if interval:
                time.sleep(max(0.0, started + (n + 1) * interval - time.monotonic()))
        while self.pending and time.monotonic() < self.pending[-1][0] + args.outcome_delay * 2:
            if self.pending[0][0] > time.monotonic():
                time.sleep(min(0.2, self.pending[0][0] - time.monotonic()))
            self.send_due_outcomes(everything=args.outcome_delay <= 0)
        self.send_due_outcomes(everything=True)
        strangers = [{"prediction_id": f"{self.rng.getrandbits(128):032x}-{self.rng.getrandbits(64):016x}-0",
                      "actual": 0} for _ in range(args.foreign_outcomes)]
        if strangers:
            self.post_outcomes(strangers, known=False)
        return {
            "requests": dict(sorted(self.counts.items())),
            "predictions": self.predictions,
            "outcomes_sent": len(self.outcomes) + len(strangers),
            "outcomes_joined": self.joined,
            "foreign_outcomes": len(strangers),
            "outcomes": self.outcomes,
            "seconds": round(time.monotonic() - started, 1),
        }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--requests", type=int, default=400, help="predict requests to send")
    parser.add_argument("--rate", type=float, default=25.0, help="requests per second (0: as fast as possible)")
    parser.add_argument("--bad-share", type=float, default=0.08, help="share of malformed requests")
    parser.add_argument("--batch-share", type=float, default=0.15, help="share of batch requests")
    parser.add_argument("--drift-share", type=float, default=0.15, help="share of applicants from the drifted segment")
    parser.add_argument("--outcome-share", type=float, default=0.8, help="share of predictions whose outcome arrives")
    parser.add_argument("--outcome-delay", type=float, default=3.0, help="mean seconds before an outcome arrives")
    parser.add_argument("--foreign-outcomes", type=int, default=5, help="outcomes for another replica's predictions")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--holdout", type=Path, default=HERE / "holdout.csv")
    parser.add_argument("--summary", type=Path, help="write the summary (with every outcome sent) as JSON here")
    parser.add_argument("--quiet", action="store_true", help="do not print the summary")
    args = parser.parse_args(argv)
    summary = Traffic(args).run()
    if args.summary:
        args.summary.write_text(json.dumps(summary, indent=1))
    if not args.quiet:
        print(json.dumps({k: v for k, v in summary.items() if k != "outcomes"}, indent=1))
    return summary


if __name__ == "__main__":
    main()
