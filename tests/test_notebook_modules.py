"""Known answers of what the notebooks call: recipe text, result sentences, summaries, frame choices, plots."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from covnb import exploration_summary, fewshot_text, study_plots  # noqa: E402
from covnb.notebook_display import FigureLog  # noqa: E402
from covnb.recipe_text import describe, headline_class  # noqa: E402

CLASSES = ["covid", "pneumonia", "regular"]


def test_headline_class_is_covid_when_present_else_the_first():
    assert headline_class(["regular", "covid", "pneumonia"]) == "covid"
    assert headline_class(["other", "normal"]) == "normal"


def test_describe_names_what_sets_each_recipe_apart():
    pytest.importorskip("keras")
    from covnb.train import recipe_config

    assert describe(recipe_config("linear_probe")) == ("top layer, average pool, logistic regression (C by inner "
                                                       "patient CV), no augmentation, class weights")
    midlevel = ("middle layers, average + max pools, logistic regression (C by inner patient CV), one example per "
                "video (mean feature), a mirrored copy of every frame, class weights")
    assert describe(recipe_config("midlevel")) == midlevel
    assert describe(recipe_config("default")) == midlevel + (", 0 / 2 / 4 / 8 within-class between-source "
                                                             "direction(s) projected out (NAP), the number chosen "
                                                             "inside every training fold by its inner CV")
    fine_tuned = describe(recipe_config("default", fine_tune_epochs=3, epochs=7))
    assert fine_tuned.startswith("top layer, average pool, Adam, up to 7 epochs")
    assert fine_tuned.endswith("then the last block fine-tuned for up to 3 epochs")


def curve(rows):
    return pd.DataFrame(rows, columns=["method", "k_shot", "mean", "ci95"])


def test_shot_sentences_are_read_from_the_numbers():
    held = curve([("simpleshot", 1, 0.50, 0.05), ("simpleshot", 5, 0.70, 0.04), ("knn", 5, 0.66, 0.04)])
    assert fewshot_text.shot_sentence(held, "the held-out patients", 3) == (
        "On the held-out patients, simpleshot is best at K=5 (0.70 ± 0.04; chance 0.33); from K=1 to K=5 it moves by "
        "+0.20; next is knn (0.66, within the 95% intervals).")
    assert fewshot_text.shot_sentence(curve([]), "all patients", 3) == "On all patients no K was possible in this run."
    assert "K=5 is reached in this run." in fewshot_text.shots_sentence(held, curve([]), 3)
    assert fewshot_text.at_k(held, 5) == {"simpleshot": {"mean": 0.70, "ci95": 0.04}, "knn": {"mean": 0.66, "ci95": 0.04}}
    assert fewshot_text.best_at_largest_k(held) == {"k_shot": 5, "method": "simpleshot", "mean": 0.70, "ci95": 0.04}


def test_leak_and_learning_sentences_follow_the_intervals():
    inflated = pd.DataFrame({"mean": [0.9, 0.6], "ci95": [0.05, 0.05]}, index=["leaky", "honest"])
    assert "inflates the accuracy by 0.30" in fewshot_text.leak_sentence(inflated, 3, 5)
    close = pd.DataFrame({"mean": [0.65, 0.6], "ci95": [0.05, 0.05]}, index=["leaky", "honest"])
    assert "within their 95% intervals" in fewshot_text.leak_sentence(close, 3, 5)
    assert "Too few patients" in fewshot_text.leak_sentence(None, 3, 5)
    summary = pd.DataFrame({"mean": [0.55, 0.70]}, index=pd.Index([1, 8], name="n_patients"))
    assert fewshot_text.learning_sentence(summary, "default", "covid") == (
        "**Patients.** The default recipe reaches video balanced accuracy 0.55 with 1 covid patient(s) in training "
        "and 0.70 with 8: more covid patients helped (+0.15).")


def test_exploration_summaries_of_sources_and_gallery():
    samples = pd.DataFrame({"source": ["a", "a", "a", "b", "b", "c"],
                            "label": ["covid", "covid", "regular", "covid", "regular", "regular"]})
    from covnb.audit import source_class_table

    shares, text = exploration_summary.largest_sources(source_class_table(samples))
    assert shares == {"covid": round(2 / 3, 3), "regular": round(1 / 3, 3)}
    assert text.startswith("**3 source(s).** Largest source of each class: covid: source a sends 2 of 3 files (67%)")
    gallery = pd.DataFrame({"method": ["motion", "motion", "still", "whole"], "share": [0.5, 0.6, 0.7, 1.0]})
    stored, sentence = exploration_summary.gallery_summary(gallery)
    assert stored == {"files": 4, "methods": {"motion": 2, "still": 1, "whole": 1}, "median_region_share": 0.65}
    assert "motion in 2, from the backdrop of a still in 1, and in 1 nothing" in sentence


def oof_table():
    # two folds, videos of two frames; fold 0 all right, fold 1 one video wrong
    rows = []
    for fold, truths, predictions in ((0, [0, 1, 2], [0, 1, 2]), (1, [0, 1, 2], [0, 2, 2])):
        for v, (truth, predicted) in enumerate(zip(truths, predictions)):
            for frame in range(2):
                probs = np.full(3, 0.1)
                probs[predicted] = 0.8
                rows.append({"seed": 0, "fold": fold, "sample_id": f"f{fold}v{v}", "group": f"f{fold}p{v}",
                             "label": CLASSES[truth], "frame_index": frame,
                             **{f"prob_{c}": probs[k] for k, c in enumerate(CLASSES)}})
    return pd.DataFrame(rows)


def test_level_table_and_frame_agreement():
    from covnb.transfer_study import frame_agreement, level_table

    table = level_table(oof_table(), CLASSES, "covid")
    assert list(table.index) == ["frames", "videos, mean probability", "videos, majority vote"]
    assert table.loc["frames", "cases per fold"] == 6 and table.loc["videos, mean probability", "cases per fold"] == 3
    assert table.loc["videos, mean probability", "balanced accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    agreement = frame_agreement(oof_table(), CLASSES)
    assert len(agreement) == 6 and (agreement["agreement"] == 1.0).all()  # both frames of a video agree
    assert int(agreement["correct"].sum()) == 5


def test_fold_dot_plot_draws_the_fold_values_and_their_mean(tmp_path):
    per_fold = {"a": pd.DataFrame({"balanced_accuracy": [0.5, 0.7]}), "b": pd.DataFrame({"balanced_accuracy": [0.9]})}
    figure = study_plots.fold_dot_plot(per_fold, "balanced_accuracy", "title", chance=1 / 3)
    axis = figure.axes[0]
    assert [bar.get_width() for bar in axis.patches] == pytest.approx([0.6, 0.9])
    assert sorted(axis.collections[0].get_offsets()[:, 0]) == pytest.approx([0.5, 0.7])
    assert [label.get_text() for label in axis.get_yticklabels()] == ["a", "b"]
    log = FigureLog(tmp_path / "figures")
    path = log.show(figure, "dots")
    assert log.names == ["dots.png"] and path.is_file() and not plt.fignum_exists(figure.number)


def test_most_confident_prefers_other_patients_and_median_ignores_nan():
    pytest.importorskip("keras")
    from covnb.cam_figures import median_or_none, most_confident

    table = pd.DataFrame({"sample_id": ["a", "a", "b", "c"], "group": ["p1", "p1", "p1", "p2"],
                          "label": ["covid"] * 4})
    probs = np.array([[0.9, 0.1], [0.95, 0.05], [0.8, 0.2], [0.6, 0.4]])
    # best frame of each file: a (0.95), b (0.8), c (0.6); one file per patient first: a, c, then b
    assert most_confident(table, probs, 0, 3, class_names=["covid", "other"]).tolist() == [1, 3, 2]
    assert median_or_none([0.2, np.nan, 0.4]) == 0.3 and median_or_none([np.nan]) is None
