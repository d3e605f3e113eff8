"""Frames/s of backbone feature extraction at 224x224, batch 32: model called inside
``tf.function`` versus ``model.predict``.

Run:  python benchmarks/bench_backbones.py [--batches 5] [--batch-size 32] [--repeats 3]

Weights are random (speed does not depend on them, and nothing needs a network or a cache).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras  # noqa: E402
from covnb.backbones import feature_extractor  # noqa: E402

CONFIGS = [
    ("efficientnet_lite0", None),
    ("mobilenet", 1.0),
    ("mobilenet", 0.25),
]


def frames_per_second(run, frames: np.ndarray, n_batches: int) -> float:
    run(frames)  # warm-up: tracing / predict-function creation
    start = time.perf_counter()
    for _ in range(n_batches):
        run(frames)
    return n_batches * len(frames) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=5, help="timed batches per measurement")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats (best kept)")
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    frames = np.random.default_rng(0).uniform(
        0, 255, (args.batch_size, args.image_size, args.image_size, 3)).astype("float32")

    print(f"batch {args.batch_size}, {args.image_size}x{args.image_size}, {args.batches} timed "
          f"batches, best of {args.repeats}, TF {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs")
    header = f"{'backbone':<24}{'tf.function fps':>16}{'predict fps':>13}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for name, alpha in CONFIGS:
        model = feature_extractor(name, args.image_size, weights=None, pooling="avg", alpha=alpha)
        compiled = tf.function(lambda x, m=model: m(x, training=False), reduce_retracing=True)
        fps_function, fps_predict = 0.0, 0.0
        for _ in range(args.repeats):  # alternate, keep the best: robust to a shared machine
            fps_function = max(fps_function, frames_per_second(
                lambda x: compiled(x).numpy(), frames, args.batches))
            fps_predict = max(fps_predict, frames_per_second(
                lambda x: model.predict(x, batch_size=args.batch_size, verbose=0), frames,
                args.batches))
        label = name if alpha is None else f"{name} (alpha {alpha})"
        print(f"{label:<24}{fps_function:>16.1f}{fps_predict:>13.1f}"
              f"{fps_function / fps_predict:>8.2f}")


if __name__ == "__main__":
    main()
