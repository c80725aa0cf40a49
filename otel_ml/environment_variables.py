"""The ``OTEL_ML_*`` variable names as module attributes, for the ``opentelemetry_environment_variables`` entry point.

``opentelemetry-instrument`` turns each into a command-line flag (``OTEL_ML_MODEL_NAME`` becomes
``--ml_model_name``). Their meaning and defaults live in :mod:`otel_ml.config`.
"""

from otel_ml.config import VARIABLES

globals().update({variable.env: variable.env for variable in VARIABLES})
