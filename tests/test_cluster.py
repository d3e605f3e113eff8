"""covnb.cluster: the --cluster specification, and the same numbers on a Dask LocalCluster as in
this process, also when a worker dies in the middle of a fold."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from covnb import cli
from covnb.cluster import ClusterSpec, ClusterSpecError, SCHEDULER_ENV, open_cluster, parse_cluster_spec

sys.path.insert(0, str(Path(__file__).resolve().parent))

SIZE = 32
TINY = dict(backbone="mobilenet", alpha=0.25, weights=None, image_size=SIZE)


# ----------------------------------------------------------------------------- the specification


@pytest.mark.parametrize("text, expected", [
    ("local", ClusterSpec("local")),
    ("LOCAL", ClusterSpec("local")),
    ("local:3", ClusterSpec("local", workers=3)),
    (" local:1 ", ClusterSpec("local", workers=1)),
    ("tcp://10.0.0.5:8786", ClusterSpec("address", address="tcp://10.0.0.5:8786")),
    ("tls://scheduler.example.org:8786", ClusterSpec("address", address="tls://scheduler.example.org:8786")),
])
def test_specifications_are_parsed(text, expected):
    assert parse_cluster_spec(text, environ={}) == expected


def test_no_specification_means_the_environment_then_this_process():
    assert parse_cluster_spec(None, environ={}) is None
    assert parse_cluster_spec("", environ={SCHEDULER_ENV: " "}) is None
    assert parse_cluster_spec(None, environ={SCHEDULER_ENV: "local:2"}) == ClusterSpec("local", workers=2)
    assert parse_cluster_spec("local:4", environ={SCHEDULER_ENV: "local:2"}).workers == 4  # the flag wins
    with open_cluster(None, environ={}, log=None) as client:
        assert client is None


@pytest.mark.parametrize("text, message", [
    ("local:0", r"--cluster 'local:0': the number of workers must be a whole number >= 1"),
    ("local:two", "the number of workers must be a whole number"),
    ("scheduler:8786", r"give the scheduler's protocol too, e.g. 'tcp://scheduler:8786'"),
    ("kubernetes", "'kubernetes' is not a cluster; accepted: 'local', 'local:N'"),
    ("http://host:8787", "is not a cluster"),
])
def test_bad_specifications_are_named(text, message):
    with pytest.raises(ClusterSpecError, match=message):
        parse_cluster_spec(text, environ={})


def test_a_bad_environment_variable_is_named():
    with pytest.raises(ClusterSpecError, match=r"\$COVNB_SCHEDULER 'local:-1'"):
        parse_cluster_spec(None, environ={SCHEDULER_ENV: "local:-1"})


def test_covnb_train_refuses_a_bad_cluster_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(SCHEDULER_ENV, raising=False)
    assert cli.main(["train", "--out", str(tmp_path / "m"), "--cluster", "local:0"]) == 2
    assert "local:0" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
    monkeypatch.setenv(SCHEDULER_ENV, "nowhere")
    assert cli.main(["train", "--out", str(tmp_path / "m")]) == 2
    assert "$COVNB_SCHEDULER 'nowhere' is not a cluster" in capsys.readouterr().err


# ----------------------------------------------------------------------------- same numbers on a cluster


def _phantom_frames(client=None):
    from covnb.frames import FrameSettings, extract_frames
    from test_refactor_identity import phantom_samples

    return extract_frames(phantom_samples(), FrameSettings(image_size=SIZE, max_frames=2), progress=False,
                          client=client, files_per_task=7)


def _oof_bytes(frameset, config, client=None) -> tuple[bytes, bytes, bytes]:
    from covnb.train import run_cross_validation

    cv = run_cross_validation(frameset, config, n_folds=3, seeds=(0, 1), log=None, group_by="source", client=client)
    return (cv.oof.to_csv(index=False).encode(), cv.histories.to_csv(index=False).encode(),
            cv.folds.to_csv(index=False).encode())


@pytest.mark.slow
def test_a_local_cluster_of_two_workers_gives_byte_identical_results():
    import numpy as np

    from covnb.train import recipe_config

    serial_frames = _phantom_frames()
    configs = [recipe_config("default", **TINY),
               recipe_config("auto", **TINY, select=("top_probe", "top_probe_video_mirror"))]
    serial = [_oof_bytes(serial_frames, config) for config in configs]
    with open_cluster("local:2", log=None) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        cluster_frames = _phantom_frames(client)  # decoded by the workers, 7 files per task
        assert np.array_equal(cluster_frames.frames, serial_frames.frames)
        assert cluster_frames.index.equals(serial_frames.index)
        distributed = [_oof_bytes(cluster_frames, config, client) for config in configs]
    for ours, theirs in zip(distributed, serial):
        assert hashlib.sha256(ours[0]).hexdigest() == hashlib.sha256(theirs[0]).hexdigest()  # OOF, byte for byte
        assert ours[1:] == theirs[1:]  # histories (C chosen per fold) and fold roles


@pytest.mark.slow
def test_a_keras_head_on_a_local_cluster_of_two_workers_gives_byte_identical_results():
    """The Keras head trained in a worker's thread while its event loop runs (Keras once drew the
    batch order from Python's process-wide ``random``, which the event loop shares)."""
    import io

    import pandas as pd

    from covnb.train import recipe_config

    frameset = _phantom_frames()
    config = recipe_config("default", **TINY, solver="keras", train_unit="frame", epochs=2, mirror_view=False)
    serial = _oof_bytes(frameset, config)
    with open_cluster("local:2", log=None) as client:
        distributed = _oof_bytes(frameset, config, client)
    assert hashlib.sha256(distributed[0]).hexdigest() == hashlib.sha256(serial[0]).hexdigest()
    histories = [pd.read_csv(io.BytesIO(ours)).drop(columns="seconds") for ours in (distributed[1], serial[1])]
    pd.testing.assert_frame_equal(*histories, check_exact=True)  # every epoch's losses, but the wall time
    assert distributed[2] == serial[2]


@pytest.mark.slow
def test_frozen_features_computed_by_the_workers_are_byte_identical_and_stored(tmp_path, monkeypatch):
    from covnb.experiments.features import compute_features, recipe_model, view_kinds
    from covnb.train import recipe_config

    monkeypatch.setenv("COVNB_CACHE_DIR", str(tmp_path / "cache"))
    frames = _phantom_frames().frames
    config = recipe_config("default", **TINY, device_views=1)  # clean, mirror and device views
    model = recipe_model(config, 3, config.seed)
    serial = compute_features(frames, config, model, cache=False, log=None)
    assert len(frames) > 64  # several tasks
    with open_cluster("local:2", log=None) as client:
        distributed = compute_features(frames, config, model, log=None, client=client, rows_per_task=64)
    assert distributed.dtype == serial.dtype and distributed.tobytes() == serial.tobytes()
    stored = sorted((tmp_path / "cache" / "features").glob("*.npy"))
    assert len(stored) == len(view_kinds(config)) == 3  # each whole view; the tasks' parts are gone
    assert compute_features(frames, config, model, log=None).tobytes() == serial.tobytes()  # read back


@pytest.mark.slow
def test_a_worker_killed_in_the_middle_of_a_fold_is_replaced_and_the_result_is_unchanged(tmp_path):
    from distributed.diagnostics.plugin import WorkerPlugin

    from covnb.train import recipe_config

    marker = tmp_path / "killed-once"

    class KillOnce(WorkerPlugin):
        """Kills its worker process when the first fold task starts executing (once, marker file)."""

        def __init__(self, path: str):
            self.path = path

        def transition(self, key, start, finish, **kwargs):
            import os

            if finish == "executing" and "covnb-fold" in str(key) and not os.path.exists(self.path):
                open(self.path, "w").close()
                os._exit(1)  # the process dies at once, as on an out-of-memory kill

    frameset = _phantom_frames()
    config = recipe_config("default", **TINY)
    serial = _oof_bytes(frameset, config)
    with open_cluster("local:2", log=None) as client:
        client.register_plugin(KillOnce(str(marker)))
        distributed = _oof_bytes(frameset, config, client)
    assert marker.exists()  # a worker did die
    assert distributed == serial


# ----------------------------------------------------------------------------- tf.distribute

_TWO_DEVICES = r'''
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)  # before TF starts
sys.path.insert(0, sys.argv[1])
from test_train import synthetic_frameset, tiny
from covnb.experiments.fitting import distribution_strategy
from covnb.train import run_cross_validation
frameset, out = synthetic_frameset(), {}
for name in ("none", "mirrored"):
    config = tiny("default", solver="keras", train_unit="frame", epochs=4, mirror_view=False, dropout=0.0,
                  distribute=name)
    cv = run_cross_validation(frameset, config, n_folds=3, log=None)
    out[name] = {"probs": cv.oof[[c for c in cv.oof if c.startswith("prob_")]].to_numpy().tolist(),
                 "balanced_accuracy": cv.summary(n_boot=0)["frame"]["pooled_mean"]["balanced_accuracy"],
                 "replicas": 1 if name == "none" else distribution_strategy(name).num_replicas_in_sync}
print("RESULT " + json.dumps(out))
'''


@pytest.mark.slow
def test_a_keras_head_mirrored_over_two_logical_devices_matches_one_device(tmp_path):
    import json
    import os
    import subprocess

    import numpy as np

    script = tmp_path / "two_devices.py"
    script.write_text(_TWO_DEVICES)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, str(script), str(root / "tests")], capture_output=True, text=True,
                          env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["mirrored"]["replicas"] == 2  # really two devices
    np.testing.assert_allclose(result["mirrored"]["probs"], result["none"]["probs"], atol=1e-4)
    assert result["mirrored"]["balanced_accuracy"] == pytest.approx(result["none"]["balanced_accuracy"], abs=1e-9)


def _trust_run(out, client=None) -> dict:
    from covnb.train import recipe_config, run_training
    from test_refactor_identity import _frame_settings, phantom_samples

    result = run_training(phantom_samples(), out, recipe_config("default", **TINY), n_folds=3, seeds=(0,),
                          frame_settings=_frame_settings(SIZE), final_model=False, figures=False, n_boot=20,
                          baseline=False, protocols=("patient",), log=None, cluster=client)
    return {"files": {p.name: p.read_bytes() for p in sorted(Path(out).glob("*.csv"))},
            "calibration": result["calibration"], "uncertainty": result["uncertainty"]}


@pytest.mark.slow
def test_the_trust_steps_inner_refits_on_a_local_cluster_give_byte_identical_trust_outputs(tmp_path):
    """Nested calibration: every (seed, fold, inner fold) refit a task on the workers; the calibrated
    out-of-fold predictions, held-out OOD scores and blocks of metrics.json as in this process."""
    serial = _trust_run(tmp_path / "serial")
    assert serial["calibration"]["evaluation"].startswith("fully nested")  # the inner refits ran
    with open_cluster("local:2", log=None) as client:
        distributed = _trust_run(tmp_path / "cluster", client)

        def rebuilt_models():
            import keras

            import covnb.cluster

            return sum(isinstance(value, keras.Model) for value in covnb.cluster._WORKER_CACHE.values())

        assert sum(client.run(rebuilt_models).values()) >= 1  # the refits ran on the workers
    assert "calibrated_oof_predictions.csv" in serial["files"]
    assert distributed["files"].keys() == serial["files"].keys()
    for name, content in serial["files"].items():
        assert distributed["files"][name] == content, name  # byte for byte
    assert distributed["calibration"] == serial["calibration"]
    assert distributed["uncertainty"] == serial["uncertainty"]


def _import_tensorflow():
    import tensorflow as tf

    return tf.constant(1.0).numpy().item()


def _worker_stderr(capfd, monkeypatch, verbose: bool) -> str:
    if verbose:
        monkeypatch.setenv("COVNB_VERBOSE", "1")
    else:
        monkeypatch.delenv("COVNB_VERBOSE", raising=False)
    capfd.readouterr()
    with open_cluster("local:1", log=None) as client:  # the worker inherits this test's captured stderr
        assert client.submit(_import_tensorflow, pure=False).result() == 1.0
    return capfd.readouterr().err


@pytest.mark.slow
def test_workers_keep_tensorflows_start_up_lines_out_of_the_terminal_unless_verbose(capfd, monkeypatch):
    quiet = _worker_stderr(capfd, monkeypatch, verbose=False)
    assert "oneDNN" not in quiet and "cuda" not in quiet.lower(), quiet
    loud = _worker_stderr(capfd, monkeypatch, verbose=True)
    assert "oneDNN" in loud  # the control: a worker without the plugin prints them
