"""Headless tests of covnb.widgets.CamExplorer: set ``.value`` on controls (observers fire
synchronously) and ``click()`` buttons, then check the image, caches and files."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

import keras

pytest.importorskip("ipywidgets")

from covnb import cam
from covnb.widgets import CamExplorer

CLASSES = ["covid", "pneumonia", "regular"]
SIZE = 32


def tiny_model(head="gap"):
    keras.utils.set_random_seed(7)
    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(x)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    if head == "gap":
        x = keras.layers.GlobalAveragePooling2D()(x)
    else:
        x = keras.layers.Flatten()(keras.layers.AveragePooling2D(4)(x))
    logits = keras.layers.Dense(len(CLASSES), name="logits")(x)
    return keras.Model(inputs, keras.layers.Activation("softmax", name="probs")(logits))


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture
def samples():
    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (6, 48, 40, 3), dtype=np.uint8)  # not the model size: resized for the model
    image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)  # a still image (T=1)
    return {"video A": video, "image B": image}


@pytest.fixture
def explorer(model, samples, tmp_path):
    return CamExplorer(model, samples, CLASSES, out_dir=tmp_path)


def test_widget_tree_and_css_classes(explorer):
    import ipywidgets as widgets

    assert isinstance(explorer.widget, widgets.VBox)
    for name in ("sample", "frame", "play", "class", "method", "layer", "opacity", "colormap", "threshold",
                 "save", "image", "plot"):
        control = getattr(explorer, {"sample": "sample_dropdown", "frame": "frame_slider", "play": "play",
                                     "class": "class_dropdown", "method": "method_dropdown",
                                     "layer": "layer_dropdown", "opacity": "opacity_slider",
                                     "colormap": "colormap_dropdown", "threshold": "threshold_slider",
                                     "save": "save_button", "image": "image", "plot": "plot_output"}[name])
        assert f"covnb-{name}" in control._dom_classes
    assert [b.description for b in explorer.jump_buttons] == ["Most covid", "Most pneumonia", "Most regular"]
    assert explorer.frame_slider.max == 5 and explorer.play.max == 5
    assert list(explorer.method_dropdown.options) == [("Grad-CAM", "gradcam"), ("Grad-CAM++", "gradcam++"),
                                                      ("CAM", "cam")]
    assert explorer.layer_dropdown.options == ("conv1", "conv2") and explorer.layer_dropdown.value == "conv2"
    assert explorer.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert explorer.plot_output.outputs and "image/png" in explorer.plot_output.outputs[0]["data"]
    assert explorer.last_overlay.shape == (48, 40, 3)  # shown at the frame's own size


def test_frame_slider_changes_image_and_plot(explorer):
    before_image = explorer.image.value
    before_plot = explorer.plot_output.outputs[0]["data"]["image/png"]
    explorer.frame_slider.value = 3
    assert explorer.image.value != before_image
    assert explorer.plot_output.outputs[0]["data"]["image/png"] != before_plot
    assert "frame 4/6" in explorer.status.value


def test_overlay_controls_reuse_the_cache(explorer):
    explorer.frame_slider.value = 2
    calls = explorer.stats["model_calls"]
    computed = explorer.stats["heatmaps_computed"]
    image = explorer.image.value
    explorer.opacity_slider.value = 0.8
    assert explorer.image.value != image
    explorer.colormap_dropdown.value = "inferno"
    explorer.threshold_slider.value = 0.5
    assert explorer.stats["model_calls"] == calls and explorer.stats["heatmaps_computed"] == computed
    assert explorer.stats["heatmap_cache_hits"] >= 3
    # Back to a frame seen before: no new model call either.
    explorer.frame_slider.value = 0
    explorer.frame_slider.value = 2
    assert explorer.stats["heatmaps_computed"] == computed
    assert explorer.stats["model_calls"] == calls


def test_probabilities_computed_once_per_sample(explorer, model, samples):
    expected = cam.predict_probs(model, cam.resize_frames(samples["video A"], SIZE))
    np.testing.assert_allclose(explorer.probabilities("video A"), expected, atol=1e-5)
    calls = explorer.stats["model_calls"]
    for frame in range(6):
        explorer.probabilities("video A")
    assert explorer.stats["model_calls"] == calls


def test_jump_button_goes_to_the_most_probable_frame(explorer):
    probs = explorer.probabilities("video A")
    for index, button in enumerate(explorer.jump_buttons):
        explorer.frame_slider.value = (int(probs[:, index].argmax()) + 1) % 6  # start elsewhere
        button.click()
        assert explorer.frame_slider.value == int(probs[:, index].argmax())


def test_class_dropdown_changes_heatmap(explorer):
    explorer.frame_slider.value = 1
    predicted = int(explorer.probabilities()[1].argmax())
    other = (predicted + 1) % 3
    explorer.class_dropdown.value = predicted
    first_image = explorer.image.value
    first_map = explorer.heatmap().copy()
    explorer.class_dropdown.value = other
    assert explorer.target_class() == other
    assert not np.allclose(explorer.heatmap(), first_map)
    assert explorer.image.value != first_image
    # "predicted" shares the cache entry of the predicted class.
    computed = explorer.stats["heatmaps_computed"]
    explorer.class_dropdown.value = -1
    assert explorer.stats["heatmaps_computed"] == computed
    np.testing.assert_array_equal(explorer.heatmap(), first_map)


def test_method_and_layer(explorer):
    explorer.layer_dropdown.value = "conv1"
    assert explorer.heatmap().shape == (SIZE, SIZE)
    explorer.method_dropdown.value = "cam"
    assert explorer.layer == "conv2" and explorer.layer_dropdown.disabled
    assert explorer.heatmap().shape == (16, 16)
    explorer.method_dropdown.value = "gradcam++"
    assert explorer.layer == "conv1" and not explorer.layer_dropdown.disabled


def test_save_button_writes_png(explorer, tmp_path):
    explorer.frame_slider.value = 4
    explorer.save_button.click()
    saved = explorer.last_saved
    assert saved is not None and saved.parent == tmp_path and saved.suffix == ".png"
    assert saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and saved.stat().st_size > 5000
    assert "frame004" in saved.name and str(saved) in explorer.status.value
    custom = explorer.save_png(tmp_path / "sub" / "view.png")
    assert custom.is_file()


def test_static_figure_shows_current_view(explorer):
    explorer.frame_slider.value = 5
    figure = explorer.static_figure()
    titles = [axes.get_title() for axes in figure.axes]
    assert "video A, frame 5" in titles
    assert len(figure.axes) == 4
    frame_axes, overlay_axes, timeline_axes, bar_axes = figure.axes
    # what is drawn is the current frame, its overlay, the probability of every class per frame, and its bars
    assert np.array_equal(frame_axes.images[0].get_array(), explorer.samples["video A"][5])
    assert np.array_equal(overlay_axes.images[0].get_array(), explorer.overlay_image())
    probabilities = explorer.probabilities()
    for k, line in enumerate(timeline_axes.get_lines()[:len(CLASSES)]):
        assert line.get_label() == CLASSES[k]
        assert np.allclose(line.get_ydata(), probabilities[:, k])
    assert np.allclose([bar.get_height() for bar in bar_axes.patches], probabilities[5])


def test_switching_samples(explorer):
    explorer.frame_slider.value = 5
    explorer.sample_dropdown.value = "image B"
    assert explorer.frame_slider.value == 0 and explorer.frame_slider.max == 0 and explorer.play.max == 0
    assert explorer.last_overlay.shape == (SIZE, SIZE, 3)
    assert "image B frame 1/1" in explorer.status.value.replace("</b>", "").replace("<b>", "")
    explorer.jump_buttons[0].click()
    assert explorer.frame_slider.value == 0


def test_bad_arguments(model, samples, tmp_path):
    with pytest.raises(ValueError, match="class_names has 2 names"):
        CamExplorer(model, samples, ["a", "b"], out_dir=tmp_path)
    with pytest.raises(ValueError, match="Sample 'bad'"):
        CamExplorer(model, {"bad": np.zeros((4, 4))}, CLASSES, out_dir=tmp_path)
    with pytest.raises(ValueError, match="'nope' not found.*conv1, conv2"):
        CamExplorer(model, samples, CLASSES, out_dir=tmp_path, layers=["nope"])


def test_non_gap_head_offers_no_cam(samples, tmp_path):
    explorer = CamExplorer(tiny_model(head="pocovid"), samples, CLASSES, out_dir=tmp_path, layers=["conv2"])
    assert [value for _, value in explorer.method_dropdown.options] == ["gradcam", "gradcam++"]
    assert explorer.layer_dropdown.options == ("conv2",)


def test_status_shows_the_files_calibrated_probability_and_the_uncertain_flag(model, samples, tmp_path):
    from covnb.calibration import apply_calibration
    from covnb.uncertainty import REASONS

    calibration = {"method": "temperature", "frame": {"method": "temperature", "temperature": 2.0},
                   "video": {"method": "temperature", "temperature": 3.0}}
    metadata = {"classes": CLASSES, "calibration": calibration,
                "trust": {"thresholds": {"min_confidence": 0.99}, "fold_heads": 0}}
    explorer = CamExplorer(model, samples, CLASSES, out_dir=tmp_path, metadata=metadata)
    assert explorer.calibration == calibration  # taken from the sidecar
    summary = explorer.file_summary("video A")
    raw = cam.predict_probs(model, explorer.model_frames("video A"))
    expected = apply_calibration(calibration["video"], raw.mean(axis=0, keepdims=True))[0]
    np.testing.assert_allclose(summary["probabilities"], expected, rtol=1e-5)
    assert summary["label"] == "calibrated (temperature)"
    assert summary["uncertain"] is True and summary["reason"] == REASONS[0]  # 3 classes at T=3: far below 0.99
    status = explorer.status.value
    assert f"file: <b>{summary['predicted']}</b> {summary['probability']:.2f} (calibrated (temperature)" in status
    assert f"uncertain</b>: {REASONS[0]}" in status
    explorer.sample_dropdown.value = "image B"
    assert "file: <b>" in explorer.status.value and explorer.file_summary()["label"] == "calibrated (temperature)"


def test_status_without_a_sidecar_says_raw_and_no_flag(explorer):
    summary = explorer.file_summary()
    assert summary["label"] == "raw" and summary["uncertain"] is None
    np.testing.assert_allclose(summary["probabilities"], explorer.probabilities().mean(axis=0), rtol=1e-5)
    assert "(raw probabilities)" in explorer.status.value and "uncertain" not in explorer.status.value
