"""Validation: every check counted per (feature, check), first violations, strict mode.

The cost of one row is measured in benchmarks/bench_baseline.py, not asserted here."""

from __future__ import annotations

import doctest

import numpy as np
import pandas as pd
import pytest

import otel_ml.validation as validation_module
from otel_ml.baseline import Baseline
from otel_ml.config import load
from otel_ml.frame import as_table
from otel_ml.validation import InputValidationError, ValidationResult, Validator


def test_docstring_examples_run():
    assert doctest.testmod(validation_module).failed == 0


@pytest.fixture(scope="module")
def baseline():
    rng = np.random.default_rng(0)
    n = 1000
    df = pd.DataFrame({
        "age": rng.uniform(20, 70, n),
        "income": rng.uniform(0, 100, n),
        "city": rng.choice(["paris", "lyon", "nice"], n),
    })
    df.loc[: n // 10 - 1, "income"] = np.nan  # 10 % missing in the reference
    return Baseline().fit(df)


def _row(**kw):
    base = {"age": 30.0, "income": 50.0, "city": "paris"}
    base.update(kw)
    return pd.DataFrame([base])


def test_clean_rows_pass(baseline):
    r = Validator(baseline).check(as_table(_row()))
    assert r.ok and r.counts == {} and r.violations == [] and r.total == 0


def test_out_of_range_uses_margin(baseline):
    f = baseline.features[0]
    span = f["max"] - f["min"]
    v = Validator(baseline, range_margin=0.1)
    assert v.check(_row(age=f["max"] + 0.09 * span)).ok
    r = v.check(_row(age=f["max"] + 0.11 * span))
    assert r.counts == {("age", "out_of_range"): 1}
    assert r.violations[0].value == pytest.approx(f["max"] + 0.11 * span)
    assert Validator(baseline, range_margin=0.0).check(_row(age=f["min"] - 1e-9)).counts == {("age", "out_of_range"): 1}


def test_counts_are_per_value_and_events_capped(baseline):
    df = pd.concat([_row(age=1000.0 + i) for i in range(12)], ignore_index=True)
    r = Validator(baseline, max_events=5).check(df)
    assert r.counts == {("age", "out_of_range"): 12}
    assert len(r.violations) == 5
    assert [v.value for v in r.violations] == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0]
    assert [v.row for v in r.violations] == [0, 1, 2, 3, 4]


def test_unseen_category(baseline):
    r = Validator(baseline).check(pd.concat([_row(city="berlin"), _row(city="rome"), _row()]))
    assert r.counts == {("city", "unseen_category"): 2}
    assert r.violations[0].value == "berlin"


def test_unseen_category_skipped_when_domain_incomplete():
    df = pd.DataFrame({"c": [f"v{i}" for i in range(50)]})
    b = Baseline(max_categories=10).fit(df)
    assert not b.features[0]["categories_complete"]
    assert Validator(b).check(pd.DataFrame({"c": ["never"]})).ok


def test_missing_and_extra_columns(baseline):
    df = _row().drop(columns=["income"]).assign(bonus=1.0)
    r = Validator(baseline).check(df)
    assert r.counts == {("income", "missing_column"): 1, ("bonus", "extra_column"): 1}


def test_plain_array_matched_by_position():
    b = Baseline().fit(np.array([[0.0, 1.0], [1.0, 2.0]]), feature_names=["a", "b"])
    v = Validator(b)
    assert v.check(np.array([[0.5, 1.5]])).ok
    r = v.check(np.array([[0.5, 1.5, 9.0]]))
    assert r.counts == {("x2", "extra_column"): 1}
    r = v.check(np.array([[0.5]]))
    assert r.counts == {("b", "missing_column"): 1}


def test_type_mismatch(baseline):
    r = Validator(baseline).check(_row(age="thirty"))
    assert r.counts == {("age", "type_mismatch"): 1}
    r = Validator(baseline).check(_row(city=3))
    assert r.counts == {("city", "type_mismatch"): 1}


def test_completeness_with_tolerance(baseline):
    rows = pd.concat([_row(income=np.nan if i < 14 else 50.0) for i in range(100)], ignore_index=True)
    assert Validator(baseline, completeness_tolerance=0.05).check(rows).ok  # 14 % <= 10 % + 5 %
    rows = pd.concat([_row(income=np.nan if i < 16 else 50.0) for i in range(100)], ignore_index=True)
    r = Validator(baseline, completeness_tolerance=0.05).check(rows)
    assert r.counts == {("income", "completeness"): 1}
    assert r.violations[0].value == pytest.approx(0.16)
    r = Validator(baseline).check(_row(city=None))
    assert r.counts == {("city", "completeness"): 1}


def test_non_finite(baseline):
    r = Validator(baseline).check(_row(age=np.inf))
    assert r.counts == {("age", "non_finite"): 1}
    # NaN where the baseline never saw a missing value is non-finite (and incomplete) ...
    r = Validator(baseline).check(_row(age=np.nan))
    assert r.counts == {("age", "non_finite"): 1, ("age", "completeness"): 1}
    # ... but in a feature that had missing values it is only a completeness matter
    rows = pd.concat([_row(income=np.nan)] + [_row()] * 19, ignore_index=True)
    assert Validator(baseline).check(rows).ok


def test_strict_raises_value_error_naming_feature_and_value(baseline):
    v = Validator(baseline, strict=True)
    with pytest.raises(InputValidationError) as info:
        v.check(_row(city="berlin"))
    assert isinstance(info.value, ValueError)
    assert "'city'" in str(info.value) and "'berlin'" in str(info.value) and "unseen_category" in str(info.value)
    assert (info.value.feature, info.value.check, info.value.value) == ("city", "unseen_category", "berlin")
    with pytest.raises(InputValidationError, match=r"feature 'age': out_of_range value 500.0"):
        v.check(_row(age=500.0))
    assert v.check(_row()).ok


def test_never_raises_by_default_on_garbage(baseline):
    for X in ([["a", None, object()]], np.zeros((0, 3)), np.full((2, 3), np.nan), [[1, 2]]):
        assert isinstance(Validator(baseline).check(X), ValidationResult)


def test_from_config(baseline):
    v = Validator.from_config(baseline, load({"OTEL_ML_VALIDATION_STRICT": "true",
                                             "OTEL_ML_VALIDATION_RANGE_MARGIN": "0.5"}))
    assert v.strict and v.range_margin == 0.5 and v.max_events == 5


def test_by_check_totals(baseline):
    r = Validator(baseline).check(pd.concat([_row(age=900.0, city="x"), _row(income=-500.0)]))
    assert r.by_check() == {"out_of_range": 2, "unseen_category": 1}
