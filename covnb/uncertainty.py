""""I don't know": uncertainty of a prediction, and when to abstain.

Three signals, each answering a different question:

* predictive entropy of the calibrated probabilities, divided by ``log K`` (0 = certain,
  1 = uniform): is the model unsure between the classes it knows?
* disagreement of the cross-validation fold models (a deep ensemble in spirit, Lakshminarayanan
  et al., NeurIPS 2017): the linear heads fitted in each outer fold are kept (they are tiny) and
  applied to the same frozen features; ``fold_agreement`` is the share of fold heads whose video
  prediction equals the final model's.
* an out-of-distribution score of the file's pooled features (video mean of the
  ``head_features`` layer): the Mahalanobis distance in the leading principal components of the
  standardised training features (Hotelling's T^2; Lee et al., NeurIPS 2018 use Mahalanobis
  distances on deep features for OOD detection) plus the squared residual outside them (the Q
  statistic, Jackson & Mudholkar 1979), each divided by its mean over the training files. Its
  threshold comes from held-out folds: the 95th percentile of the scores of files the density
  did not see, so about 5% of familiar files are flagged.

A file is ``uncertain`` when its calibrated top probability is below the 10th percentile of the
held-out files' (``low confidence``), when fewer than 80% of the fold heads agree with the final
prediction (``fold models disagree``), or when its OOD score passes the threshold (``outside the
training data``). Selective classification: :func:`risk_coverage` gives the accuracy kept when
the model abstains on the least certain files (Geifman & El-Yaniv, NeurIPS 2017).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "REASONS",
    "predictive_entropy",
    "fit_feature_density",
    "feature_distance",
    "heldout_feature_distances",
    "fold_head_probabilities",
    "fold_agreement",
    "uncertainty_flags",
    "risk_coverage",
    "separation_auroc",
    "video_mean_features",
]

REASONS = ("low confidence", "fold models disagree", "outside the training data")
DEFAULT_COMPONENTS = 20
OOD_QUANTILE = 0.95
LOW_CONFIDENCE_QUANTILE = 0.10
MIN_FOLD_AGREEMENT = 0.8


def predictive_entropy(probs) -> np.ndarray:
    """Entropy of each row of ``probs`` divided by ``log K``: 0 (one class) .. 1 (uniform)."""
    probs = np.clip(np.asarray(probs, dtype=float), 1e-12, 1.0)
    return -(probs * np.log(probs)).sum(axis=1) / np.log(probs.shape[1])


def video_mean_features(features: np.ndarray, sample_ids) -> tuple[np.ndarray, np.ndarray]:
    """Mean feature per sample id (in order of first appearance): ``(ids, (n_samples, D))``."""
    codes, uniques = pd.factorize(np.asarray(sample_ids, dtype=str))
    sums = np.zeros((len(uniques), features.shape[1]))
    np.add.at(sums, codes, features)
    return np.asarray(uniques), sums / np.bincount(codes)[:, None]


# ----------------------------------------------------------------------------- out of distribution


def fit_feature_density(features, n_components: int = DEFAULT_COMPONENTS) -> dict:
    """Standardisation, principal components and score normalisers of training features ``(n, D)``."""
    x = np.asarray(features, dtype=np.float64)
    if len(x) < 3:
        raise ValueError(f"need at least 3 training files for a feature density, got {len(x)}")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    # Features that hardly vary in training (e.g. ReLU units silent on every training file) get at least a
    # tenth of the median spread: otherwise any held-out activity there gives astronomically large scores.
    scale = np.maximum(scale, 0.1 * np.median(scale) + 1e-12)
    z = (x - mean) / scale
    k = int(max(1, min(n_components, len(x) - 2)))
    _, singular, vt = np.linalg.svd(z, full_matrices=False)
    density = {"mean": mean, "scale": scale, "components": vt[:k],
               "variances": np.maximum(singular[:k] ** 2 / (len(x) - 1), 1e-12),
               "t2_norm": np.ones(1), "q_norm": np.ones(1)}
    t2, q = _t2_and_q(density, x)
    density["t2_norm"] = np.array([max(t2.mean(), 1e-12)])
    density["q_norm"] = np.array([max(q.mean(), 1e-12)])
    return density


def _t2_and_q(density: dict, features) -> tuple[np.ndarray, np.ndarray]:
    z = (np.asarray(features, dtype=np.float64) - density["mean"]) / density["scale"]
    projected = z @ density["components"].T
    t2 = (projected ** 2 / density["variances"]).sum(axis=1)
    q = ((z - projected @ density["components"]) ** 2).sum(axis=1)
    return t2, q


def feature_distance(density: dict, features) -> np.ndarray:
    """OOD score of features ``(n, D)``: T^2 / mean training T^2 + Q / mean training Q (about 2 on
    the training files, larger further away)."""
    t2, q = _t2_and_q(density, features)
    return t2 / float(density["t2_norm"][0]) + q / float(density["q_norm"][0])


def heldout_feature_distances(features, fold_of, n_components: int = DEFAULT_COMPONENTS) -> np.ndarray:
    """OOD score of every file from a density fitted on the other folds only (held-out scores)."""
    features = np.asarray(features)
    fold_of = np.asarray(fold_of)
    scores = np.full(len(features), np.nan)
    for fold in np.unique(fold_of):
        test = fold_of == fold
        scores[test] = feature_distance(fit_feature_density(features[~test], n_components), features[test])
    return scores


def separation_auroc(familiar_scores, shifted_scores) -> float:
    """ROC-AUC of telling shifted from familiar files by score (1 = perfect, 0.5 = chance)."""
    from sklearn.metrics import roc_auc_score

    familiar, shifted = np.asarray(familiar_scores, float), np.asarray(shifted_scores, float)
    y = np.r_[np.zeros(len(familiar)), np.ones(len(shifted))]
    return float(roc_auc_score(y, np.r_[familiar, shifted]))


# ----------------------------------------------------------------------------- fold models


def fold_head_probabilities(features, kernels, biases) -> np.ndarray:
    """Softmax of each fold head on features ``(n, D)``: ``(F, n, K)`` (kernels ``(F, D, K)``)."""
    logits = np.einsum("nd,fdk->fnk", np.asarray(features, np.float64), np.asarray(kernels, np.float64))
    logits = logits + np.asarray(biases, np.float64)[:, None, :]
    logits -= logits.max(axis=2, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=2, keepdims=True)


def fold_agreement(fold_probs, predicted) -> np.ndarray:
    """Share of fold heads whose prediction (``(F, n, K)`` probabilities) equals ``predicted``."""
    return (np.asarray(fold_probs).argmax(axis=2) == np.asarray(predicted)[None, :]).mean(axis=0)


# ----------------------------------------------------------------------------- flags and abstention


def uncertainty_flags(confidence, *, thresholds: dict, agreement=None, ood=None) -> tuple[np.ndarray, np.ndarray]:
    """``uncertain`` (bool) and ``uncertain_reason`` ("; "-joined :data:`REASONS`, "" when certain).

    ``thresholds``: ``min_confidence``, ``min_fold_agreement``, ``max_ood_score`` (any may be absent).
    """
    confidence = np.asarray(confidence, dtype=float)
    reasons = [[] for _ in confidence]
    checks = [(confidence, thresholds.get("min_confidence"), REASONS[0], np.less)]
    if agreement is not None:
        checks.append((np.asarray(agreement, float), thresholds.get("min_fold_agreement"), REASONS[1], np.less))
    if ood is not None:
        checks.append((np.asarray(ood, float), thresholds.get("max_ood_score"), REASONS[2], np.greater))
    for values, limit, reason, compare in checks:
        if limit is None:
            continue
        for i in np.nonzero(compare(values, float(limit)))[0]:
            reasons[i].append(reason)
    text = np.array(["; ".join(r) for r in reasons], dtype=object)
    return np.array([bool(r) for r in reasons]), text


def risk_coverage(correct, uncertainty, fractions=(0.0, 0.1, 0.2, 0.3), labels=None) -> pd.DataFrame:
    """Accuracy (and balanced accuracy when ``labels`` are given) on the files kept when the model
    abstains on the ``fraction`` most uncertain ones (ties broken by order, stable)."""
    from sklearn.metrics import balanced_accuracy_score

    correct = np.asarray(correct, dtype=bool)
    order = np.argsort(np.asarray(uncertainty, dtype=float), kind="stable")
    rows = []
    for fraction in fractions:
        kept = order[: max(1, int(round(len(order) * (1 - float(fraction)))))]
        row = {"abstain_fraction": float(fraction), "coverage": len(kept) / len(order), "n_kept": int(len(kept)),
               "accuracy": float(correct[kept].mean())}
        if labels is not None:
            labels_kept = np.asarray(labels)[kept]
            predicted = np.where(correct[kept], labels_kept, -1)
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row["balanced_accuracy"] = float(balanced_accuracy_score(labels_kept, predicted))
        rows.append(row)
    return pd.DataFrame(rows)
