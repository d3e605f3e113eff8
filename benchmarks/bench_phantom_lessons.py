"""Does the embedded phantom teach what the real data does? Leaky > patient > source-held-out.

Loads the phantom (``covnb.phantom.phantom_dataset``, default parameters unless overridden),
extracts frames as the ``sample`` report profile does (128 px, 3 Hz, at most 30 frames),
and cross-validates covnb's ``midlevel`` recipe (the default before issue 13) and the ``linear_probe`` baseline on three
splits of the same frames:

* frame-level (leaky): :func:`covnb.splits.frame_level_folds`, every frame its own "patient",
  as notebook 02 does;
* patient-level: :func:`covnb.splits.patient_folds` (5 folds);
* source-held-out: COVID-19 files grouped by their source (a held-out source's COVID-19
  patients are never seen in training), the other classes by patient.

Scores: frame balanced accuracy (mean over test folds, as notebook 02's leaky/honest figure)
and, for the honest splits, video balanced accuracy of pooled out-of-fold predictions.

    .venv/bin/python benchmarks/bench_phantom_lessons.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import pandas as pd


def source_held_out_check_folds(samples: pd.DataFrame, n_splits: int, seed: int,
                                positive_label: str = "covid") -> pd.Series:
    """Check-only folds: positives grouped by source (each source in one fold), the rest by patient."""
    from covnb.splits import patient_folds

    positive = samples["label"] == positive_label
    sources = sorted(samples.loc[positive, "source"].unique())
    rng = np.random.default_rng(seed)
    order = [sources[i] for i in rng.permutation(len(sources))]
    sizes = samples[positive].groupby("source").size()
    load = np.zeros(n_splits)
    fold_of_source = {}
    for source in sorted(order, key=lambda s: -sizes[s]):  # largest first, into the lightest fold
        fold = int(np.argmin(load))
        fold_of_source[source] = fold
        load[fold] += sizes[source]
    folds = pd.Series(-1, index=samples.index, name="fold")
    folds[positive] = samples.loc[positive, "source"].map(fold_of_source)
    rest = samples[~positive]
    folds[~positive] = patient_folds(rest, n_splits, seed).to_numpy()
    return folds


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=["midlevel", "linear_probe"])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--phantom", default="{}", help="JSON keyword arguments for phantom_dataset")
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    from covnb.datasets import load_dataset, select_task
    from covnb.evaluate import fold_metrics, pooled_metrics
    from covnb.frames import FrameSettings, extract_frames
    from covnb.phantom import phantom_dataset
    from covnb.splits import frame_level_folds
    from covnb.train import recipe_config, run_cross_validation

    started = time.perf_counter()
    root = phantom_dataset(**json.loads(args.phantom))
    samples = select_task(load_dataset(root).samples, "pocovid3")
    frameset = extract_frames(samples, FrameSettings(rate_hz=3.0, max_frames=30, image_size=args.image_size),
                              progress=False)
    index = frameset.index.reset_index(drop=True)
    classes = sorted(index["label"].unique())
    print(f"phantom {root.name}: {len(samples)} files, {samples['group'].nunique()} patients, "
          f"{samples['source'].nunique()} sources, {len(index)} frames ({time.perf_counter() - started:.0f} s)")
    print(pd.crosstab(samples.drop_duplicates("group")["source"], samples.drop_duplicates("group")["label"]))
    per_sample = index.drop_duplicates("sample_id").set_index("sample_id")
    sample_table = samples.set_index("sample_id").loc[per_sample.index].reset_index()
    results = []
    for recipe in args.recipes:
        config = recipe_config(recipe, image_size=args.image_size, seed=0)
        for seed in args.seeds:
            row = {"recipe": recipe, "seed": seed}
            # frame-level (leaky): every frame its own video and patient
            frame_ids = np.array([f"{s}#{i}" for i, s in enumerate(index["sample_id"].astype(str))])
            wrong = frame_level_folds(len(index), n_splits=5, seed=seed)
            leaky = run_cross_validation(dataclasses.replace(frameset, index=index.assign(sample_id=frame_ids,
                                                                                          group=frame_ids)),
                                         config, folds=pd.Series(wrong, index=frame_ids), log=None, classes=classes)
            row["leaky_frame"] = float(fold_metrics(leaky.oof, classes, "frame")["balanced_accuracy"].mean())
            honest = run_cross_validation(frameset, config, n_folds=5, seeds=(seed,), log=None, classes=classes)
            row["patient_frame"] = float(fold_metrics(honest.oof, classes, "frame")["balanced_accuracy"].mean())
            row["patient_video"] = float(pooled_metrics(honest.oof, classes, "video_mean")["balanced_accuracy"].mean())
            folds = source_held_out_check_folds(sample_table, 5, seed)
            held = run_cross_validation(frameset, config, folds=pd.Series(folds.to_numpy(),
                                                                           index=sample_table["sample_id"]),
                                        log=None, classes=classes)
            row["source_frame"] = float(fold_metrics(held.oof, classes, "frame")["balanced_accuracy"].mean())
            row["source_video"] = float(pooled_metrics(held.oof, classes, "video_mean")["balanced_accuracy"].mean())
            videos = held.oof.groupby("sample_id").agg(label=("label", "first"), **{
                f"p_{c}": (f"prob_{c}", "mean") for c in classes})
            covid = videos[videos["label"] == "covid"]
            row["source_covid_sensitivity"] = float((covid[[f"p_{c}" for c in classes]].idxmax(axis=1)
                                                     == "p_covid").mean())
            results.append(row)
            print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
    table = pd.DataFrame(results)
    summary = table.groupby("recipe").mean(numeric_only=True).drop(columns="seed").round(3)
    print(summary.to_string())
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rows": results, "phantom": json.loads(args.phantom)}, handle, indent=2)
    return {"rows": results}


if __name__ == "__main__":
    main()
