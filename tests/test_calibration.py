"""covnb.calibration: scores on cases with a known answer, maps that undo known miscalibration,
cross-fitting that never fits a fold's map on that fold, and the vectorised bootstrap."""

import numpy as np
import pandas as pd
import pytest

from covnb.calibration import (CALIBRATION_METHODS, apply_calibration, select_method, calibrate_file_probabilities,
                               calibration_bootstrap, calibration_scores, cross_fitted_predictions,
                               evaluate_calibration, fit_calibration, fit_final_calibration,
                               nested_calibrated_predictions, reliability_table)


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def synthetic(n=3000, n_classes=3, sharpen=3.0, seed=0):
    """Labels drawn from calibrated probabilities; the model reports them sharpened (overconfident)."""
    rng = np.random.default_rng(seed)
    centre = rng.integers(0, n_classes, n)
    z = rng.normal(size=(n, n_classes))
    z[np.arange(n), centre] += 1.5
    truth = softmax(z)
    labels = np.array([rng.choice(n_classes, p=p) for p in truth])
    return truth, softmax(sharpen * z), labels


def test_scores_known_values():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])
    scores = calibration_scores(probs, labels)
    # two bins: confidence 0.9 with accuracy 0.5, confidence 0.6 with accuracy 1.0
    assert scores["ece"] == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    brier = np.mean([(0.1 ** 2) * 2, (0.9 ** 2) * 2, (0.4 ** 2) * 2, (0.4 ** 2) * 2])
    assert scores["brier"] == pytest.approx(brier)
    assert scores["log_loss"] == pytest.approx(-np.mean(np.log([0.9, 0.1, 0.6, 0.6])))
    perfect = calibration_scores(np.eye(2)[[0, 1, 1]], np.array([0, 1, 1]))
    assert perfect["ece"] == pytest.approx(0) and perfect["brier"] == pytest.approx(0)


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_every_map_lowers_ece_of_an_overconfident_model_on_new_data(method):
    truth, reported, labels = synthetic()
    fit, test = slice(0, 1500), slice(1500, None)
    block = fit_calibration(reported[fit], labels[fit], method)
    calibrated = apply_calibration(block, reported[test])
    np.testing.assert_allclose(calibrated.sum(axis=1), 1.0, atol=1e-9)
    raw_ece = calibration_scores(reported[test], labels[test])["ece"]
    assert calibration_scores(calibrated, labels[test])["ece"] < 0.5 * raw_ece
    assert calibration_scores(calibrated, labels[test])["log_loss"] < calibration_scores(reported[test], labels[test])["log_loss"]


def test_temperature_recovers_the_sharpening():
    _, reported, labels = synthetic(sharpen=3.0)
    assert fit_calibration(reported, labels, "temperature")["temperature"] == pytest.approx(3.0, rel=0.15)
    truth, _, labels = synthetic(sharpen=1.0)
    assert fit_calibration(truth, labels, "temperature")["temperature"] == pytest.approx(1.0, rel=0.1)


def test_vector_scaling_undoes_a_prior_shift():
    truth, _, labels = synthetic(sharpen=1.0)
    shifted = softmax(np.log(truth) + np.array([1.5, 0.0, -1.0]))  # like class weights pushing minority classes
    block = fit_calibration(shifted, labels, "vector")
    assert calibration_scores(apply_calibration(block, shifted), labels)["ece"] < \
        0.4 * calibration_scores(shifted, labels)["ece"]


def test_bootstrap_is_the_point_estimate_centre_and_groups_matter():
    _, reported, labels = synthetic(n=600)
    groups = np.arange(600) // 6
    ci = calibration_bootstrap(reported, labels, groups, n_boot=300, seed=1)
    point = calibration_scores(reported, labels)
    for name in ("ece", "classwise_ece", "brier", "log_loss"):
        assert ci[name]["estimate"] == pytest.approx(point[name])
        assert ci[name]["low"] < ci[name]["estimate"] < ci[name]["high"]
    assert ci["n_groups"] == 100
    again = calibration_bootstrap(reported, labels, groups, n_boot=300, seed=1)
    assert again["ece"] == ci["ece"]  # seeded


def oof_table(seeds=(0, 1), n_folds=4, n=800, data_seed=0):
    _, reported, labels = synthetic(n=n, seed=data_seed)
    classes = ["a", "b", "c"]
    parts = []
    for seed in seeds:
        table = pd.DataFrame(reported, columns=[f"prob_{c}" for c in classes])
        table.insert(0, "label", np.asarray(classes)[labels])
        table.insert(0, "sample_id", [f"v{i // 4}" for i in range(n)])
        table.insert(0, "group", [f"p{i // 8}" for i in range(n)])
        table.insert(0, "fold", (np.arange(n) // 8 + seed) % n_folds)
        table.insert(0, "seed", seed)
        parts.append(table)
    return pd.concat(parts, ignore_index=True), classes


def test_cross_fitting_never_uses_the_fold_it_calibrates():
    oof, classes = oof_table()
    calibrated = cross_fitted_predictions(oof, classes, "temperature")
    assert calibrated.index.equals(oof.index)
    # Poison one fold's labels: its own calibrated probabilities must not change, every other fold's must.
    poisoned = oof.copy()
    target = (poisoned["seed"] == 0) & (poisoned["fold"] == 1)
    poisoned.loc[target, "label"] = "a"
    again = cross_fitted_predictions(poisoned, classes, "temperature")
    columns = [f"prob_{c}" for c in classes]
    np.testing.assert_allclose(again.loc[target, columns], calibrated.loc[target, columns])
    other = (poisoned["seed"] == 0) & (poisoned["fold"] == 2)
    assert not np.allclose(again.loc[other, columns], calibrated.loc[other, columns])
    seed_one = poisoned["seed"] == 1  # another split seed's maps never see seed 0's rows
    np.testing.assert_allclose(again.loc[seed_one, columns], calibrated.loc[seed_one, columns])


def test_evaluate_calibration_levels_and_final_map():
    oof, classes = oof_table()
    summary, tables = evaluate_calibration(oof, classes, methods=("temperature", "isotonic"), n_boot=50)
    assert set(summary) == {"frame", "video"} and set(summary["frame"]) == {"raw", "temperature", "isotonic"}
    assert summary["frame"]["temperature"]["ece"]["estimate"] < summary["frame"]["raw"]["ece"]["estimate"]
    assert len(tables["video"]["raw"]) == oof.groupby(["seed", "sample_id"]).ngroups
    block = fit_final_calibration(oof, classes)
    assert block["method"] == "auto" and block["frame"]["method"] != "none"
    assert block["frame"]["method"] == min(block["frame_selection_ece"], key=block["frame_selection_ece"].get)
    frames, video = calibrate_file_probabilities({"calibration": block}, oof[[f"prob_{c}" for c in classes]].to_numpy()[:4])
    assert frames.shape == (4, 3) and video.shape == (3,)
    raw_frames, raw_video = calibrate_file_probabilities({"calibration": block}, frames, raw=True)
    np.testing.assert_allclose(raw_video, frames.mean(axis=0))


def test_reliability_table_top_label_and_per_class():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45]])
    labels = np.array([0, 0, 1])
    top = reliability_table(probs, labels, n_bins=10)
    assert top["count"].sum() == 3 and top.loc[top["bin"] == 9, "observed"].item() == 1.0
    per_class = reliability_table(probs, labels, class_index=1, n_bins=10)
    assert per_class.loc[per_class["bin"] == 4, "observed"].item() == 1.0


def test_auto_selection_finds_a_needed_map_and_is_nested():
    oof, classes = oof_table(seeds=(0,))
    chosen, scores = select_method(oof, classes)
    assert chosen != "none" and scores[chosen] < scores["none"]  # the sharpened model needs a map
    # nested: poisoning fold 1's labels changes no probability of fold 1 under "auto" either
    before = cross_fitted_predictions(oof, classes, "auto")
    poisoned = oof.copy()
    target = poisoned["fold"] == 1
    poisoned.loc[target, "label"] = "a"
    after = cross_fitted_predictions(poisoned, classes, "auto")
    columns = [f"prob_{c}" for c in classes]
    np.testing.assert_allclose(after.loc[target, columns], before.loc[target, columns])


def test_two_folds_leave_auto_nothing_to_nest_and_keep_the_raw_probabilities():
    oof, classes = oof_table()
    two = oof[oof["fold"].isin([0, 1])]
    # each fold's "other folds" hold one fold: auto cannot cross-fit inside it and keeps no map
    assert select_method(two[two["fold"] == 0], classes)[0] == "none"
    calibrated = cross_fitted_predictions(two, classes, "auto")
    columns = [f"prob_{c}" for c in classes]
    np.testing.assert_allclose(calibrated[columns], two[columns])
    single = cross_fitted_predictions(two[two["fold"] == 0], classes, "temperature")
    np.testing.assert_allclose(single[columns], two[two["fold"] == 0][columns])


def _inner_tables(oof, classes, seed_offset=100):
    """Inner tables per (seed, fold): an independent sharpened draw standing in for inner predictions."""
    inner = {}
    for (seed, fold), _ in oof.groupby(["seed", "fold"]):
        table, _ = oof_table(seeds=(0,), n=400, data_seed=seed_offset + 10 * int(seed) + int(fold))
        inner[(seed, fold)] = table.drop(columns=["seed"]).assign(fold=lambda t: t["fold"] % 4)
    return inner


def test_nested_maps_come_from_the_inner_tables_only_per_level():
    oof, classes = oof_table()
    inner = _inner_tables(oof, classes)
    columns = [f"prob_{c}" for c in classes]
    calibrated, chosen = nested_calibrated_predictions(oof, inner, classes, method="temperature")
    assert calibrated.index.equals(oof.index) and set(chosen.values()) == {"temperature"}
    # fold (0, 1)'s rows carry exactly the map fitted on its inner table
    target = (oof["seed"] == 0) & (oof["fold"] == 1)
    from covnb.evaluate import _labels_and_probs

    labels, probs = _labels_and_probs(inner[(0, 1)], classes)
    expected = apply_calibration(fit_calibration(probs, labels, "temperature"), oof.loc[target, columns].to_numpy())
    np.testing.assert_allclose(calibrated.loc[target, columns], expected)
    # outer labels never reach any map: poisoning every outer label changes no calibrated probability
    poisoned = oof.assign(label="a")
    again, _ = nested_calibrated_predictions(poisoned, inner, classes, method="auto")
    before, selected = nested_calibrated_predictions(oof, inner, classes, method="auto")
    np.testing.assert_allclose(again[columns], before[columns])
    assert set(selected.values()) <= {"none", "temperature", "vector", "platt", "isotonic"}
    # the video level fits on the inner tables' video means
    from covnb.evaluate import video_predictions

    videos = video_predictions(oof, classes, "mean")
    video_cal, _ = nested_calibrated_predictions(videos, inner, classes, method="temperature", level="video")
    inner_videos = video_predictions(inner[(0, 1)], classes, "mean")
    labels, probs = _labels_and_probs(inner_videos, classes)
    rows = (videos["seed"] == 0) & (videos["fold"] == 1)
    np.testing.assert_allclose(video_cal.loc[rows, columns], apply_calibration(
        fit_calibration(probs, labels, "temperature"), videos.loc[rows, columns].to_numpy()))
    # an outer fold without inner predictions keeps its raw probabilities
    missing = {k: v for k, v in inner.items() if k != (0, 1)}
    kept, chosen = nested_calibrated_predictions(oof, missing, classes, method="temperature")
    np.testing.assert_allclose(kept.loc[target, columns], oof.loc[target, columns])
    assert chosen[(0, 1)] == "none"


def test_evaluate_calibration_with_inner_tables_is_nested_and_records_the_choices():
    oof, classes = oof_table()
    summary, tables = evaluate_calibration(oof, classes, methods=("temperature", "auto"), n_boot=20,
                                           inner_tables=_inner_tables(oof, classes))
    assert summary["frame"]["temperature"]["ece"]["estimate"] < summary["frame"]["raw"]["ece"]["estimate"]
    assert len(tables["frame"]["auto"].attrs["selected"]) == oof.groupby(["seed", "fold"]).ngroups
