"""Tests of covnb.cam: a known-answer case (a trained model must look at the mark that defines
its class) for CAM, Grad-CAM and Grad-CAM++, plus shapes, layers, overlays and CAM statistics."""

import os
from types import SimpleNamespace

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
import pandas as pd
import pytest

import keras

from covnb import cam

SIZE = 64
MARK = 12  # side of the bright square that defines class 1, always in the top-left quadrant


def marked_images(n: int, seed: int):
    """Noise images with a green decoy square in the bottom-right quadrant (every image, no class
    information); odd images (class 1) also carry a red MARK x MARK square in the top-left quadrant.

    Returns (images float32 0..255, labels, top-left corners (row, col) of the red square).
    """
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 120, (n, SIZE, SIZE, 3)).astype("float32")
    labels = np.arange(n) % 2
    corners = rng.integers(2, SIZE // 2 - MARK, size=(n, 2))
    decoys = rng.integers(SIZE // 2 + 2, SIZE - MARK - 2, size=(n, 2))
    for image, label, (row, col), (decoy_row, decoy_col) in zip(images, labels, corners, decoys):
        image[decoy_row:decoy_row + MARK, decoy_col:decoy_col + MARK] = (40, 255, 40)
        if label == 1:
            image[row:row + MARK, col:col + MARK] = (255, 40, 40)
    return images, labels, corners


def small_flat_model(n_classes=2, head="gap", seed=0):
    """Conv layers -> head -> Dense "logits" -> softmax "probs", raw RGB 0..255 in."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(name="pool2")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv3")(x)
    if head == "gap":
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        x = keras.layers.Dropout(0.1, name="drop")(x)
    else:  # the POCOVID-Net head
        x = keras.layers.AveragePooling2D(4, name="avgpool")(x)
        x = keras.layers.Flatten(name="flatten")(x)
        x = keras.layers.Dense(8, name="dense")(x)
        x = keras.layers.BatchNormalization(name="bn")(x)
        x = keras.layers.ReLU(name="relu")(x)
    logits = keras.layers.Dense(n_classes, name="logits")(x)
    probs = keras.layers.Activation("softmax", name="probs")(logits)
    return keras.Model(inputs, probs, name=f"tiny_{head}")


@pytest.fixture(scope="module")
def trained():
    """The tiny GAP model trained on marked images (about 6 s on two cores; 100% on seeds 0-4)."""
    images, labels, _ = marked_images(256, seed=0)
    model = small_flat_model(seed=0)
    model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(images, labels, epochs=15, batch_size=32, verbose=0)
    return model


@pytest.fixture(scope="module")
def test_set():
    return marked_images(40, seed=1)


@pytest.fixture(scope="module")
def untrained():
    return small_flat_model(n_classes=3, seed=3)


def random_frames(n=3, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, SIZE, SIZE, 3)).astype("float32")


# ---------------------------------------------------------------------------- known answer


def test_model_learns_the_mark(trained, test_set):
    images, labels, _ = test_set
    assert (cam.predict_probs(trained, images).argmax(axis=1) == labels).mean() >= 0.95


def peak_on_mark(heatmap, corner, margin=4) -> bool:
    """Whether the box-filtered peak lies on the red square (give or take one conv3 cell, 4 px)."""
    row, col = corner
    x, y = cam.heatmap_peak(heatmap, box=9, frame_size=(SIZE, SIZE))
    return bool(col - margin <= x < col + MARK + margin and row - margin <= y < row + MARK + margin)


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcam++"])
def test_heatmap_peak_falls_on_the_mark(trained, test_set, method):
    images, labels, corners = test_set
    marked = labels == 1
    result = cam.explain(trained, images[marked], method=method, class_index=1)
    for heatmap, corner in zip(result.heatmaps, corners[marked]):
        x, y = cam.heatmap_peak(heatmap, box=9, frame_size=(SIZE, SIZE))
        assert x < SIZE // 2 and y < SIZE // 2, f"{method}: peak ({x}, {y}) outside the top-left quadrant"
        assert peak_on_mark(heatmap, corner), f"{method}: peak ({x}, {y}) off the mark at {corner}"


@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_other_class_map_avoids_the_mark(trained, test_set, method):
    """Class-discriminative methods: the evidence for class 0 is not the class-1 mark.

    (Grad-CAM++ keeps only positive gradients and is known to be less class-discriminative.)
    An untrained model fails this and the test above together on most seeds.
    """
    images, labels, corners = test_set
    marked = labels == 1
    result = cam.explain(trained, images[marked], method=method, class_index=0)
    assert not any(peak_on_mark(heatmap, corner) for heatmap, corner in zip(result.heatmaps, corners[marked]))


def test_cam_peaks_table_on_the_known_answer(trained, test_set):
    images, labels, _ = test_set
    index = pd.DataFrame({"sample_id": [f"s{i // 4}" for i in range(len(images))],
                          "frame_index": np.arange(len(images)) % 4, "label": labels})
    peaks = cam.cam_peaks(trained, images, index=index, class_names=["plain", "marked"], box=9)
    assert list(peaks.columns) == ["sample", "frame", "label", "class", "class_index", "prob", "peak_x", "peak_y",
                                   "inside"]
    assert len(peaks) == len(images)
    assert peaks["peak_x"].between(0, 1).all() and peaks["peak_y"].between(0, 1).all()
    marked = peaks[peaks["label"] == 1]
    assert (marked["class"] == "marked").all()
    assert (marked["peak_x"] < 0.5).all() and (marked["peak_y"] < 0.5).all()
    frame_set = SimpleNamespace(frames=images[:4], index=index[:4])  # duck-typed covnb.frames.FrameSet
    pd.testing.assert_frame_equal(cam.cam_peaks(trained, frame_set, box=9), peaks[:4].assign(
        **{"class": peaks["class_index"][:4]}), check_dtype=False, atol=1e-6)
    figure = cam.plot_peak_scatter(peaks, background=images[1])
    assert figure.axes and figure.axes[0].get_xlim() == (0.0, 1.0)


# ---------------------------------------------------------------------------- shapes and layers


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcam++"])
def test_shapes_and_normalisation(untrained, method):
    frames = random_frames(5)
    result = cam.explain(untrained, frames, method=method)
    assert result.heatmaps.shape == (5, 16, 16) and result.heatmaps.dtype == np.float32
    assert result.probs.shape == (5, 3) and result.logits.shape == (5, 3)
    assert result.heatmaps.min() >= 0.0 and result.heatmaps.max() <= 1.0
    for heatmap in result.heatmaps:
        assert heatmap.max() == pytest.approx(1.0) or heatmap.max() == 0.0
    np.testing.assert_array_equal(result.class_index, result.probs.argmax(axis=1))
    np.testing.assert_allclose(result.probs, keras.ops.convert_to_numpy(keras.ops.softmax(result.logits)), atol=1e-5)
    assert result.layer == "conv3" and result.method == method


@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcam++"])
def test_batched_result_equals_per_frame_result(untrained, method):
    frames = random_frames(5, seed=1)
    classes = np.array([0, 1, 2, 1, 0])
    batched = cam.explain(untrained, frames, method=method, class_index=classes, batch_size=4)
    for i in range(len(frames)):
        single = cam.explain(untrained, frames[i:i + 1], method=method, class_index=int(classes[i]))
        np.testing.assert_allclose(batched.heatmaps[i], single.heatmaps[0], atol=1e-4)
        np.testing.assert_allclose(batched.probs[i], single.probs[0], atol=1e-5)
    np.testing.assert_array_equal(batched.class_index, classes)


def test_class_index_changes_the_map(untrained):
    frames = random_frames(2, seed=2)
    maps = [cam.grad_cam(untrained, frames, class_index=c).heatmaps for c in range(3)]
    assert not np.allclose(maps[0], maps[1]) and not np.allclose(maps[1], maps[2])
    with pytest.raises(ValueError, match="out of range"):
        cam.grad_cam(untrained, frames, class_index=3)


def test_eager_equals_compiled(untrained):
    frames = random_frames(2, seed=4)
    for method in ("gradcam", "gradcam++", "cam"):
        compiled = cam.explain(untrained, frames, method=method, compiled=True)
        eager = cam.explain(untrained, frames, method=method, compiled=False)
        np.testing.assert_allclose(compiled.heatmaps, eager.heatmaps, atol=1e-5)


def test_layer_selection_by_name(untrained):
    result = cam.grad_cam(untrained, random_frames(2), layer="conv1")
    assert result.heatmaps.shape == (2, SIZE, SIZE) and result.layer == "conv1"
    assert cam.grad_cam_plus_plus(untrained, random_frames(2), layer="conv2").heatmaps.shape == (2, 32, 32)
    assert cam.last_conv_layer_name(untrained) == "conv3"
    assert cam.conv_layer_names(untrained) == ["conv1", "conv2", "conv3"]


def test_unknown_layer_lists_conv_layers(untrained):
    with pytest.raises(ValueError, match=r"'block5_conv3' not found.*conv1, conv2, conv3"):
        cam.grad_cam(untrained, random_frames(1), layer="block5_conv3")
    with pytest.raises(ValueError, match="no 4-D feature map"):
        cam.grad_cam(untrained, random_frames(1), layer="logits")


def test_cam_needs_a_gap_head():
    model = small_flat_model(head="pocovid")
    with pytest.raises(ValueError, match="GlobalAveragePooling2D -> Dense head.*gradcam"):
        cam.class_activation_map(model, random_frames(1))
    assert cam.available_methods(model) == ["gradcam", "gradcam++"]
    result = cam.explain(model, random_frames(2), method="gradcam++")  # Grad-CAM works on any head
    assert result.heatmaps.shape == (2, 16, 16) and result.layer == "conv3"


def test_cam_only_on_the_pooled_layer(untrained):
    assert cam.cam_feature_layer_name(untrained) == "conv3"
    with pytest.raises(ValueError, match="feeding the global average pooling"):
        cam.class_activation_map(untrained, random_frames(1), layer="conv2")


def test_logits_layer_variants(untrained):
    assert cam.logits_layer(untrained).name == "logits"
    # Final Dense with softmax built in: logits are recomputed from its input, kernel and bias.
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="only_conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax", name="classifier")(x)
    model = keras.Model(inputs, outputs)
    assert cam.logits_layer(model).name == "classifier"
    result = cam.grad_cam(model, random_frames(2, seed=5))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(keras.ops.softmax(result.logits)), result.probs, atol=1e-5)
    assert cam.explain(model, random_frames(1), method="cam").layer == "only_conv"
    # Softmax as a separate unnamed layer: the layer before it holds the logits.
    x2 = keras.layers.Dense(3, name="scores")(x)
    model2 = keras.Model(inputs, keras.layers.Softmax()(x2))
    assert cam.logits_layer(model2).name == "scores"


def test_nested_backbone_is_refused():
    inner_in = keras.Input((SIZE, SIZE, 3))
    inner = keras.Model(inner_in, keras.layers.Conv2D(4, 3, name="inner_conv")(inner_in), name="backbone")
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.GlobalAveragePooling2D()(inner(inputs))
    model = keras.Model(inputs, keras.layers.Activation("softmax")(keras.layers.Dense(2, name="logits")(x)))
    with pytest.raises(ValueError, match="nested model 'backbone'.*flat"):
        cam.grad_cam(model, random_frames(1))


def test_bad_frames_and_method(untrained):
    with pytest.raises(ValueError, match="expects 64x64"):
        cam.grad_cam(untrained, np.zeros((1, 32, 32, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        cam.grad_cam(untrained, np.zeros((1, SIZE, SIZE), np.float32))
    with pytest.raises(ValueError, match="Unknown CAM method 'lime'"):
        cam.explain(untrained, random_frames(1), method="lime")
    assert cam.explain(untrained, random_frames(1), method="Grad-CAM++").method == "gradcam++"


# ---------------------------------------------------------------------------- post-processing


def test_normalize_upsample_threshold():
    stack = np.array([[[-1.0, 2.0], [4.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]], np.float32)
    normalised = cam.normalize_heatmap(stack)
    np.testing.assert_allclose(normalised[0], [[0.0, 0.5], [1.0, 0.0]])
    np.testing.assert_array_equal(normalised[1], 0.0)
    up = cam.upsample_heatmap(normalised[0], (20, 30))
    assert up.shape == (20, 30) and up.dtype == np.float32
    assert up.min() >= 0.0 and up.max() <= 1.0
    assert cam.upsample_heatmap(normalised, 8).shape == (2, 8, 8)
    ramp = np.linspace(0, 1, 11, dtype=np.float32).reshape(1, 11)
    cut = cam.threshold_heatmap(ramp, 0.5)
    np.testing.assert_array_equal(cut[ramp < 0.5], 0.0)
    np.testing.assert_array_equal(cut[ramp >= 0.5], ramp[ramp >= 0.5])
    with pytest.raises(ValueError, match="0..1"):
        cam.threshold_heatmap(ramp, 1.5)


def test_overlay():
    frame = np.full((40, 50, 3), 100, np.uint8)
    heatmap = np.zeros((5, 5), np.float32)
    heatmap[0, 0] = 1.0
    out = cam.overlay(frame, heatmap, alpha=0.4, colormap="jet")
    assert out.shape == (40, 50, 3) and out.dtype == np.uint8
    assert not np.array_equal(out[0, 0], out[-1, -1])  # hot corner differs from the cold one
    assert np.array_equal(cam.overlay(frame, heatmap, alpha=0.0), frame)
    # With a threshold, pixels under it keep the plain frame.
    thresholded = cam.overlay(frame, heatmap, alpha=0.5, colormap="magma", threshold=0.5)
    assert np.array_equal(thresholded[-1, -1], frame[-1, -1])
    assert not np.array_equal(thresholded[0, 0], frame[0, 0])
    assert cam.overlay(frame[..., 0], heatmap).shape == (40, 50, 3)  # grayscale frame
    with pytest.raises(ValueError, match="colormap 'nope'"):
        cam.overlay(frame, heatmap, colormap="nope")
    # jet: high values red, low values blue.
    coloured = cam.apply_colormap(np.array([[0.0, 1.0]]), "jet")
    assert coloured[0, 0, 2] > coloured[0, 0, 0] and coloured[0, 1, 0] > coloured[0, 1, 2]


def test_heatmap_peak_with_box_filter():
    heatmap = np.zeros((50, 60), np.float32)
    heatmap[10, 50] = 1.0  # a single hot pixel ...
    heatmap[30:40, 10:20] = 0.6  # ... loses against a broad warm region once box-filtered
    assert cam.heatmap_peak(heatmap, box=1) == (50.0, 10.0)
    x, y = cam.heatmap_peak(heatmap, box=9)
    assert 10 <= x < 20 and 30 <= y < 40
    small = np.zeros((4, 4), np.float32)
    small[3, 0] = 1.0
    x, y = cam.heatmap_peak(small, box=1, frame_size=(40, 40))
    assert x < 10 and y >= 30


def fan_image(size=128):
    """A convex-probe fan with speckle and dark holes, a white text label and a ruler outside it."""
    rng = np.random.default_rng(0)
    image = np.zeros((size, size, 3), np.uint8)
    fan = np.zeros((size, size), np.uint8)
    cv2.ellipse(fan, (size // 2, 0), (size - 24, size - 24), 0, 55, 125, 1, thickness=cv2.FILLED)
    speckle = rng.integers(40, 200, (size, size), dtype=np.uint8)
    speckle[rng.random((size, size)) < 0.05] = 0  # dark pixels inside the fan
    image[fan == 1] = speckle[fan == 1][:, None]
    cv2.putText(image, "L12", (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1)
    image[20:110, size - 3] = 220  # a depth ruler at the right border
    return image, fan.astype(bool)


def test_sector_mask_on_a_synthetic_fan():
    image, fan = fan_image()
    mask = cam.sector_mask(image)
    assert mask.shape == fan.shape and mask.dtype == bool
    iou = (mask & fan).sum() / (mask | fan).sum()
    assert iou > 0.95
    assert not mask[2:12, 2:25].any()  # the text label is left out
    assert not mask[20:110, -3].any()  # so is the ruler
    assert mask.sum() == cam.sector_mask(np.stack([image, image])).sum()  # a (T, H, W, 3) stack
    assert not cam.sector_mask(np.zeros((16, 16, 3), np.uint8)).any()


def test_heat_inside_fraction():
    mask = np.zeros((40, 40), bool)
    mask[:, :20] = True
    heatmap = np.zeros((4, 4), np.float32)
    heatmap[:, :2] = 1.0
    assert cam.heat_inside_fraction(heatmap, mask) > 0.9  # bilinear upsampling spills a little
    assert cam.heat_inside_fraction(cam.upsample_heatmap(heatmap, 40), mask) == pytest.approx(1.0, abs=0.07)
    heatmap[:, 2:] = 1.0
    assert cam.heat_inside_fraction(heatmap, mask) == pytest.approx(0.5)
    heatmap[:, :2] = 0.0
    assert cam.heat_inside_fraction(heatmap, mask) < 0.1
    assert np.isnan(cam.heat_inside_fraction(np.zeros((4, 4)), mask))


def test_sector_mask_on_real_ultrasound(pocus_root):
    image = cv2.imread(str(pocus_root / "pocus_images/convex/Reg_Avi_Image001.jpg"))[..., ::-1]
    mask = cam.sector_mask(image)
    height, width = mask.shape
    assert 0.5 < mask.mean() < 0.95
    assert mask[height // 2, width // 2] and not mask[0, 0] and not mask[0, -1]
