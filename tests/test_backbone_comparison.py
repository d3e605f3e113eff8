"""covnb.backbone_comparison: one row per backbone from the training metrics, and the figure."""

from __future__ import annotations

import math

import pandas as pd

import matplotlib
import pytest

matplotlib.use("Agg")

from covnb.backbone_comparison import compare_backbones, comparison_row, plot_backbone_comparison  # noqa: E402


def _metrics(backbone, balanced, probe, sensitivity, specificity):
    return {"config": {"backbone": backbone, "image_size": 224}, "cv_seconds": 12.5,
            "video_mean": {"pooled_mean": {"balanced_accuracy": balanced, "covid_sensitivity": sensitivity,
                                           "covid_specificity": specificity, "macro_auc": 0.9},
                           "pooled_std": {"balanced_accuracy": 0.02}},
            "baseline": {"video_mean": {"pooled_mean": {"balanced_accuracy": probe}}}}


def test_row_takes_video_level_numbers_of_recipe_and_probe():
    row = comparison_row(_metrics("resnet50", 0.71, 0.66, 0.5, 0.9))
    assert row["backbone"] == "resnet50"
    assert (row["balanced_accuracy"], row["linear_probe_balanced_accuracy"]) == (0.71, 0.66)
    assert (row["covid_sensitivity"], row["covid_specificity"]) == (0.5, 0.9)
    assert row["balanced_accuracy_sd_seeds"] == 0.02
    no_probe = _metrics("vgg16", 0.6, 0.5, 0.4, 0.8)
    del no_probe["baseline"]
    assert math.isnan(comparison_row(no_probe)["linear_probe_balanced_accuracy"])


def test_figure_has_one_group_of_bars_per_backbone():
    import pandas as pd

    table = pd.DataFrame([comparison_row(_metrics(name, b, p, s, t)) for name, b, p, s, t in
                          (("efficientnet_lite0", 0.79, 0.74, 0.7, 0.9), ("resnet50", 0.7, 0.69, 0.5, 0.95))])
    figure = plot_backbone_comparison(table)
    axis = figure.axes[0]
    assert [t.get_text() for t in axis.get_xticklabels()] == ["efficientnet_lite0", "resnet50"]
    heights = sorted(round(p.get_height(), 3) for p in axis.patches)
    assert heights == sorted([0.79, 0.74, 0.7, 0.9, 0.7, 0.69, 0.5, 0.95])


@pytest.mark.slow
def test_compare_backbones_on_the_phantom_same_folds_for_each(tmp_path):
    table, figure = compare_backbones(None, ["efficientnet_lite0", "mobilenet"], seeds=(0,), n_folds=2,
                                      weights=None, image_size=64, out_dir=tmp_path, n_boot=0, log=None)
    assert list(table["backbone"]) == ["efficientnet_lite0", "mobilenet"]
    assert table["balanced_accuracy"].between(0, 1).all()
    assert (table["feature_ms_per_frame"] > 0).all()
    folds = [(tmp_path / name / "folds.csv").read_text() for name in table["backbone"]]
    assert folds[0] == folds[1]  # same patient-grouped split for every backbone
    import json

    import covnb.trust

    assert covnb.trust.NESTED_CALIBRATION is True  # switched off only while comparing
    metrics = json.loads((tmp_path / "efficientnet_lite0" / "metrics.json").read_text())
    assert metrics["headline"] == "patient_cv" and "source_held_out" not in metrics  # patient-grouped only


@pytest.mark.slow
def test_compare_backbones_on_a_local_cluster_gives_the_serial_table(tmp_path):
    settings = dict(seeds=(0,), n_folds=2, weights=None, image_size=32, n_boot=0, time_features=False, log=None)
    serial, _ = compare_backbones(None, ["mobilenet"], out_dir=tmp_path / "serial", **settings)
    on_cluster, _ = compare_backbones(None, ["mobilenet"], out_dir=tmp_path / "cluster", cluster="local:2", **settings)
    timing = [column for column in serial if column.endswith("_seconds")]  # wall time
    pd.testing.assert_frame_equal(serial.drop(columns=timing), on_cluster.drop(columns=timing))
    for name in ("oof_predictions.csv", "baseline_oof_predictions.csv", "folds.csv"):  # patient-grouped only
        assert (tmp_path / "serial" / "mobilenet" / name).read_bytes() == \
            (tmp_path / "cluster" / "mobilenet" / name).read_bytes()
