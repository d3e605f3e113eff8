"""Known answers of the helpers the notebooks call instead of computing in their cells: data loading,
tables, sentences, figures and the ``metrics.json`` blocks (synthetic inputs, nothing trained)."""

import json
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from covnb import (cam_figures, exploration_summary, fewshot_study, fewshot_text, notebook_display,  # noqa: E402
                   study_plots, transfer_study, transfer_summary, trust_demo)
from covnb.cam_layers import canonical_method  # noqa: E402
from covnb.explorer_state import check_samples, png_bytes  # noqa: E402
from test_notebook_modules import CLASSES, oof_table  # noqa: E402


# ------------------------------------------------------------------ every notebook


def test_start_run_makes_the_folder_and_a_figure_log(tmp_path):
    out, figures = notebook_display.start_run(tmp_path / "a" / "b")
    assert out == tmp_path / "a" / "b" and out.is_dir()
    assert figures.output_dir == out and figures.names == []


def test_load_task_reads_the_phantom_and_refuses_too_few_patients():
    assert notebook_display.is_synthetic(None) and notebook_display.is_synthetic("phantom")
    assert not notebook_display.is_synthetic("/data/pocus")
    dataset, task_name, samples, synthetic = notebook_display.load_task(None)
    assert synthetic is True and task_name == "pocovid3" and len(samples) == 78
    assert sorted(samples["label"].unique()) == CLASSES
    with pytest.raises(ValueError, match=r"n_folds=1000 but only 36 patient groups in "):
        notebook_display.load_task("phantom", min_groups=1000)


def test_print_notes_prints_one_line_per_note_and_nothing_without(capsys):
    notebook_display.print_notes([])
    notebook_display.print_notes(["a", "b"], "note: ")
    assert capsys.readouterr().out == "note: a\nnote: b\n"


# ------------------------------------------------------------------ 01


def test_exploration_texts_and_tables_from_known_inputs():
    files = pd.DataFrame({"label": ["covid", "regular", "covid"], "kind": ["video"] * 3, "probe": ["convex"] * 3,
                          "source": ["a", "b", "a"], "group": ["p1", "p1", "p2"], "sample_id": ["x", "y", "z"]})
    assert exploration_summary.census_columns(files) == ["label", "source"]  # kind and probe do not vary
    assert exploration_summary.mixed_patients_notes(files) == [
        "1 patient(s) have files of more than one label, so they count in several classes."]
    assert exploration_summary.mixed_patients_notes(files.assign(group=["p1", "p2", "p3"])) == []
    intensity = pd.DataFrame({"label": ["a", "a", "b"], "mean": [10.0, 20.0, 5.0], "std": [1.0, 3.0, 2.0],
                              "black_share": [0.1, 0.3, 0.5]})
    medians = exploration_summary.intensity_medians(intensity)
    assert medians.loc["a"].tolist() == [15.0, 2.0, 0.2] and list(medians.columns)[0] == "median brightness"
    distances = pd.DataFrame({"relation": ["same video"] * 4, "distance": [0.0, 2.0, 4.0, 6.0]})
    assert exploration_summary.distance_quartiles(distances).loc["same video"].tolist() == [4.0, 1.5, 3.0, 4.5]


def test_split_texts_follow_the_audits():
    passing, leaking = SimpleNamespace(ok=True, shared_groups=[]), SimpleNamespace(ok=False, shared_groups=["p1", "p2"])
    assert exploration_summary.patient_split_text(passing).startswith("The patient-level split passes")
    assert exploration_summary.patient_split_text(leaking).startswith("The audit still flags something.")
    videos, images = pd.DataFrame({"kind": ["video", "image"]}), pd.DataFrame({"kind": ["image"]})
    assert exploration_summary.wrong_split_text(videos, leaking).startswith("**How many folds")
    assert exploration_summary.wrong_split_text(images, leaking).startswith(
        "No videos here, so a split by frame is a split by image: the leak comes from patients with several "
        "images, 2 of whom")
    note = exploration_summary.sampling_overview(pd.DataFrame({"kind": ["image"]}), pd.DataFrame())
    assert "No videos in this data set" in note.data


def test_source_probe_is_not_run_with_fewer_than_two_sources_of_three_patients():
    samples = pd.DataFrame({"source": ["a"] * 3 + ["b"] * 2, "group": ["p1", "p2", "p3", "p4", "p5"]})
    table, overall, stored, text = exploration_summary.source_probe(samples, settings=None, seed=0)
    assert table is None and overall is None and stored == {"source_probe": None}
    assert text.startswith("Only 1 source(s) with at least 3 patients (a, b)")


def test_data_markdown_names_the_folder_counts_and_task():
    files = pd.DataFrame({"kind": ["video", "video", "image"], "group": ["p1", "p2", "p2"],
                          "label": ["covid", "regular", "regular"]})
    dataset = SimpleNamespace(samples=files, root=SimpleNamespace(name="pocus"), layout="pocus")
    text = exploration_summary.data_markdown(dataset, files, "pocovid3", synthetic=False)
    assert text.startswith("**pocus**: 3 files (2 videos, 1 images) from 2 patients, layout `pocus`. Task `pocovid3`")
    assert text.endswith("keeps 3 files with labels covid, regular.")


# ------------------------------------------------------------------ 02


def cv(oof, seconds=1.0, histories=None):
    return SimpleNamespace(oof=oof, seconds=seconds, histories=pd.DataFrame() if histories is None else histories)


def test_recipe_tables_keep_the_order_and_the_known_fold_means():
    done = {"b": cv(oof_table(), 2.0), "a": cv(oof_table(), 1.0)}
    results = transfer_study.complete_cv_results(None, {"a": None, "b": None}, done, n_folds=2, seeds=(0,),
                                                 classes=CLASSES)  # nothing left to run
    assert list(results) == ["a", "b"]
    table = transfer_study.recipes_table(results, CLASSES, "covid")
    assert list(table.index) == ["a", "b"] and table["seconds"].tolist() == [1.0, 2.0]
    assert table.loc["a", "video balanced accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    assert table.loc["a", "covid sensitivity"] == pytest.approx(1.0)
    counts = transfer_study.class_counts(oof_table())
    assert counts.loc["covid"].tolist() == [2, 2, 4]  # files, patients, frames


def test_video_summary_adds_the_patient_bootstrap_only_when_asked():
    oof = oof_table()
    videos = transfer_study.video_predictions(oof, CLASSES, "mean")
    plain = transfer_study.video_summary(oof, videos, CLASSES, n_boot=0, seed=0)
    assert "bootstrap_95ci" not in plain["video_mean"]
    assert plain["video_mean"]["folds_mean"]["balanced_accuracy"] == pytest.approx((1 + 2 / 3) / 2)
    booted = transfer_study.video_summary(oof, videos, CLASSES, n_boot=30, seed=0)
    interval = booted["video_mean"]["bootstrap_95ci"]["balanced_accuracy"]
    assert interval["n_boot"] == 30 and interval["low"] <= interval["high"]


def test_source_held_out_study_says_when_it_is_skipped():
    samples = pd.DataFrame({"sample_id": [f"s{i}" for i in range(6)], "group": [f"p{i}" for i in range(6)],
                            "label": ["covid", "regular"] * 3, "source": ["a"] * 6})
    comparison, notes = transfer_study.source_held_out_study(samples, {}, {}, CLASSES, main_name="m", focus="covid",
                                                             leaky=None, n_folds=2, seed=0, enabled=False)
    assert comparison is None and notes[-1] == "compare_source_split=False: skipped."
    comparison, notes = transfer_study.source_held_out_study(samples, {}, {}, CLASSES, main_name="m", focus="covid",
                                                             leaky=None, n_folds=2, seed=0)
    assert comparison is None and notes[-1].startswith("No source-held-out comparison on this data: ")


def test_transfer_texts_read_the_numbers():
    leaky = {"frame_balanced_accuracy_folds_mean": 0.95, "video_balanced_accuracy": 0.9,
             "honest_frame_balanced_accuracy_folds_mean": 0.6, "honest_video_balanced_accuracy_folds_mean": 0.65}
    assert transfer_summary.leaky_text(leaky) == (
        "frame-level split: frame balanced accuracy 0.950 (video 0.900)  <- optimistic, patients leak\n"
        "patient-level split: frame balanced accuracy 0.600 (video 0.650)  <- honest")
    audit = SimpleNamespace(describe=lambda limit: "leaks 3 patients")
    assert transfer_summary.leaky_text(leaky, audit).startswith("frame-level split:   leaks 3 patients\n")
    assert transfer_summary.backbone_notes([], {})[0].startswith("which backbone: skipped (backbones = []")
    assert transfer_summary.backbone_notes(["resnet50"], {"resnet50": "no weights"}) == [
        "skipped resnet50: no weights (covnb weights fetch resnet50)"]
    assert transfer_summary.neighbour_text({"same_patient": 0.5, "same_class": 0.875}) == (
        "nearest neighbour of a frame: same patient 50%, same class 88%")
    assert transfer_summary.uncertainty_heading("r", n_folds=5, n_seeds=2, n_boot=100, n_patients=30) == (
        "**r, video level (mean probability)**, 5 folds x 2 split seed(s), 100 bootstrap resamples of 30 patients:")


def test_transfer_metrics_keep_the_keys_the_tests_and_the_report_read(tmp_path):
    oof = oof_table()
    summary = transfer_study.video_summary(oof, transfer_study.video_predictions(oof, CLASSES, "mean"), CLASSES,
                                           n_boot=0, seed=0)
    parameters = {"data_path": None, "backbone": "mobilenet", "weights": None, "alpha": 0.25, "image_size": 32,
                  "rate_hz": 3.0, "max_frames": 3, "seed": 0, "n_folds": 2, "recipe": "default", "epochs": 2,
                  "aug_views": 0, "mirror_view": True, "fine_tune_epochs": 0, "n_boot": 0, "projection": "pca"}
    frame_set = SimpleNamespace(index=oof, frames=np.zeros((len(oof), 2, 2, 3)), skipped=[1])
    metrics = transfer_summary.transfer_metrics(
        parameters, seeds=(0, 1), task_name="pocovid3", dataset=SimpleNamespace(skipped=[]), samples=oof,
        frame_set=frame_set, classes=CLASSES, main_name="covnb default", summary=summary, focus="covid", leaky=None,
        source_comparison=None, honest_audit=SimpleNamespace(ok=True, checked=["groups"]),
        recipes=transfer_study.recipes_table({"covnb default": cv(oof)}, CLASSES, "covid"), imbalance={},
        feature_map={"projection": "pca", "same_patient": 0.5, "same_class": 0.7}, dimensions=256,
        model_path=tmp_path / "model.keras", difference=0.0, cv_results={"covnb default": cv(oof, 3.456)},
        timings={"total_s": 9.0}, figures=["recipes.png"])
    assert {"headline", "honest", "leaky_split", "source_held_out", "split_audit", "recipes", "imbalance",
            "frozen_features", "model", "timings", "figures"} <= set(metrics)
    assert metrics["synthetic"] is True and metrics["data"] == {
        "path": None, "task": "pocovid3", "classes": CLASSES, "files": 6, "patients": 6, "frames": 12, "skipped": 1}
    assert list(metrics["parameters"])[7:10] == ["n_folds", "seeds", "recipe"] and metrics["parameters"]["seeds"] == [0, 1]
    assert "projection" not in metrics["parameters"]
    assert metrics["headline"]["video_balanced_accuracy"] == metrics["recipes"][0]["video balanced accuracy"]
    assert set(metrics["honest"]) == {"frame", "video_mean", "video_vote"}
    assert metrics["model"] == {"path": "model.keras", "sidecar": "model.json", "classes": CLASSES,
                                "reload_max_difference": 0.0}
    assert metrics["timings"] == {"total_s": 9.0, "cross_validation_s": {"covnb default": 3.46}}
    assert transfer_summary.closing_line(metrics, tmp_path).startswith(
        f"covnb default: video balanced accuracy {metrics['headline']['video_balanced_accuracy']:.3f} ± ")
    json.dumps(metrics)  # plain JSON


def test_transfer_figures_draw_what_they_are_given():
    per_fold = {"leaky_folds": pd.DataFrame({"balanced_accuracy": [0.9, 1.0]}),
                "honest_folds": pd.DataFrame({"balanced_accuracy": [0.5, 0.7]})}
    axis = study_plots.plot_leaky_vs_honest(per_fold, "r", 3).axes[0]
    assert [bar.get_width() for bar in axis.patches] == pytest.approx([0.95, 0.6])
    assert [label.get_text() for label in axis.get_yticklabels()] == ["frame-level split (leaky)",
                                                                      "patient-level split (honest)"]
    folds = study_plots.plot_recipe_folds({"a": cv(oof_table())}, CLASSES, 2).axes[0]
    assert [bar.get_width() for bar in folds.patches] == pytest.approx([(1 + 2 / 3) / 2])
    assert study_plots.training_curves_or_none(cv(oof_table()), "logistic") is None
    assert list(study_plots.class_palette(["b", "a"])) == ["b", "a"]
    oof = oof_table()
    figures = study_plots.outcome_figures(oof, transfer_study.video_predictions(oof, CLASSES, "mean"), CLASSES, "r")
    assert list(figures) == ["confusion_videos", "confusion_frames", "roc_videos"]
    assert "12 out-of-fold predictions" in figures["confusion_frames"]._suptitle.get_text()


# ------------------------------------------------------------------ 03


def test_fewshot_tables_and_metrics_blocks():
    parameters = {"n_episodes": 100, "seed": 0, "output_dir": "/x", "cross_domain_path": None, "shots": [1, 2],
                  "cluster": "local:2"}
    assert fewshot_study.recorded_parameters(parameters) == {"parameters": {"n_episodes": 100, "seed": 0,
                                                                            "shots": [1, 2]}, "n_episodes": 100}
    assert fewshot_study.episode_ways(3, ["a", "b", "c"], "t") == (3, [])
    assert fewshot_study.episode_ways(5, ["a", "b"], "t") == (2, [
        "note: n_way=5 but task 't' has 2 classes: using 2-way episodes"])
    table = pd.DataFrame({"label": ["a", "a", "b", "b"], "group": ["p1", "p2", "p3", "p3"],
                          "sample_id": ["s1", "s2", "s3", "s4"], "n_frames": [3, 2, 1, 1]})
    counts = fewshot_study.embedding_counts(table)
    assert counts.loc["a"].tolist() == [2, 2, 5] and counts.loc["b"].tolist() == [2, 1, 2]
    split = fewshot_study.split_counts(table, np.array([True, False, False, False]))
    assert split.loc["a"].tolist() == [1, 1] and split.loc["b"].tolist() == [0, 1]
    assert fewshot_study.data_metrics(counts, synthetic=True, task="t", classes=["a", "b"], n_way=2, max_k=3) == {
        "synthetic": True, "task": "t", "classes": ["a", "b"], "n_way_used": 2,
        "patients_per_class": {"a": 2, "b": 1}, "samples_per_class": {"a": 2, "b": 2}, "max_k_all_patients": 3}
    leak = pd.DataFrame({"mean": [0.9, 0.6], "ci95": [0.05, 0.05]}, index=["leaky", "honest"])
    assert fewshot_study.leak_metrics(5, None) == {"k_shot": 5}
    assert fewshot_study.leak_metrics(5, leak)["honest"] == {"mean": 0.6, "ci95": 0.05}
    assert len(fewshot_study.plot_leak_vs_honest(leak, 3, 5).axes[0].patches) == 2
    rows = pd.DataFrame({"n_patients": [1, 1, 3], "balanced_accuracy": [0.5, 0.7, 0.9]})
    summary = fewshot_study.learning_summary(rows)
    assert summary.loc[1, "mean"] == pytest.approx(0.6) and summary.loc[3, "count"] == 1
    assert fewshot_study.learning_metrics(summary, recipe="r", positive="covid", notes=("n",))["by_n"][1]["count"] == 2.0


def test_fewshot_summary_reads_both_curves_and_the_learning_curve():
    curve = pd.DataFrame({"method": ["simpleshot", "knn", "simpleshot"], "k_shot": [5, 5, 1],
                          "mean": [0.7, 0.6, 0.5], "ci95": [0.05, 0.05, 0.05]})
    empty = curve.iloc[:0]
    assert list(fewshot_study.curve_table(curve, empty)["pool"]) == ["held-out"] * 3
    learning = pd.DataFrame({"mean": [0.55, 0.8]}, index=pd.Index([1, 4], name="n_patients"))
    summary = fewshot_text.run_summary(empty, curve, learning, recipe="r")
    assert summary["five_shot_held_out"] == {} and summary["five_shot_all_patients"]["knn"] == {"mean": 0.6, "ci95": 0.05}
    assert summary["best_few_shot_at_largest_k"]["method"] == "simpleshot"
    assert summary["trained_recipe_at_largest_n"] == {"n_patients": 4, "recipe": "r", "balanced_accuracy": 0.8}
    assert "trained_recipe_at_largest_n" not in fewshot_text.run_summary(empty, curve, learning.iloc[:0], recipe="r")
    # NumPy values that JSON cannot write are rounded to 3 digits
    text = fewshot_text.summary_markdown({"k": np.float32(0.12345)}, ["It works."], synthetic=True)
    assert text.startswith("* **k**: `0.123`\n\n### What this run shows\n\n* It works.")
    assert text.endswith("detects COVID-19.*")


# ------------------------------------------------------------------ 04


def test_cam_tables_and_texts():
    table = pd.DataFrame({"label": ["a", "a", "b", "c"], "predicted": ["a", "b", "b", "a"]})
    known = np.array([True, True, True, False])  # "c" unknown to the model
    assert cam_figures.frame_accuracy(table, known) == pytest.approx(2 / 3)
    assert np.isnan(cam_figures.frame_accuracy(table, np.zeros(4, bool)))
    assert cam_figures.confusion_counts(table).loc["a", "b"] == 1
    assert [cam_figures.peak_box(size) for size in (224, 64, 448, 8)] == [19, 5, 39, 1]
    peaks = pd.DataFrame({"class": ["a", "a", "b"], "method": ["gradcam"] * 3, "inside": [0.2, 0.4, 1.0]})
    assert cam_figures.inside_summary(peaks).loc["a", "gradcam"] == pytest.approx(0.3)
    assert cam_figures.agreement_tables({"gradcam": None}, (8, 8), box=3)[0].empty
    assert cam_figures.accuracy_line(0.5, quick_demo=True).endswith("(the demo model was trained on them: an "
                                                                     "optimistic number)")
    timings = {"heatmaps_cam_ms_per_frame": 2.4, "heatmaps_gradcam_ms_per_frame": 10.6}
    assert cam_figures.timing_line(timings, ["gradcam", "cam"], 7, 5) == (
        "7 frames explained (gradcam 11 ms, cam 2 ms per frame); box filter 5 px")


def test_same_map_note_only_for_gradcam_and_cam_on_one_layer():
    same = {"gradcam": SimpleNamespace(layer="x", heatmaps=np.zeros((1, 2, 2))),
            "cam": SimpleNamespace(layer="x", heatmaps=np.full((1, 2, 2), 1e-3))}
    assert cam_figures.same_map_note(same) == ["Grad-CAM vs CAM on 'x': largest difference 1.00e-03 (the same map, "
                                               "as expected)"]
    assert cam_figures.same_map_note({**same, "cam": SimpleNamespace(layer="y", heatmaps=None)}) == []
    assert cam_figures.same_map_note({"gradcam": same["gradcam"]}) == []


def test_cam_model_choices_without_a_saved_model():
    pytest.importorskip("keras")
    from covnb import cam_model

    model, metadata, class_names, settings, note = cam_model.model_or_settings(None, rate_hz=2.0, max_frames=4,
                                                                               image_size=64)
    assert (model, metadata, class_names, note) == (None, {}, None, "")
    assert (settings.rate_hz, settings.max_frames, settings.image_size) == (2.0, 4, 64)
    assert cam_model.model_summary(None, {}, backbone="b", weights=None, image_size=64, class_names=("x",)) == {
        "source": "quick demo (trained in this notebook)", "quick_demo": True, "backbone": "b", "weights": None,
        "image_size": 64, "classes": ["x"]}
    saved = cam_model.model_summary("m.keras", {"backbone": "r", "weights": "imagenet"}, backbone="b", weights=None,
                                    image_size=32, class_names=["x"])
    assert saved["source"] == "m.keras" and saved["backbone"] == "r" and saved["quick_demo"] is False
    assert "`b` (random weights)" in cam_model.quick_demo_text("b", None)


def test_cam_metrics_gather_the_blocks_notebook_04_writes():
    peaks = pd.DataFrame({"class": ["a", "b"], "method": ["gradcam"] * 2, "inside": [0.2, 0.6],
                          "peak_x": [0.5, 0.5], "peak_y": [0.5, 0.25]})
    metrics = cam_figures.cam_metrics(
        dataset=None, synthetic=True, task_name="t", model_info={"quick_demo": True}, settings={"method": "gradcam"},
        table=pd.DataFrame({"sample_id": ["s1", "s1", "s2"]}), n_frames=3, accuracy=float("nan"), gallery={},
        peaks=peaks, method="gradcam", methods=["gradcam"], n_outside=1, sector_share=0.51234,
        agreement_summary=pd.DataFrame(), explorer_samples={"a: f": None}, explorer_ms={"plot_ms": 1.0},
        timings={}, figures=["gallery.png"], runtime_s=1.26)
    assert metrics["data_path"] is None and metrics["samples"] == 2 and metrics["frame_accuracy"] is None
    assert metrics["heat_inside_overall_median"] == {"gradcam": 0.4}
    assert metrics["explorer"] == {"samples": ["a: f"], "plot_ms": 1.0}
    assert metrics["sector_share_of_frame_median"] == 0.5123 and metrics["runtime_s"] == 1.3


# ------------------------------------------------------------------ 05


def test_trust_texts_tables_and_the_recorded_shift(tmp_path):
    stored = {"method": "temperature", "frame": {"method": "temperature"}, "video": {"method": "none"},
              "video_selection_ece": {"none": 0.12345, "temperature": 0.1}}
    assert trust_demo.stored_map_text(stored) == (
        "stored with the model (temperature): frames temperature, videos none; cross-fitted ECE of each candidate, "
        "videos: {'none': 0.123, 'temperature': 0.1}")
    risk = trust_demo.risk_table({"confidence": [{"abstain_fraction": 0.0, "risk": 0.3},
                                                 {"abstain_fraction": 0.5, "risk": 0.1}]})
    assert risk.loc[("confidence", 0.5), "risk"] == 0.1
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"calibration": {}}))
    rows = pd.DataFrame({"uncertain": [True, False, True]})
    trust_demo.record_shift(path, 0.9, rows)
    assert json.loads(path.read_text()) == {"calibration": {}, "notebook_05": {
        "unfamiliar_vs_heldout_ood_auroc": 0.9, "unfamiliar_flagged": 2, "unfamiliar_files": 3}}


# ------------------------------------------------------------------ the split modules


def test_canonical_method_and_explorer_samples():
    assert canonical_method("Grad-CAM++") == "gradcam++" and canonical_method("cam") == "cam"
    with pytest.raises(ValueError, match="Unknown CAM method 'saliency'; choose one of gradcam, gradcam\\+\\+, cam"):
        canonical_method("saliency")
    checked = check_samples({"image": np.full((4, 5, 3), 7.6)})
    assert checked["image"].shape == (1, 4, 5, 3) and checked["image"].dtype == np.uint8
    assert int(checked["image"][0, 0, 0, 0]) == 8
    with pytest.raises(ValueError, match="Sample 'bad': pixel values must be 0..255"):
        check_samples({"bad": np.full((1, 2, 2, 3), 300.0)})
    with pytest.raises(ValueError, match="non-empty dict"):
        check_samples({})
    assert png_bytes(np.zeros((3, 4, 3), np.uint8))[:4] == b"\x89PNG"


def test_methods_for_and_layer_notes_on_a_tiny_model():
    pytest.importorskip("keras")
    from covnb import cam_model
    from test_cam import SIZE, small_flat_model

    gap, dense_head = small_flat_model(head="gap"), small_flat_model(head="pocovid")
    assert cam_model.methods_for(gap, "cam") == ["gradcam", "gradcam++", "cam"]
    with pytest.raises(ValueError, match=r"method 'cam' needs a global-average-pooling head; this model allows "
                                         r"\['gradcam', 'gradcam\+\+'\]"):
        cam_model.methods_for(dense_head, "cam")
    labels = pd.Series(["a", "b", "c", "c"])
    notes = cam_model.layer_notes(gap, "conv3", labels, ["a", "b"], image_size=SIZE, available=["gradcam"])
    grid = SIZE // 4
    assert notes == ["2 frames have labels the model does not know (['c']).",
                     f"Explaining layer 'conv3' ({grid}x{grid} cells over a {SIZE} px frame); methods available: "
                     "gradcam"]
    assert len(cam_model.layer_notes(gap, "conv3", labels[:2], ["a", "b"], image_size=SIZE, available=[])) == 1
