"""Benchmark: covnb's cached-feature training vs a plain Keras fit through the frozen backbone.

Same data, same patient folds, same head (the default recipe's "midlevel" head) and
augmentation, side by side:

* covnb ``default`` recipe: frozen features computed once per frame and per cached view (clean
  and mirrored, plus ``--aug-views`` random views), logistic head on per-video mean features (C
  by inner patient-grouped CV);
* covnb cached engine with the Keras head: the same frozen features, a Keras head trained for
  ``--epochs`` epochs (the same optimiser, epochs and early stopping as the plain fit below);
* the plain Keras way (engine "plain", as POCOVID-Net trains): every augmented batch goes
  through the frozen backbone in every epoch, ``--epochs`` epochs.

Every method starts from a cold feature cache (features computed inside its timing; decoded
frames and converted backbone weights are shared). Prints wall time of each, the speed-ups
over the plain fit, and the balanced accuracies. Not a test.

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
    parser.add_argument("--aug-views", type=int, default=None,
                        help="random augmented views cached per frame (default: the recipe's, 0)")
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
        # Whole patients, taken round-robin over the labels (each label's patients shuffled), so
        # the subset keeps every class.
        shuffled = samples.drop_duplicates("group").sample(frac=1, random_state=args.seed)
        shuffled = shuffled.assign(turn=shuffled.groupby("label").cumcount()).sort_values("turn", kind="stable")
        keep, count = [], 0
        for group in shuffled["group"]:
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

    views = {} if args.aug_views is None else {"aug_views": args.aug_views}
    common = dict(backbone=args.backbone, weights=None if args.weights == "none" else args.weights,
                  image_size=args.image_size, epochs=args.epochs, patience=args.epochs, seed=args.seed)
    keras_head = dict(solver="keras", train_unit="frame")
    methods = (("covnb default (cached features, logistic video head)",
                recipe_config("midlevel", **views, **common)),
               (f"covnb cached features, Keras head, {args.epochs} epochs",
                recipe_config("midlevel", engine="cached", **views, **keras_head, **common)),
               (f"plain Keras fit through the backbone, {args.epochs} epochs",
                recipe_config("midlevel", engine="plain", **keras_head, **common)))
    from covnb.cache import cache_dir

    weights_folder = cache_dir("weights")
    rows = []
    for name, config in methods:
        with tempfile.TemporaryDirectory() as cold:  # features computed inside the timing
            os.symlink(weights_folder, os.path.join(cold, "weights"))  # converted backbone weights are shared
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
    print(f"\nspeed-up over the plain Keras fit: covnb default {rows[2][1] / rows[0][1]:.1f}x, "
          f"cached Keras head {rows[2][1] / rows[1][1]:.1f}x (same epochs)")


if __name__ == "__main__":
    main()
