"""Few-shot: sampler invariants, known-answer synthetic cases, CI behaviour, embeddings cache, notebook."""

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from covnb import fewshot
from covnb.fewshot import (EpisodeSampler, KNearestNeighbours, LinearProbe, PrototypicalNetwork, SimpleShot,
                           accuracy_summary, evaluate_episodes, max_k, sample_embeddings, shot_curve,
                           summarize_episodes)

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "03_few_shot.ipynb"


def clusters(n_classes=3, patients_per_class=12, items_per_patient=3, dim=16, separation=10.0, noise=1.0,
             seed=0):
    """Gaussian clusters, one per class; items of a patient scatter around that patient's point."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * separation
    x, labels, groups = [], [], []
    for c in range(n_classes):
        for p in range(patients_per_class):
            patient_point = centres[c] + rng.normal(size=dim) * noise
            for _ in range(items_per_patient):
                x.append(patient_point + rng.normal(size=dim) * 0.3 * noise)
                labels.append(f"class{c}")
                groups.append(f"c{c}p{p}")
    return np.array(x), np.array(labels), np.array(groups)


# ----------------------------------------------------------------------------- sampler


def test_sampler_invariants():
    x, labels, groups = clusters(n_classes=5, patients_per_class=8)
    sampler = EpisodeSampler(labels, groups, n_way=3, k_shot=3, q_query=2, seed=1)
    for episode in sampler.episodes(200):
        assert len(set(episode.classes)) == 3  # no class twice
        assert sorted(np.unique(episode.support_labels)) == [0, 1, 2]
        assert np.bincount(episode.support_labels).tolist() == [3, 3, 3]
        assert np.bincount(episode.query_labels).tolist() == [2, 2, 2]
        # support and query disjoint by patient, one item per patient
        assert not set(episode.support_groups) & set(episode.query_groups)
        all_groups = np.concatenate([episode.support_groups, episode.query_groups])
        assert len(set(all_groups)) == len(all_groups)
        # rows carry the labels the episode says
        for rows, local in ((episode.support_rows, episode.support_labels),
                            (episode.query_rows, episode.query_labels)):
            assert (labels[rows] == np.array(episode.classes)[local]).all()
        assert (groups[episode.support_rows] == episode.support_groups).all()
        assert (groups[episode.query_rows] == episode.query_groups).all()


def test_sampler_is_seeded():
    _, labels, groups = clusters(n_classes=4, patients_per_class=6)

    def draw(seed):
        return [(tuple(e.classes), tuple(e.support_rows), tuple(e.query_rows))
                for e in EpisodeSampler(labels, groups, 3, 2, 2, seed=seed).episodes(20)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_k_limit_error_and_max_k():
    _, labels, groups = clusters(n_classes=3, patients_per_class=12)
    patient_number = np.array([int(g.split("p")[1]) for g in groups])
    keep = ~((labels == "class1") & (patient_number >= 5))  # class1 keeps 5 patients
    labels, groups = labels[keep], groups[keep]
    assert max_k(labels, groups, q_query=2) == 3
    EpisodeSampler(labels, groups, 3, 3, 2)  # the limit itself works
    with pytest.raises(ValueError, match=r"'class1' has 5.*max_k"):
        EpisodeSampler(labels, groups, 3, 4, 2)
    with pytest.raises(ValueError, match="4-way"):
        EpisodeSampler(labels, groups, 4, 1, 1)


def test_item_mode_lets_a_patient_be_in_support_and_query():
    _, labels, groups = clusters(n_classes=2, patients_per_class=2, items_per_patient=10)
    sampler = EpisodeSampler(labels, groups, 2, 3, 3, seed=0, disjoint="item")
    shared = [bool(set(e.support_groups) & set(e.query_groups)) for e in sampler.episodes(20)]
    assert all(shared)  # 2 patients, 6 items per class: sharing is unavoidable
    with pytest.raises(ValueError, match="patients per class"):
        EpisodeSampler(labels, groups, 2, 3, 3, seed=0, disjoint="patient")


# ----------------------------------------------------------------------------- known answers


@pytest.fixture(scope="module")
def protonet_factory():
    def make(x, labels, groups):
        return PrototypicalNetwork(units=16, steps=60, k_shot=2, q_query=2, seed=0).fit(x, labels, groups)
    return make


def _split_base(labels, groups, base_patients=4):
    patient_number = np.array([int(g.split("p")[1]) for g in groups])
    return patient_number < base_patients


def test_separated_clusters_give_full_accuracy(protonet_factory):
    x, labels, groups = clusters(separation=10.0, noise=1.0)
    base = _split_base(labels, groups)
    methods = {**fewshot.default_methods(), "protonet": protonet_factory(x[base], labels[base], groups[base])}
    table = evaluate_episodes(x[~base], labels[~base], groups[~base], methods, n_way=3, k_shot=1, q_query=2,
                              n_episodes=100, seed=0, base_mean=x[base].mean(0))
    summary = summarize_episodes(table).set_index("method")
    assert (summary["mean"] > 0.97).all(), summary


def test_overlapping_clusters_give_chance(protonet_factory):
    x, labels, groups = clusters(separation=0.0, noise=1.0, seed=3)
    base = _split_base(labels, groups)
    methods = {**fewshot.default_methods(), "protonet": protonet_factory(x[base], labels[base], groups[base])}
    table = evaluate_episodes(x[~base], labels[~base], groups[~base], methods, n_way=3, k_shot=3, q_query=2,
                              n_episodes=300, seed=0)
    summary = summarize_episodes(table).set_index("method")
    assert ((summary["mean"] - 1 / 3).abs() < 0.08).all(), summary


def test_patient_leak_inflates_item_level_accuracy():
    """Items of one patient are near-duplicates: sharing patients makes an easy task look easier."""
    x, labels, groups = clusters(separation=0.6, noise=1.0, patients_per_class=5, items_per_patient=8, seed=5)
    honest = evaluate_episodes(x, labels, groups, {"s": SimpleShot()}, n_way=3, k_shot=3, q_query=2, n_episodes=300,
                               seed=0)
    leaky = evaluate_episodes(x, labels, groups, {"s": SimpleShot()}, n_way=3, k_shot=3, q_query=2, n_episodes=300,
                              seed=0, disjoint="item")
    assert leaky["accuracy"].mean() > honest["accuracy"].mean() + 0.1


def test_protonet_refused_on_its_training_patients(protonet_factory):
    x, labels, groups = clusters()
    protonet = protonet_factory(x, labels, groups)
    with pytest.raises(ValueError, match="trained on"):
        evaluate_episodes(x, labels, groups, {"protonet": protonet}, n_way=3, k_shot=1, q_query=1, n_episodes=5)


def test_leave_episode_out_mean_excludes_the_episode():
    x, _, groups = clusters(n_classes=2, patients_per_class=3)
    centre = fewshot._LeaveEpisodeOutMean(x, groups)
    episode = ["c0p0", "c1p2"]
    expected = x[~np.isin(groups, episode)].mean(0)
    np.testing.assert_allclose(centre(episode), expected)


# ----------------------------------------------------------------------------- statistics


def test_ci_shrinks_with_more_episodes():
    x, labels, groups = clusters(separation=0.8, seed=2)
    methods = {"simpleshot": SimpleShot()}
    few = summarize_episodes(evaluate_episodes(x, labels, groups, methods, n_way=3, k_shot=2, q_query=2,
                                                   n_episodes=60, seed=1)).iloc[0]
    many = summarize_episodes(evaluate_episodes(x, labels, groups, methods, n_way=3, k_shot=2, q_query=2,
                                                    n_episodes=960, seed=1)).iloc[0]
    assert 0 < many["ci95"] < few["ci95"]
    assert many["ci95"] == pytest.approx(1.96 * many["std"] / np.sqrt(960))


def test_accuracy_summary_known_values():
    summary = accuracy_summary([0.0, 1.0, 0.0, 1.0])
    assert summary["mean"] == 0.5
    assert summary["ci95"] == pytest.approx(1.96 * np.std([0, 1, 0, 1], ddof=1) / 2)
    with pytest.raises(ValueError):
        accuracy_summary([])


def test_shot_curve_stops_at_max_k_and_says_why():
    x, labels, groups = clusters(patients_per_class=6)
    curve, notes = shot_curve(x, labels, groups, {"knn": KNearestNeighbours(), "probe": LinearProbe()},
                              shots=[1, 2, 3, 5, 10], q_query=2, n_episodes=20)
    assert sorted(curve["k_shot"].unique()) == [1, 2, 3]
    assert len(notes) == 1 and "5, 10" in notes[0] and "K <= 4" in notes[0]


def test_sample_embeddings_means_frames():
    index = pd.DataFrame({"sample_id": ["b", "b", "a", "b"], "label": ["x", "x", "y", "x"],
                          "group": ["p1", "p1", "p2", "p1"]})
    emb = np.array([[1.0, 0], [3.0, 0], [5.0, 5], [5.0, 0]])
    x, table = sample_embeddings(emb, index)
    assert table["sample_id"].tolist() == ["b", "a"] and table["n_frames"].tolist() == [3, 1]
    np.testing.assert_allclose(x, [[3.0, 0], [5.0, 5]])


def test_learning_curve_embedding_recipe_learns_separated_clusters():
    x, labels, groups = clusters(n_classes=3, patients_per_class=9, items_per_patient=2, separation=6.0)
    index = pd.DataFrame({"sample_id": [f"{g}_{i % 2}" for i, g in enumerate(groups)], "label": labels,
                          "group": groups, "frame_index": 0})
    rows, notes = fewshot.patient_learning_curve(index, [1, 3, 20], embeddings=x, positive_label="class0",
                                                 n_splits=3, repeats=2)
    assert set(rows["n_patients"]) == {1, 3} and notes  # 20 exceeds the 6 training patients
    assert rows["balanced_accuracy"].mean() > 0.9


# ----------------------------------------------------------------------------- embeddings (TensorFlow)


def test_compute_embeddings_caches_and_matches_model(tmp_path, monkeypatch):
    monkeypatch.setenv("COVNB_CACHE_DIR", str(tmp_path / "cache"))
    frames = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    first = fewshot.compute_embeddings(frames, backbone="mobilenet_v2", image_size=32, weights=None, batch_size=2)
    files = list((tmp_path / "cache" / "embeddings").glob("*.npy"))
    assert first.shape == (5, 1280) and len(files) == 1
    np.save(files[0], first + 1)  # a cache hit returns the stored array, not a recomputation
    np.testing.assert_allclose(fewshot.compute_embeddings(frames, backbone="mobilenet_v2", image_size=32, weights=None),
                               first + 1)
    # other frames, other key
    other = fewshot.compute_embeddings(frames[:4], backbone="mobilenet_v2", image_size=32, weights=None)
    np.testing.assert_allclose(other, first[:4], rtol=1e-4, atol=1e-5)
    assert len(list((tmp_path / "cache" / "embeddings").glob("*.npy"))) == 2
    assert not list((tmp_path / "cache" / "embeddings").glob("*.tmp*"))
    with pytest.raises(ValueError, match="image_size"):
        fewshot.compute_embeddings(frames, backbone="mobilenet_v2", image_size=64, weights=None)


# ----------------------------------------------------------------------------- notebook


def test_notebook_has_one_literal_parameters_cell():
    nbformat = pytest.importorskip("nbformat")
    notebook = nbformat.read(str(NOTEBOOK), as_version=4)
    tagged = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    import ast

    for node in ast.parse(tagged[0].source).body:
        assert isinstance(node, ast.Assign)
        ast.literal_eval(node.value)  # literals only
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    assert all(not c.get("outputs") for c in notebook.cells if c.cell_type == "code")


@pytest.mark.slow
def test_notebook_runs_on_phantom(tmp_path):
    papermill = pytest.importorskip("papermill")
    out_dir = tmp_path / "out"
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    papermill.execute_notebook(str(NOTEBOOK), str(tmp_path / "out.ipynb"), kernel_name="python3",
                               parameters=dict(image_size=64, max_frames=4, n_episodes=60, shots=[1, 2, 5, 20],
                                               protonet_steps=40, learning_curve_repeats=1,
                                               output_dir=str(out_dir)),
                               progress_bar=False, execution_timeout=600)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert metrics["synthetic"] is True
    assert metrics["n_episodes"] == 60
    assert metrics["shot_curve_notes"]  # the phantom's 12 patients per class stop the K curve before 20
    assert {5} <= {row["k_shot"] for row in metrics["shot_curve_held_out"]}  # the 5-shot point exists
    assert metrics["summary"]["five_shot_held_out"] and metrics["summary"]["five_shot_all_patients"]
    # the prose states this run's numbers: every finding quotes at least one of them
    assert len(metrics["findings"]) == 3
    leak = metrics["leak_demo"]
    leaky, honest = (leak[k]["mean"] for k in leak if k != "k_shot")
    assert f"{leaky:.2f}" in metrics["findings"][0] and f"{honest:.2f}" in metrics["findings"][0]
    assert list(out_dir.glob("*.png"))
    with pytest.raises(Exception):
        papermill.execute_notebook(str(NOTEBOOK), str(tmp_path / "bad.ipynb"), kernel_name="python3",
                                   parameters=dict(n_episodes=-5, output_dir=str(out_dir)), progress_bar=False)


@pytest.mark.slow
def test_learning_curve_trained_recipe_trains_per_video_and_holds_out_the_positive_label(monkeypatch):
    """Regression: the covnb.train branch of the learning curve used to build its fold data without the
    video ids (the default recipe silently trained on frames) and took the rarest label as the positive
    class. Here the positive class is the most common one and another class is rarer."""
    import covnb.experiments.crossval
    import covnb.splits
    from covnb.train import recipe_config

    rng = np.random.default_rng(0)
    rows, frames = [], []
    for label, n_patients in (("covid", 6), ("pneumonia", 3), ("regular", 4)):
        for p in range(n_patients):
            for video in range(2):
                for f in range(2):
                    rows.append({"sample_id": f"{label}{p}_v{video}", "label": label, "group": f"{label}{p}",
                                 "frame_index": f})
                    frames.append(np.full((32, 32, 3), {"covid": 40, "pneumonia": 128, "regular": 220}[label],
                                          np.uint8) + rng.integers(0, 20, (32, 32, 3), dtype=np.uint8))
    index = pd.DataFrame(rows)
    seen_units, candidate_labels = [], []
    real_fit, real_inner = covnb.experiments.crossval.fit_fold, covnb.splits.inner_validation

    def recording_fit(model, data, config, *args, **kwargs):
        seen_units.append((config.train_unit, data.unit, data.videos is not None))
        return real_fit(model, data, config, *args, **kwargs)

    def recording_inner(candidates, *args, **kwargs):
        candidate_labels.append(set(candidates["label"]))
        return real_inner(candidates, *args, **kwargs)

    monkeypatch.setattr(covnb.experiments.crossval, "fit_fold", recording_fit)  # the one fitting path
    monkeypatch.setattr(covnb.splits, "inner_validation", recording_inner)
    config = recipe_config("default", backbone="mobilenet_v2", weights=None, image_size=32, head="gap",
                           mirror_view=False)
    assert config.train_unit == "video"
    result, _ = fewshot.patient_learning_curve(index, [1], frames=np.stack(frames), recipe="default",
                                               train_config=config, positive_label="covid", n_splits=2, repeats=1)
    assert len(result) == 2 and result["balanced_accuracy"].between(0, 1).all()
    assert seen_units and all(unit == data_unit == "video" and has_videos
                              for unit, data_unit, has_videos in seen_units)
    # one covid patient kept: too few for the inner validation split, so it never offers covid patients
    assert candidate_labels and all("covid" not in labels for labels in candidate_labels)


def test_cross_domain_evaluation_known_answer_and_misuse():
    """Source classes at x = +-3; the target is the same picture shifted by (5, 5). Source-centred
    prototypes call every shifted target sample COVID-19 (balanced accuracy 0.5); centring the
    target on its own mean undoes the shift (1.0). Pneumonia and regular both become "other"."""
    rng = np.random.default_rng(0)
    labels = np.array(["covid"] * 6 + ["pneumonia"] * 3 + ["regular"] * 3)
    source = np.where((labels == "covid")[:, None], [3.0, 0.0], [-3.0, 0.0]) + rng.normal(0, 0.1, (12, 2))
    target = source + 5.0
    groups = [f"p{i}" for i in range(12)]
    table = fewshot.cross_domain_evaluation(source, labels, target, labels, target_groups=groups, source_name="cxr",
                                            target_name="pocus", k_shot=2, q_query=2, n_episodes=20, seed=0)
    rows = table.set_index("protocol")["balanced_accuracy"]
    assert rows["transfer, source-centred"] == 0.5
    assert rows["transfer, target-centred"] == 1.0
    assert rows["in-domain 2-shot SimpleShot"] == 1.0
    assert set(table["direction"]) == {"cxr -> pocus", "pocus -> pocus"}
    with pytest.raises(ValueError, match="both 'covid' and other"):
        fewshot.cross_domain_evaluation(source, labels, target, np.array(["regular"] * 12), target_groups=groups)
    with pytest.raises(ValueError, match="embedding sizes differ"):
        fewshot.cross_domain_evaluation(source, labels, target[:, :1], labels, target_groups=groups)
