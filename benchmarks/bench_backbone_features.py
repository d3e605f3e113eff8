"""Feature time of each ImageNet backbone side by side: seconds per 100 frames.

The same real frames (the first ``--frames`` frames of a data folder, 224 px, from covnb's frame
cache) go through the default recipe's frozen feature path (:func:`covnb.train.compute_features`,
one clean view, no feature cache) of every backbone. Backbones are timed in turns (round robin,
``--repeats`` rounds, the best round kept), so every backbone sees the same machine state.

Run:  nice -n 10 python benchmarks/bench_backbone_features.py --data ../shared/data/pocus
      [--backbones efficientnet_lite0,efficientnet_lite1,efficientnet_lite2,resnet50]
      [--frames 100] [--repeats 3] [--weights imagenet]

Needs the ImageNet weights in covnb's cache (``covnb weights fetch NAME``); ``--weights none``
times random weights (same speed).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

BACKBONES = "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2,resnet50"


def load_frames(data: str | None, n_frames: int, image_size: int) -> np.ndarray:
    """The first ``n_frames`` frames (in file order) of ``data`` (None: the synthetic phantom)."""
    from covnb.datasets import default_task, load_dataset, select_task
    from covnb.frames import FrameSettings, extract_frames

    dataset = load_dataset(data)
    samples = select_task(dataset.samples, default_task(dataset)).sort_values("sample_id")
    frames = extract_frames(samples, FrameSettings(image_size=image_size), progress=False).frames
    if len(frames) < n_frames:
        raise ValueError(f"{data}: only {len(frames)} frames, asked for {n_frames}")
    return np.ascontiguousarray(frames[:n_frames])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="data folder (default: the synthetic phantom)")
    parser.add_argument("--backbones", default=BACKBONES)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="round-robin rounds (best kept)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--weights", default="imagenet", help="imagenet or none")
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from covnb.train import _model_for, compute_features, recipe_config

    weights = None if args.weights.lower() == "none" else args.weights
    frames = load_frames(args.data, args.frames, args.image_size)
    names = [n.strip() for n in args.backbones.split(",") if n.strip()]
    configs, models = {}, {}
    for name in names:
        configs[name] = recipe_config("default", backbone=name, weights=weights, image_size=args.image_size,
                                      seed=0, mirror_view=False)
        keras.utils.set_random_seed(0)
        models[name] = _model_for(configs[name], 2, 0)
        compute_features(frames[:16], configs[name], models[name], cache=False, log=None)  # warm-up: tracing
    best = {name: float("inf") for name in names}
    for _ in range(args.repeats):
        for name in names:
            started = time.perf_counter()
            compute_features(frames, configs[name], models[name], cache=False, log=None)
            best[name] = min(best[name], time.perf_counter() - started)
    print(f"{len(frames)} frames of {args.data or 'the phantom'}, {args.image_size} px, weights {args.weights}, "
          f"best of {args.repeats} round-robin rounds; TF {tf.__version__}, Keras {keras.__version__}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'backbone':<22}{'head':>12}{'s / 100 frames':>16}")
    for name in names:
        print(f"{name:<22}{configs[name].head:>12}{100 * best[name] / len(frames):>16.2f}")


if __name__ == "__main__":
    main()
