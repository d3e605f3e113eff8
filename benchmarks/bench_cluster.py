"""Serial vs Dask LocalCluster on a large synthetic set: where the time goes, and the task size.

    nice -n 10 python benchmarks/bench_cluster.py --clips 600 --workers 2 [--json out.json]
    python benchmarks/bench_cluster.py --clips 5000 --model-frames 4000 --json bench.json  # the large set

Writes a phantom data set of ``--clips`` video clips (``covnb.phantom``, synthetic), then times

1. frame decoding (fresh frame cache each time): in this process, and on a LocalCluster of
   ``--workers`` single-threaded processes with 1, 4, 16 and 64 files per task;
2. the scheduler's own cost per task (no-op tasks), hence the files per task that keep it
   under 5 % of the work;
3. the frozen backbone (``--backbone``, random weights: same cost as ImageNet) per frame, in this
   process and on the cluster (256 and 1024 frames per task, written to the store by the workers);
4. the cross-validation grid (default recipe, ``--folds`` x ``--seeds``): its frozen features
   (computed once, then read from the store), the folds in this process and on the cluster
   (every (seed, fold) a task); both OOF tables compared.

Figures measured on the 2-core machine of this repository are in docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def _timed(function):
    started = time.perf_counter()
    value = function()
    return value, time.perf_counter() - started


def _noop(x):
    return x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=600, help="video clips of the phantom set")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--task-sizes", default="1,4,16,64", help="files per decoding task")
    parser.add_argument("--model-frames", type=int, default=0,
                        help="time the model and the CV grid on about this many frames (whole files, every class); "
                             "0: all frames")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    from covnb.cluster import open_cluster
    from covnb.datasets import load_dataset
    from covnb.frames import FrameCache, FrameSettings, extract_frames
    from covnb.phantom import write_phantom_dataset
    from covnb.train import compute_features, recipe_config, run_cross_validation

    report: dict = {"clips": args.clips, "workers": args.workers, "cpu_count": os.cpu_count(),
                    "backbone": args.backbone, "image_size": args.image_size}
    with tempfile.TemporaryDirectory() as folder:
        os.environ["COVNB_CACHE_DIR"] = os.path.join(folder, "cache")
        per_class = math.ceil(args.clips / 6)  # 3 classes x 2 clips per patient
        _, seconds = _timed(lambda: write_phantom_dataset(os.path.join(folder, "data"), n_patients_per_class=per_class,
                                                          videos_per_patient=2, images_per_class=0, n_frames=10,
                                                          size=160))
        samples = load_dataset(os.path.join(folder, "data")).samples
        report["files"] = len(samples)
        print(f"phantom: {len(samples)} files written in {seconds:.0f} s")
        settings = FrameSettings(image_size=args.image_size)

        def decode(client=None, per_task=16, name="serial"):
            cache = FrameCache(os.path.join(folder, f"frames-{name}"))
            return _timed(lambda: extract_frames(samples, settings, cache=cache, progress=False, client=client,
                                                 files_per_task=per_task))

        frameset, serial_decode = decode()
        all_frames = frameset.frames
        n_frames = len(frameset)
        report["frames"] = n_frames
        report["decode_serial_s"] = serial_decode
        report["decode_ms_per_file"] = 1000 * serial_decode / len(samples)
        print(f"decode, this process: {serial_decode:.1f} s ({report['decode_ms_per_file']:.1f} ms per file, "
              f"{n_frames} frames)")

        if args.model_frames and args.model_frames < n_frames:  # model stages on a subset of whole files
            files_per_class = math.ceil(args.model_frames * len(samples) / n_frames / samples["label"].nunique())
            subset = samples.groupby("label", sort=False).head(files_per_class)
            frameset = extract_frames(subset, settings, cache=FrameCache(os.path.join(folder, "frames-serial")),
                                      progress=False)
            print(f"model stages on {len(frameset)} frames of {len(subset)} files")
        report["model_frames"] = len(frameset)
        n_frames = len(frameset)
        config = recipe_config("midlevel", backbone=args.backbone, weights=None, image_size=args.image_size)
        serial_features, model_seconds = _timed(lambda: compute_features(frameset.frames, config, cut="head", views=0, cache=False,
                                                           log=None))
        report["model_ms_per_frame"] = 1000 * model_seconds / n_frames
        print(f"model ({args.backbone}, {args.image_size} px, frozen pass, this process): "
              f"{report['model_ms_per_frame']:.1f} ms per frame")

        cv_config = recipe_config("midlevel", backbone=args.backbone, weights=None, image_size=args.image_size)
        from covnb.experiments.crossval import RecipeCandidates

        _, features_s = _timed(lambda: RecipeCandidates(frameset.frames, cv_config, 3, None))  # fills the store
        report["cv_features_s"] = features_s
        print(f"CV features (clean + mirror view, this process, then cached): {features_s:.1f} s")
        serial_cv, serial_cv_s = _timed(lambda: run_cross_validation(
            frameset, cv_config, n_folds=args.folds, seeds=tuple(range(args.seeds)), log=None))
        report["cv_serial_s"] = serial_cv_s  # features read from the store filled just before
        print(f"CV grid {args.folds} folds x {args.seeds} seeds, this process: {serial_cv_s:.1f} s")

        with open_cluster(f"local:{args.workers}", log=print) as client:
            client.gather(client.map(_noop, range(args.workers * 4), pure=False))  # workers warm
            n_noop = 400
            _, noop_s = _timed(lambda: client.gather(client.map(_noop, range(n_noop), pure=False)))
            report["overhead_ms_per_task"] = 1000 * noop_s / n_noop
            print(f"scheduler overhead: {report['overhead_ms_per_task']:.2f} ms per task ({n_noop} no-op tasks)")
            report["decode_cluster"] = {}
            for per_task in [int(x) for x in args.task_sizes.split(",")]:
                cluster_frames, seconds = decode(client, per_task, f"cluster-{per_task}")
                assert (cluster_frames.frames == all_frames).all()
                tasks = math.ceil(len(samples) / per_task)
                report["decode_cluster"][per_task] = {"seconds": seconds, "tasks": tasks,
                                                      "speedup": serial_decode / seconds}
                print(f"decode, cluster, {per_task:>3} files per task ({tasks} tasks): {seconds:.1f} s, "
                      f"x{serial_decode / seconds:.2f}")
            store = os.environ["COVNB_CACHE_DIR"]
            os.environ["COVNB_CACHE_DIR"] = os.path.join(folder, "cache-features")  # an empty store
            for per_task in (256, 1024):
                cluster_features, seconds = _timed(lambda: compute_features(
                    frameset.frames, config, cut="head", views=0, log=None, client=client, rows_per_task=per_task))
                for entry in os.scandir(os.path.join(folder, "cache-features", "features")):
                    os.remove(entry.path)  # computed again at the next task size
                report.setdefault("features_cluster", {})[per_task] = {
                    "seconds": seconds, "speedup": model_seconds / seconds,
                    "identical": cluster_features.tobytes() == serial_features.tobytes()}
                print(f"features, cluster, {per_task} frames per task: {seconds:.1f} s, x{model_seconds / seconds:.2f}, "
                      f"identical: {cluster_features.tobytes() == serial_features.tobytes()}")
            os.environ["COVNB_CACHE_DIR"] = store
            cluster_cv, cluster_cv_s = _timed(lambda: run_cross_validation(
                frameset, cv_config, n_folds=args.folds, seeds=tuple(range(args.seeds)), log=None, client=client))
        report["cv_cluster_s"] = cluster_cv_s
        report["cv_identical"] = serial_cv.oof.to_csv(index=False) == cluster_cv.oof.to_csv(index=False)
        report["cv_ms_per_fold_serial"] = 1000 * serial_cv_s / (args.folds * args.seeds)
        print(f"CV grid, cluster: {cluster_cv_s:.1f} s, x{serial_cv_s / cluster_cv_s:.2f}; OOF identical: "
              f"{report['cv_identical']}")
        # files per task for the scheduler's cost to stay under 5 % of a task's work
        per_file = report["decode_ms_per_file"]
        report["files_per_task_for_5pct"] = max(1, math.ceil(report["overhead_ms_per_task"] / (0.05 * per_file)))
        print(f"files per task with overhead < 5 %: >= {report['files_per_task_for_5pct']} "
              f"({report['overhead_ms_per_task']:.2f} ms / (0.05 x {per_file:.1f} ms per file))")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)


if __name__ == "__main__":
    main()
