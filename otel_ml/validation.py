"""Input validation against a baseline: schema, ranges, categories and completeness, counted per check.

Usage::

    from otel_ml.validation import Validator
    validator = Validator(baseline, range_margin=0.1, completeness_tolerance=0.05)
    result = validator.check(as_table(X))          # never raises unless strict=True
    result.counts                                   # {(feature, check): violations}
    result.violations                               # first max_events (feature, check, value)

Checks (the ``ml.validation.check`` attribute values), and what one violation is:

=====================  =================================================================  ==================
check                  violated when                                                      counted per
=====================  =================================================================  ==================
``missing_column``     a baseline feature is not in the input                             batch
``extra_column``       the input has a column the baseline does not know                  batch
``type_mismatch``      text where the baseline saw numbers, or numbers where it saw text  batch
``out_of_range``       a finite value below ``min - m * (max - min)`` or above            value
                       ``max + m * (max - min)``, ``m`` = ``range_margin``
``unseen_category``    a category the baseline never saw (only when the baseline kept     value
                       every category it saw, ``categories_complete``)
``completeness``       the batch's missing share exceeds the baseline's by more than      batch
                       ``completeness_tolerance`` (a one-row batch is 0 % or 100 % missing)
``non_finite``         +-inf, or NaN in a feature the baseline never saw missing          value
=====================  =================================================================  ==================

Columns are matched by name; an input without meaningful names (a plain array, whose names are ``x0, x1,
...``) is matched by position. Values in :attr:`ValidationResult.violations` are raw inputs: show them only
when raw capture is on. Strict mode raises :class:`InputValidationError` (a ``ValueError``) at the first
violation, naming the feature, the check and the value.

>>> import numpy as np
>>> from otel_ml.baseline import Baseline
>>> b = Baseline().fit(np.array([[0.0, 1.0], [10.0, 2.0]]), feature_names=["a", "b"])
>>> r = Validator(b).check(np.array([[5.0, 1.5], [12.0, np.inf]]))
>>> r.counts
{('a', 'out_of_range'): 1, ('b', 'non_finite'): 1}
>>> [(v.feature, v.check, v.value) for v in r.violations]
[('a', 'out_of_range', 12.0), ('b', 'non_finite', inf)]
>>> Validator(b, strict=True).check(np.array([[5.0, -3.0]]))
Traceback (most recent call last):
...
otel_ml.validation.InputValidationError: feature 'b': out_of_range value -3.0 (baseline range 1.0 .. 2.0, margin 0.1)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from otel_ml.frame import KIND_CATEGORICAL, Table, as_table

MISSING_COLUMN = "missing_column"
EXTRA_COLUMN = "extra_column"
TYPE_MISMATCH = "type_mismatch"
OUT_OF_RANGE = "out_of_range"
UNSEEN_CATEGORY = "unseen_category"
COMPLETENESS = "completeness"
NON_FINITE = "non_finite"
CHECKS = (MISSING_COLUMN, EXTRA_COLUMN, TYPE_MISMATCH, OUT_OF_RANGE, UNSEEN_CATEGORY, COMPLETENESS, NON_FINITE)

_PLAN_CACHE_SIZE = 8


class InputValidationError(ValueError):
    """An input violates the baseline (strict mode); names the feature, the check and the value."""

    def __init__(self, feature: str, check: str, value: Any, detail: str = "") -> None:
        self.feature, self.check, self.value = feature, check, value
        text = f"feature {feature!r}: {check}"
        if value is not None:
            text += f" value {value!r}"
        super().__init__(text + (f" ({detail})" if detail else ""))


@dataclass(frozen=True)
class Violation:
    feature: str
    check: str
    value: Any = None  # raw input value (None for column-level checks); show only with raw capture on
    row: int | None = None  # row in the kept rows of the batch


@dataclass
class ValidationResult:
    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    violations: list[Violation] = field(default_factory=list)
    rows: int = 0

    @property
    def ok(self) -> bool:
        return not self.counts

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def by_check(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for (_, check), n in self.counts.items():
            out[check] = out.get(check, 0) + n
        return out


class Validator:
    """Checks batches against a baseline; parameter names and defaults follow :mod:`otel_ml.config`."""

    def __init__(self, baseline: Any, range_margin: float = 0.1, completeness_tolerance: float = 0.05,
                 strict: bool = False, max_events: int = 5) -> None:
        self.baseline = baseline
        self.range_margin = float(range_margin)
        self.completeness_tolerance = float(completeness_tolerance)
        self.strict = bool(strict)
        self.max_events = int(max_events)
        feats = baseline.features
        self._names = [f["name"] for f in feats]
        self._name_set = set(self._names)
        self._index = {n: j for j, n in enumerate(self._names)}
        self._kinds = [f["kind"] for f in feats]
        self._numeric = [j for j, f in enumerate(feats) if f["kind"] != KIND_CATEGORICAL]
        lo, hi, nan_ok, miss = [], [], [], []
        for j in self._numeric:
            f = feats[j]
            fmin = f["min"] if f.get("min") is not None else -np.inf
            fmax = f["max"] if f.get("max") is not None else np.inf
            span = fmax - fmin if np.isfinite(fmax - fmin) else 0.0
            lo.append(fmin - self.range_margin * span)
            hi.append(fmax + self.range_margin * span)
            nan_ok.append(f.get("missing", 0) > 0)
        self._lo = np.asarray(lo, dtype=np.float64)
        self._hi = np.asarray(hi, dtype=np.float64)
        self._nan_ok = np.asarray(nan_ok, dtype=bool)
        for f in feats:
            total = f.get("count", 0) + f.get("missing", 0)
            miss.append(f.get("missing", 0) / total if total else 0.0)
        self._missing_rate = np.asarray(miss, dtype=np.float64)
        self._domains = {j: set(f["categories"]) for j, f in enumerate(feats)
                         if f["kind"] == KIND_CATEGORICAL and f.get("categories_complete", False)}
        self._text_domain = {j for j, f in enumerate(feats) if f["kind"] == KIND_CATEGORICAL
                             and any(isinstance(c, str) for c in f["categories"])}
        self._plans: dict[tuple[Any, ...], dict[str, Any]] = {}

    @classmethod
    def from_config(cls, baseline: Any, config: Any) -> Validator:
        return cls(baseline, range_margin=config.validation_range_margin,
                   completeness_tolerance=config.validation_completeness_tolerance,
                   strict=config.validation_strict, max_events=config.max_violation_events)

    # ------------------------------------------------------------------------------------------------
    def _plan(self, table: Table) -> dict[str, Any]:
        key = (tuple(table.names), tuple(table.kinds))
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        names = list(table.names)
        by_position = not self._name_set.issubset(names) and names == [f"x{i}" for i in range(len(names))]
        if by_position:
            position = {self._names[i]: i for i in range(min(len(names), len(self._names)))}
            extra = [names[i] for i in range(len(self._names), len(names))]
        else:
            position = {n: i for i, n in enumerate(names)}
            extra = [n for n in names if n not in self._name_set]
        missing = [n for n in self._names if n not in position]
        numeric_col = {j: c for c, j in enumerate(table.numeric_index)}
        mismatch, num_src, num_rows, cats = [], [], [], []
        for row, j in enumerate(self._numeric):
            src = position.get(self._names[j])
            if src is None:
                continue
            if src in numeric_col:
                num_src.append(numeric_col[src])
                num_rows.append(row)
            else:
                mismatch.append(self._names[j])
        for j, kind in enumerate(self._kinds):
            if kind != KIND_CATEGORICAL:
                continue
            src = position.get(self._names[j])
            if src is None:
                continue
            if src in table.categorical:
                cats.append((j, src, "categorical"))
            elif src in numeric_col:
                if j in self._text_domain:
                    mismatch.append(self._names[j])
                else:
                    cats.append((j, numeric_col[src], "numeric"))
        rows = np.asarray(num_rows, dtype=np.intp)
        plan = {
            "column_counts": {**{(n, MISSING_COLUMN): 1 for n in missing}, **{(n, EXTRA_COLUMN): 1 for n in extra},
                              **{(n, TYPE_MISMATCH): 1 for n in mismatch}},
            "column_events": [Violation(n, MISSING_COLUMN) for n in missing]
            + [Violation(n, EXTRA_COLUMN) for n in extra] + [Violation(n, TYPE_MISMATCH) for n in mismatch],
            "num_src": np.asarray(num_src, dtype=np.intp),
            "num_identity": num_src == list(range(table.numeric.shape[1])) and len(num_src) == len(self._numeric),
            "num_features": [self._names[self._numeric[r]] for r in num_rows],
            "num_baseline": np.asarray([self._numeric[r] for r in num_rows], dtype=np.intp),
            "lo": self._lo[rows], "hi": self._hi[rows], "nan_ok": self._nan_ok[rows],
            "cats": cats,
            "feature_of_column": [self._index.get(n) for n in names] if not by_position
            else [i if i < len(self._names) else None for i in range(len(names))],
        }
        if len(self._plans) >= _PLAN_CACHE_SIZE:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def check(self, X: Table | Any) -> ValidationResult:
        """Validate one batch (a :class:`~otel_ml.frame.Table` or anything ``as_table`` takes)."""
        table = X if isinstance(X, Table) else as_table(X)
        plan = self._plan(table)
        if table.numeric.shape[0] and plan["num_src"].size:
            block = table.numeric if plan["num_identity"] else table.numeric[:, plan["num_src"]]
            inside = (block >= plan["lo"]) & (block <= plan["hi"])  # False for NaN and beyond-range values
            numeric_ok = bool(inside.all())
        else:
            block, inside, numeric_ok = None, None, True
        if numeric_ok and not plan["column_counts"] and not plan["cats"]:
            return ValidationResult(rows=table.rows_kept)  # fast path: nothing to report
        result = ValidationResult(rows=table.rows_kept)
        for violation in plan["column_events"]:
            self._record(result, violation, plan["column_counts"][(violation.feature, violation.check)])
        if not numeric_ok:
            self._numeric_violations(result, plan, block, inside)
        for j, src, source in plan["cats"]:
            values = table.categorical[src] if source == "categorical" else table.numeric[:, src]
            self._category_violations(result, j, values)
        self._completeness(result, table, plan)
        return result

    def _record(self, result: ValidationResult, violation: Violation, n: int = 1) -> None:
        if self.strict:
            raise InputValidationError(violation.feature, violation.check, violation.value,
                                       self._detail(violation))
        key = (violation.feature, violation.check)
        result.counts[key] = result.counts.get(key, 0) + n
        if len(result.violations) < self.max_events:
            result.violations.append(violation)

    def _detail(self, v: Violation) -> str:
        if v.check != OUT_OF_RANGE:
            return ""
        f = self.baseline.features[self._names.index(v.feature)]
        return f"baseline range {f['min']!r} .. {f['max']!r}, margin {self.range_margin}"

    def _numeric_violations(self, result: ValidationResult, plan: dict[str, Any], block: np.ndarray,
                            inside: np.ndarray) -> None:
        finite = np.isfinite(block)
        out_of_range = ~inside & finite
        bad_nan = np.isnan(block) & ~plan["nan_ok"]
        non_finite = np.isinf(block) | bad_nan
        for check, mask in ((OUT_OF_RANGE, out_of_range), (NON_FINITE, non_finite)):
            per_column = mask.sum(axis=0)
            for c in np.flatnonzero(per_column):
                name = plan["num_features"][c]
                rows = np.flatnonzero(mask[:, c])
                first = int(rows[0])
                self._record(result, Violation(name, check, float(block[first, c]), first), int(per_column[c]))
                room = self.max_events - len(result.violations)
                for r in rows[1:1 + max(room, 0)]:
                    result.violations.append(Violation(name, check, float(block[r, c]), int(r)))

    def _category_violations(self, result: ValidationResult, j: int, values: Any) -> None:
        domain = self._domains.get(j)
        if domain is None:
            return
        name = self._names[j]
        first, n = None, 0
        for r, v in enumerate(values):
            if v is None or (isinstance(v, float) and not math.isfinite(v)) or v in domain:
                continue
            n += 1
            if first is None:
                first = (r, v)
        if n:
            self._record(result, Violation(name, UNSEEN_CATEGORY, first[1], first[0]), n)

    def _completeness(self, result: ValidationResult, table: Table, plan: dict[str, Any]) -> None:
        """Missing share (None / NaN; infinities are ``non_finite``, not missing) against the baseline's."""
        rows = table.rows_kept
        if not rows:
            return
        missing = np.zeros(table.n_features, dtype=np.int64)
        if table.numeric.size:
            missing[table.numeric_index] = np.isnan(table.numeric).sum(axis=0)
        for j, column in table.categorical.items():
            missing[j] = sum(1 for v in column if v is None or (isinstance(v, float) and v != v))
        for c, j in enumerate(plan["feature_of_column"]):
            if j is None or missing[c] == 0:
                continue
            rate = missing[c] / rows
            if rate > self._missing_rate[j] + self.completeness_tolerance:
                self._record(result, Violation(self._names[j], COMPLETENESS, round(float(rate), 6)))


__all__ = [
    "CHECKS", "COMPLETENESS", "EXTRA_COLUMN", "InputValidationError", "MISSING_COLUMN", "NON_FINITE",
    "OUT_OF_RANGE", "TYPE_MISMATCH", "UNSEEN_CATEGORY", "ValidationResult", "Validator", "Violation",
]
