"""otel-ml: OpenTelemetry for classic machine-learning models.

Start an unchanged app with ``opentelemetry-instrument python app.py``; scikit-learn models then emit
spans, metrics and logs with their identity, inputs, predictions and data health. In code:

>>> import otel_ml
>>> otel_ml.__version__
'0.1.0'
"""

from otel_ml.config import ConfigError
from otel_ml.identity import set_model_identity
from otel_ml.version import __version__

__all__ = ["ConfigError", "__version__", "set_model_identity"]
