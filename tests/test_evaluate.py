"""Known-answer tests of covnb.evaluate (frame/video metrics, confusion matrices, bootstrap)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from covnb.evaluate import (bootstrap_ci, classification_metrics, confusion_matrices, fold_metrics,  # noqa: E402
                            plot_confusion_matrices, plot_roc_curves, plot_training_curves, pooled_metrics,
                            summarize_cv, video_predictions)

CLASSES = ["covid", "pneumonia", "regular"]


def one_hot_probs(indices, n=3, confidence=0.8):
    probs = np.full((len(indices), n), (1 - confidence) / (n - 1))
    probs[np.arange(len(indices)), indices] = confidence
    return probs


def frame_table(y_true, probs, seed=0, fold=None, frames_per_video=1):
    rows = []
    for i, (label, p) in enumerate(zip(y_true, probs)):
        video = i // frames_per_video
        rows.append({"seed": seed, "fold": video % 2 if fold is None else fold, "sample_id": f"s{seed}v{video}",
                     "group": f"patient{video // 2}", "label": CLASSES[label], "frame_index": i % frames_per_video,
                     **{f"prob_{c}": p[k] for k, c in enumerate(CLASSES)}})
    return pd.DataFrame(rows)


def test_perfect_predictions_score_one():
    y = np.array([0, 0, 1, 1, 2, 2, 2])
    metrics = classification_metrics(y, one_hot_probs(y), CLASSES)
    for key in ("accuracy", "balanced_accuracy", "mcc", "macro_auc"):
        assert metrics[key] == pytest.approx(1.0)
    for name in CLASSES:
        assert metrics["per_class"][name]["sensitivity"] == 1.0
        assert metrics["per_class"][name]["specificity"] == 1.0
        assert metrics["per_class"][name]["precision"] == 1.0
        assert metrics["per_class"][name]["f1"] == 1.0
    assert metrics["per_class"]["regular"]["support"] == 3


def test_hand_computed_confusion_and_per_class_metrics():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 0, 1, 1, 2, 2])
    matrices = confusion_matrices(y_true, y_pred, CLASSES)
    np.testing.assert_array_equal(matrices["counts"].to_numpy(), [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    np.testing.assert_allclose(matrices["by_row"].to_numpy(), [[2 / 3, 1 / 3, 0], [0, 0.5, 0.5], [0, 0, 1]])
    np.testing.assert_allclose(matrices["by_column"].to_numpy(), [[1, 0.5, 0], [0, 0.5, 0.5], [0, 0, 0.5]])
    # Names work as well as indices.
    by_name = confusion_matrices(np.asarray(CLASSES)[y_true], np.asarray(CLASSES)[y_pred], CLASSES)
    assert by_name["counts"].equals(matrices["counts"])

    metrics = classification_metrics(y_true, one_hot_probs(y_pred), CLASSES)
    covid, pneumonia, regular = (metrics["per_class"][c] for c in CLASSES)
    assert covid["sensitivity"] == pytest.approx(2 / 3) and covid["specificity"] == pytest.approx(1.0)
    assert pneumonia["sensitivity"] == pytest.approx(0.5) and pneumonia["specificity"] == pytest.approx(3 / 4)
    assert pneumonia["precision"] == pytest.approx(0.5)
    assert regular["precision"] == pytest.approx(0.5) and regular["f1"] == pytest.approx(2 / 3)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["balanced_accuracy"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)


def test_always_same_class_is_chance_level():
    y = np.array([0, 1, 2, 0, 1, 2])
    metrics = classification_metrics(y, one_hot_probs(np.zeros(6, int)), CLASSES)
    assert metrics["balanced_accuracy"] == pytest.approx(1 / 3)
    assert metrics["mcc"] == pytest.approx(0.0)
    assert metrics["per_class"]["covid"]["specificity"] == 0.0


def test_video_mean_and_vote_can_disagree():
    probs = np.array([[0.95, 0.03, 0.02], [0.4, 0.55, 0.05], [0.4, 0.55, 0.05]])
    table = frame_table([0, 0, 0], probs, frames_per_video=3)
    mean = video_predictions(table, CLASSES, "mean")
    vote = video_predictions(table, CLASSES, "vote")
    assert len(mean) == len(vote) == 1
    assert mean["pred"].iloc[0] == "covid"  # mean probability 0.583 for covid
    assert vote["pred"].iloc[0] == "pneumonia"  # two of three frames
    assert mean["n_frames"].iloc[0] == 3
    assert mean["prob_covid"].iloc[0] == pytest.approx(probs[:, 0].mean())


def test_fold_and_pooled_metrics_have_one_row_per_fold_and_seed():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    table = pd.concat([frame_table(y, one_hot_probs(y), seed=s) for s in (0, 1)], ignore_index=True)
    per_fold = fold_metrics(table, CLASSES, "frame")
    assert len(per_fold) == 4 and set(per_fold["seed"]) == {0, 1}
    pooled = pooled_metrics(table, CLASSES, "video_mean")
    assert len(pooled) == 2 and (pooled["balanced_accuracy"] == 1.0).all()


def test_bootstrap_resamples_patients():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    noisy = np.where(rng.random(60) < 0.3, rng.integers(0, 3, 60), y)
    table = frame_table(y, one_hot_probs(noisy))
    interval = bootstrap_ci(table, CLASSES, "balanced_accuracy", n_boot=200, seed=1)
    assert interval["low"] <= interval["estimate"] <= interval["high"]
    assert interval["high"] - interval["low"] > 0  # noisy predictions: the resamples disagree
    assert interval["n_groups"] == table["group"].nunique() == 30
    again = bootstrap_ci(table, CLASSES, ["balanced_accuracy", "covid_sensitivity"], n_boot=200, seed=1)
    assert again["balanced_accuracy"] == interval  # seeded: reproducible
    perfect = bootstrap_ci(frame_table(y, one_hot_probs(y)), CLASSES, "accuracy", n_boot=50)
    assert perfect["low"] == perfect["high"] == 1.0


def test_bootstrap_interval_of_a_known_case():
    # 20 patients with one video each, 10 right and 10 wrong: the bootstrap accuracy of a resample is
    # Binomial(20, 0.5) / 20, whose 2.5% and 97.5% quantiles are 6/20 and 14/20.
    table = pd.DataFrame({"seed": 0, "fold": 0, "sample_id": [f"v{i}" for i in range(20)],
                          "group": [f"p{i}" for i in range(20)], "label": ["covid"] * 10 + ["pneumonia"] * 10,
                          "frame_index": 0, "prob_covid": 0.8, "prob_pneumonia": 0.1, "prob_regular": 0.1})
    interval = bootstrap_ci(table, CLASSES, "accuracy", n_boot=20000, seed=0)
    assert interval["estimate"] == 0.5
    assert (interval["low"], interval["high"]) == (pytest.approx(0.30), pytest.approx(0.70))


def test_summarize_cv_reports_every_level():
    y = np.repeat([0, 1, 2, 0, 1, 2], 2)  # two frames per video, one label per video
    table = frame_table(y, one_hot_probs(y), frames_per_video=2)
    summary = summarize_cv(table, CLASSES, n_boot=20)
    for level in ("frame", "video_mean", "video_vote"):
        entry = summary[level]
        assert entry["folds_mean"]["balanced_accuracy"] == 1.0
        assert entry["pooled_mean"]["covid_sensitivity"] == 1.0
        assert entry["bootstrap_95ci"]["balanced_accuracy"]["low"] == 1.0
    assert summary["frame"]["n_folds"] == 2


def test_unknown_label_is_a_clear_error():
    table = frame_table([0, 1], one_hot_probs([0, 1]))
    table.loc[0, "label"] = "viral"
    with pytest.raises(ValueError, match="viral"):
        fold_metrics(table, CLASSES)


def test_figures_plot_the_numbers():
    y = np.array([0, 1, 2, 0, 1, 2])
    predicted = np.array([0, 1, 2, 0, 2, 2])  # one pneumonia called regular
    table = frame_table(y, one_hot_probs(predicted))
    by_row, by_column = plot_confusion_matrices(table, CLASSES).axes[:2]
    assert np.allclose(by_row.collections[0].get_array().reshape(3, 3), [[1, 0, 0], [0, 0.5, 0.5], [0, 0, 1]])
    assert np.allclose(by_column.collections[0].get_array().reshape(3, 3), [[1, 0, 0], [0, 1, 1 / 3], [0, 0, 2 / 3]])
    roc = plot_roc_curves(table, CLASSES).axes[0]
    assert [t.get_text() for t in roc.get_legend().get_texts()] == ["covid (AUC 1.00)", "pneumonia (AUC 0.75)",
                                                                    "regular (AUC 0.88)"]
    for line in roc.get_lines():  # every ROC curve runs from (0, 0) to (1, 1)
        assert (line.get_xdata()[0], line.get_ydata()[0], line.get_xdata()[-1], line.get_ydata()[-1]) == (0, 0, 1, 1)
    history = pd.DataFrame({"seed": 0, "fold": 0, "stage": "head", "epoch": [1, 2, 3], "loss": [1.0, 0.8, 0.7],
                            "val_loss": [1.1, 0.9, 0.95]})
    train_axes, validation_axes = plot_training_curves(history).axes[:2]
    assert list(train_axes.get_lines()[0].get_ydata()) == [1.0, 0.8, 0.7]
    assert list(validation_axes.get_lines()[0].get_ydata()) == [1.1, 0.9, 0.95]
    empty = plot_training_curves(pd.DataFrame())
    assert "no epoch-wise training (linear probe)" in [t.get_text() for ax in empty.axes for t in ax.texts]
    plt.close("all")


@pytest.mark.parametrize("classes", [CLASSES, ["covid", "other"]])
def test_vectorised_bootstrap_matches_the_resample_loop(classes):
    # uneven patients, tied scores, classes that some resamples miss: every metric as the loop computes it
    rng = np.random.default_rng(5)
    n = 60
    y = rng.choice(len(classes), n, p=[0.15] + [0.85 / (len(classes) - 1)] * (len(classes) - 1))
    probs = rng.dirichlet(np.ones(len(classes)), n)
    probs[y == 0, 0] += rng.choice([0.0, 0.3], (y == 0).sum())
    probs = np.round(probs / probs.sum(axis=1, keepdims=True), 1)  # ties on purpose
    probs[:, -1] = 1 - probs[:, :-1].sum(axis=1)
    table = pd.DataFrame({"label": np.asarray(classes)[y], "group": [f"p{int(i ** 0.7)}" for i in range(n)],
                          **{f"prob_{c}": probs[:, k] for k, c in enumerate(classes)}})
    names = ["balanced_accuracy", "accuracy", "mcc", "macro_auc"] + [
        f"{c}_{m}" for c in classes for m in ("sensitivity", "specificity", "precision", "f1")]
    fast = bootstrap_ci(table, classes, names, n_boot=300, seed=4)
    slow = bootstrap_ci(table, classes, names, n_boot=300, seed=4, vectorised=False)
    for name in names:
        assert [fast[name]["low"], fast[name]["high"]] == pytest.approx([slow[name]["low"], slow[name]["high"]],
                                                                        abs=1e-12, nan_ok=True), name
