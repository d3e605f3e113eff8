"""Benchmark: frames/s of ``covnb.predict.predict_paths`` vs a bare model call on the same frames.

``predict_paths`` decodes and samples the files, batches frames across files and calls the
model in a ``tf.function``, decoding the next files in a thread meanwhile. Compared, on the same
files and the same (saved and reloaded) model, the default recipe's head:

* the bare model call (``tf.function``, batches) on frames decoded beforehand: the model alone;
* decoding and sampling alone (``covnb.frames.read_frames``): the work every predictor must do;
* a plain loop, each file decoded and then the bare model called on its frames: the simplest
  correct predictor;
* ``predict_paths`` from the files, and with a warm frame cache (``use_cache=True``, second run).

The ratios say what the pipeline costs beyond the model (target: within 15% of the bare model's
frames/s) and what it saves against the plain loop. Not a test.

    python benchmarks/bench_predict.py --data ../shared/data/pocus --files 20
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
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--head", default="midlevel", help="model head (default: the default recipe's)")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from covnb.datasets import load_dataset
    from covnb.frames import FrameSettings, read_frames
    from covnb.models import build_model, save_model
    from covnb.predict import predict_paths

    dataset = load_dataset(args.data)
    videos = dataset.samples[dataset.samples["kind"] == "video"]
    paths = list(videos["path"].iloc[: args.files])
    settings = FrameSettings(image_size=args.image_size)
    model = build_model(args.backbone, 3, args.head, args.image_size,
                        weights=None if args.weights == "none" else args.weights)
    folder = tempfile.mkdtemp()
    model_path = save_model(model, os.path.join(folder, "model.keras"),
                            {"classes": ["covid", "pneumonia", "regular"], "image_size": args.image_size,
                             "frame_settings": {"rate_hz": settings.rate_hz, "max_frames": settings.max_frames,
                                                "image_size": args.image_size}})
    from covnb.models import load_model

    loaded = load_model(model_path)
    frames = np.concatenate([read_frames(p, settings)[0] for p in paths]).astype("float32")
    size = args.image_size
    model = loaded[0]  # the same (saved and reloaded) model on both sides
    call = tf.function(lambda x: model(x, training=False),
                       input_signature=[tf.TensorSpec((None, size, size, 3), tf.float32)])
    call(tf.constant(frames[: args.batch_size]))  # trace once
    predict_paths(loaded, paths[:1], batch_size=args.batch_size)  # warm-up (trace)

    cache_folder = tempfile.mkdtemp()
    os.environ["COVNB_CACHE_DIR"] = cache_folder  # a fresh frame cache for the warm-cache row
    predict_paths(loaded, paths, batch_size=args.batch_size, use_cache=True)  # fills it

    def timed(function):
        started = time.perf_counter()
        count = function()
        return count / (time.perf_counter() - started)

    def bare_call():
        for i in range(0, len(frames), args.batch_size):
            np.asarray(call(tf.constant(frames[i:i + args.batch_size])))
        return len(frames)

    def plain_loop():
        count = 0
        for path in paths:
            decoded = read_frames(path, settings)[0].astype("float32")
            for i in range(0, len(decoded), args.batch_size):
                np.asarray(call(tf.constant(decoded[i:i + args.batch_size])))
            count += len(decoded)
        return count

    rows = {"bare model call (tf.function, frames decoded beforehand)": bare_call,
            "decoding and sampling alone (frames.read_frames, no model)":
                lambda: sum(len(read_frames(p, settings)[0]) for p in paths),
            "plain loop: decode a file, then the bare model on its frames": plain_loop,
            "covnb predict_paths (decode + sample + batch + model)":
                lambda: len(predict_paths(loaded, paths, batch_size=args.batch_size).frames),
            "covnb predict_paths, warm frame cache (use_cache=True)":
                lambda: len(predict_paths(loaded, paths, batch_size=args.batch_size, use_cache=True).frames)}
    best = {name: 0.0 for name in rows}
    for _ in range(args.repeats):  # interleaved, so a busy moment of the machine hits every row
        for name, function in rows.items():
            best[name] = max(best[name], timed(function))
    print(f"{len(paths)} videos, {len(frames)} frames at {size} px, backbone {args.backbone}, head {args.head}, "
          f"batch {args.batch_size}, best of {args.repeats}")
    print("| method | frames/s | % of bare model |")
    print("|---|---|---|")
    bare = best["bare model call (tf.function, frames decoded beforehand)"]
    for name, value in best.items():
        print(f"| {name} | {value:.1f} | {100 * value / bare:.0f}% |")
    names = list(best)
    print(f"\npredict_paths: {100 * best[names[3]] / bare:.0f}% of the bare model's frames/s "
          f"({100 * best[names[3]] / best[names[1]]:.0f}% of decoding alone, {best[names[3]] / best[names[2]]:.2f}x "
          f"the plain loop); with a warm frame cache {100 * best[names[4]] / bare:.0f}% of the bare model")


if __name__ == "__main__":
    main()
