"""Canonical inputs: the ultrasound image found, cropped and cleaned of overlays.

Synthetic screens where the answer is known (a fan or rectangle of moving speckle with text,
a colour bar, a ruler, a logo and markers drawn on it), and real files from ../shared.
"""

from pathlib import Path

import cv2
import numpy as np
import pytest

from covnb.canonical import CANONICAL_MODES, canonicalize, overlay_mask, region_iou, ultrasound_region
from covnb.frames import FrameSettings, read_frames

HEIGHT, WIDTH = 360, 560


def fan_mask(height=HEIGHT, width=WIDTH, apex=(240, -30), radii=(60, 330), half_angle=38):
    """A convex-probe sector: an annulus piece below the apex."""
    y, x = np.mgrid[:height, :width]
    dy, dx = y - apex[1], x - apex[0]
    radius = np.hypot(dx, dy)
    angle = np.degrees(np.arctan2(dx, dy))
    return (radius >= radii[0]) & (radius <= radii[1]) & (np.abs(angle) <= half_angle)


def speckle(rng, shape, n_frames, shift=3):
    """Smoothed Rayleigh speckle that moves a few pixels per frame (breathing, probe motion)."""
    big = rng.rayleigh(40, (shape[0] + 40, shape[1] + 40 + shift * n_frames)).astype(np.float32)
    big = cv2.GaussianBlur(big, (0, 0), 1.2)
    frames = [big[20:20 + shape[0], 20 + shift * t:20 + shift * t + shape[1]] for t in range(n_frames)]
    return np.clip(np.stack(frames) * 1.6 + 20, 0, 230).astype(np.uint8)


def draw_overlays(frame, fan):
    """Text, a logo, a colour bar, a depth ruler outside the fan; text and markers inside it."""
    cv2.putText(frame, "GE LOGIQ  C1-5  18Hz", (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
    cv2.rectangle(frame, (8, 300), (70, 340), (255, 255, 255), -1)  # logo block
    cv2.putText(frame, "MI 1.1 TIS 0.4", (8, 60), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (220, 220, 220), 1)
    for i in range(120):  # colour bar, right edge
        cv2.line(frame, (525, 80 + i), (540, 80 + i), (255 - 2 * i, 40 + i, 2 * i), 1)
    for depth in range(40, 340, 30):  # ruler ticks beside the fan
        cv2.line(frame, (470, depth), (480, depth), (255, 255, 255), 1)
        cv2.putText(frame, str(depth // 30), (483, depth + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (255, 255, 255), 1)
    cv2.putText(frame, "R LUNG", (200, 200), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 2)  # inside the fan
    cv2.drawMarker(frame, (260, 150), (0, 255, 0), cv2.MARKER_CROSS, 14, 2)  # coloured caliper inside
    cv2.arrowedLine(frame, (150, 120), (190, 150), (255, 255, 0), 2)  # yellow arrow inside
    return frame


def synthetic_video(seed=0, n_frames=12, shape="fan"):
    rng = np.random.default_rng(seed)
    region = fan_mask() if shape == "fan" else np.zeros((HEIGHT, WIDTH), bool)
    if shape == "linear":
        region[40:330, 100:380] = True
    tissue = speckle(rng, (HEIGHT, WIDTH), n_frames)
    frames = np.zeros((n_frames, HEIGHT, WIDTH, 3), np.uint8)
    frames[:, region] = tissue[:, region][..., None]
    clean = frames.copy()
    frames = np.stack([draw_overlays(frame.copy(), region) for frame in frames])
    return frames, clean, region


@pytest.mark.parametrize("shape", ["fan", "linear"])
def test_region_of_a_video_matches_the_true_image_despite_overlays(shape):
    frames, _, truth = synthetic_video(shape=shape)
    region = ultrasound_region(frames)
    assert region.method == "motion"
    assert region_iou(region.mask, truth) > 0.9
    top, bottom, left, right = region.box
    rows, cols = np.nonzero(truth.any(axis=1))[0], np.nonzero(truth.any(axis=0))[0]
    assert abs(top - rows[0]) < 12 and abs(bottom - rows[-1]) < 12
    assert abs(left - cols[0]) < 12 and abs(right - cols[-1]) < 12


def test_crop_and_inpaint_remove_the_overlays():
    frames, clean, truth = synthetic_video()
    out, region = canonicalize(frames, "crop+inpaint")
    top, bottom, left, right = region.box
    assert out.shape == (len(frames), bottom - top, right - left, 3)
    chroma = out.max(axis=-1).astype(int) - out.min(axis=-1)
    assert chroma.max() < 40, "coloured marker and arrow inpainted"
    # the white text inside the fan is gone: no saturated pixels left where it was
    text = np.zeros((HEIGHT, WIDTH), np.uint8)
    cv2.putText(text, "R LUNG", (200, 200), cv2.FONT_HERSHEY_SIMPLEX, 0.6, 255, 2)
    text_in_crop = text[top:bottom, left:right] > 0
    assert out[:, text_in_crop].max() < 235
    assert np.abs(out[:, text_in_crop].astype(int) - clean[:, top:bottom, left:right][:, text_in_crop]).mean() < 40
    # everything outside the fan is black, the fan's tissue is kept
    inside = truth[top:bottom, left:right]
    overlay = overlay_mask(frames, region)[top:bottom, left:right]
    assert out[:, ~region.mask[top:bottom, left:right]].max() == 0
    drawn = (frames != clean).any(axis=(0, 3))[top:bottom, left:right] & inside
    assert (overlay & drawn).sum() > 0.9 * drawn.sum(), "the overlays drawn inside the fan are found"
    assert (overlay & inside & ~drawn).sum() < 0.01 * inside.sum(), "the tissue is left alone"
    untouched = inside & ~overlay & ~drawn & region.mask[top:bottom, left:right]
    np.testing.assert_array_equal(out[:, untouched], clean[:, top:bottom, left:right][:, untouched])


def test_crop_only_keeps_overlays_inside_and_gray_makes_channels_equal():
    frames, _, _ = synthetic_video()
    cropped, region = canonicalize(frames, "crop")
    chroma = cropped.max(axis=-1).astype(int) - cropped.min(axis=-1)
    assert chroma.max() > 100  # crop alone does not inpaint the green caliper
    gray, same = canonicalize(frames, "crop+inpaint+gray", region=region)
    assert same is region
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    off, _ = canonicalize(frames, "off")
    np.testing.assert_array_equal(off, frames)
    with pytest.raises(ValueError, match="canonical must be one of"):
        canonicalize(frames, "sharpen")


def test_still_publication_figure_region_is_the_fan_not_the_page():
    frames, _, truth = synthetic_video(n_frames=1)
    page = np.full((HEIGHT + 160, WIDTH + 200, 3), 255, np.uint8)  # white page, image panel offset
    page[60:60 + HEIGHT, 120:120 + WIDTH] = frames[0]
    cv2.putText(page, "A", (20, 50), cv2.FONT_HERSHEY_SIMPLEX, 1.5, (0, 0, 0), 3)  # panel letter
    cv2.putText(page, "Figure 2. B-lines and an irregular pleural line", (20, HEIGHT + 110),
                cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1)
    cv2.arrowedLine(page, (40, 200), (140 + 150, 60 + 120), (255, 0, 0), 3)  # red arrow into the image
    page_truth = np.zeros(page.shape[:2], bool)
    page_truth[60:60 + HEIGHT, 120:120 + WIDTH] = truth
    region = ultrasound_region(page)
    assert region.method == "still"
    assert region_iou(region.mask, page_truth) > 0.9


def test_nothing_found_keeps_the_whole_frame():
    black = np.zeros((5, 64, 80, 3), np.uint8)
    region = ultrasound_region(black)
    assert region.method == "whole" and region.mask.all() and region.box == (0, 64, 0, 80)


def test_frame_settings_canonical_changes_the_cache_key_and_is_validated():
    assert FrameSettings().key() == FrameSettings(canonical="off").key()
    keys = {FrameSettings(canonical=mode).key() for mode in CANONICAL_MODES}
    assert len(keys) == len(CANONICAL_MODES)
    with pytest.raises(ValueError, match="canonical must be one of"):
        FrameSettings(canonical="yes")


def test_read_frames_applies_canonical_to_a_video_file(tmp_path):
    frames, _, truth = synthetic_video(n_frames=15)
    path = tmp_path / "screen.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (WIDTH, HEIGHT))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    plain, _ = read_frames(path, FrameSettings(rate_hz=15, image_size=64))
    canonical, info = read_frames(path, FrameSettings(rate_hz=15, image_size=64, canonical="crop+inpaint"))
    assert canonical.shape == plain.shape == (15, 64, 64, 3)
    # the screen's corners (text, logo) are black after the crop; the fan fills the frame
    assert canonical[:, :4, :4].max() < 10
    assert (canonical.max(axis=(0, 3)) > 20).mean() > (plain.max(axis=(0, 3)) > 20).mean() * 0.9
    raw, _ = read_frames(path, FrameSettings(rate_hz=15), raw=True)
    assert raw.shape[1:] == (HEIGHT, WIDTH, 3)


REAL_FILES = [
    ("pocus_videos/convex/Cov_denault_proposedUS_vid12.mov", "motion"),
    ("pocus_videos/convex/Reg_northumbria_0409_set5_vid1.avi", "motion"),
    ("pocus_videos/convex/pneu-radiopaeda.mp4", "motion"),
    ("pocus_images/convex/Cov_unsmooth_pleuralline_prelim_study_SSRN_paper2.png", "still"),
    ("pocus_images/convex/Pneu_Avi_consolidated-lung.JPG", "still"),
]


@pytest.mark.parametrize("relative,method", REAL_FILES)
def test_region_of_real_files_is_plausible(pocus_root, relative, method):
    raw, _ = read_frames(pocus_root / relative, FrameSettings(max_frames=10), raw=True)
    region = ultrasound_region(raw)
    assert region.method == method
    assert 0.15 < region.share < 0.97, region.share
    top, bottom, left, right = region.box
    assert (bottom - top) > 0.3 * raw.shape[1] and (right - left) > 0.3 * raw.shape[2]


def test_region_of_a_real_linear_video_leaves_out_its_black_band(pocus_root):
    """The linear videos of ../shared are cropped squares; this one keeps a black band at the right."""
    raw, _ = read_frames(pocus_root / "pocus_videos/linear/Reg_Image_181206_crop.mp4", FrameSettings(max_frames=10),
                         raw=True)
    region = ultrasound_region(raw)
    top, bottom, left, right = region.box
    assert region.method == "motion" and 0.6 < region.share < 0.97
    assert right < 0.95 * raw.shape[2] and bottom > 0.95 * raw.shape[1]
    assert raw[:, :, right:].max(axis=-1).mean() < 10  # what was left out is black


@pytest.mark.slow
def test_canonical_setting_travels_in_the_sidecar_to_predict_and_cam(tmp_path):
    """A model saved with FrameSettings(canonical=...) in its sidecar: covnb predict and covnb cam
    prepare frames exactly as training did (same probabilities as frames read with the setting)."""
    import dataclasses

    import keras

    from covnb.cam import predict_probs
    from covnb.cam_export import export_cam
    from covnb.models import save_model
    from covnb.predict import predict_paths

    frames, _, _ = synthetic_video(n_frames=9)
    video = tmp_path / "data" / "screen.avi"
    video.parent.mkdir()
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 9.0, (WIDTH, HEIGHT))
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    size = 48
    settings = FrameSettings(rate_hz=9, max_frames=9, image_size=size, canonical="crop+inpaint")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, 3), name="image")
    maps = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs / 255.0)
    logits = keras.layers.Dense(2, name="logits")(keras.layers.GlobalAveragePooling2D()(maps))
    model = keras.Model(inputs, keras.layers.Softmax(name="probs")(logits))
    path = save_model(model, tmp_path / "model" / "model.keras",
                      {"classes": ["covid", "regular"], "frame_settings": dataclasses.asdict(settings)})
    expected = predict_probs(model, read_frames(video, settings)[0])
    plain = predict_probs(model, read_frames(video, dataclasses.replace(settings, canonical="off"))[0])
    assert np.abs(expected - plain).max() > 1e-4  # the setting changes what the model sees
    predicted = predict_paths(path, [video])
    np.testing.assert_allclose(predicted.frames[["prob_covid", "prob_regular"]].to_numpy(), expected, atol=1e-5)
    index = export_cam(path, [video], tmp_path / "cam", class_name="covid", mp4=False, top_k=1)
    row = index[index["status"] == "ok"].iloc[0]
    frame_position = list(read_frames(video, settings)[1]["frame_index"]).index(int(row["frame_index"]))
    assert row["class_prob"] == pytest.approx(expected[frame_position, 0], abs=1e-5)
