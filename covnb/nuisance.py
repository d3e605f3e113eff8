"""Removing what tells sources apart from frozen features, fitted on the training fold only (issue 13).

Two fold-level remedies for a class whose files come mostly from one or two sources:

* :func:`source_balanced_weights`: sample weights under which every class weighs the same (as
  scikit-learn's "balanced" class weights) and, inside a class, every source weighs the same:
  the 33 bacterial-pneumonia files of one source count together as much as the one file of
  another. ``power=0.5`` weighs a source by the square root of its size instead (a compromise
  between treating files and sources as the unit). Importance weighting of groups, as in
  group-balanced risk minimisation (Sagawa et al., ICLR 2020, their reweighting baseline).
* :class:`NuisanceProjection`: nuisance attribute projection (NAP; Solomonoff, Campbell and
  Boardman, ICASSP 2005). Inside each class, the mean feature of every source minus the mean of
  those source means is a direction along which sources differ while the class does not; the
  top ``k`` right singular vectors of these differences span the nuisance subspace, projected out
  of every feature (``x - (x U) U^T``) before the linear head. A closed-form, one-step relative of
  iterative nullspace projection (INLP; Ravfogel et al., ACL 2020). Fitted on the training
  examples of a fold (labels and sources of training files only) and applied to its test files.

Both are linear or use no test data, so the fitted head folds into the model's ``logits`` layer
(:mod:`covnb.experiments.fitting`): ``covnb predict`` needs nothing more.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["source_balanced_weights", "nuisance_directions", "NuisanceProjection"]


def source_balanced_weights(labels: np.ndarray, sources, n_classes: int, *, power: float = 1.0) -> np.ndarray:
    """Per-example weights: classes weigh equally, and inside a class each source's examples share
    a weight proportional to ``n_source ** (1 - power)`` (``power=1``: every source equal).

    Each present class sums to ``n / k`` (``n`` examples, ``k`` present classes), as with
    balanced class weights; absent classes get no example. Returns float64 ``(n,)``.
    """
    labels = np.asarray(labels, dtype=int)
    source_codes = pd.factorize(np.asarray(sources, dtype=str))[0]
    if len(source_codes) != len(labels):
        raise ValueError(f"{len(source_codes)} sources for {len(labels)} examples")
    if not 0.0 <= power <= 1.0:
        raise ValueError(f"power must be in [0, 1], got {power}")
    n = len(labels)
    present = np.unique(labels)
    weights = np.zeros(n)
    for cls in present:
        in_class = labels == cls
        codes, counts = np.unique(source_codes[in_class], return_counts=True)
        share = counts.astype(float) ** (1.0 - power)  # each source's share of the class
        share /= share.sum()
        per_example = dict(zip(codes, share / counts))
        weights[in_class] = [per_example[c] for c in source_codes[in_class]]
        weights[in_class] *= n / len(present)
    if len(present) > n_classes:
        raise ValueError(f"{len(present)} classes among the labels but n_classes={n_classes}")
    return weights


def nuisance_directions(x: np.ndarray, labels: np.ndarray, sources, k: int, *, min_examples: int = 2) -> np.ndarray:
    """Orthonormal ``(D, k')`` basis (``k' <= k``) of the within-class between-source directions.

    For every class, the mean of ``x`` over each source with at least ``min_examples`` examples
    of it, minus the unweighted mean of those source means; the top right singular vectors of all
    these differences. Fewer than ``k`` columns when the differences span fewer dimensions.
    """
    x = np.asarray(x, dtype=np.float64)
    labels = np.asarray(labels)
    sources = np.asarray(sources, dtype=str)
    if not (len(x) == len(labels) == len(sources)):
        raise ValueError(f"x, labels and sources must align: {len(x)}, {len(labels)}, {len(sources)}")
    differences = []
    for cls in np.unique(labels):
        in_class = labels == cls
        names, counts = np.unique(sources[in_class], return_counts=True)
        kept = names[counts >= min_examples]
        if len(kept) < 2:
            continue
        means = np.stack([x[in_class & (sources == name)].mean(axis=0) for name in kept])
        differences.append(means - means.mean(axis=0))
    if not differences or k < 1:
        return np.zeros((x.shape[1], 0))
    stacked = np.concatenate(differences)
    _, singular, vt = np.linalg.svd(stacked, full_matrices=False)
    rank = int(np.sum(singular > 1e-10 * max(float(singular[0]), 1e-300)))
    return vt[:min(k, rank)].T


class NuisanceProjection:
    """Project the top ``k`` within-class between-source directions out of features (NAP).

    ``fit(x, labels, sources)`` on training examples; ``transform(x)`` returns
    ``x - (x U) U^T``; :attr:`directions_` is ``U`` ``(D, k')``.
    """

    def __init__(self, k: int, *, min_examples: int = 2):
        self.k, self.min_examples = int(k), int(min_examples)

    def fit(self, x: np.ndarray, labels: np.ndarray, sources) -> "NuisanceProjection":
        self.directions_ = nuisance_directions(x, labels, sources, self.k, min_examples=self.min_examples)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        u = self.directions_
        x = np.asarray(x)
        return (x - (x @ u) @ u.T).astype(x.dtype, copy=False)

    def fold_into(self, coef: np.ndarray) -> np.ndarray:
        """Coefficients acting on un-projected features as ``coef`` acts on projected ones
        (the projection is symmetric: ``coef P = coef - (coef U) U^T``)."""
        u = self.directions_
        return coef - (coef @ u) @ u.T
