"""What each idea of issue 13 section 4 moves on source-held-out folds (and patient-grouped ones).

    python benchmarks/bench_new_sources.py --data ../shared/data/pocus --out /tmp/ns VARIANT...

Every variant is cross-validated with covnb's own machinery (:func:`covnb.train.run_cross_validation`)
on source-held-out and patient-grouped folds, split seeds 10-14, video level (mean frame
probability); one JSON line per variant and protocol is appended to ``OUT/results.jsonl`` and the
out-of-fold predictions are kept (``OUT/<variant>_<protocol>.csv``) so ensembles average them.
Variants: see :data:`VARIANTS`, each a change of the ``midlevel`` recipe (the default before issue 13
chose it; ``default`` is today's default) (``ens:a+b`` averages the stored predictions of a and b; ``a,b``
fits one recipe with the settings of both, e.g. ``source_balanced,nap4``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {
    # name: (recipe, config overrides, frame settings overrides, feature normalisation, input normalisation)
    "default": ("default", {}, {}, "none", False),  # since issue 13: midlevel + the nested NAP choice
    "midlevel": ("midlevel", {}, {}, "none", False),  # the default before it
    "linear_probe": ("linear_probe", {}, {}, "none", False),
    "device2": ("midlevel", dict(device_views=2), {}, "none", False),
    "device4": ("midlevel", dict(device_views=4), {}, "none", False),
    "fnorm_source": ("midlevel", {}, {}, "source", False),
    "fnorm_source_scale": ("midlevel", {}, {}, "source_scale", False),
    "fnorm_video_scale": ("midlevel", {}, {}, "video_scale", False),
    "fnorm_video_frames": ("midlevel", dict(train_unit="frame"), {}, "video", False),
    "intensity": ("midlevel", {}, {}, "none", True),
    "resnet50": ("midlevel", dict(backbone="resnet50"), {}, "none", False),
    "lite1": ("midlevel", dict(backbone="efficientnet_lite1"), {}, "none", False),
    "pca8": ("midlevel", dict(feature_pca=8), {}, "none", False),
    "pca16": ("midlevel", dict(feature_pca=16), {}, "none", False),
    "pca32": ("midlevel", dict(feature_pca=32), {}, "none", False),
    "pca64": ("midlevel", dict(feature_pca=64), {}, "none", False),
    "strong_c": ("midlevel", dict(linear_probe_cs=(1e-5, 1e-4, 1e-3)), {}, "none", False),
    "top_video_mirror": ("midlevel", dict(head="gap"), {}, "none", False),
    "canonical": ("midlevel", {}, dict(canonical="crop+inpaint"), "none", False),
    "mask": ("midlevel", {}, dict(mask_sector=True), "none", False),
    "auto": ("auto", {}, {}, "none", False),
    # source-aware fits (covnb.nuisance; fitted on each training fold's labels and sources only)
    "source_balanced": ("midlevel", dict(imbalance="source_balanced"), {}, "none", False),
    "source_sqrt": ("midlevel", dict(imbalance="source_sqrt"), {}, "none", False),
    "nap1": ("midlevel", dict(nuisance_dims=1), {}, "none", False),
    "nap2": ("midlevel", dict(nuisance_dims=2), {}, "none", False),
    "nap4": ("midlevel", dict(nuisance_dims=4), {}, "none", False),
    "nap8": ("midlevel", dict(nuisance_dims=8), {}, "none", False),
    "nap16": ("midlevel", dict(nuisance_dims=16), {}, "none", False),
    "clahe": ("midlevel", {}, dict(clahe=True), "none", False),
    # nested choice (inner source-aware CV inside every training fold; only the outer result counts)
    "select_nap": ("nap", {}, {}, "none", False),  # recipe "nap": NAP 0/2/4/8 chosen by the inner CV
    "select_source": ("midlevel", dict(select=("nap0", "nap4", "strong_c", "source_balanced")), {}, "none", False),
    "gray_clahe": ("midlevel", {}, dict(canonical="crop+inpaint+gray", clahe=True), "none", False),
}


def _combination(name: str):
    """``a,b``: the settings of variants ``a`` and ``b`` merged (config, frame settings; one
    normalisation)."""
    parts = [VARIANTS[part] for part in name.split(",")]
    recipe = parts[0][0]
    config, frame, fnorm, intensity = {}, {}, "none", False
    for part in parts:
        config.update(part[1])
        frame.update(part[2])
        fnorm = part[3] if part[3] != "none" else fnorm
        intensity = intensity or part[4]
    return recipe, config, frame, fnorm, intensity


def _per_source_and_auc(oof, classes, positive) -> dict:
    """Share of each held-out positive source's videos called positive (pooled over seeds), the
    positive class's video ROC-AUC (mean over seeds) and the oracle sensitivity at specificity
    >= 0.90 (threshold read off the test ROC: an upper bound, not a result)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    columns = [f"prob_{c}" for c in classes]
    keys = ["seed", "sample_id", "label"] + (["source"] if "source" in oof else [])
    videos = oof.groupby(keys, dropna=False)[columns].mean().reset_index()
    videos["pred"] = np.asarray(classes)[videos[columns].to_numpy().argmax(axis=1)]
    out = {}
    if positive in classes:
        aucs, oracle = [], []
        for _, part in videos.groupby("seed"):
            truth = (part["label"] == positive).to_numpy()
            if truth.all() or not truth.any():
                continue
            score = part[f"prob_{positive}"].to_numpy()
            aucs.append(roc_auc_score(truth, score))
            fpr, tpr, _ = roc_curve(truth, score)
            oracle.append(float(tpr[fpr <= 0.10].max()))
        out["covid_auc"] = float(np.mean(aucs)) if aucs else None
        out["oracle_sens_at_spec90"] = float(np.mean(oracle)) if oracle else None
        if "source" in videos:
            pos = videos[videos["label"] == positive]
            out["positive_share_by_source"] = {str(k): round(float(v), 2) for k, v in
                                               (pos["pred"] == positive).groupby(pos["source"]).mean().items()}
    return out


def _summary(oof, classes) -> dict:
    from covnb.evaluate import summarize_cv

    video = summarize_cv(oof, classes, n_boot=0)["video_mean"]
    mean, std = video["pooled_mean"], video["pooled_std"]
    return {"balanced_accuracy": mean["balanced_accuracy"], "balanced_accuracy_std": std["balanced_accuracy"],
            "covid_sensitivity": mean.get("covid_sensitivity"), "covid_specificity": mean.get("covid_specificity")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seeds", default="10,11,12,13,14")
    parser.add_argument("--protocols", default="source,patient")
    parser.add_argument("--positive", default="covid")
    parser.add_argument("variants", nargs="+")
    args = parser.parse_args(argv)
    import covnb.train as train
    from covnb.datasets import default_task, load_dataset, select_task
    from covnb.feature_norm import normalise_features, standardise_video_intensity
    from covnb.frames import FrameSettings, extract_frames

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    dataset = load_dataset(args.data)
    samples = select_task(dataset.samples, default_task(dataset))
    framesets = {}
    from covnb.experiments import crossval  # the cross-validation looks its stored features up here

    original_prepare = crossval.recipe_features
    for name in args.variants:
        protocols = args.protocols.split(",")
        if name.startswith("ens:"):
            members = name[4:].split("+")
            for protocol in protocols:
                oofs = [pd.read_csv(out / f"{m}_{protocol}.csv") for m in members]
                classes = sorted(oofs[0]["label"].unique())
                from covnb.ensemble import average_oof

                averaged = average_oof(oofs, classes)
                averaged.to_csv(out / f"{name.replace(':', '_')}_{protocol}.csv", index=False)
                row = {"variant": name, "protocol": protocol, **_summary(averaged, classes),
                       **_per_source_and_auc(averaged, classes, args.positive),
                       "seconds": sum(json.loads(line)["seconds"] for line in (out / "results.jsonl").read_text()
                                      .splitlines() if json.loads(line)["variant"] in members
                                      and json.loads(line)["protocol"] == protocol)}
                print(json.dumps(row), flush=True)
                with open(out / "results.jsonl", "a") as handle:
                    handle.write(json.dumps(row) + "\n")
            continue
        recipe, overrides, frame_overrides, fnorm, intensity = VARIANTS[name] if name in VARIANTS \
            else _combination(name)
        mirror = not any(m in ("X-ray", "CT") for m in samples.get("modality", pd.Series(dtype=str)).unique())
        if recipe in ("default", "midlevel", "nap"):
            overrides = {"mirror_view": mirror, **overrides}
        if recipe == "auto" and not mirror:
            overrides = {"select": tuple(n for n in train.AUTO_CANDIDATES
                                         if not train.SELECTION_CANDIDATES[n]["mirror_view"]),
                         **overrides}
        config = train.recipe_config(recipe, seed=seeds[0], **overrides)
        settings = FrameSettings(image_size=224, **frame_overrides)
        key = json.dumps(dataclasses.asdict(settings), sort_keys=True) + str(intensity)
        if key not in framesets:
            frameset = extract_frames(samples, settings)
            if intensity:
                frameset = dataclasses.replace(frameset, frames=standardise_video_intensity(
                    frameset.frames, frameset.index["sample_id"].to_numpy()))
            framesets[key] = frameset
        frameset = framesets[key]
        index = frameset.index.reset_index(drop=True)

        def prepare(frames, candidate, model, log, *, client=None, _mode=fnorm, _index=index):
            features = original_prepare(frames, candidate, model, log, client=client)
            if features is not None and _mode != "none":
                features = {**features, "head": normalise_features(features["head"], _index, _mode)}
            return features

        crossval.recipe_features = prepare
        classes = sorted(index["label"].unique())
        for protocol in protocols:
            started = time.perf_counter()
            cv = train.run_cross_validation(frameset, config, n_folds=5, seeds=seeds, log=None, classes=classes,
                                            group_by=protocol, positive_label=args.positive)
            seconds = time.perf_counter() - started
            cv.oof.to_csv(out / f"{name}_{protocol}.csv", index=False)
            row = {"variant": name, "protocol": protocol, **_summary(cv.oof, classes),
                   **_per_source_and_auc(cv.oof, classes, args.positive), "seconds": seconds}
            if "selected" in cv.oof:
                row["selected"] = cv.oof.drop_duplicates(["seed", "fold"])["selected"].value_counts().to_dict()
            print(json.dumps(row), flush=True)
            with open(out / "results.jsonl", "a") as handle:
                handle.write(json.dumps(row) + "\n")
        crossval.recipe_features = original_prepare
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
