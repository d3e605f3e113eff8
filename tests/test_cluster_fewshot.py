"""The few-shot study and the final model on a Dask LocalCluster: the same numbers as in this
process; notebooks 03 and 05 take a validated ``cluster`` parameter."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from covnb.cluster import SCHEDULER_ENV, keep_cluster
from covnb.parameters import ParameterError, validate_parameters
from test_parameters import parameters_cell

SIZE = 32
EMBEDDING = dict(backbone="mobilenet_v2", image_size=SIZE, weights=None)


# ----------------------------------------------------------------------------- notebook parameters


@pytest.mark.parametrize("notebook", ["03_few_shot", "05_trust"])
def test_notebooks_03_and_05_take_a_validated_cluster(notebook, monkeypatch):
    monkeypatch.delenv(SCHEDULER_ENV, raising=False)
    defaults = parameters_cell(notebook)
    assert defaults["cluster"] is None and list(defaults)[-2:] == ["cluster", "output_dir"]
    for spec in ("local", "local:2", "tcp://10.0.0.5:8786"):
        assert validate_parameters(notebook, {**defaults, "cluster": spec}, running=False)["cluster"] == spec
    with pytest.raises(ParameterError, match=f"{notebook}: .*'local:0': the number of workers must be a whole"):
        validate_parameters(notebook, {**defaults, "cluster": "local:0"}, running=False)
    with pytest.raises(ParameterError, match="'kubernetes' is not a cluster; accepted: 'local', 'local:N'"):
        validate_parameters(notebook, {**defaults, "cluster": "kubernetes"}, running=False)
    with pytest.raises(ParameterError, match="cluster must be None or text"):
        validate_parameters(notebook, {**defaults, "cluster": 2}, running=False)


def test_keep_cluster_without_a_cluster_runs_here(monkeypatch):
    monkeypatch.delenv(SCHEDULER_ENV, raising=False)
    assert keep_cluster(None, log=None) is None
    assert keep_cluster("", log=None) is None


@pytest.mark.slow
def test_keep_cluster_gives_a_notebook_one_client_per_specification():
    from covnb import cluster

    first = keep_cluster("local:1", log=None)
    try:
        assert keep_cluster("local:1", log=None) is first  # a re-run cell starts no second cluster
        assert keep_cluster(first) is first
        assert len(first.scheduler_info()["workers"]) == 1
    finally:
        cluster._KEPT.pop("local:1")[1].close()  # what happens when the kernel exits
    assert first.status == "closed"


# ----------------------------------------------------------------------------- same numbers on a cluster


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """A tiny phantom (6 patients per class, one 4-frame video and the stills each) at 32 px."""
    from covnb.datasets import load_dataset, select_task
    from covnb.frames import FrameSettings
    from covnb.phantom import write_phantom_dataset

    root = write_phantom_dataset(tmp_path_factory.mktemp("phantom") / "data", n_patients_per_class=6,
                                 videos_per_patient=1, images_per_class=2, n_frames=4, size=64)
    samples = select_task(load_dataset(root).samples, "pocovid3")
    return samples, FrameSettings(image_size=SIZE, max_frames=2)


@pytest.fixture(scope="module")
def client():
    from covnb.cluster import open_cluster

    with open_cluster("local:2", log=None) as opened:
        yield opened


def _tasks(client, run):
    """What ``run()`` returns, and the keys of the tasks it ran on the cluster."""
    from distributed import get_task_stream

    with get_task_stream(client) as stream:
        result = run()
    return result, {str(task["key"]) for task in stream.data}


def _embeddings(frameset, client=None):
    import keras

    from covnb import fewshot

    keras.utils.set_random_seed(0)  # random weights: the same backbone both times
    return fewshot.compute_embeddings(frameset, **EMBEDDING, batch_size=8, cache=False, client=client,
                                      rows_per_task=16)


def _study(frameset, embeddings, client=None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Notebook 03's shot curves (held-out patients with the prototypical network, all patients)
    and its learning curve (embedding logistic regression and the linear-probe recipe)."""
    from covnb import fewshot, fewshot_study

    x, table = fewshot.sample_embeddings(embeddings, frameset.index)
    labels, groups = table["label"].to_numpy(str), table["group"].to_numpy(str)
    base = fewshot.base_novel_split(table, 1 / 3, seed=0)
    held = ~base
    protonet, _ = fewshot_study.fit_protonet(x[base], labels[base], groups[base], steps=5, n_way=3, q_query=1,
                                             seed=0, log=None)
    methods = {**fewshot.default_methods(), "protonet": protonet}
    curve_held, curve_all, notes = fewshot_study.shot_curves(
        x, labels, groups, held, methods_held=methods, shots=[1, 2, 3, 9], n_way=3, q_query=1, n_episodes=12, seed=0,
        base_mean=x[base].mean(axis=0), limit_held=fewshot.max_k(labels[held], groups[held], 1), client=client)
    learning = [fewshot_study.learning_curve(frameset, embeddings, recipe=recipe, n_patients=[1, 2], repeats=2,
                                             positive="covid", backbone="mobilenet", image_size=SIZE, weights=None,
                                             seed=0, client=client)
                for recipe in ("embedding_logreg", "linear_probe")]
    rows = pd.concat([rows for rows, _ in learning], ignore_index=True)
    return fewshot_study.curve_table(curve_held, curve_all), rows, notes + [n for _, part in learning for n in part]


@pytest.mark.slow
def test_the_few_shot_study_on_a_local_cluster_gives_the_same_tables(phantom, client):
    from covnb.frames import extract_frames

    samples, settings = phantom
    serial_frames = extract_frames(samples, settings, progress=False)
    frameset = extract_frames(samples, settings, progress=False, client=client, files_per_task=5)
    assert np.array_equal(frameset.frames, serial_frames.frames) and frameset.index.equals(serial_frames.index)
    serial_embeddings = _embeddings(serial_frames)
    embeddings, keys = _tasks(client, lambda: _embeddings(frameset, client))
    assert len([k for k in keys if "covnb-embeddings-" in k]) == -(-len(frameset) // 16)  # parts of 16 frames
    assert embeddings.tobytes() == serial_embeddings.tobytes()

    serial = _study(serial_frames, serial_embeddings)
    distributed, keys = _tasks(client, lambda: _study(frameset, embeddings, client))
    assert any("covnb-episodes-" in k for k in keys) and any("covnb-learning-" in k for k in keys)
    curves, rows = serial[0], serial[1]
    assert set(curves["method"]) == {"simpleshot", "linear_probe", "knn", "protonet"}
    assert set(curves["k_shot"]) == {1, 2, 3} and any("K = 9 skipped" in note for note in serial[2])
    assert set(rows["recipe"]) == {"embedding_logreg", "linear_probe"} and set(rows["n_patients"]) == {1, 2}
    assert curves.to_csv().encode() == distributed[0].to_csv().encode()  # every mean, ci95, std, count
    pd.testing.assert_frame_equal(distributed[0], curves, check_exact=True)
    assert rows.to_csv().encode() == distributed[1].to_csv().encode()
    assert distributed[2] == serial[2]


@pytest.mark.slow
def test_the_final_model_is_the_same_with_its_features_computed_by_the_workers(phantom, client, tmp_path,
                                                                                monkeypatch):
    from covnb.experiments.crossval import fit_final_model
    from covnb.frames import extract_frames
    from covnb.train import recipe_config

    samples, settings = phantom
    frameset = extract_frames(samples, settings, progress=False)
    config = recipe_config("default", backbone="mobilenet", alpha=0.25, weights=None, image_size=SIZE)
    models = {}
    for name, used in (("serial", None), ("cluster", client)):
        monkeypatch.setenv("COVNB_CACHE_DIR", str(tmp_path / name))  # an empty feature store each time
        lines = []
        models[name], _ = fit_final_model(frameset, config, log=lines.append, client=used)
        assert any("computed on the cluster" in line for line in lines) == (used is not None)
    ours, theirs = models["cluster"].get_weights(), models["serial"].get_weights()
    assert len(ours) == len(theirs) and all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    assert models["cluster"].predict(frameset.frames[:8], verbose=0).tobytes() == \
        models["serial"].predict(frameset.frames[:8], verbose=0).tobytes()
