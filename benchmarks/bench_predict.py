"""Benchmark: frames/s of ``covnb.predict.predict_paths`` vs a bare model call on the same frames.

``predict_paths`` decodes and samples the files, batches frames across files and calls the
model in a ``tf.function``; the bare call runs the same model on the already decoded frames.
The ratio is the overhead of the pipeline (target: within 15%). Not a test.

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
    model = build_model(args.backbone, 3, "gap", args.image_size, None if args.weights == "none" else args.weights)
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

    bare, pipeline, decode = [], [], []
    for _ in range(args.repeats):
        started = time.perf_counter()
        decoded = sum(len(read_frames(p, settings)[0]) for p in paths)
        decode.append(decoded / (time.perf_counter() - started))
        started = time.perf_counter()
        for i in range(0, len(frames), args.batch_size):
            np.asarray(call(tf.constant(frames[i:i + args.batch_size])))
        bare.append(len(frames) / (time.perf_counter() - started))
        started = time.perf_counter()
        result = predict_paths(loaded, paths, batch_size=args.batch_size)
        pipeline.append(len(result.frames) / (time.perf_counter() - started))
    print(f"{len(paths)} videos, {len(frames)} frames at {size} px, backbone {args.backbone}, "
          f"batch {args.batch_size}, best of {args.repeats}")
    print("| method | frames/s |")
    print("|---|---|")
    print(f"| bare model call (tf.function, decoded frames) | {max(bare):.1f} |")
    print(f"| covnb predict_paths (decode + sample + model) | {max(pipeline):.1f} |")
    print(f"| decoding and sampling alone (frames.read_frames, no model) | {max(decode):.1f} |")
    serial = 1.0 / (1.0 / max(bare) + 1.0 / max(decode))
    print(f"\ndecoding one after the other with the model would give {serial:.1f} frames/s "
          f"({100 * serial / max(bare):.0f}% of bare); predict_paths decodes the next files in a thread meanwhile")
    print(f"\npredict_paths reaches {100 * max(pipeline) / max(bare):.0f}% of the bare model's frames/s")


if __name__ == "__main__":
    main()
