"""The library versions each instrumentor supports (read by the launcher through the ``instruments-any`` extra)."""

_instruments_sklearn = ("scikit-learn >= 1.2",)
_instruments_flask = ("flask >= 2.2",)
_instruments = _instruments_sklearn + _instruments_flask
