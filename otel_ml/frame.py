"""One view over whatever a model was called with: numpy, pandas, sparse matrices, lists.

``as_table`` never raises for the input shapes a scikit-learn model accepts or rejects; it copies
nothing it does not have to, and when asked for at most ``max_rows`` rows it takes an evenly spaced
sample (deterministic, so two calls with the same batch agree) and says so in ``sampled``.

>>> import numpy as np
>>> t = as_table(np.array([[1.0, np.nan], [3.0, 4.0]]), feature_names=["a", "b"])
>>> t.n_rows, t.names, t.numeric.shape
(2, ['a', 'b'], (2, 2))
>>> t.missing_counts().tolist()
[0, 1]
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

KIND_NUMERIC = "numeric"
KIND_CATEGORICAL = "categorical"
KIND_BOOLEAN = "boolean"


@dataclass
class Table:
    """A batch of rows as numeric columns (float64, NaN = missing) and categorical columns (object)."""

    n_rows: int  # rows in the whole batch
    n_features: int
    names: list[str]
    kinds: list[str]
    numeric: np.ndarray  # (rows_kept, n_numeric) float64; columns are numeric_index
    numeric_index: list[int]
    categorical: dict[int, np.ndarray] = field(default_factory=dict)  # feature index -> object array
    sampled: bool = False  # True when only some rows were kept
    source: Any = field(default=None, repr=False)  # the whole input, when only some rows were kept

    @property
    def rows_kept(self) -> int:
        if self.categorical:
            return len(next(iter(self.categorical.values())))
        return int(self.numeric.shape[0])

    def missing_counts(self) -> np.ndarray:
        """Missing (None, NaN) and non-finite values per feature, in feature order, over the kept rows."""
        out = np.zeros(self.n_features, dtype=np.int64)
        numeric = self.numeric
        # NaN and infinities make a column's sum non-finite: a BLAS sum (a tenth of isfinite's time) rules
        # them out in the common case; finite sums too large for a float take the exact count below
        if numeric.size and not np.isfinite(column_sums(numeric)).all():
            out[self.numeric_index] = numeric.shape[0] - np.count_nonzero(np.isfinite(numeric), axis=0)
        for j, column in self.categorical.items():
            out[j] = sum(1 for v in column if _is_missing(v))
        return out

    def missing_counts_all_rows(self) -> np.ndarray:
        """:meth:`missing_counts` over every row of the input, also when the table kept a sample."""
        if not self.sampled or self.source is None:
            return self.missing_counts()
        return as_table(self.source, self.names).missing_counts()


def column_sums(numeric: np.ndarray) -> np.ndarray:
    """Column sums by BLAS (a quarter of ``numeric.sum(axis=0)``'s time), NaN where a column holds NaN or
    infinities of both signs, without numpy's warnings about them.

    >>> column_sums(np.array([[1.0, np.inf], [2.0, 1.0]])).tolist()
    [3.0, inf]
    """
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ones(numeric.shape[0]) @ numeric


def concat_tables(tables: list[Table]) -> list[Table]:
    """Whole (unsampled) tables of the same columns and kinds joined into one, row after row; sampled
    tables and other layouts stay as they are. Row counts, missing values and bins of the result are the
    sums of the parts'.

    >>> a = as_table(np.array([[1.0, 2.0]]), ["a", "b"]); b = as_table(np.array([[3.0, np.nan]]), ["a", "b"])
    >>> [t.n_rows for t in concat_tables([a, b])], concat_tables([a, b])[0].missing_counts().tolist()
    ([2], [0, 1])
    """
    layouts: dict[tuple, list[Table]] = {}
    kept: list[Table] = []
    for table in tables:
        if table.sampled:
            kept.append(table)
        else:
            layouts.setdefault((tuple(table.names), tuple(table.kinds), tuple(table.numeric_index)), []).append(table)
    for same in layouts.values():
        if len(same) == 1:
            kept.append(same[0])
            continue
        first = same[0]
        kept.append(Table(sum(t.n_rows for t in same), first.n_features, first.names, first.kinds,
                          np.concatenate([t.numeric for t in same]), first.numeric_index,
                          {j: np.concatenate([t.categorical[j] for t in same]) for j in first.categorical}))
    return kept


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


@functools.lru_cache(maxsize=64)
def _default_names(n: int) -> list[str]:
    """``x0 .. x{n-1}``, one shared list per width (a Table's names are never modified)."""
    return [f"x{i}" for i in range(n)]


def _sample_positions(n_rows: int, max_rows: int | None) -> slice | None:
    """Every k-th row, k the smallest step that keeps at most ``max_rows``: a view of an array, not a copy.

    >>> _sample_positions(10_000, 1000), _sample_positions(1500, 1000), _sample_positions(10, 1000)
    (slice(None, None, 10), slice(None, None, 2), None)
    """
    if max_rows is None or n_rows <= max_rows:
        return None
    return slice(None, None, -(-n_rows // max_rows))


class RowSnapshot:
    """A one-row DataFrame's columns, as the arrays pandas holds them, for reading after the call.

    A model call's inputs wait in the aggregator's queue until its thread reads them. A one-row
    DataFrame is some 450 objects the garbage collector tracks (blocks, Arrow-backed string arrays,
    pandas' copy-on-write references); held that long they reach its oldest generation, whose full
    collections then run several times as often (``benchmarks/bench_flask_gc.py``). The snapshot keeps
    the column arrays and the column names only, taken in 2 µs, nothing copied. A column of pandas'
    default string dtype (``str``: Arrow data, NaN for missing) is held as its Arrow data alone, and so
    are the column names when they are such strings: pandas makes a new array and a new dtype object for
    each (the credit-risk example's row: 18 tracked objects, against 54 holding the arrays). It has the
    frame's ``shape`` and ``columns``; :func:`as_table` reads it as it reads the frame.

    >>> import pandas as pd
    >>> row = pd.DataFrame({"age": [41.0], "purpose": ["car"]})
    >>> t = as_table(snapshot(row))
    >>> t.names, t.kinds, t.numeric.tolist(), t.categorical[1].tolist()
    (['age', 'purpose'], ['numeric', 'categorical'], [[41.0]], ['car'])
    """

    __slots__ = ("shape", "_columns", "_positions", "_values")

    def __init__(self, df: Any) -> None:
        self.shape = df.shape
        self._columns = _held_columns(df.columns)
        blocks = df._mgr.blocks  # two sequences, not a tuple per block: fewer objects to track
        self._positions = tuple([block.mgr_locs.as_array for block in blocks])  # numpy arrays: then untracked
        self._values = [_arrow_data(block.values) for block in blocks]

    @property
    def columns(self) -> Any:
        """The frame's column index (made again when it was held as Arrow data)."""
        columns = self._columns
        return columns if type(columns) is not _chunked_array_type() else _index_type()(_strings(columns))

    def names(self) -> list[str]:
        """The column names as strings (read from the Arrow data when held so)."""
        columns = self._columns
        return columns.to_pylist() if type(columns) is _chunked_array_type() else [str(c) for c in columns.tolist()]

    def column_arrays(self) -> list[Any]:
        """Each column's values (a numpy array, a pandas extension array or, for the default string dtype,
        its Arrow data), in column order."""
        columns: list[Any] = [None] * self.shape[1]
        for positions, values in zip(self._positions, self._values):
            if getattr(values, "ndim", 1) == 2:  # a numpy block: one row of it per column
                for k, j in enumerate(positions):
                    columns[j] = values[k]
            else:  # an extension array or Arrow data: one column
                columns[positions[0]] = values
        return columns

    def frame(self) -> Any:
        """The row as a DataFrame again (for readers that need one; the arrays are not copied)."""
        pd = sys.modules["pandas"]
        chunked = _chunked_array_type()
        arrays = [_strings(a) if type(a) is chunked else a for a in self.column_arrays()]
        df = pd.DataFrame({j: pd.Series(a, dtype=a.dtype, copy=False) for j, a in enumerate(arrays)}, copy=False)
        df.columns = self.columns
        return df


def _arrow_data(values: Any) -> Any:
    """The Arrow data of an array of pandas' default string dtype (``str``), else the array itself."""
    if type(values) is _arrow_string_type() and type(values.dtype.na_value) is float:
        return values._pa_array
    return values


def _held_columns(columns: Any) -> Any:
    """The Arrow data of an unnamed column index of ``str`` names, else the index itself."""
    if type(columns) is _index_type() and columns.name is None:
        data = _arrow_data(columns._data)
        if data is not columns._data:
            return data
    return columns


def _strings(data: Any) -> Any:
    """Arrow data held by :func:`_arrow_data` as the pandas array it came from."""
    pd = sys.modules["pandas"]
    return pd.arrays.ArrowStringArray(data, dtype=pd.StringDtype("pyarrow", na_value=np.nan))


def snapshot(X: Any) -> Any:
    """``X`` as a :class:`RowSnapshot` when it is a one-row pandas DataFrame, else ``X`` itself."""
    if type(X).__name__ != "DataFrame":
        return X
    try:
        return RowSnapshot(X) if X.shape[0] == 1 else X
    except Exception:  # another frame library, or a pandas without block managers: keep the frame
        return X


def materialize(X: Any) -> Any:
    """The model's input as it was passed (a :class:`RowSnapshot` becomes a DataFrame again)."""
    return X.frame() if type(X) is RowSnapshot else X


def as_table(X: Any, feature_names: list[str] | None = None, max_rows: int | None = None) -> Table:
    """Describe a model input as a :class:`Table`; ``feature_names`` overrides names found in ``X``."""
    cls = type(X)
    if cls is RowSnapshot:
        return _from_snapshot(X, feature_names)
    if hasattr(cls, "iloc") and hasattr(cls, "dtypes"):  # on the class: an instance would build its dtypes
        return _from_dataframe(X, feature_names, max_rows)
    if hasattr(cls, "tocsr") and hasattr(X, "shape"):
        return _from_sparse(X, feature_names, max_rows)
    return _from_array(np.asarray(X) if not isinstance(X, np.ndarray) else X, feature_names, max_rows)


def _from_array(a: np.ndarray, names: list[str] | None, max_rows: int | None) -> Table:
    if a.ndim == 1:  # a list of documents or a single column: one feature, n rows
        a = a.reshape(-1, 1)
    elif a.ndim == 0:
        a = a.reshape(1, 1)
    elif a.ndim > 2:
        a = a.reshape(a.shape[0], -1)
    n_rows, n_features = a.shape
    names = list(names) if names is not None and len(names) == n_features else _default_names(n_features)
    positions = _sample_positions(n_rows, max_rows)
    kept = a if positions is None else a[positions]
    if kept.dtype.kind in "fiub":
        numeric = kept.astype(np.float64, copy=False)
        kind = KIND_BOOLEAN if kept.dtype.kind == "b" else KIND_NUMERIC
        return Table(n_rows, n_features, names, [kind] * n_features, numeric, list(range(n_features)),
                     sampled=positions is not None, source=None if positions is None else a)
    # object or string arrays: each column numeric if every non-missing value converts
    numeric_cols, numeric_index, categorical, kinds = [], [], {}, []
    for j in range(n_features):
        column = kept[:, j]
        converted = _to_float(column)
        if converted is not None:
            numeric_cols.append(converted)
            numeric_index.append(j)
            kinds.append(KIND_NUMERIC)
        else:
            categorical[j] = column.astype(object, copy=False)
            kinds.append(KIND_CATEGORICAL)
    numeric = np.column_stack(numeric_cols) if numeric_cols else np.empty((len(kept), 0))
    return Table(n_rows, n_features, names, kinds, numeric, numeric_index, categorical,
                 sampled=positions is not None, source=None if positions is None else a)


def _to_float(column: np.ndarray) -> np.ndarray | None:
    if column.dtype.kind in "fiub":
        return column.astype(np.float64)
    try:
        return np.array([np.nan if v is None else v for v in column], dtype=np.float64)
    except (TypeError, ValueError):
        return None


def _dataframe_plan(df: Any) -> tuple[list[int], list[int], list[str]]:
    """(numeric column positions, categorical positions, kinds) of a DataFrame, cached by its dtypes' kind
    codes: numeric for ``f``, ``i``, ``u``; boolean for ``b`` (numpy and nullable); categorical for the
    rest (strings, ``category``, objects, dates). Kinds, not dtype names: a string dtype's name or hash
    costs microseconds per column, and a new frame has new dtype instances."""
    return _plan("".join([dtype.kind for dtype in df.dtypes]))


def _plan(codes: str) -> tuple[list[int], list[int], list[str]]:
    plan = _PLANS.get(codes)
    if plan is None:
        numeric = [j for j, c in enumerate(codes) if c in "fiub"]
        categorical = [j for j, c in enumerate(codes) if c not in "fiub"]
        kinds = [KIND_NUMERIC if c in "fiu" else KIND_BOOLEAN if c == "b" else KIND_CATEGORICAL for c in codes]
        if len(_PLANS) > 64:
            _PLANS.clear()
        plan = _PLANS[codes] = (numeric, categorical, kinds)
    return plan


_PLANS: dict[str, tuple[list[int], list[int], list[str]]] = {}
SMALL_FRAME_ROWS = 64


def _from_dataframe(df: Any, names: list[str] | None, max_rows: int | None) -> Table:
    """Two block conversions (numeric, categorical) instead of one per column: a one-row, twenty-column
    frame costs tens of microseconds, not milliseconds."""
    n_rows, n_features = df.shape
    names = list(names) if names is not None and len(names) == n_features else [str(c) for c in df.columns.tolist()]
    positions = _sample_positions(n_rows, max_rows)
    kept = df if positions is None else df.iloc[positions]
    numeric_index, categorical_index, kinds = _dataframe_plan(kept)
    isna = sys.modules["pandas"].isna
    if len(kept) == 1:  # online serving's usual input; a third of the block conversion's time
        table = _from_row(kept.iloc[0].tolist(), n_features, names, kinds, numeric_index, categorical_index)
        if table is not None:
            return table
    numeric = None
    if len(kept) <= SMALL_FRAME_ROWS:  # one object conversion beats a pandas call per block on few rows
        values = kept.to_numpy(dtype=object)
        try:
            numeric = values[:, numeric_index].astype(np.float64)
        except (TypeError, ValueError):  # pd.NA in a nullable column: the block path below
            numeric = None
        block = values[:, categorical_index]
    else:
        block = kept.iloc[:, categorical_index].to_numpy(dtype=object) if categorical_index else None
    if numeric is None:
        numeric = (kept.iloc[:, numeric_index].to_numpy(dtype=np.float64, na_value=np.nan) if numeric_index
                   else np.empty((len(kept), 0)))
    categorical: dict[int, np.ndarray] = {}
    if categorical_index:
        missing = isna(block)
        if missing.any():
            block[missing] = None
        for k, j in enumerate(categorical_index):
            categorical[j] = block[:, k]
    return Table(n_rows, n_features, names, list(kinds), numeric, list(numeric_index), categorical,
                 sampled=positions is not None, source=None if positions is None else df)


def _from_snapshot(row: RowSnapshot, names: list[str] | None) -> Table:
    """A snapshot's Table: the one-row path of :func:`_from_dataframe`, with the values read from the
    column arrays (the frame again when a numeric value does not convert)."""
    n_features = row.shape[1]
    names = list(names) if names is not None and len(names) == n_features else row.names()
    arrays = row.column_arrays()
    chunked, arrow_strings = _chunked_array_type(), _arrow_string_type()
    numeric_index, categorical_index, kinds = _plan("".join(["O" if type(a) is chunked else a.dtype.kind
                                                             for a in arrays]))
    # Arrow strings' first value read from the Arrow data: a sixth of pandas' indexing
    values = [a[0].as_py() if type(a) is chunked else a._pa_array[0].as_py() if type(a) is arrow_strings else a[0]
              for a in arrays]
    table = _from_row(values, n_features, names, kinds, numeric_index, categorical_index)
    return table if table is not None else _from_dataframe(row.frame(), names, None)


@functools.cache
def _arrow_string_type() -> type | None:
    """pandas' ``ArrowStringArray`` (looked up once, when a snapshot is first taken; None without it)."""
    return getattr(getattr(sys.modules.get("pandas"), "arrays", None), "ArrowStringArray", None)


def _chunked_array_type() -> type | None:
    """pyarrow's ``ChunkedArray``, the Arrow data of pandas' string arrays (None until pyarrow is loaded)."""
    return getattr(sys.modules.get("pyarrow"), "ChunkedArray", None)


@functools.cache
def _index_type() -> type | None:
    """pandas' ``Index`` (a plain one, not a subclass such as ``RangeIndex`` or ``MultiIndex``)."""
    return getattr(sys.modules.get("pandas"), "Index", None)


def _from_row(values: list, n_features: int, names: list[str], kinds: list[str], numeric_index: list[int],
              categorical_index: list[int]) -> Table | None:
    """A one-row DataFrame's Table from its Python values; None when a numeric value does not convert
    (``pd.NA`` in a nullable column), for the block path to handle."""
    try:
        numeric = np.array([[values[j] for j in numeric_index]], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    categorical: dict[int, np.ndarray] = {}
    for j in categorical_index:
        column = categorical[j] = np.empty(1, dtype=object)
        column[0] = None if _pd_missing(values[j]) else values[j]
    return Table(1, n_features, names, list(kinds), numeric.reshape(1, len(numeric_index)), list(numeric_index),
                 categorical)


def _pd_missing(value: Any) -> bool:
    """None, NaN, NaT and ``pd.NA`` (whose truth value raises)."""
    if value is None:
        return True
    try:
        return bool(value != value)
    except TypeError:
        return True


def _from_sparse(m: Any, names: list[str] | None, max_rows: int | None) -> Table:
    n_rows, n_features = m.shape
    names = list(names) if names is not None and len(names) == n_features else _default_names(n_features)
    positions = _sample_positions(n_rows, max_rows)
    csr = m.tocsr()
    kept = csr if positions is None else csr[positions]
    numeric = kept.toarray().astype(np.float64, copy=False)
    return Table(n_rows, n_features, names, [KIND_NUMERIC] * n_features, numeric, list(range(n_features)),
                 sampled=positions is not None, source=None if positions is None else m)


def n_rows_of(X: Any) -> int:
    """Rows in ``X`` without converting it (0 when it has no length)."""
    shape = getattr(X, "shape", None)
    if shape is not None:
        return int(shape[0]) if len(shape) else 1
    try:
        return len(X)
    except TypeError:
        return 0


def n_features_of(X: Any) -> int:
    """Columns in ``X`` without converting it (0 when unknown)."""
    shape = getattr(X, "shape", None)
    if shape is not None:
        return int(shape[1]) if len(shape) > 1 else 1 if len(shape) == 1 else 0
    try:
        first = X[0]
        return len(first) if hasattr(first, "__len__") and not isinstance(first, str) else 1
    except (TypeError, IndexError, KeyError):
        return 0


def feature_names_of(X: Any, model: Any = None) -> list[str] | None:
    """Column names of a DataFrame, else the model's ``feature_names_in_``, else None."""
    if type(X) is RowSnapshot:
        return X.names()
    columns = getattr(X, "columns", None)
    if columns is not None:
        return [str(c) for c in (columns.tolist() if hasattr(columns, "tolist") else columns)]
    names = getattr(model, "feature_names_in_", None)
    return [str(n) for n in names] if names is not None else None
