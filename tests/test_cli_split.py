"""``covnb split --inner-validation``: the inner validation part of every training fold, by patient."""

import pandas as pd

from covnb.cli import main
from covnb.datasets import default_task, load_dataset, select_task
from covnb.splits import cv_folds, inner_validation


def test_split_marks_an_inner_validation_part_of_each_training_fold(tmp_path, capsys):
    out = tmp_path / "folds.csv"
    assert main(["split", "phantom", "--folds", "4", "--seed", "1", "--out", str(out), "--inner-validation", "0.25"]) == 0
    table = pd.read_csv(out, dtype={"inner_validation_for_fold": str}, keep_default_na=False)
    marks = table["inner_validation_for_fold"].map(lambda text: {int(f) for f in text.split(";") if f})
    # the known answer: what covnb.splits computes on the training part of each fold
    dataset = load_dataset("phantom")
    samples = select_task(dataset.samples, default_task(dataset))
    folds = cv_folds(samples, n_splits=4, seed=1)
    assert table["fold"].tolist() == folds.tolist()
    for fold in range(4):
        train = samples[folds.values != fold]
        expected = set(train.loc[inner_validation(train, fraction=0.25, seed=1).values, "sample_id"])
        chosen = table.loc[marks.map(lambda m, f=fold: f in m), :]
        assert set(chosen["sample_id"]) == expected and len(expected) > 0
        assert (chosen["fold"] != fold).all()  # never the test fold
        # whole patients: a marked patient's training files are all marked
        in_training = table[(table["fold"] != fold) & table["group"].isin(set(chosen["group"]))]
        assert set(in_training["sample_id"]) == set(chosen["sample_id"])
        share = chosen["group"].nunique() / table.loc[table["fold"] != fold, "group"].nunique()
        assert 0.1 <= share <= 0.4
    assert "audit passed" in capsys.readouterr().out


def test_split_inner_validation_must_be_a_fraction(tmp_path, capsys):
    assert main(["split", "phantom", "--out", str(tmp_path / "f.csv"), "--inner-validation", "1.5"]) == 2
    assert "--inner-validation must be a fraction in (0, 1), got 1.5" in capsys.readouterr().err
    assert not (tmp_path / "f.csv").exists()
