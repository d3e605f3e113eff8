"""Heatmaps after CAM: normalising, resizing, thresholding, colouring, overlays, and the CAM
statistics of POCOVID-Net (Born et al., arXiv:2009.06116): the peak of each heatmap after a box
filter, the agreement of methods, and the share of heat inside the ultrasound sector.

Pure NumPy / OpenCV / matplotlib on arrays: no model is called here (:mod:`covnb.cam` computes
the maps and re-exports these functions).
"""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd

# --------------------------------------------------------------------------------------------
# Heatmap post-processing and overlays
# --------------------------------------------------------------------------------------------


def normalize_heatmap(heatmap) -> np.ndarray:
    """ReLU, then divide by the maximum (per frame for a stack (N, h, w)); all-zero stays zero."""
    maps = np.maximum(np.asarray(heatmap, np.float32), 0.0)
    axes = (-2, -1)
    peak = maps.max(axis=axes, keepdims=True) if maps.size else maps
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(peak > 0, maps / np.where(peak > 0, peak, 1.0), 0.0).astype(np.float32)


def upsample_heatmap(heatmap, size: tuple[int, int] | int) -> np.ndarray:
    """Bilinear resize of a heatmap (h, w) or a stack (N, h, w) to ``size`` = (H, W)."""
    height, width = (size, size) if isinstance(size, int) else size
    maps = np.asarray(heatmap, np.float32)
    if maps.ndim == 3:
        return np.stack([upsample_heatmap(one, (height, width)) for one in maps]) if len(maps) else maps
    if maps.ndim != 2:
        raise ValueError(f"heatmap must be (h, w) or (N, h, w); got shape {maps.shape}.")
    if maps.shape == (height, width):
        return maps.copy()
    return cv2.resize(maps, (int(width), int(height)), interpolation=cv2.INTER_LINEAR)


def threshold_heatmap(heatmap, threshold: float) -> np.ndarray:
    """Zero every value below ``threshold`` (POCOVID-Net zeroes values below 0.4-0.65)."""
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be within 0..1 for a normalised heatmap; got {threshold}.")
    maps = np.array(heatmap, np.float32, copy=True)
    maps[maps < threshold] = 0.0
    return maps


def apply_colormap(heatmap, colormap: str = "jet") -> np.ndarray:
    """Heatmap 0..1 (h, w) -> uint8 RGB (h, w, 3) through a matplotlib colormap (any name)."""
    import matplotlib

    try:
        cmap = matplotlib.colormaps[colormap]
    except KeyError:
        raise ValueError(f"Unknown matplotlib colormap {colormap!r}.") from None
    lut = (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0 + 0.5).astype(np.uint8)
    index = np.clip(np.asarray(heatmap, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return lut[index]


def _as_uint8_rgb(frame) -> np.ndarray:
    array = np.asarray(frame)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"frame must be RGB (H, W, 3) or grayscale (H, W); got shape {array.shape}.")
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return array


def overlay(frame_rgb_uint8, heatmap, *, alpha: float = 0.4, colormap: str = "jet",
            threshold: float | None = None) -> np.ndarray:
    """Blend a colour-mapped heatmap over a frame; returns uint8 RGB at the frame's size.

    The heatmap (any resolution, 0..1) is upsampled bilinearly. With ``threshold``, values below
    it are zeroed and those pixels keep the plain frame (POCOVID-Net style, e.g. 0.5 and alpha
    0.25).
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha (opacity) must be within 0..1; got {alpha}.")
    frame = _as_uint8_rgb(frame_rgb_uint8)
    heat = np.clip(upsample_heatmap(heatmap, frame.shape[:2]), 0.0, 1.0)
    if threshold is not None and threshold > 0:
        heat = threshold_heatmap(heat, threshold)
        weight = np.where(heat > 0, np.float32(alpha), np.float32(0.0))[..., None]
    else:
        weight = np.float32(alpha)
    colours = apply_colormap(heat, colormap).astype(np.float32)
    blended = frame.astype(np.float32) * (1.0 - weight) + colours * weight
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# CAM statistics (POCOVID-Net evaluation) and the ultrasound sector
# --------------------------------------------------------------------------------------------


def heatmap_peak(heatmap, box: int = 19, frame_size: tuple[int, int] | None = None) -> tuple[float, float]:
    """(x, y) of the heatmap maximum after a ``box`` x ``box`` mean filter (POCOVID-Net).

    With ``frame_size`` = (H, W) the heatmap is first upsampled to the frame, so the box is in
    frame pixels and the peak in frame coordinates; otherwise in heatmap pixels.
    """
    maps = np.asarray(heatmap, np.float32)
    if maps.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (h, w); got shape {maps.shape}.")
    if frame_size is not None:
        maps = upsample_heatmap(maps, frame_size)
    box = int(box)
    if box < 1:
        raise ValueError(f"box must be a positive size in pixels; got {box}.")
    smoothed = cv2.blur(maps, (box, box)) if box > 1 else maps
    row, col = np.unravel_index(int(np.argmax(smoothed)), smoothed.shape)
    return float(col), float(row)


def heat_inside_fraction(heatmap, mask) -> float:
    """Fraction of the total heat that falls inside ``mask`` (heatmap upsampled to the mask).

    Near 1: the model looks at the image content; low: it looks at text, borders or rulers.
    NaN for an all-zero heatmap.
    """
    mask = np.asarray(mask, bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W); got shape {mask.shape}.")
    heat = np.maximum(upsample_heatmap(heatmap, mask.shape), 0.0)
    total = float(heat.sum())
    if total <= 0.0:
        return float("nan")
    return float(heat[mask].sum() / total)


def plot_peak_scatter(peaks: pd.DataFrame, *, hue: str = "class", background=None, kde: bool = True,
                      title: str | None = "CAM peaks by class"):
    """Scatter of heatmap peaks (``cam_peaks`` output) per class, with a density per class.

    Coordinates are 0..1 of the frame, y downwards as in the image; ``background`` (an RGB
    frame) is drawn underneath. Returns a matplotlib Figure (not shown by pyplot).
    """
    import seaborn as sns
    from matplotlib.figure import Figure

    for column in ("peak_x", "peak_y", hue):
        if column not in peaks:
            raise ValueError(f"peaks table lacks column {column!r} (expected cam_peaks output).")
    figure = Figure(figsize=(5.2, 5.0), layout="constrained")
    axes = figure.add_subplot()
    if background is not None:
        axes.imshow(_as_uint8_rgb(background), extent=(0, 1, 1, 0), alpha=0.6)
    groups = list(dict.fromkeys(peaks[hue].tolist()))
    palette = dict(zip(groups, sns.color_palette("tab10", max(len(groups), 1))))
    if kde:
        for group in groups:
            subset = peaks[peaks[hue] == group]
            if len(subset) >= 5 and subset["peak_x"].nunique() > 1 and subset["peak_y"].nunique() > 1:
                try:
                    sns.kdeplot(data=subset, x="peak_x", y="peak_y", ax=axes, color=palette[group],
                                levels=4, alpha=0.5, linewidths=1.0, warn_singular=False)
                except (ValueError, np.linalg.LinAlgError):
                    pass
    if len(peaks):
        sns.scatterplot(data=peaks, x="peak_x", y="peak_y", hue=hue, palette=palette, ax=axes,
                        s=25, alpha=0.8, edgecolor="none")
    axes.set_xlim(0, 1)
    axes.set_ylim(1, 0)
    axes.set_aspect("equal")
    axes.set_xlabel("peak x (fraction of width)")
    axes.set_ylabel("peak y (fraction of height)")
    if title:
        axes.set_title(title)
    return figure


def method_agreement(results: dict, frame_size: tuple[int, int] | int, box: int = 19,
                     top_fraction: float = 0.2) -> pd.DataFrame:
    """How much explanation methods agree, frame by frame: one row per frame and pair of methods.

    results: method name -> :class:`CamResult` of the same frames (same classes explained).
    Heatmaps are upsampled to ``frame_size`` = (H, W). Columns: frame (position), method_a,
    method_b, correlation (Pearson r of the maps; NaN when one map is constant), peak_distance
    (distance between the box-filtered peaks, as in POCOVID-Net, in fractions of the frame
    diagonal), top_iou (intersection over union of each map's hottest ``top_fraction`` pixels,
    the overlap used to compare saliency methods, e.g. Adebayo et al. 2018 "Sanity checks for
    saliency maps").
    """
    names = list(results)
    if len(names) < 2:
        raise ValueError(f"method_agreement needs at least two methods; got {names}.")
    lengths = {name: len(result) for name, result in results.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"results cover different numbers of frames: {lengths}.")
    if not 0.0 < float(top_fraction) < 1.0:
        raise ValueError(f"top_fraction must be within (0, 1); got {top_fraction}.")
    height, width = (frame_size, frame_size) if isinstance(frame_size, int) else frame_size
    diagonal = float(np.hypot(height, width))
    n_frames, n_pixels = lengths[names[0]], height * width
    keep = max(1, int(round(float(top_fraction) * n_pixels)))
    flat, peaks, tops = {}, {}, {}
    for name, result in results.items():
        maps = upsample_heatmap(result.heatmaps, (height, width)).reshape(n_frames, n_pixels)
        peaks[name] = [heatmap_peak(m.reshape(height, width), box=box) for m in maps]
        top = np.zeros(maps.shape, bool)
        if keep < n_pixels:
            np.put_along_axis(top, np.argpartition(-maps, keep - 1, axis=1)[:, :keep], True, axis=1)
        else:
            top[:] = True
        centred = maps - maps.mean(axis=1, keepdims=True)
        norms = np.linalg.norm(centred, axis=1, keepdims=True)
        flat[name] = np.divide(centred, norms, out=np.full_like(centred, np.nan), where=norms > 0)
        tops[name] = top
    rows = []
    for a_position, method_a in enumerate(names):
        for method_b in names[a_position + 1:]:
            correlations = np.einsum("np,np->n", flat[method_a], flat[method_b])
            overlap = (tops[method_a] & tops[method_b]).sum(axis=1) / (tops[method_a] | tops[method_b]).sum(axis=1)
            for i in range(n_frames):
                (xa, ya), (xb, yb) = peaks[method_a][i], peaks[method_b][i]
                rows.append({"frame": i, "method_a": method_a, "method_b": method_b,
                             "correlation": float(np.clip(correlations[i], -1.0, 1.0)),
                             "peak_distance": float(np.hypot(xa - xb, ya - yb)) / diagonal,
                             "top_iou": float(overlap[i])})
    return pd.DataFrame(rows, columns=["frame", "method_a", "method_b", "correlation", "peak_distance", "top_iou"])
