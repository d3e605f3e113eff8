"""Training on bad input (issue 11 cases 6, 9, 10, 11): the feature cache treats damaged entries as
misses, a run lists what it skipped (metrics.json and its log), and identical files never cross folds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from test_train import SIZE, synthetic_frameset, tiny  # noqa: E402

import covnb.train as train  # noqa: E402
from covnb.frames import FrameSettings  # noqa: E402


def test_damaged_feature_cache_entries_are_recomputed_and_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("COVNB_CACHE_DIR", str(tmp_path / "cache"))
    frameset = synthetic_frameset(n_groups=2, videos=1, frames=2)
    config = tiny("linear_probe")
    expected = train.compute_features(frameset.frames, config, log=None)
    entries = sorted((tmp_path / "cache" / "features").glob("*.npy"))
    assert len(entries) == 1
    for damage in (b"", entries[0].read_bytes()[:60], np.zeros(3).tobytes()):
        entries[0].write_bytes(damage)
        messages = []
        again = train.compute_features(frameset.frames, config, log=messages.append)
        np.testing.assert_array_equal(again, expected)
        assert "computed" in messages[0]
        np.testing.assert_array_equal(np.load(entries[0]), expected[0])  # replaced by a good entry
    monkeypatch.setenv("COVNB_NO_CACHE", "1")
    shutil.rmtree(tmp_path / "cache" / "features")
    np.testing.assert_array_equal(train.compute_features(frameset.frames, config, log=None), expected)
    assert not (tmp_path / "cache" / "features").exists()


def _folders(root: Path, per_class: int = 8) -> Path:
    for c, label in enumerate(("covid", "regular")):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            rng = np.random.default_rng(10 * c + i)
            blocks = rng.integers(0, 256, (4, 4), dtype=np.uint8) // 2 + 100 * c
            picture = cv2.resize(blocks, (24, 24), interpolation=cv2.INTER_NEAREST)
            cv2.imwrite(str(root / label / f"p{c}{i}__x.png"), np.dstack([picture] * 3))
    return root


@pytest.mark.slow
def test_training_lists_what_it_skipped_and_keeps_copies_in_one_fold(tmp_path):
    root = _folders(tmp_path / "data")
    (root / "covid" / "zero.png").write_bytes(b"")
    (root / "regular" / "p10__x.png").rename(root / "regular" / "q10__x.png")
    shutil.copy(root / "regular" / "q10__x.png", root / "regular" / "copy__x.png")  # same picture, another name
    messages = []
    result = train.run_training(root, tmp_path / "run", tiny("linear_probe"), n_folds=2, final_model=False,
                                figures=False, baseline=False, n_boot=10,
                                frame_settings=FrameSettings(image_size=SIZE, max_frames=1), log=messages.append)
    assert [(Path(s["path"]).name, s["reason"], s["stage"]) for s in result["skipped"]] == \
        [("zero.png", "zero-byte file", "load")]
    assert any("1 skipped" in m for m in messages) and any("skipped " in m and "zero.png" in m for m in messages)
    stored = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert stored["skipped"] == result["skipped"] and stored["group_merges"][0]["groups"] == ["copy", "q10"]
    oof = result["paths"]["oof_predictions"]
    import pandas as pd

    table = pd.read_csv(oof)
    folds = table[table["sample_id"].str.contains("copy__x|q10__x")]["fold"].unique()
    assert len(folds) == 1  # the two identical files are in the same test fold
