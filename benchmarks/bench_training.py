"""Benchmark: covnb's cached-feature training vs a plain Keras fit through the frozen backbone.

Same data, same patient folds, same epochs, same head and augmentation, side by side:

* covnb ``default`` recipe (engine "cached"): frozen features computed once per frame and per
  augmented view (cold feature cache: computed inside the timing), head trained on them;
* the plain Keras way (engine "plain", as POCOVID-Net trains): every augmented batch goes
  through the frozen backbone in every epoch.

Prints wall time of both, the ratio, and both video-level balanced accuracies. Not a test.

    python benchmarks/bench_training.py --data ../shared/data/pocus --image-size 224 --epochs 10
    python benchmarks/bench_training.py --max-files 40 --image-size 128 --epochs 3   # quick
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=None, help="data folder (default: the synthetic phantom)")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--aug-views", type=int, default=4)
    parser.add_argument("--max-files", type=int, default=0, help="stratified subset of files (0: all)")
    parser.add_argument("--max-frames", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from covnb.datasets import default_task, load_dataset, select_task
    from covnb.evaluate import summarize_cv
    from covnb.frames import FrameSettings, extract_frames
    from covnb.splits import patient_folds
    from covnb.train import recipe_config, run_cross_validation

    dataset = load_dataset(args.data)
    samples = select_task(dataset.samples, default_task(dataset))
    if args.max_files and len(samples) > args.max_files:
        groups = samples.drop_duplicates("group").groupby("label", group_keys=False).apply(
            lambda part: part.sample(frac=1, random_state=args.seed))
        keep, count = [], 0
        for group in groups["group"]:  # whole patients, interleaved by label
            keep.append(group)
            count += int((samples["group"] == group).sum())
            if count >= args.max_files:
                break
        samples = samples[samples["group"].isin(keep)].reset_index(drop=True)
    frameset = extract_frames(samples, FrameSettings(image_size=args.image_size, max_frames=args.max_frames),
                              progress=False)
    unique = frameset.index.drop_duplicates("sample_id")
    folds = patient_folds(unique.reset_index(drop=True), args.folds, args.seed)
    folds.index = unique["sample_id"].to_numpy()
    print(f"data: {len(unique)} files, {unique['group'].nunique()} patients, {len(frameset)} frames at "
          f"{args.image_size} px; {args.folds} folds, {args.epochs} epochs, backbone {args.backbone}")

    common = dict(backbone=args.backbone, weights=None if args.weights == "none" else args.weights,
                  image_size=args.image_size, epochs=args.epochs, patience=args.epochs, seed=args.seed)
    rows = []
    for name, config in (("covnb default (cached features)",
                          recipe_config("default", engine="cached", aug_views=args.aug_views, **common)),
                         ("plain Keras fit through the backbone",
                          recipe_config("default", engine="plain", **common))):
        with tempfile.TemporaryDirectory() as cold:  # features computed inside the timing
            previous = os.environ.get("COVNB_CACHE_DIR")
            os.environ["COVNB_CACHE_DIR"] = cold
            try:
                started = time.perf_counter()
                cv = run_cross_validation(frameset, config, folds=folds, log=None)
                seconds = time.perf_counter() - started
            finally:
                if previous is None:
                    os.environ.pop("COVNB_CACHE_DIR", None)
                else:
                    os.environ["COVNB_CACHE_DIR"] = previous
        summary = summarize_cv(cv.oof, cv.classes, n_boot=0)
        rows.append((name, seconds, summary["video_mean"]["pooled_mean"]["balanced_accuracy"],
                     summary["frame"]["pooled_mean"]["balanced_accuracy"]))
        print(f"  {name}: {seconds:.0f} s", flush=True)

    print()
    print(f"| method | wall time (s) | video balanced accuracy | frame balanced accuracy |")
    print(f"|---|---|---|---|")
    for name, seconds, video, frame in rows:
        print(f"| {name} | {seconds:.1f} | {video:.3f} | {frame:.3f} |")
    print(f"\nspeed-up of covnb over plain Keras: {rows[1][1] / rows[0][1]:.1f}x")


if __name__ == "__main__":
    main()
