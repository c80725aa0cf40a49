"""otel-ml: OpenTelemetry for classic machine-learning models.

Start an unchanged app with ``opentelemetry-instrument python app.py``; scikit-learn models then emit
spans, metrics and logs with their identity, inputs, predictions and data health. In code:

>>> import otel_ml
>>> otel_ml.__version__
'0.1.0'
"""

from typing import Any

from otel_ml.config import ConfigError
from otel_ml.identity import set_model_identity
from otel_ml.version import __version__

__all__ = ["ConfigError", "__version__", "record_outcome", "set_model_identity"]


def __getattr__(name: str) -> Any:
    # record_outcome (otel_ml.outcomes) imports numpy and the SDK: loaded on first use only
    if name == "record_outcome":
        from otel_ml.outcomes import record_outcome

        return record_outcome
    raise AttributeError(f"module 'otel_ml' has no attribute {name!r}")
