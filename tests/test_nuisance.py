"""Source-balanced weights and nuisance attribute projection (covnb.nuisance), known answers."""

import numpy as np
import pytest

from covnb.nuisance import NuisanceProjection, nuisance_directions, source_balanced_weights


def test_source_balanced_weights_known_answer():
    # Class 0: source a (2 examples), source b (1); class 1: source c (1). n=4, k=2 -> each class sums to 2.
    weights = source_balanced_weights(np.array([0, 0, 0, 1]), ["a", "a", "b", "c"], 2)
    np.testing.assert_allclose(weights, [0.5, 0.5, 1.0, 2.0])
    # A dominant source no longer dominates: 33 files of source s18 weigh as much as 1 of s7.
    labels = np.zeros(34, int)
    sources = ["s18"] * 33 + ["s7"]
    weights = source_balanced_weights(labels, sources, 1)
    assert weights[:33].sum() == pytest.approx(weights[33]) == pytest.approx(17.0)


def test_square_root_weighting_sits_between_files_and_sources():
    labels, sources = np.zeros(5, int), ["a"] * 4 + ["b"]
    equal = source_balanced_weights(labels, sources, 1, power=0.0)  # every file equal: plain class weights
    np.testing.assert_allclose(equal, np.ones(5))
    sqrt = source_balanced_weights(labels, sources, 1, power=0.5)  # shares 2:1 -> a: 5*2/3/4 each, b: 5/3
    np.testing.assert_allclose(sqrt, [5 / 6] * 4 + [5 / 3])
    with pytest.raises(ValueError, match="power"):
        source_balanced_weights(labels, sources, 1, power=2.0)
    with pytest.raises(ValueError, match="sources"):
        source_balanced_weights(labels, sources[:3], 1)


def test_nap_removes_the_source_axis_and_keeps_the_class_axis():
    rng = np.random.default_rng(0)
    rows, labels, sources = [], [], []
    for cls in (0, 1):
        for source, offset in (("s1", -3.0), ("s2", 3.0), ("s3", 0.0)):
            for _ in range(20):
                # axis 0: source (device) offset, axis 1: class, axis 2: noise
                rows.append([offset + rng.normal(0, 0.1), 2.0 * cls + rng.normal(0, 0.1), rng.normal(0, 0.1)])
                labels.append(cls)
                sources.append(f"{source}{cls}")  # a class's sources are its own
    x, labels = np.array(rows), np.array(labels)
    directions = nuisance_directions(x, labels, sources, 1)
    assert directions.shape == (3, 1)
    np.testing.assert_allclose(np.abs(directions[:, 0]), [1.0, 0.0, 0.0], atol=0.02)
    nap = NuisanceProjection(1).fit(x, labels, sources)
    projected = nap.transform(x)
    assert projected[:, 0].std() < 0.05  # the source offsets (sd 2.4 before) are gone
    gap = projected[labels == 1, 1].mean() - projected[labels == 0, 1].mean()
    assert gap == pytest.approx(2.0, abs=0.05)  # the class difference stays
    # The fold into a linear head: coef @ P on raw features equals coef on projected ones.
    coef = rng.normal(size=(2, 3))
    np.testing.assert_allclose(x @ nap.fold_into(coef).T, projected @ coef.T, atol=1e-10)


def test_nap_needs_two_sources_with_enough_examples_in_a_class():
    x = np.arange(12.0).reshape(4, 3)
    # class 0: one source only; class 1: s2 has 2 examples, s3 one (below min_examples=2)
    directions = nuisance_directions(x, np.array([0, 0, 1, 1]), ["s1", "s1", "s2", "s3"], 4)
    assert directions.shape == (3, 0)
    np.testing.assert_allclose(NuisanceProjection(4).fit(x, np.array([0, 0, 1, 1]), ["s1", "s1", "s2", "s3"])
                               .transform(x), x)
    # k larger than the rank of the differences: only as many directions as they span
    x = np.array([[0.0, 0, 0], [0, 0, 0], [2, 0, 0], [2, 0, 0]])
    assert nuisance_directions(x, np.zeros(4, int), ["a", "a", "b", "b"], 3).shape == (3, 1)
