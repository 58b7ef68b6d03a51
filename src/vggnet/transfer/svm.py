"""Appendix B's classifiers and scores: one-vs-rest linear SVMs on the descriptors, C chosen on
the training images only (a 20% hold-out, the paper's, or cross-validation), and the paper's
measures: VOC AP (VOC-2007's 11-point and the area under PR) and Caltech's mean class accuracy.
The protocols that feed them (VOC devkit, Caltech splits, actions) are `vggnet.transfer.pipeline`
and `vggnet.transfer.action`."""

from __future__ import annotations

import os
import warnings
from typing import Any, Sequence

import numpy as np
import torch

from vggnet.arguments import C_GRID
from vggnet.errors import UserError

__all__ = ["LinearSVMs", "C_SELECTIONS", "select_C", "voc07_ap", "voc_area_ap", "multilabel_metrics",
           "singlelabel_metrics"]


# --------------------------------------------------------------------------- linear SVMs


class LinearSVMs:
    """One-vs-rest linear SVMs (scikit-learn `LinearSVC`: L2-regularised squared hinge loss).

    `fit(X, Y)` with `Y` (N, C) in {1, 0, -1} (0: this image is left out of class
    c's training: VOC's difficult-only images); `decision_function(X)` -> (N, C).
    Only coefficients are kept, so a classifier saves and loads without pickling.
    """

    def __init__(self, C: float = 1.0, *, max_iter: int = 10000, seed: int = 0, n_jobs: int | None = None) -> None:
        self.C, self.max_iter, self.seed = float(C), int(max_iter), int(seed)
        # liblinear releases the GIL: the classes' SVMs train in parallel threads
        # (each holds a float64 copy of its rows, hence the cap)
        self.n_jobs = n_jobs if n_jobs is not None else min(8, os.cpu_count() or 1)
        self.coef_: np.ndarray | None = None
        self.intercept_: np.ndarray | None = None

    def _fit_class(self, X: np.ndarray, target: np.ndarray) -> tuple[np.ndarray | None, float]:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.svm import LinearSVC

        keep = target != 0
        y = target[keep] > 0
        if y.all() or not y.any():  # one kind of example only: a constant score
            return None, 1.0 if y.all() and y.size else -1.0
        svm = LinearSVC(C=self.C, loss="squared_hinge", dual="auto", max_iter=self.max_iter, random_state=self.seed)
        with warnings.catch_warnings():  # large C on separable data: more iterations change nothing ranked
            warnings.simplefilter("ignore", ConvergenceWarning)
            svm.fit(X[keep], y)
        return svm.coef_[0], float(svm.intercept_[0])

    def fit(self, X: np.ndarray, Y: np.ndarray) -> LinearSVMs:
        from joblib import Parallel, delayed

        X = np.asarray(X, dtype=np.float32)
        jobs = max(1, min(self.n_jobs, Y.shape[1]))
        fitted = Parallel(n_jobs=jobs, prefer="threads")(delayed(self._fit_class)(X, Y[:, c])
                                                         for c in range(Y.shape[1]))
        coef = np.zeros((Y.shape[1], X.shape[1]), dtype=np.float32)
        intercept = np.zeros(Y.shape[1], dtype=np.float32)
        for c, (w, b) in enumerate(fitted):
            if w is not None:
                coef[c] = w
            intercept[c] = b
        self.coef_, self.intercept_ = coef, intercept
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        if self.coef_ is None:
            raise RuntimeError("LinearSVMs: call fit() first")
        return np.asarray(X, dtype=np.float32) @ self.coef_.T + self.intercept_

    def predict(self, X: np.ndarray) -> np.ndarray:
        """The highest-scoring class of each row (single-label use)."""
        return self.decision_function(X).argmax(axis=1)


C_SELECTIONS = ("holdout", "cv")


def select_C(X: np.ndarray, Y: np.ndarray, *, multi_label: bool, grid: Sequence[float] = C_GRID, folds: int = 3,
             seed: int = 0, selection: str = "holdout", holdout: float = 0.2) -> tuple[float, dict[str, float]]:
    """C chosen on the training data only, scored by accuracy (single-label) or mAP (multi-label,
    area under PR); ties go to the smaller C.

    `selection="holdout"` (the paper's, Appendix B: "hyper-parameters ... selected on a hold-out
    part of the training data") fits each C once on `1 - holdout` of the training images
    (stratified by class when single-label) and scores it on the rest: len(grid) fits.
    `selection="cv"`: `folds`-fold cross-validation, len(grid) x folds fits. Either way the
    final SVMs are then fitted on all the training images."""
    from sklearn.model_selection import KFold, StratifiedKFold, StratifiedShuffleSplit, ShuffleSplit

    if selection not in C_SELECTIONS:
        raise UserError(f"--C-selection: expected holdout or cv, got {selection!r}")
    if not 0 < holdout < 1:
        raise UserError(f"--holdout: expected a fraction in (0, 1), got {holdout}")
    grid = sorted(float(c) for c in grid)
    strata = None if multi_label else Y.argmax(axis=1)
    splitter: Any = None
    if selection == "holdout":
        n_test = int(round(holdout * len(X)))
        if multi_label:
            if 1 <= n_test < len(X):
                splitter = ShuffleSplit(1, test_size=n_test, random_state=seed)
        else:
            n_classes = int(strata.max()) + 1 if len(strata) else 0
            # a stratified hold-out needs one image of every class on each side
            if n_classes and np.bincount(strata).min() >= 2 and n_classes <= n_test <= len(X) - n_classes:
                splitter = StratifiedShuffleSplit(1, test_size=n_test, random_state=seed)
    elif multi_label:
        k = min(folds, len(X))
        splitter = KFold(k, shuffle=True, random_state=seed) if k >= 2 else None
    else:
        k = min(folds, int(np.bincount(strata).min()))
        splitter = StratifiedKFold(k, shuffle=True, random_state=seed) if k >= 2 else None
    if splitter is None or len(grid) == 1:
        return grid[len(grid) // 2], {}
    scores: dict[str, float] = {}
    for C in grid:
        fold_scores = []
        for tr, va in splitter.split(X, strata):
            s = LinearSVMs(C, seed=seed).fit(X[tr], Y[tr]).decision_function(X[va])
            if multi_label:
                fold_scores.append(multilabel_metrics(s, Y[va], ["?"] * Y.shape[1])["mAP_area"])
            else:
                fold_scores.append(100.0 * float((s.argmax(1) == strata[va]).mean()))
        scores[f"{C:g}"] = float(np.nanmean(fold_scores))
    best = max(grid, key=lambda C: (scores[f"{C:g}"], -C))
    return best, scores


# --------------------------------------------------------------------------- metrics


def _precision_recall(scores: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    # As VOCevalcls: rank by score (stable), gt 1 = true positive, -1 = false
    # positive, 0 (difficult only) = neither: the image is ignored.
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    g = np.asarray(gt)[order]
    g = g[g != 0]
    tp, fp = np.cumsum(g > 0), np.cumsum(g < 0)
    if not len(g) or tp[-1] == 0:
        return None
    return tp / (tp + fp), tp / tp[-1]


def voc07_ap(scores: np.ndarray, gt: np.ndarray) -> float:
    """VOC-2007's 11-point interpolated AP: the mean over recall r in {0, 0.1, ..., 1}
    of the highest precision at recall >= r. NaN when the class has no positive."""
    pr = _precision_recall(scores, gt)
    if pr is None:
        return float("nan")
    prec, rec = pr
    return float(np.mean([prec[rec >= t].max() if (rec >= t).any() else 0.0 for t in np.linspace(0, 1, 11)]))


def voc_area_ap(scores: np.ndarray, gt: np.ndarray) -> float:
    """VOC-2010-onward AP: the area under the precision-recall curve with precision made
    monotone (each precision replaced by the highest at equal or greater recall)."""
    pr = _precision_recall(scores, gt)
    if pr is None:
        return float("nan")
    prec, rec = pr
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def multilabel_metrics(scores: np.ndarray, gt: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Per-class AP and mAP in percent: `ap`/`mAP` the VOC-2007 11-point AP, `ap_area`/`mAP_area`
    the area under the PR curve (VOC-2010+). Classes without a positive are left out of the means."""
    ap = [voc07_ap(scores[:, c], gt[:, c]) for c in range(gt.shape[1])]
    area = [voc_area_ap(scores[:, c], gt[:, c]) for c in range(gt.shape[1])]

    def mean(v: list[float]) -> float:
        v = [x for x in v if not np.isnan(x)]
        return 100.0 * float(np.mean(v)) if v else float("nan")

    return {"mAP": mean(ap), "mAP_area": mean(area),
            "ap": {n: (None if np.isnan(a) else 100.0 * a) for n, a in zip(classes, ap)},
            "ap_area": {n: (None if np.isnan(a) else 100.0 * a) for n, a in zip(classes, area)},
            "ap_definition": {"mAP": "VOC-2007 11-point interpolated AP",
                              "mAP_area": "area under the PR curve (VOC-2010 onward)"}}


def singlelabel_metrics(scores: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy and mean class accuracy (the mean per-class recall, Caltech's metric), in percent."""
    from vggnet.classification.results import per_class_accuracy

    per_class = per_class_accuracy(torch.from_numpy(np.asarray(scores, dtype=np.float32)),
                                   torch.from_numpy(np.asarray(labels, dtype=np.int64)))
    present = [a for a in per_class if a is not None]
    return {"accuracy": 100.0 * float((scores.argmax(1) == labels).mean()),
            "mean_class_accuracy": float(np.mean(present)),
            "per_class_accuracy": dict(zip(classes, per_class))}
