"""Flask predict routes through the Flask test client: server spans, prediction ids, rejected requests, feedback."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

import flask
import numpy as np
import pytest
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from otel_ml import outcomes, semconv, set_model_identity
from otel_ml.instrumentation.flask import FlaskMLInstrumentor, register_feedback, set_input_error_type
from otel_ml.records import ids_of_header

ID = r"[0-9a-f]{32}-[0-9a-f]{16}-\d+"


@pytest.fixture(scope="module")
def data(breast_cancer):
    X, y = breast_cancer
    return X, y


@pytest.fixture(scope="module")
def model(data):
    X, y = data
    fitted = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(X, y)
    set_model_identity(fitted, name="credit", version="7", model_id="abc123")
    return fitted


def make_app(model: Any, columns: list[str]) -> flask.Flask:
    """A typical predict service: JSON in, JSON out, its own 400s and 413s."""
    app = flask.Flask("svc")

    def frame_of(body: Any) -> Any:
        import pandas as pd

        rows = body if isinstance(body, list) else [body]
        return pd.DataFrame([[row[c] for c in columns] for row in rows], columns=columns)

    @app.post("/predict")
    def predict():
        body = flask.request.get_json(silent=True)
        if body is None:
            return flask.jsonify(error="invalid JSON"), 400
        rows = body if isinstance(body, list) else [body]
        if len(rows) > 500:
            return flask.jsonify(error="too many rows"), 413
        if any(not isinstance(r, dict) or any(c not in r for c in columns) for r in rows):
            return flask.jsonify(error="missing field"), 400
        if any(not isinstance(r[c], (int, float)) for r in rows for c in columns):
            set_input_error_type("mistyped_field")
            return flask.jsonify(error="mistyped field"), 400
        proba = model.predict_proba(frame_of(body))[:, 1]
        if isinstance(body, list):
            return flask.jsonify(probabilities=proba.tolist())
        return flask.jsonify(probability=float(proba[0]))

    @app.post("/predict_rows")
    def predict_rows():  # a batch answered as a JSON list, one object per row
        proba = model.predict_proba(frame_of(flask.request.get_json()))[:, 1]
        return flask.jsonify([{"probability": float(p)} for p in proba])

    @app.post("/predict_text")
    def predict_text():
        proba = model.predict_proba(frame_of(flask.request.get_json()))[:, 1]
        return flask.Response(f"{proba[0]:.6f}", mimetype="text/plain")

    @app.post("/predict_stream")
    def predict_stream():
        proba = model.predict_proba(frame_of(flask.request.get_json()))[:, 1]

        def generate():
            for p in proba:
                yield json.dumps({"probability": float(p)}) + "\n"

        return flask.Response(generate(), mimetype="application/json")

    @app.post("/predict_both")
    def predict_both():  # label from predict, probability from predict_proba: one prediction
        X = frame_of(flask.request.get_json())
        label = model.predict(X)
        proba = model.predict_proba(X)[:, 1]
        return flask.jsonify(label=int(label[0]), probability=float(proba[0]))

    @app.post("/predict_with_id")
    def predict_with_id():
        model.predict_proba(frame_of(flask.request.get_json()))
        return flask.jsonify(prediction_id="the app's own")

    @app.post("/predict_fails")
    def predict_fails():
        model.predict_proba(frame_of(flask.request.get_json()).iloc[:, :3])
        return "unreachable"

    @app.post("/score")  # named in OTEL_ML_PREDICT_ROUTES in some tests; never calls a model here
    def score():
        return flask.jsonify(error="bad"), 400

    @app.get("/health")
    def health():
        return "ok"

    @app.post("/other")
    def other():
        return flask.jsonify(error="nope"), 400

    register_feedback(app)
    return app


@dataclass
class Service:
    client: Any
    app: flask.Flask
    inst: Any
    logs: InMemoryLogRecordExporter

    def spans(self) -> list:
        return self.inst.finished()

    def server_spans(self) -> list:
        return [s for s in self.spans() if s.kind == SpanKind.SERVER]

    def metric(self, name: str) -> list:
        return self.inst.flush().points(name)

    def input_errors(self) -> dict[tuple, int]:
        return {(p.attributes[semconv.ERROR_TYPE], p.attributes[semconv.HTTP_ROUTE]): p.value
                for p in self.metric(semconv.INPUT_ERRORS)}


@pytest.fixture
def service(make, model, data):
    """``service(**config overrides, order=..., http=True)``: an instrumented app and its exporters."""
    made: list[tuple] = []
    columns = list(data[0].columns)

    def factory(order: str = "ml_first", http: bool = True, app_before: bool = False, **overrides: Any) -> Service:
        inst = make(**overrides)
        logs = InMemoryLogRecordExporter()
        logger_provider = LoggerProvider()
        logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
        http_provider = TracerProvider()
        http_provider.add_span_processor(SimpleSpanProcessor(inst.spans))
        app = make_app(model, columns) if app_before else None
        steps = [lambda: FlaskMLInstrumentor().instrument(config=inst.telemetry.config,
                                                          logger_provider=logger_provider)]
        if http:
            steps.append(lambda: FlaskInstrumentor().instrument(tracer_provider=http_provider))
        for step in steps if order == "ml_first" else reversed(steps):
            step()
        made.append((http,))
        if app is None:
            app = make_app(model, columns)
        elif http:
            FlaskInstrumentor.instrument_app(app, tracer_provider=http_provider)
        return Service(app.test_client(), app, inst, logs)

    yield factory
    for (http,) in made:
        FlaskMLInstrumentor().uninstrument()
        if http:
            FlaskInstrumentor().uninstrument()


def row(data: Any, i: int = 0) -> dict:
    return {k: float(v) for k, v in data[0].iloc[i].items()}


def rows(data: Any, n: int, start: int = 0) -> list[dict]:
    return [row(data, i) for i in range(start, start + n)]


# -- server spans and prediction ids ------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["ml_first", "http_first"])
def test_single_row_request_span_carries_model_and_prediction(service, data, order):
    svc = service(order=order)
    response = svc.client.post("/predict", json=row(data))
    assert response.status_code == 200
    prediction_id = response.headers["X-Prediction-Id"]
    assert set(response.get_json()) == {"probability"}  # the body is the app's: the JSON field is opt-in
    (server,) = svc.server_spans()
    (model_span,) = [s for s in svc.spans() if s.name == "predict_proba credit"]
    assert model_span.parent.span_id == server.context.span_id  # the model span is the request's child
    assert prediction_id == model_span.attributes[semconv.PREDICTION_ID]
    assert prediction_id.startswith(f"{server.context.trace_id:032x}-{model_span.context.span_id:016x}-")
    a = server.attributes
    assert (a[semconv.MODEL_NAME], a[semconv.MODEL_VERSION], a[semconv.MODEL_ID]) == ("credit", "7", "abc123")
    assert a[semconv.PREDICTION_ID] == prediction_id and semconv.INPUT_ROWS not in a  # rows: batches only
    assert a[semconv.PREDICTION_SCORE] == pytest.approx(response.get_json()["probability"])
    assert a[semconv.PREDICTION_LABEL] == model_span.attributes[semconv.PREDICTION_LABEL]
    # what the collector's tail sampling decides on is on the request span itself (a model span may come later)
    assert a[semconv.PREDICTION_CONFIDENCE_MIN] == model_span.attributes[semconv.PREDICTION_CONFIDENCE_MIN]
    assert a["http.route"] == "/predict"


def test_batch_ids_in_header_and_json(service, data):
    svc = service(prediction_id_field="prediction_id")
    response = svc.client.post("/predict", json=rows(data, 5))
    ids = response.headers["X-Prediction-Id"].split(",")
    assert len(ids) == 5 and len(set(ids)) == 5
    assert response.get_json()["prediction_id"] == ids == ids_of_header(response.headers["X-Prediction-Id"])
    assert [i.rsplit("-", 1)[1] for i in ids] == ["0", "1", "2", "3", "4"]
    (server,) = svc.server_spans()
    assert server.attributes[semconv.INPUT_ROWS] == 5
    assert sum(server.attributes[semconv.PREDICTION_CLASS_COUNTS]) == 5
    assert semconv.PREDICTION_SCORE_P50 in server.attributes


def test_large_batch_header_is_a_range_and_json_lists_every_id(service, data):
    svc = service(prediction_id_field="prediction_id")
    response = svc.client.post("/predict", json=rows(data, 150))
    header = response.headers["X-Prediction-Id"]
    prefix, span_id, rng = header.split("-")
    assert rng == "0..149"
    ids = response.get_json()["prediction_id"]
    assert ids == [f"{prefix}-{span_id}-{i}" for i in range(150)]
    assert ids_of_header(header) == ids  # what a client reads when the JSON field is off


def test_json_list_response_gets_an_id_per_row(service, data):
    svc = service(prediction_id_field="prediction_id")
    response = svc.client.post("/predict_rows", json=rows(data, 3))
    body = response.get_json()
    assert [item["prediction_id"] for item in body] == response.headers["X-Prediction-Id"].split(",")
    assert all("probability" in item for item in body)


def test_non_json_and_streamed_responses_are_untouched(service, data, model):
    svc = service(prediction_id_field="prediction_id")
    text = svc.client.post("/predict_text", json=row(data))
    expected = f"{model.predict_proba(__import__('pandas').DataFrame([row(data)]))[0, 1]:.6f}"
    assert text.data.decode() == expected and text.mimetype == "text/plain"
    assert "X-Prediction-Id" in text.headers
    streamed = svc.client.post("/predict_stream", json=rows(data, 2))
    lines = [json.loads(line) for line in streamed.data.decode().splitlines()]
    assert [sorted(line) for line in lines] == [["probability"], ["probability"]]
    assert len(streamed.headers["X-Prediction-Id"].split(",")) == 2


def test_a_field_the_app_already_returns_is_kept(service, data):
    svc = service(prediction_id_field="prediction_id")
    response = svc.client.post("/predict_with_id", json=row(data))
    assert response.get_json() == {"prediction_id": "the app's own"}
    assert "X-Prediction-Id" in response.headers


def test_header_and_field_can_be_turned_off(service, data):
    svc = service(prediction_id_header="", prediction_id_field="")
    response = svc.client.post("/predict", json=row(data))
    assert "X-Prediction-Id" not in response.headers
    assert set(response.get_json()) == {"probability"}


def test_custom_header_and_field_names(service, data):
    svc = service(prediction_id_header="X-Request-Prediction", prediction_id_field="pid")
    response = svc.client.post("/predict", json=row(data))
    assert response.get_json()["pid"] == response.headers["X-Request-Prediction"]


def test_predict_then_predict_proba_is_one_prediction(service, data):
    svc = service()
    response = svc.client.post("/predict_both", json=row(data))
    (server,) = svc.server_spans()
    model_spans = [s for s in svc.spans() if s.name in ("predict credit", "predict_proba credit")]
    assert len(model_spans) == 2
    first = min(model_spans, key=lambda s: s.start_time)
    assert response.headers["X-Prediction-Id"] == first.attributes[semconv.PREDICTION_ID]
    assert server.attributes[semconv.PREDICTION_SCORE] == pytest.approx(response.get_json()["probability"])
    # the outcome joins both: label from predict, score from predict_proba
    svc.client.post("/feedback", json={"prediction_id": response.headers["X-Prediction-Id"], "actual": 1})
    (record,) = [r.log_record for r in svc.logs.get_finished_logs()
                 if r.log_record.attributes[semconv.RECORD_KIND] == "outcome"]
    assert record.attributes[semconv.PREDICTION_LABEL] == str(response.get_json()["label"])
    assert record.attributes[semconv.PREDICTION_SCORE] == pytest.approx(response.get_json()["probability"])


def test_other_routes_are_left_alone(service):
    svc = service()
    assert svc.client.get("/health").data == b"ok"
    assert svc.client.post("/other", json={}).status_code == 400
    (health, other) = svc.server_spans()
    assert not any(k.startswith("ml.") for s in (health, other) for k in s.attributes)
    assert svc.input_errors() == {}


def test_works_without_the_http_instrumentation(service, data):
    svc = service(http=False)
    response = svc.client.post("/predict", json=row(data))
    (model_span,) = [s for s in svc.spans() if s.name == "predict_proba credit"]
    assert response.headers["X-Prediction-Id"] == model_span.attributes[semconv.PREDICTION_ID]
    assert model_span.parent is None


def test_apps_created_before_instrumentation(service, data):
    svc = service(app_before=True)
    response = svc.client.post("/predict", json=row(data))
    assert "X-Prediction-Id" in response.headers
    (server,) = svc.server_spans()
    assert server.attributes[semconv.MODEL_NAME] == "credit"


def test_concurrent_requests_get_their_own_ids(service, data):
    svc = service()
    results: dict[int, str] = {}

    def call(i: int) -> None:
        client = svc.app.test_client()
        results[i] = client.post("/predict", json=row(data, i)).headers["X-Prediction-Id"]

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    servers = {s.attributes[semconv.PREDICTION_ID]: s for s in svc.server_spans()}
    assert set(results.values()) == set(servers)
    for prediction_id, server in servers.items():
        assert prediction_id.startswith(f"{server.context.trace_id:032x}-")


# -- rejected requests ------------------------------------------------------------------------------
def test_rejections_on_a_predict_route_are_input_errors_and_responses_unchanged(service, data, model):
    plain = make_app(model, list(data[0].columns)).test_client()  # before instrumenting: the app's own bytes
    bad = [
        dict(data="{not json", content_type="application/json"),
        dict(json={"mean radius": 1.0}),
        dict(json={**row(data), "mean radius": "wide"}),
        dict(json=rows(data, 501)),
    ]
    expected = [(r.status_code, r.data, r.headers.get("Content-Type")) for r in (plain.post("/predict", **b)
                                                                                 for b in bad)]
    svc = service()
    svc.client.post("/predict", json=row(data))  # the route becomes a predict route
    got = [(r.status_code, r.data, r.headers.get("Content-Type")) for r in (svc.client.post("/predict", **b)
                                                                            for b in bad)]
    assert got == expected
    assert svc.input_errors() == {("invalid_json", "/predict"): 1, ("400", "/predict"): 1,
                                  ("mistyped_field", "/predict"): 1, ("413", "/predict"): 1}
    (point,) = [p for p in svc.metric(semconv.INPUT_ERRORS) if p.attributes[semconv.ERROR_TYPE] == "413"]
    assert point.attributes[semconv.MODEL_NAME] == "credit" and point.attributes[semconv.MODEL_VERSION] == "7"
    assert all(semconv.MODEL_NAME not in s.attributes for s in svc.server_spans()[1:])


def test_configured_predict_routes_count_before_any_prediction(service):
    svc = service(predict_routes=("/score",))
    svc.client.post("/score", json={})
    assert svc.input_errors() == {("400", "/score"): 1}


def test_model_exceptions_are_not_input_errors(service, data):
    svc = service()
    svc.client.post("/predict", json=row(data))
    response = svc.client.post("/predict_fails", json=row(data))
    assert response.status_code == 500
    assert svc.input_errors() == {}
    (server,) = [s for s in svc.server_spans() if s.attributes["http.route"] == "/predict_fails"]
    assert "X-Prediction-Id" not in response.headers


# -- feedback -------------------------------------------------------------------------------------------
def test_feedback_endpoint_joins_outcomes(service, data):
    svc = service(prediction_id_field="prediction_id")
    ids = svc.client.post("/predict", json=rows(data, 4)).get_json()["prediction_id"]
    one = svc.client.post("/feedback", json={"prediction_id": ids[0], "actual": 1})
    assert one.get_json() == {"received": 1, "joined": 1}
    many = svc.client.post("/feedback", json=[{"prediction_id": i, "actual": 0} for i in ids[1:]])
    assert many.get_json() == {"received": 3, "joined": 3}
    wrapped = svc.client.post("/feedback", json={"outcomes": [{"prediction_id": f"{'a' * 32}-{'b' * 16}-0",
                                                                "actual": 0}]})
    assert wrapped.get_json() == {"received": 1, "joined": 0}
    counts = {p.attributes[semconv.OUTCOME_JOINED]: p.value for p in svc.metric(semconv.OUTCOME_COUNT)}
    assert counts == {True: 4, False: 1}


def test_feedback_names_the_model_of_an_outcome_from_another_replica(service, data):
    svc = service()
    svc.client.post("/predict", json=row(data))
    elsewhere = f"{'a' * 32}-{'b' * 16}-0"
    response = svc.client.post("/feedback", json={"prediction_id": elsewhere, "actual": 1, "model": "churn"})
    assert response.get_json() == {"received": 1, "joined": 0}
    (point,) = svc.metric(semconv.OUTCOME_COUNT)
    assert point.attributes[semconv.MODEL_NAME] == "churn" and point.attributes[semconv.OUTCOME_JOINED] is False
    assert svc.client.post("/feedback", json={"prediction_id": elsewhere, "actual": 1, "model": 3}).status_code == 400
    # clients choose these names: beyond MAX_NAMED_MODELS they share one series
    many = [{"prediction_id": elsewhere, "actual": 0, "model": f"m{i}"} for i in range(outcomes.MAX_NAMED_MODELS + 20)]
    assert svc.client.post("/feedback", json=many).status_code == 200
    names = {p.attributes[semconv.MODEL_NAME] for p in svc.metric(semconv.OUTCOME_COUNT)}
    assert len(names) == outcomes.MAX_NAMED_MODELS + 1 and outcomes.OTHER_MODEL in names


@pytest.mark.parametrize("body", [{"actual": 1}, {"prediction_id": "nope", "actual": 1},
                                  {"prediction_id": f"{'a' * 32}-{'b' * 16}-0"}, [], "text",
                                  {"prediction_id": f"{'a' * 32}-{'b' * 16}-0", "actual": [1]}])
def test_feedback_rejects_malformed_bodies(service, body):
    svc = service()
    response = svc.client.post("/feedback", json=body)
    assert response.status_code == 400 and "error" in response.get_json()
    assert svc.metric(semconv.OUTCOME_COUNT) == []


def test_feedback_limits_items(service):
    svc = service()
    body = [{"prediction_id": f"{'a' * 32}-{'b' * 16}-{i}", "actual": 0} for i in range(1001)]
    assert svc.client.post("/feedback", json=body).status_code == 413


# -- instrument / uninstrument --------------------------------------------------------------------------
def test_uninstrument_restores_flask(make, model, data):
    original = flask.app.Flask.__dict__["full_dispatch_request"]
    inst = make()
    FlaskMLInstrumentor().instrument(config=inst.telemetry.config)
    assert flask.app.Flask.__dict__["full_dispatch_request"] is not original
    FlaskMLInstrumentor().uninstrument()
    assert flask.app.Flask.__dict__["full_dispatch_request"] is original
    response = make_app(model, list(data[0].columns)).test_client().post("/predict", json=row(data))
    assert "X-Prediction-Id" not in response.headers and "prediction_id" not in response.get_json()


def test_dependencies_are_flask():
    assert list(FlaskMLInstrumentor().instrumentation_dependencies()) == ["flask >= 2.2"]


def test_no_sklearn_instrumentation_means_no_change(model, data):
    FlaskMLInstrumentor().instrument()
    try:
        response = make_app(model, list(data[0].columns)).test_client().post("/predict", json=row(data))
        assert response.status_code == 200 and "X-Prediction-Id" not in response.headers
    finally:
        FlaskMLInstrumentor().uninstrument()


def test_metrics_reach_the_exporter_after_many_requests(service, data):
    svc = service()
    for i in range(20):
        svc.client.post("/predict", json=row(data, i))
    rows_metric = svc.inst.flush().value(semconv.INPUT_ROWS_METRIC, ml__operation__name="predict_proba")
    assert rows_metric == 20
    np.testing.assert_equal(len(svc.server_spans()), 20)


def test_leaf_model_ids_are_tied_to_the_trace(service, data):
    X, y = data
    leaf = LogisticRegression(max_iter=3000).fit(X.to_numpy(), y)
    svc = service()

    @svc.app.post("/leaf")
    def leaf_route():
        return flask.jsonify(p=float(leaf.predict_proba(np.asarray([flask.request.get_json()]))[0, 1]))

    response = svc.client.post("/leaf", json=X.iloc[0].tolist())
    (server,) = [s for s in svc.server_spans() if s.attributes.get("http.route") == "/leaf"]
    (model_span,) = [s for s in svc.spans() if s.name == "predict_proba LogisticRegression"]
    expected = f"{server.context.trace_id:032x}-{model_span.context.span_id:016x}-0"
    assert response.headers["X-Prediction-Id"] == expected
    assert model_span.attributes[semconv.PREDICTION_ID] == expected == server.attributes[semconv.PREDICTION_ID]


def test_request_span_carries_the_drift_verdict_with_a_baseline(service, model, data):
    """With a baseline the request span says whether the model's latest drift window drifted (the collector's
    tail sampling keeps such traces, from the request span alone)."""
    from otel_ml.baseline import Baseline

    svc = service()
    telemetry = svc.inst.telemetry
    state = telemetry.states.get(model)
    telemetry.aggregator.use_baseline(state, Baseline().fit(data[0]))
    svc.client.post("/predict", json=row(data))
    state.drift_detected = True  # as a closed window that drifted sets it
    svc.client.post("/predict", json=row(data, 1))
    first, second = svc.server_spans()
    assert first.attributes[semconv.DRIFT_DETECTED] is False
    assert second.attributes[semconv.DRIFT_DETECTED] is True
