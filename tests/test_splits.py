import numpy as np
import pandas as pd
import pytest

from covnb.datasets import load_dataset, select_task
from covnb.frames import FrameSettings, extract_frames
from covnb.splits import (LeakageError, audit_split, fold_table, frame_level_folds, inner_validation,
                          patient_folds, perceptual_hash)


def synthetic_samples(n_groups=20, per_group=3, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for g in range(n_groups):
        label = ["covid", "pneumonia", "regular"][g % 3]
        for v in range(rng.integers(1, per_group + 1)):
            rows.append({"sample_id": f"g{g}v{v}", "group": f"g{g}", "label": label})
    return pd.DataFrame(rows)


def test_patient_folds_never_share_a_group_and_are_stratified_and_seeded():
    samples = synthetic_samples()
    folds = patient_folds(samples, n_splits=4, seed=3)
    assert samples.assign(f=folds).groupby("group")["f"].nunique().max() == 1
    table = fold_table(samples.assign(path=""), folds)
    for label in ("covid", "pneumonia", "regular"):
        assert table[label].min() >= 1
    assert folds.equals(patient_folds(samples, n_splits=4, seed=3))
    assert not folds.equals(patient_folds(samples, n_splits=4, seed=4))


def test_inner_validation_is_by_patient_inside_the_training_fold():
    samples = synthetic_samples(30)
    folds = patient_folds(samples, 5, seed=0)
    train = samples[folds != 0]
    mask = inner_validation(train, 0.25, seed=0)
    val_groups = set(train.loc[mask.values, "group"])
    fit_groups = set(train.loc[~mask.values, "group"])
    assert val_groups and fit_groups and not (val_groups & fit_groups)
    assert val_groups <= set(train["group"]) and not (val_groups & set(samples.loc[folds == 0, "group"]))


def test_too_few_groups_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot fill"):
        patient_folds(synthetic_samples(3), n_splits=5)


def test_audit_names_the_leaking_group():
    samples = synthetic_samples()
    folds = patient_folds(samples, 4, seed=0).to_numpy().copy()
    multi = samples.groupby("group").size()
    group = multi[multi > 1].index[0]
    rows = np.flatnonzero(samples["group"].to_numpy() == group)
    folds[rows[1]] = (folds[rows[0]] + 1) % 4
    with pytest.raises(LeakageError, match=group):
        audit_split(samples, folds, check_files=False)
    report = audit_split(samples, folds, check_files=False, raise_on_leak=False)
    assert not report.ok and report.shared_groups[0]["group"] == group


def test_audit_finds_identical_files_under_different_names(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"same content")
    b.write_bytes(b"same content")
    table = pd.DataFrame({"sample_id": ["a", "b"], "group": ["p1", "p2"], "path": [str(a), str(b)]})
    report = audit_split(table, [0, 1], raise_on_leak=False)
    assert report.identical_files and set(report.identical_files[0]["paths"]) == {str(a), str(b)}


def test_perceptual_hash_sees_near_duplicates():
    rng = np.random.default_rng(0)
    frame = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    frame = np.ascontiguousarray(np.sort(frame, axis=1))
    noisy = np.clip(frame.astype(int) + rng.integers(-3, 4, frame.shape), 0, 255).astype(np.uint8)
    other = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    bits = lambda x, y: int(np.unpackbits(perceptual_hash(x) ^ perceptual_hash(y)).sum())
    assert bits(frame, noisy) <= 12 < bits(frame, other)
    table = pd.DataFrame({"sample_id": ["a", "b", "c"], "group": ["p1", "p2", "p3"]})
    report = audit_split(table, [0, 1, 1], frames=np.stack([frame, noisy, other]), check_files=False,
                         raise_on_leak=False)
    assert [(d["a"], d["b"]) for d in report.near_duplicate_frames] == [("a", "b")]


def test_real_pocus_patient_split_passes_and_frame_split_fails(pocus_subset):
    samples = select_task(load_dataset(pocus_subset).samples)
    frame_set = extract_frames(samples, FrameSettings(image_size=64, max_frames=6), progress=False)
    frame_set.index["fold"] = frame_set.index["sample_id"].map(
        dict(zip(samples["sample_id"], patient_folds(samples, 3, seed=0))))
    assert audit_split(frame_set.index, frame_set.index["fold"], frame_set.frames).ok
    wrong = frame_level_folds(len(frame_set.index), 3, seed=0)
    report = audit_split(frame_set.index, wrong, frame_set.frames, raise_on_leak=False)
    assert report.shared_groups and report.identical_files and report.near_duplicate_frames


def test_inner_validation_on_tiny_data_is_still_by_patient():
    tiny = pd.DataFrame({"sample_id": list("abcdefghi"), "label": ["covid"] * 3 + ["pneumonia"] * 3 + ["regular"] * 3,
                         "group": ["p1", "p1", "p2", "p3", "p4", "p5", "p6", "p7", "p8"]})
    mask = inner_validation(tiny, 0.2, seed=0)
    assert mask.any() and not mask.all()
    assert not set(tiny.loc[mask.values, "group"]) & set(tiny.loc[~mask.values, "group"])
    single = tiny.assign(group=["p1"] * 3 + ["p2", "p3", "p4", "p5", "p6", "p7"])  # covid has one patient
    mask = inner_validation(single, 0.3, seed=1)
    assert mask.any() and not set(single.loc[mask.values, "group"]) & set(single.loc[~mask.values, "group"])
