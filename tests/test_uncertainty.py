"""covnb.uncertainty: entropy, fold-head agreement, the feature-distance OOD score (held-out
scores, shifted data scored higher), flags with reasons, and risk-coverage."""

import numpy as np
import pandas as pd
import pytest

from covnb.uncertainty import (REASONS, feature_distance, fit_feature_density, fold_agreement,
                               fold_head_probabilities, heldout_feature_distances, predictive_entropy, risk_coverage,
                               separation_auroc, uncertainty_flags, video_mean_features)


def test_entropy_bounds():
    values = predictive_entropy(np.array([[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3], [0.5, 0.5, 0.0]]))
    np.testing.assert_allclose(values, [0.0, 1.0, np.log(2) / np.log(3)], atol=1e-6)


def test_feature_distance_scores_shifted_data_higher():
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(5, 200))
    familiar = rng.normal(size=(300, 5)) @ basis + 0.3 * rng.normal(size=(300, 200))
    shifted = rng.normal(size=(60, 5)) @ basis + 0.3 * rng.normal(size=(60, 200)) + rng.normal(size=200) * 0.8
    density = fit_feature_density(familiar[:200], n_components=10)
    held_out = feature_distance(density, familiar[200:])
    assert separation_auroc(held_out, feature_distance(density, shifted)) > 0.95
    assert feature_distance(density, familiar[:200]).mean() == pytest.approx(2.0)  # by construction
    folds = np.arange(300) % 5
    scores = heldout_feature_distances(familiar, folds, n_components=10)
    assert np.isfinite(scores).all()
    first = folds == 0
    np.testing.assert_allclose(scores[first], feature_distance(fit_feature_density(familiar[~first], 10),
                                                                familiar[first]))


def test_fold_heads_and_agreement():
    features = np.array([[1.0, 0.0], [0.0, 1.0]])
    identity = np.eye(2)[None].repeat(3, axis=0) * 10
    flipped = identity.copy()
    flipped[2] = identity[2][:, ::-1]
    probs = fold_head_probabilities(features, flipped, np.zeros((3, 2)))
    assert probs.shape == (3, 2, 2)
    np.testing.assert_allclose(fold_agreement(probs, [0, 1]), [2 / 3, 2 / 3])


def test_flags_and_reasons():
    flags, reasons = uncertainty_flags([0.9, 0.4, 0.9, 0.3], thresholds={"min_confidence": 0.5,
                                                                          "min_fold_agreement": 0.8,
                                                                          "max_ood_score": 10.0},
                                       agreement=[1.0, 1.0, 0.6, 0.6], ood=[1.0, 1.0, 1.0, 12.0])
    assert flags.tolist() == [False, True, True, True]
    assert reasons[0] == "" and reasons[1] == REASONS[0] and reasons[2] == REASONS[1]
    assert reasons[3] == "; ".join(REASONS)
    flags, _ = uncertainty_flags([0.1], thresholds={})
    assert not flags[0]


def test_risk_coverage_abstains_on_the_least_certain():
    correct = np.array([True, True, True, False, False])
    uncertainty = np.array([0.1, 0.2, 0.3, 0.9, 0.8])
    table = risk_coverage(correct, uncertainty, fractions=(0.0, 0.2, 0.4), labels=np.array([0, 1, 0, 1, 0]))
    assert table["accuracy"].tolist() == pytest.approx([0.6, 0.75, 1.0])
    assert table["n_kept"].tolist() == [5, 4, 3]
    assert table["balanced_accuracy"].iloc[-1] == 1.0


def test_video_mean_features_in_first_appearance_order():
    ids, means = video_mean_features(np.array([[1.0], [3.0], [10.0]]), ["b", "b", "a"])
    assert list(ids) == ["b", "a"] and means[:, 0].tolist() == [2.0, 10.0]
