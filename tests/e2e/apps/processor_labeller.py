"""A labelling job, for tests/e2e/test_processor_pipeline.py: records outcomes of predictions made elsewhere.

Run under ``opentelemetry-instrument``. Reads a JSON list of ``[prediction_id, actual, model_name]`` from the
file given as the first argument and calls ``otel_ml.record_outcome(prediction_id, actual, model=model_name)``
for each. This process never loads or runs a model, so no outcome meets its prediction here: each becomes
an outcome log record that only the collector-side processor can join. Prints ``recorded <n> joined <k>``.
"""

from __future__ import annotations

import json
import sys

import otel_ml


def main(path: str) -> None:
    with open(path) as f:
        outcomes = json.load(f)
    joined = sum(bool(otel_ml.record_outcome(pid, actual, model=model)) for pid, actual, model in outcomes)
    print("recorded", len(outcomes), "joined", joined)


if __name__ == "__main__":
    main(sys.argv[1])
