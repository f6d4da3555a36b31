"""scikit-learn as the reference for emh's probe parity test (emh-probe).

Reads a CSV of feature columns plus `label` (0/1) and `fold` (0..k-1),
fits what emh-probe fits (z-scored features, L1-penalised logistic
regression with balanced class weights and an unpenalised intercept) on all
rows and on each fold's training rows, and prints one JSON object of
coefficients, intercepts and held-out scores; the Rust test decides pass or
fail.

    python sklearn_probe.py CSV [--c C]
"""
import argparse
import json
import warnings

import numpy as np
import pandas as pd
import sklearn
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score
from sklearn.preprocessing import StandardScaler

# A convergence warning means the reference is not tight enough to compare.
warnings.simplefilter("error", ConvergenceWarning)


def fit(x, y, c):
    """Standardise on `x` and fit; SAGA is the solver whose objective leaves the
    intercept unpenalised (liblinear penalises it)."""
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(
        C=c,
        l1_ratio=1.0,
        solver="saga",
        class_weight="balanced",
        tol=1e-12,
        max_iter=1_000_000,
        random_state=0,
    ).fit(scaler.transform(x), y)
    return scaler, model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv")
    parser.add_argument("--c", type=float, default=1.0)
    args = parser.parse_args()

    df = pd.read_csv(args.csv)
    features = [col for col in df.columns if col not in ("label", "fold")]
    x = df[features].to_numpy(dtype=np.float64)
    y = df["label"].to_numpy(dtype=np.int64)
    folds = df["fold"].to_numpy(dtype=np.int64)

    _, full = fit(x, y, args.c)
    out = {
        "sklearn": sklearn.__version__,
        "features": features,
        "coef": full.coef_[0].tolist(),
        "intercept": float(full.intercept_[0]),
        "n_iter": int(full.n_iter_[0]),
        "folds": [],
    }
    for f in range(folds.max() + 1):
        train, test = folds != f, folds == f
        scaler, model = fit(x[train], y[train], args.c)
        xt = scaler.transform(x[test])
        decision = model.decision_function(xt)
        predicted = model.predict(xt)
        out["folds"].append(
            {
                "coef": model.coef_[0].tolist(),
                "intercept": float(model.intercept_[0]),
                "auc": float(roc_auc_score(y[test], decision)),
                "accuracy": float(accuracy_score(y[test], predicted)),
                "precision": float(precision_score(y[test], predicted, zero_division=0.0)),
                "recall": float(recall_score(y[test], predicted)),
            }
        )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
