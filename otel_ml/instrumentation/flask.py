"""Flask predict routes: the model on the request span, prediction ids, rejected requests, outcomes.

Usage, with no code change (the HTTP spans and metrics come from ``opentelemetry-instrumentation-flask``,
which the launcher loads alongside; this instrumentor adds the ML side to them)::

    pip install "otel-ml[flask]"
    opentelemetry-instrument python app.py          # or: opentelemetry-instrument gunicorn -w 4 app:app

or in code, in any order::

    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from otel_ml.instrumentation.flask import FlaskMLInstrumentor
    from otel_ml.instrumentation.sklearn import SklearnInstrumentor
    SklearnInstrumentor().instrument(); FlaskInstrumentor().instrument(); FlaskMLInstrumentor().instrument()

What it does, for every Flask app in the process (old or new, instrumented by Flask's instrumentor or not):

* **Predict routes** are found automatically: a route whose handler called an instrumented model
  (``predict``, ``predict_proba``, ...). ``OTEL_ML_PREDICT_ROUTES`` names more (url rules such as
  ``/predict``), so that they count rejected requests from the first one. Other routes are untouched.
* **The request's server span** (from ``opentelemetry-instrumentation-flask``) gets the model's identity
  (``ml.model.name``, ``ml.model.version``, ``ml.model.id``), ``ml.prediction.id`` of row 0,
  ``ml.input.rows`` (batches), the prediction summary of the model span (label, score and confidence of one
  row; class counts, lowest confidence and score percentiles of a batch) and ``ml.drift.detected`` (with a
  baseline). The model spans are its children; they reach the exporter up to one batch delay after the
  server span, and the server span alone carries what the collector's tail sampling
  decides on (errors, latency, drift, low confidence).
* **Prediction ids** (``<trace id>-<span id>-<row>``, unique across replicas, tied to the trace) go back
  to the caller of a successful (2xx) predict request:

  - in the response header ``OTEL_ML_PREDICTION_ID_HEADER`` (default ``X-Prediction-Id``): the id of a
    single row, the comma-separated ids of a batch of up to 100 rows, and for larger batches the range
    ``<trace id>-<span id>-0..<n-1>`` (row *i*'s id is ``<trace id>-<span id>-<i>``);
  - when ``OTEL_ML_PREDICTION_ID_FIELD`` names a field (e.g. ``prediction_id``; off by default, so that
    a response body is what the app made), in JSON responses: a string for one row, a list for a batch,
    added to a top-level JSON object; when the response is a JSON list with one object per row, each
    object gets its own id. Responses that are not JSON, streamed, sent as files, compressed, carry an
    ETag, or already have the field are left exactly as they are.

  Set the header variable to ``none`` to turn the header off.
* **Rejected requests**: a 4xx response on a predict route counts one ``ml.input.errors`` with the
  model's identity, ``http.route`` and ``error.type``: ``invalid_json`` when the body declared JSON
  but did not parse, else the status code (``400``, ``413``, ``422``...), or the reason the app gave with
  :func:`set_input_error_type`. The response itself is not changed.
* **Outcomes**: :func:`register_feedback` adds a ``POST /feedback`` endpoint taking
  ``{"prediction_id": ..., "actual": ...}`` or a list of them, which calls
  :func:`otel_ml.record_outcome` for each (see :mod:`otel_ml.outcomes`).

Predictions made after the view returned (inside a streamed response's generator) are still recorded,
but their ids cannot reach that response. When a handler calls several models, the first one called
answers for the request (its ids are returned); several calls of that model on the same rows
(``predict`` then ``predict_proba``) are one prediction.

``instrument()`` accepts ``config`` (an :class:`otel_ml.config.Config`) and ``logger_provider`` (for
the outcome and prediction records; default: the global one). ``uninstrument()`` restores Flask.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Collection
from typing import Any

import wrapt
from opentelemetry.instrumentation.instrumentor import BaseInstrumentor

from otel_ml import config as config_module
from otel_ml import outcomes, semconv
from otel_ml.instrumentation.sklearn import active_telemetry
from otel_ml.observation import PROBABILITY_OPERATIONS
from otel_ml.package import _instruments_flask
from otel_ml.records import parse_prediction_id
from otel_ml.telemetry import prediction_summary

_log = logging.getLogger("otel_ml")

SPAN_ENVIRON_KEY = "opentelemetry-flask.span_key"  # where opentelemetry-instrumentation-flask keeps its span
ERROR_TYPE_ENVIRON_KEY = "otel_ml.input_error_type"
HEADER_MAX_IDS = 100  # larger batches get a range in the header (every id is in the JSON field)
MAX_JSON_CHECK_BYTES = 1 << 20  # a rejected body larger than this is not parsed to tell invalid JSON
_UNTOUCHABLE = frozenset({"content-encoding", "etag"})  # bodies with these headers are never rewritten


def _is_json(content_type: str) -> bool:
    """Whether a Content-Type header names JSON (``application/json`` or ``application/*+json``)."""
    mimetype = content_type.partition(";")[0].strip().lower()
    return mimetype == "application/json" or (mimetype.startswith("application/") and mimetype.endswith("+json"))


def set_input_error_type(error_type: str) -> None:
    """Name why the current request is rejected (``error.type`` of ``ml.input.errors``), e.g. ``too_many_rows``.

    Optional: by default the error type is ``invalid_json`` or the response's status code. Keep the
    values few (they are a metric attribute).
    """
    import flask

    flask.request.environ[ERROR_TYPE_ENVIRON_KEY] = str(error_type)


class _RequestHandler:
    """Wraps ``Flask.full_dispatch_request``: collects the request's model calls and finishes the response."""

    def __init__(self, config: Any) -> None:
        import flask

        self._request = flask.request  # the proxy, bound once
        self.config = config
        self.header = config.prediction_id_header
        self.header_lower = (self.header or "").lower()
        self.field = config.prediction_id_field
        self.field_key = json.dumps(self.field).encode() if self.field else b""
        self.configured = frozenset(config.predict_routes)
        self.route_states: dict[str, Any] = {}  # url rule -> ModelState of its latest prediction
        self.enabled = True
        self._telemetry: Any = None
        self._tracker: Any = None
        self.input_errors_description = "Requests a predict route rejected (4xx), by error.type"

    def attach(self, telemetry: Any, logger_provider: Any = None) -> Any:
        self._tracker = outcomes.tracker(telemetry, logger_provider=logger_provider)
        self._telemetry = telemetry
        return self._tracker

    # -- the wrapper ------------------------------------------------------------------------------------
    def __call__(self, wrapped: Any, instance: Any, args: tuple, kwargs: dict) -> Any:
        if not self.enabled:
            return wrapped(*args, **kwargs)
        telemetry = active_telemetry()
        if telemetry is None:
            return wrapped(*args, **kwargs)
        tracker = self._tracker if self._telemetry is telemetry else self.attach(telemetry)
        collected: list = []
        token = outcomes.COLLECTING.set(collected)
        try:
            response = wrapped(*args, **kwargs)
        except BaseException:
            outcomes.COLLECTING.reset(token)
            if collected:
                tracker.defer(collected)
            raise
        outcomes.COLLECTING.reset(token)
        try:
            status = response.status_code
            if collected or 400 <= status < 500:
                self._finish(telemetry, tracker, response, status, collected)
        except Exception as exc:
            telemetry.internal_error("flask", exc)
        return response

    def _finish(self, telemetry: Any, tracker: Any, response: Any, status: int, collected: list) -> None:
        request = self._request._get_current_object()  # one context lookup, then plain attributes
        url_rule = request.url_rule
        rule = url_rule.rule if url_rule is not None else None
        state = None
        if collected:
            tracker.defer(collected)
            first = collected[0]  # the first call answers for the request: its ids are the prediction's
            state = first.model
            if rule is not None and self.route_states.get(rule) is not state:
                self.route_states[rule] = state
            first_id = first.row_id(0)
            span = request.environ.get(SPAN_ENVIRON_KEY)
            if span is not None and span.is_recording():
                span.set_attributes(self._span_attributes(telemetry, first, first_id, collected))
            if 200 <= status < 300 and (self.header or self.field):
                self._return_ids(response, first, first_id)
        if 400 <= status < 500 and rule is not None and (rule in self.route_states or rule in self.configured):
            self._count_input_error(telemetry, request, rule, status, state or self.route_states.get(rule))

    # -- the server span ------------------------------------------------------------------------------
    @staticmethod
    def _span_attributes(telemetry: Any, first: Any, first_id: str, collected: list) -> dict:
        """The model's identity, the first row's prediction id and the model span's prediction summary
        (of a probability call, when the request made several calls of the model on the same rows)."""
        state, n = first.model, first.n_rows
        attributes = dict(state.identity_attributes)
        attributes[semconv.PREDICTION_ID] = first_id
        if n > 1:
            attributes[semconv.INPUT_ROWS] = n
        call = first
        if len(collected) > 1:
            calls = [obs for obs in collected if obs.model is state and obs.n_rows == n]
            call = next((obs for obs in calls if obs.operation in PROBABILITY_OPERATIONS), first)
        attributes.update(prediction_summary(call, telemetry.config.max_classes))
        if state.drift is not None:
            attributes[semconv.DRIFT_DETECTED] = state.drift_detected
        return attributes

    # -- prediction ids in the response ------------------------------------------------------------------
    def _return_ids(self, response: Any, first: Any, first_id: str) -> None:
        """The ids in the response header and, when a field is set, the JSON body (after one pass over the
        response's headers: werkzeug finds a header by scanning them all)."""
        headers = response.headers
        if not self.field:
            headers.set(self.header, self._header_value(first, first_id))
            return
        has_header, untouchable, json_body = False, False, False
        for key, value in headers:
            lower = key.lower()
            if lower == "content-type":
                json_body = value == "application/json" or _is_json(value)  # the first: what jsonify sets
            elif lower in _UNTOUCHABLE:
                untouchable = True
            elif lower == self.header_lower:
                has_header = True
        if self.header:
            value = self._header_value(first, first_id)
            if has_header:
                headers[self.header] = value
            else:
                headers.add(self.header, value)
        if json_body and not untouchable and not response.direct_passthrough:
            self._add_field(response, first, first_id)

    @staticmethod
    def _header_value(first: Any, first_id: str) -> str:
        n = first.n_rows
        if n == 1:
            return first_id
        if n <= HEADER_MAX_IDS:
            return ",".join(first.prediction_ids())
        return f"{first.prediction_id}-0..{n - 1}"

    def _add_field(self, response: Any, first: Any, first_id: str) -> None:
        """The ids under ``self.field`` of a JSON response (a top-level object, or a list of one object per row)."""
        chunks = response.response
        if type(chunks) is list and len(chunks) == 1 and type(chunks[0]) is bytes:
            body = chunks[0]  # what Flask's jsonify and Response(bytes) hold: no copy, no iteration
        elif response.is_sequence:
            body = response.get_data()
        else:
            return  # streamed
        stripped = body if body[:1] == b"{" else body.lstrip()  # jsonify's bodies start with the brace
        first_byte = stripped[:1]
        n = first.n_rows
        if first_byte == b"{":
            if self.field_key in body:  # maybe already there: look properly
                data = json.loads(body)
                if not isinstance(data, dict) or self.field in data:
                    return
            # ids are hex digits and dashes: JSON strings as they are
            value = f'"{first_id}"' if n == 1 else '["' + '","'.join(first.prediction_ids()) + '"]'
            rest = stripped[1:].lstrip()
            new = b"".join((b"{", self.field_key, b":", value.encode(), b"" if rest.startswith(b"}") else b",", rest))
        elif first_byte == b"[" and n > 1:
            data = json.loads(body)
            if not (isinstance(data, list) and len(data) == n
                    and all(isinstance(item, dict) and self.field not in item for item in data)):
                return
            for item, prediction_id in zip(data, first.prediction_ids()):
                item[self.field] = prediction_id
            new = json.dumps(data, separators=(",", ":")).encode() + b"\n"
        else:
            return
        response.set_data(new)  # and its Content-Length

    # -- rejected requests ------------------------------------------------------------------------------
    def _count_input_error(self, telemetry: Any, request: Any, rule: str, status: int, state: Any) -> None:
        reason = request.environ.get(ERROR_TYPE_ENVIRON_KEY) or self._reason(request, status)
        telemetry._ensure_started()  # a forked worker resets the metric store before anything is counted
        key = (state.metric_key if state is not None else ()) + ((semconv.ERROR_TYPE, reason),
                                                                  (semconv.HTTP_ROUTE, rule))
        telemetry.store.counter(semconv.INPUT_ERRORS, semconv.UNIT_REQUESTS, self.input_errors_description).add(key, 1)

    @staticmethod
    def _reason(request: Any, status: int) -> str:
        if status == 400 and request.is_json and (request.content_length or 0) <= MAX_JSON_CHECK_BYTES:
            body = request.get_data(cache=True)
            if body:
                try:
                    json.loads(body)
                except ValueError:
                    return semconv.INPUT_ERROR_INVALID_JSON
        return str(status)


# -- the feedback endpoint --------------------------------------------------------------------------------
def feedback_view(*, id_field: str | None = None, actual_field: str = "actual", model_field: str = "model",
                  max_outcomes: int = 1000) -> Callable[[], Any]:
    """A Flask view recording outcomes: POST ``{"prediction_id": "...", "actual": 1}``, a list of such
    objects, or ``{"outcomes": [...]}``. An optional ``"model": "<ml.model.name>"`` names the model of an
    outcome whose prediction was made elsewhere (another replica), so that it is counted and routed to
    the collector-side processor under that model.

    Answers 200 ``{"received": n, "joined": k}`` (``k``: outcomes that met their prediction in this
    process), 400 ``{"error": ...}`` when the body is not that shape or an id is malformed (then nothing
    is recorded), 413 above ``max_outcomes`` items. ``id_field`` defaults to
    ``OTEL_ML_PREDICTION_ID_FIELD`` (``prediction_id`` when that is ``none``, its default).
    """
    if id_field is None:
        id_field = config_module.load().prediction_id_field or "prediction_id"

    def otel_ml_feedback() -> Any:
        import flask

        data = flask.request.get_json(silent=True)
        items = data.get("outcomes") if isinstance(data, dict) and "outcomes" in data else data
        if isinstance(items, dict):
            items = [items]
        if not isinstance(items, list) or not items:
            return flask.jsonify(error=f"expected {{{id_field!r}: ..., {actual_field!r}: ...}} or a list of them"), 400
        if len(items) > max_outcomes:
            return flask.jsonify(error=f"at most {max_outcomes} outcomes per request"), 413
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get(id_field), str):
                return flask.jsonify(error=f"item {i}: {id_field!r} must be a string"), 400
            actual = item.get(actual_field)
            if actual is None or not isinstance(actual, (str, int, float, bool)):
                return flask.jsonify(error=f"item {i}: {actual_field!r} must be a string, number or boolean"), 400
            if not isinstance(item.get(model_field, ""), str):
                return flask.jsonify(error=f"item {i}: {model_field!r} must be a model name"), 400
            try:
                parse_prediction_id(item[id_field])
            except ValueError as exc:
                return flask.jsonify(error=f"item {i}: {exc}"), 400
        joined = sum(bool(outcomes.record_outcome(item[id_field], item[actual_field],
                                                  model=item.get(model_field) or None)) for item in items)
        return flask.jsonify(received=len(items), joined=joined)

    return otel_ml_feedback


def register_feedback(app: Any, rule: str = "/feedback", **options: Any) -> None:
    """Add the :func:`feedback_view` endpoint to ``app`` at ``rule`` (POST)."""
    app.add_url_rule(rule, endpoint="otel_ml_feedback", view_func=feedback_view(**options), methods=["POST"])


# -- the instrumentor ----------------------------------------------------------------------------------
class FlaskMLInstrumentor(BaseInstrumentor):
    """Predict routes, prediction ids, rejected-request counts and outcomes for Flask (see the module docstring)."""

    _handler: _RequestHandler | None = None
    _original: Any = None

    def instrumentation_dependencies(self) -> Collection[str]:
        return _instruments_flask

    def _instrument(self, **kwargs: Any) -> None:
        import flask.app

        config = kwargs.get("config") or config_module.load()
        logger_provider = kwargs.get("logger_provider")
        outcomes.configure(logger_provider)
        handler = _RequestHandler(config)
        flask_class = flask.app.Flask
        original = flask_class.__dict__["full_dispatch_request"]
        # Patched on the base class: apps made before or after, and the subclass that
        # opentelemetry-instrumentation-flask puts in place of flask.Flask, all inherit it.
        flask_class.full_dispatch_request = wrapt.FunctionWrapper(original, handler)
        self._handler, self._original = handler, original
        telemetry = active_telemetry()
        if telemetry is not None:
            handler.attach(telemetry, logger_provider)
        else:  # the scikit-learn instrumentor starts later: attach when scikit-learn is imported
            def attach_late(_module: Any) -> None:
                running = active_telemetry()
                if self._handler is handler and running is not None and handler._telemetry is not running:
                    handler.attach(running, logger_provider)

            wrapt.register_post_import_hook(attach_late, "sklearn.base")

    def _uninstrument(self, **kwargs: Any) -> None:
        import flask.app

        if self._handler is not None:
            self._handler.enabled = False
            flask.app.Flask.full_dispatch_request = self._original
        self._handler = None
        self._original = None
        outcomes.configure(None)
