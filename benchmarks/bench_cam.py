"""Speed of covnb.cam and the CamExplorer on a 224x224 flat model (random weights).

Targets: a cached redraw (opacity / colormap / threshold) under 100 ms; a new frame in the
explorer at most 1.5x one bare forward+backward pass; Grad-CAM inside tf.function much faster
than eager (conventions: about 0.6 s eager vs 0.15 s compiled for VGG16 at 224 on two cores).

    python benchmarks/bench_cam.py [--backbone mobilenet_v2|vgg16|...] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import keras


def flat_model(backbone: str, size: int, n_classes: int = 3) -> keras.Model:
    """Backbone (weights=None) built flat on raw RGB + GAP + Dense "logits" + softmax "probs"."""
    try:
        from covnb.backbones import build_backbone

        inputs, features, _ = build_backbone(backbone, image_size=size, weights=None)
    except ImportError:  # covnb.backbones missing: plain keras.applications
        inputs = keras.Input((size, size, 3))
        scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
        constructor = {"mobilenet_v2": keras.applications.MobileNetV2, "vgg16": keras.applications.VGG16}[backbone]
        features = constructor(include_top=False, weights=None, input_tensor=scaled).output
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(features)
    logits = keras.layers.Dense(n_classes, name="logits")(pooled)
    return keras.Model(inputs, keras.layers.Activation("softmax", name="probs")(logits), name=f"{backbone}_gap")


def timed(function, repeats: int) -> float:
    """Median wall time in ms of ``function()`` over ``repeats`` runs (after one warm-up)."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def timed_sequence(functions, warmup=1) -> float:
    """Median ms over a sequence of distinct calls (e.g. new frames), skipping the first ``warmup``."""
    times = []
    for index, function in enumerate(functions):
        start = time.perf_counter()
        function()
        if index >= warmup:
            times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="mobilenet_v2")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--frames", type=int, default=12, help="frames of the synthetic video")
    args = parser.parse_args()

    import tensorflow as tf

    from covnb import cam
    from covnb.widgets import CamExplorer

    keras.utils.set_random_seed(0)
    model = flat_model(args.backbone, args.size)
    layer = cam.last_conv_layer_name(model)
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (args.frames, args.size, args.size, 3), dtype=np.uint8)
    one = video[:1].astype(np.float32)

    # Bare passes: a compiled forward, and forward + backward of the top logit to the explained layer.
    forward = tf.function(lambda x: model(x, training=False))
    grad_model = keras.Model(model.input, [model.get_layer(layer).output, model.get_layer("logits").output])

    @tf.function
    def forward_backward(x):
        with tf.GradientTape() as tape:
            features, logits = grad_model(x, training=False)
            score = tf.reduce_max(logits, axis=-1)
        return tape.gradient(score, features)

    t_forward = timed(lambda: forward(one).numpy(), args.repeats)
    t_bare_before = timed(lambda: forward_backward(one).numpy(), args.repeats)
    t_gradcam = timed(lambda: cam.grad_cam(model, one), args.repeats)
    t_gradcam_eager = timed(lambda: cam.grad_cam(model, one, compiled=False), max(3, args.repeats // 2))
    t_gradcampp = timed(lambda: cam.grad_cam_plus_plus(model, one), args.repeats)
    t_cam = timed(lambda: cam.class_activation_map(model, one), args.repeats)
    batch = video[:8].astype(np.float32)
    t_batch = timed(lambda: cam.grad_cam(model, batch, batch_size=8), max(3, args.repeats // 2)) / 8

    with tempfile.TemporaryDirectory() as out_dir:
        explorer = CamExplorer(model, {"video": video}, ["covid", "pneumonia", "regular"], out_dir=out_dir)
        # New frames: heatmap (model) + overlay + PNG + timeline plot + sector mask.
        parts = {"heatmap": [], "overlay": [], "plot": []}

        def new_frame(i):
            explorer.frame_slider.value = i
            for key in parts:
                parts[key].append(explorer.timings[key])

        t_new = timed_sequence([lambda i=i: new_frame(i) for i in range(1, args.frames)])
        t_parts = {key: statistics.median(values[1:]) for key, values in parts.items()}
        calls = explorer.stats["model_calls"]
        opacities = iter([0.3, 0.7] * 100)  # alternate: setting the same value fires no event
        t_opacity = timed(lambda: setattr(explorer.opacity_slider, "value", next(opacities)), args.repeats * 3)
        colormaps = iter(["jet", "turbo", "inferno", "magma", "viridis", "plasma", "hot", "coolwarm"] * 10)
        t_colormap = timed(lambda: setattr(explorer.colormap_dropdown, "value", next(colormaps)), args.repeats)
        thresholds = iter([0.2, 0.4, 0.6, 0.0] * 20)
        t_threshold = timed(lambda: setattr(explorer.threshold_slider, "value", next(thresholds)), args.repeats)
        assert explorer.stats["model_calls"] == calls, "overlay controls must not call the model"
        revisit = iter(list(range(1, args.frames)) * 5)
        t_revisit = timed(lambda: setattr(explorer.frame_slider, "value", next(revisit)), args.repeats)
        t_static = timed(lambda: explorer.static_figure().savefig(os.path.join(out_dir, "x.png"), dpi=100), 3)

        # Notebook 04 statistics: method agreement over a batch of explained frames.
        results = {name: cam.explain(model, video, method=name) for name in cam.available_methods(model)}
        t_agreement = timed(lambda: cam.method_agreement(results, (args.size, args.size)), 3) / len(video)

        # covnb cam: a (loaded) model on one video file -> top-3 PNGs + an MP4 of every sampled frame.
        import cv2

        from covnb.cam_export import export_cam

        video_path = os.path.join(out_dir, "clip.avi")
        writer = cv2.VideoWriter(video_path, cv2.VideoWriter_fourcc(*"MJPG"), 3.0, (args.size, args.size))
        for frame in video:
            writer.write(frame)
        writer.release()
        loaded = (model, {"classes": ["covid", "pneumonia", "regular"], "image_size": args.size,
                          "frame_settings": {"image_size": args.size, "rate_hz": 3.0, "max_frames": args.frames}})
        exports = iter(range(100))
        t_export = timed(lambda: export_cam(loaded, [video_path], os.path.join(out_dir, f"cams{next(exports)}")),
                         3) / len(video)

    # The machine is shared: measure the baseline again and compare against the mean of both.
    t_bare_after = timed(lambda: forward_backward(one).numpy(), args.repeats)
    t_bare = (t_bare_before + t_bare_after) / 2

    rows = [
        ("bare forward, 1 frame (tf.function)", t_forward, ""),
        ("bare forward+backward to layer, 1 frame", t_bare, f"baseline (before {t_bare_before:.1f}, after "
                                                            f"{t_bare_after:.1f})"),
        ("cam.grad_cam, 1 frame, tf.function", t_gradcam, f"{t_gradcam / t_bare:.2f}x bare"),
        ("cam.grad_cam, 1 frame, eager", t_gradcam_eager, f"{t_gradcam_eager / t_gradcam:.1f}x compiled"),
        ("cam.grad_cam_plus_plus, 1 frame", t_gradcampp, f"{t_gradcampp / t_bare:.2f}x bare"),
        ("cam.class_activation_map, 1 frame", t_cam, f"{t_cam / t_forward:.2f}x forward"),
        ("cam.grad_cam, batch of 8, per frame", t_batch, f"{t_batch / t_gradcam:.2f}x single"),
    ]
    rows.append(("explorer: new frame (full redraw)", t_new, f"{t_new / t_bare:.2f}x bare (target <= 1.5x)"))
    rows.append(("  of which heatmap (cam.explain)", t_parts["heatmap"], ""))
    rows.append(("  of which overlay + PNG + status", t_parts["overlay"] - t_parts["heatmap"], ""))
    rows.append(("  of which probability plot (blit + PNG)", t_parts["plot"], ""))
    rows.append(("explorer: opacity change (cached)", t_opacity, "target < 100 ms"))
    rows.append(("explorer: colormap change (cached)", t_colormap, "target < 100 ms"))
    rows.append(("explorer: threshold change (cached)", t_threshold, "target < 100 ms"))
    rows.append(("explorer: revisit a frame (cached heatmap)", t_revisit, ""))
    rows.append(("explorer: static_figure + save PNG", t_static, ""))
    rows.append(("method_agreement (3 pairs), per frame", t_agreement, "notebook 04 statistics"))
    rows.append(("export_cam (covnb cam), per video frame", t_export, f"{t_export / t_batch:.2f}x batched grad_cam "
                                                                       "(read + predict + explain + PNG/MP4)"))

    print(f"\nbackbone {args.backbone} (weights=None), input {args.size}x{args.size}, layer {layer!r}, "
          f"{os.cpu_count()} CPUs, TensorFlow {tf.__version__}, Keras {keras.__version__}")
    width = max(len(name) for name, _, _ in rows)
    print(f"{'measure'.ljust(width)}  {'ms':>9}  note")
    for name, ms, note in rows:
        print(f"{name.ljust(width)}  {ms:9.1f}  {note}")
    verdicts = [
        ("cached redraw < 100 ms", max(t_opacity, t_colormap, t_threshold) < 100.0),
        ("new frame <= 1.5x bare forward+backward", t_new <= 1.5 * t_bare),
        ("tf.function faster than eager", t_gradcam < t_gradcam_eager),
    ]
    for name, ok in verdicts:
        print(f"{'PASS' if ok else 'MISS'}  {name}")


if __name__ == "__main__":
    main()
