"""Source-held-out folds: on synthetic tables where the right folds are known, and on ../shared's POCUS metadata."""

import numpy as np
import pandas as pd
import pytest

from covnb.splits import audit_sources, cv_folds, source_held_out_folds


def _table(spec):
    """Rows from (label, source, n_patients, files_per_patient)."""
    rows = []
    for label, source, n_patients, per_patient in spec:
        for p in range(n_patients):
            for f in range(per_patient):
                rows.append({"sample_id": f"{label}-{source}-{p}-{f}", "label": label, "source": source,
                             "group": f"{source}:{label}{p}"})
    return pd.DataFrame(rows)


def test_each_covid_source_is_held_out_whole_and_absent_from_training():
    table = _table([("covid", "A", 5, 2), ("covid", "B", 4, 2), ("covid", "C", 3, 1),
                    ("regular", "A", 2, 1), ("regular", "R", 10, 2), ("pneumonia", "P", 12, 2)])
    folds = source_held_out_folds(table, n_splits=3, seed=0)
    assert folds.attrs["protocol"] == "source"
    assert audit_sources(table, folds) == []
    # leave one source out: three sources, three folds, each source's files (every class) in exactly one fold
    for source in "ABC":
        assert folds[table["source"] == source].nunique() == 1
    assert sorted(sum(folds.attrs["held_out"].values(), [])) == ["A", "B", "C"]
    # patients never span folds; the other classes fill every fold
    assert (table.assign(f=folds).groupby("group")["f"].nunique() == 1).all()
    for fold in range(3):
        assert set(table.loc[folds == fold, "label"]) == {"covid", "regular", "pneumonia"}


def test_more_sources_than_folds_are_packed_by_size():
    table = _table([("covid", s, n, 1) for s, n in zip("ABCDEF", (6, 5, 3, 2, 2, 2))] + [("regular", "R", 12, 1)])
    folds = source_held_out_folds(table, n_splits=3, seed=1)
    covid = table["label"] == "covid"
    sizes = sorted(np.bincount(folds[covid], minlength=3))
    assert sizes == [6, 7, 7]  # greedy: A | B | C (6, 5, 3), then D, E, F each into the lightest fold
    assert audit_sources(table, folds) == []


def test_single_covid_source_falls_back_to_patient_folds_with_a_note():
    table = _table([("covid", "A", 6, 1), ("regular", "A", 6, 1), ("pneumonia", "B", 6, 1)])
    folds = source_held_out_folds(table, n_splits=3)
    assert folds.attrs["protocol"] == "patient"
    assert "impossible" in folds.attrs["notes"][0]
    assert (table.assign(f=folds).groupby("group")["f"].nunique() == 1).all()


def test_a_patient_filed_under_two_sources_joins_them():
    table = _table([("covid", "A", 3, 1), ("covid", "B", 3, 1), ("covid", "C", 3, 1), ("regular", "R", 9, 1)])
    table.loc[0, "group"] = table.loc[5, "group"]  # one patient in sources A and B
    folds = source_held_out_folds(table, n_splits=3)
    assert folds[table["source"] == "A"].iloc[0] == folds[table["source"] == "B"].iloc[0]
    assert (table.assign(f=folds).groupby("group")["f"].nunique() == 1).all()


def test_dominant_source_is_named():
    table = _table([("covid", "A", 3, 1), ("covid", "B", 3, 1), ("pneumonia", "P", 8, 1), ("pneumonia", "Q", 1, 1),
                    ("regular", "R", 4, 1), ("regular", "S", 4, 1)])
    notes = source_held_out_folds(table, n_splits=2).attrs["notes"]
    assert any(note.startswith("pneumonia: 8 of 9 files come from source P") for note in notes)
    assert not any(note.startswith("regular") for note in notes)


def test_seed_reproducible_and_patient_grouping_unchanged():
    table = _table([("covid", s, 3, 1) for s in "ABCD"] + [("regular", "R", 10, 1)])
    a = source_held_out_folds(table, n_splits=4, seed=3)
    assert a.equals(source_held_out_folds(table, n_splits=4, seed=3))
    assert cv_folds(table, group_by="patient", n_splits=4, seed=3).attrs["protocol"] == "patient"
    with pytest.raises(ValueError, match="group_by"):
        cv_folds(table, group_by="hospital")


def test_pocus_metadata_leave_one_covid_source_out(pocus_root):
    from covnb.datasets import load_dataset, select_task

    samples = select_task(load_dataset(pocus_root).samples, "pocovid3")
    for seed in (10, 11):
        folds = source_held_out_folds(samples, n_splits=5, seed=seed)
        assert folds.attrs["protocol"] == "source"
        assert audit_sources(samples, folds) == []
        covid = samples["label"] == "covid"
        # five COVID-19 sources, five folds: one source per fold (10/7/5/2/2 files)
        assert sorted(np.bincount(folds[covid], minlength=5)) == [2, 2, 5, 7, 10]
        assert (samples.assign(f=folds).groupby("group")["f"].nunique() == 1).all()
        assert any("pneumonia:" in note and "source 18" in note for note in folds.attrs["notes"])
        assert any(note.startswith("regular: 49 of 56 files come from two sources") for note in folds.attrs["notes"])


def test_cli_split_by_source_audits_and_names_held_out_sources(pocus_root, tmp_path, capsys, monkeypatch):
    from covnb.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["split", str(pocus_root), "--group-by", "source", "--seed", "10", "--out", "folds.csv"]) == 0
    printed = capsys.readouterr().out
    assert "grouped by source" in printed and "split audit passed" in printed
    assert "fold 0: covid files only from source(s)" in printed and "note: pneumonia: 33 of 41" in printed
    table = pd.read_csv(tmp_path / "folds.csv")
    assert {"source", "fold"} <= set(table.columns)
    covid = table[table["label"] == "covid"]
    for fold, part in covid.groupby("fold"):
        assert not set(part["source"].astype(str)) & set(table.loc[table["fold"] != fold, "source"].astype(str))
