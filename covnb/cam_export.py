"""Export class activation maps of a saved covnb model for files and folders (``covnb cam``).

For every image: one overlay PNG. For every video: overlay PNGs of its most telling frames (the
``top_k`` sampled frames with the highest probability of the explained class: "stop the video
where it matters") and an MP4 of all sampled frames with their heatmaps, played at the sampling
rate. Each PNG / MP4 frame shows the frame and its overlay side by side under a caption.

Frames are taken exactly as the model was trained (frame settings from its sidecar JSON, see
:mod:`covnb.predict`); heatmaps come from :func:`covnb.cam.explain` (Grad-CAM, Selvaraju et al.
2017; Grad-CAM++, Chattopadhay et al. 2018; CAM, Zhou et al. 2016). The explained class is
``class_name`` when given, else the predicted class of the file (mean frame probability, as
POCOVID-Net's video rule). A file that cannot be read is reported, not fatal; nothing is ever
written next to the inputs: only into ``out_dir``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pandas as pd

from covnb import cam
from covnb.calibration import calibrate_file_probabilities
from covnb.frames import FrameError, count_frames, read_frames
from covnb.io_utils import error_reason, slug
from covnb.models import load_model
from covnb.predict import (OutputInsideInputError, expand_paths, frame_settings_from_metadata,
                           refuse_output_inside_inputs)

__all__ = ["CamOptionError", "export_cam", "check_options", "INDEX_COLUMNS"]

INDEX_COLUMNS = ["source", "kind", "status", "output", "output_kind", "frame_index", "time_s", "class",
                 "class_prob", "predicted", "method", "layer", "heat_inside", "n_frames", "error"]
_CAPTION_HEIGHT = 28
_METHOD_LABELS = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "cam": "CAM"}


class CamOptionError(ValueError):
    """An option that does not fit the model (unknown class, layer or method): a usage error."""


@dataclasses.dataclass
class _Options:
    method: str
    layer: str
    class_index: int | None
    classes: list[str]


_slug = slug


def check_options(model, metadata: dict, *, method: str = "gradcam", layer: str | None = None,
                  class_name: str | None = None) -> _Options:
    """Validate method, layer and class against ``model``; raise :class:`CamOptionError`."""
    classes = [str(name) for name in metadata.get("classes") or []]
    canonical = cam.METHOD_ALIASES.get(str(method).lower())
    if canonical is None:
        raise CamOptionError(f"unknown CAM method {method!r}; choose one of {', '.join(cam.METHODS)}")
    if canonical not in cam.available_methods(model):
        raise CamOptionError(f"method {method!r} needs a GlobalAveragePooling2D + Dense head; model "
                             f"{model.name!r} has another head: use gradcam or gradcam++")
    try:
        layer_name = cam.cam_feature_layer_name(model) if canonical == "cam" else cam.resolve_layer(model, layer).name
        if canonical == "cam" and layer is not None and cam.resolve_layer(model, layer).name != layer_name:
            raise CamOptionError(f"CAM is defined on the layer feeding the global pooling ({layer_name!r}), "
                                 f"not on {layer!r}; use gradcam for other layers")
    except CamOptionError:
        raise
    except ValueError as error:
        raise CamOptionError(str(error)) from None
    class_index = None
    if class_name is not None:
        if str(class_name) not in classes:
            raise CamOptionError(f"unknown class {class_name!r}; the model's classes are {', '.join(classes)}")
        class_index = classes.index(str(class_name))
    return _Options(canonical, layer_name, class_index, classes)


def _check_out_dir(out_dir: Path, inputs: list[Path]) -> None:
    """Refuse an output folder inside an input folder or equal to the folder of an input file."""
    try:
        refuse_output_inside_inputs(out_dir, inputs, what="output folder")
    except OutputInsideInputError as error:
        raise CamOptionError(str(error)) from None


def _caption(image: np.ndarray, text: str) -> np.ndarray:
    """Add a white caption strip above ``image`` (uint8 RGB); the font shrinks to fit the width."""
    strip = np.full((_CAPTION_HEIGHT, image.shape[1], 3), 255, np.uint8)
    scale = 0.5
    width = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
    if width > image.shape[1] - 12:
        scale = max(0.3, scale * (image.shape[1] - 12) / width)
    cv2.putText(strip, text, (6, _CAPTION_HEIGHT - 10), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([strip, image], axis=0)


def _side_by_side(frame: np.ndarray, heatmap: np.ndarray, text: str, alpha: float, colormap: str,
                  threshold: float | None) -> np.ndarray:
    shown = cam.overlay(frame, heatmap, alpha=alpha, colormap=colormap, threshold=threshold)
    gap = np.full((frame.shape[0], 4, 3), 255, np.uint8)
    return _caption(np.concatenate([frame, gap, shown], axis=1), text)


def _write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise OSError(f"{path}: could not write PNG")


def _write_mp4(path: Path, frames_rgb: list[np.ndarray], fps: float) -> int:
    """Write an MP4 (codec mp4v) and return how many frames it decodes to (0 means broken)."""
    height, width = frames_rgb[0].shape[:2]
    even = [np.pad(f, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge") for f in frames_rgb]
    height, width = even[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
    if not writer.isOpened():
        raise OSError(f"{path}: OpenCV cannot open an mp4v video writer")
    try:
        for frame in even:
            writer.write(np.ascontiguousarray(frame[..., ::-1]))
    finally:
        writer.release()
    return count_frames(path)


def _output_stems(files: list[Path]) -> dict[Path, str]:
    """A unique, readable output name per input file (parent folder added on clashes)."""
    stems = {path: _slug(path.stem) for path in files}
    counts = pd.Series(list(stems.values())).value_counts()
    for path, stem in list(stems.items()):
        if counts[stem] > 1:
            stems[path] = _slug(f"{path.parent.name}_{path.stem}")
    seen: dict[str, int] = {}
    for path in files:  # still clashing (same folder name): number them in input order
        stem = stems[path]
        seen[stem] = seen.get(stem, 0) + 1
        if seen[stem] > 1:
            stems[path] = f"{stem}_{seen[stem]}"
    return stems


def export_cam(model_path, paths, out_dir, *, method: str = "gradcam", layer: str | None = None,
               class_name: str | None = None, threshold: float | None = None, alpha: float = 0.4,
               top_k: int = 3, colormap: str = "jet", mp4: bool = True, display_size: int = 256,
               batch_size: int = 16, log: Callable[[str], None] | None = None,
               raw_probabilities: bool = False) -> pd.DataFrame:
    """Overlay PNGs (images; top-k frames of videos) and heatmap MP4s (videos) into ``out_dir``.

    Heatmaps come from :func:`covnb.cam.explain` (Grad-CAM, Selvaraju et al. 2017; Grad-CAM++,
    Chattopadhay et al. 2018; CAM, Zhou et al. 2016) on frames taken as the model was trained.

    Parameters
    ----------
    model_path : path or (keras.Model, dict)
        A ``.keras`` file with its sidecar JSON, a folder holding one, or a loaded ``(model, metadata)`` pair.
    paths : path or list of paths
        Files and/or folders (searched recursively for videos and images).
    out_dir : path
        Output folder; refused when it lies inside an input folder.
    method : {"gradcam", "gradcam++", "cam"}
        CAM method (spellings such as ``"grad-cam"`` are accepted).
    layer : str, optional
        Layer to explain; default the last convolutional feature map.
    class_name : str, optional
        Class to explain; default the predicted class of each file (mean frame probability).
    threshold : float in 0..1, optional
        Hide heat below this value in the overlays.
    alpha : float in 0..1
        Opacity of the heatmap.
    top_k : int
        Frames of each video written as PNG: the ``top_k`` with the highest probability of the explained class.
    colormap : str
        Matplotlib colormap name.
    mp4 : bool
        Also write an MP4 of every sampled frame of each video, with its heatmap.
    display_size : int
        Frames narrower than this are enlarged for the pictures (the model still sees its own input size).
    batch_size : int
        Frames per model call.
    log : callable, optional
        Called with one line per file.
    raw_probabilities : bool
        Use the model's raw probabilities instead of those calibrated by its sidecar map.

    Returns
    -------
    pandas.DataFrame
        The index (also written to ``out_dir/cam_index.csv``, columns :data:`INDEX_COLUMNS`): one row per
        written file (``status`` "ok") and one per input that failed (``status`` "error", reason in ``error``).

    Raises
    ------
    CamOptionError
        A method, layer or class the model does not have, an option out of range, or an ``out_dir``
        inside an input folder.
    covnb.models.ModelFileError
        A model file or sidecar that cannot be read.

    Examples
    --------
    >>> index = export_cam("runs/pocus/model.keras", ["clips/"], "cams", method="gradcam++", top_k=2)  # doctest: +SKIP
    >>> index.loc[index["status"] == "ok", ["source", "output", "class_prob"]]  # doctest: +SKIP
    """
    _check_picture_options(top_k, alpha, threshold, colormap)
    model, metadata = model_path if isinstance(model_path, tuple) else load_model(model_path)
    options = check_options(model, metadata, method=method, layer=layer, class_name=class_name)
    settings = frame_settings_from_metadata(metadata)
    size = tuple(model.input.shape[1:3])
    if size != (settings.image_size, settings.image_size):
        raise CamOptionError(f"model input is {size} but its metadata says image_size {settings.image_size}")
    inputs = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    out = Path(out_dir)
    _check_out_dir(out, inputs)
    out.mkdir(parents=True, exist_ok=True)
    files, missing = expand_paths(inputs)
    stems = _output_stems(files)
    pictures = _Pictures(alpha=alpha, colormap=colormap, threshold=threshold, display_size=display_size,
                         top_k=int(top_k), mp4=mp4)
    rows: list[dict] = [{"source": item["path"], "status": "error", "error": item["reason"]} for item in missing]
    started = time.perf_counter()
    for path in files:
        try:
            frames, info = read_frames(path, settings)
        except (FrameError, OSError, cv2.error, ValueError) as error:
            reason = error_reason(error, path)
            rows.append({"source": str(path), "status": "error", "error": reason})
            if log:
                log(f"skipped {path}: {reason}")
            continue
        rows.extend(_export_file(model, metadata, options, settings, pictures, path, frames, info, out, stems[path],
                                 batch_size=batch_size, raw_probabilities=raw_probabilities, log=log))
    index = pd.DataFrame(rows).reindex(columns=INDEX_COLUMNS)
    index.to_csv(out / "cam_index.csv", index=False)
    if log:
        written = int((index["status"] == "ok").sum())
        failed = index.loc[index["status"] == "error", "source"].nunique()
        log(f"wrote {written} file(s) and {out / 'cam_index.csv'} in {time.perf_counter() - started:.1f} s; "
            f"{failed} input(s) failed")
    return index


@dataclasses.dataclass(frozen=True)
class _Pictures:
    """How the pictures of :func:`export_cam` look."""

    alpha: float
    colormap: str
    threshold: float | None
    display_size: int
    top_k: int
    mp4: bool


def _check_picture_options(top_k, alpha, threshold, colormap) -> None:
    if int(top_k) < 1:
        raise CamOptionError(f"top_k must be at least 1, got {top_k}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise CamOptionError(f"alpha (opacity) must be within 0..1, got {alpha}")
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise CamOptionError(f"threshold must be within 0..1, got {threshold}")
    try:
        cam.apply_colormap(np.zeros((1, 1)), colormap)
    except ValueError as error:
        raise CamOptionError(str(error)) from None


def _export_file(model, metadata, options: _Options, settings, pictures: _Pictures, path: Path, frames: np.ndarray,
                 info: dict, out: Path, file_stem: str, *, batch_size: int, raw_probabilities: bool,
                 log) -> list[dict]:
    """Explain one file's frames and write its PNGs (and MP4); its rows of the index."""
    classes = options.classes
    label = _METHOD_LABELS[options.method]
    kind = "image" if info.get("fps_source") == "image" else "video"
    probs, file_probs = calibrate_file_probabilities(metadata, cam.predict_probs(model, frames, batch_size=batch_size),
                                                     raw=raw_probabilities)
    predicted = int(file_probs.argmax())
    target = predicted if options.class_index is None else options.class_index
    result = cam.explain(model, frames, method=options.method, class_index=target, layer=options.layer,
                         batch_size=batch_size)
    sector = cam.sector_mask(frames)
    # Shown at least display_size px wide (small models get readable pictures); heatmaps are
    # upsampled to whatever size the frame has.
    display_size = pictures.display_size
    shown = frames if frames.shape[2] >= display_size else cam.resize_frames(
        frames, (round(frames.shape[1] * display_size / frames.shape[2]), display_size))
    times = list(info.get("time_s", np.arange(len(frames)) / settings.rate_hz))
    indices = list(info.get("frame_index", range(len(frames))))
    base = {"source": str(path), "kind": kind, "status": "ok", "class": classes[target],
            "predicted": classes[predicted], "method": options.method, "layer": result.layer,
            "n_frames": len(frames), "error": ""}
    stem = f"{file_stem}_{_slug(options.method)}_{_slug(classes[target])}"

    def picture(i: int) -> np.ndarray:
        where = f"t={float(times[i]):.1f}s " if kind == "video" else ""
        caption = (f"{path.name[:40]} {where}{label} {classes[target]} p={probs[i, target]:.2f} "
                   f"(pred {classes[int(probs[i].argmax())]})")
        return _side_by_side(shown[i], result.heatmaps[i], caption, pictures.alpha, pictures.colormap,
                             pictures.threshold)

    rows = []
    order = np.argsort(-probs[:, target], kind="stable")[: pictures.top_k if kind == "video" else 1]
    for rank, i in enumerate(order):
        name = f"{stem}.png" if kind == "image" else f"{stem}_top{rank + 1}_f{int(indices[i]):05d}.png"
        _write_png(out / name, picture(i))
        rows.append({**base, "output": name, "output_kind": "overlay_png", "frame_index": int(indices[i]),
                     "time_s": float(times[i]), "class_prob": float(probs[i, target]),
                     "heat_inside": cam.heat_inside_fraction(result.heatmaps[i], sector)})
    if kind == "video" and pictures.mp4:
        rows.append(_export_mp4(out / f"{stem}.mp4", [picture(i) for i in range(len(frames))], settings.rate_hz,
                                base, result.heatmaps, sector, float(probs[:, target].mean())))
    if log:
        log(f"{path.name}: {kind}, {len(frames)} frame(s), predicted {classes[predicted]}, "
            f"explained {classes[target]} with {label}")
    return rows


def _export_mp4(path: Path, pictures: list[np.ndarray], fps: float, base: dict, heatmaps: np.ndarray,
                sector: np.ndarray, class_prob: float) -> dict:
    """Write a video's MP4 and return its index row (an error row when it does not decode in full)."""
    name = path.name
    try:
        decoded = _write_mp4(path, pictures, fps)
    except (OSError, cv2.error) as error:
        decoded, reason = 0, str(error)
    else:
        reason = f"{name}: written but decodes to {decoded} of {len(pictures)} frames"
    if decoded != len(pictures):
        return {**base, "status": "error", "output": "", "output_kind": "video_mp4", "error": reason}
    inside = [cam.heat_inside_fraction(h, sector) for h in heatmaps]
    return {**base, "output": name, "output_kind": "video_mp4", "frame_index": np.nan, "time_s": np.nan,
            "class_prob": class_prob,
            "heat_inside": float(np.nanmean(inside)) if np.isfinite(inside).any() else np.nan}
