"""Canonical inputs: find the ultrasound image in a video or figure, crop to it, remove overlays.

Lung-ultrasound files come from many devices and web pages: the image sits in a screen with
text, logos, rulers, colour bars and depth markers, or in a publication figure with a white
border, panel letters and arrows. Those overlays can name a source, and a source often sends
one class, so a model can score well without looking at the lung (shortcut learning; Geirhos
et al., Nature Machine Intelligence 2020; DeGrave et al., Nature Machine Intelligence 2021 for
COVID-19 radiographs). Canonical inputs make two devices' renderings of one lung look alike:

1. :func:`ultrasound_region` finds the image once per video, from all its sampled frames. In a
   video the tissue speckle moves while text, rulers and logos do not, so the region is the
   largest moving area (temporal standard deviation), filled by its convex hull (a convex or
   phased fan, a linear rectangle). A still image, or a video that hardly moves, is peeled from
   its backdrop: flat black, white or border-coloured pixels connected to the frame's edge are
   backdrop, a morphological opening cuts text and rulers off what remains, the largest blob's
   hull is the image; repeated inside that box (a figure's page, then the panel's black screen).
2. :func:`overlay_mask` marks burned-in overlays inside the image: coloured pixels (colour
   bars, coloured markers and arrows), and in videos static, bright, thin strokes (calipers,
   depth ticks, annotation text that does not move with the tissue).
3. :func:`canonicalize` crops every frame to the region's bounding box, blacks out what lies
   outside the region, inpaints the overlay pixels (Telea, J. Graphics Tools 2004;
   ``cv2.inpaint``) and optionally converts to gray.

Modes (:data:`CANONICAL_MODES`, ``FrameSettings(canonical=...)``): ``"off"``, ``"crop"``
(crop + black outside the region), ``"crop+inpaint"``, ``"crop+inpaint+gray"``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "CANONICAL_MODES",
    "Region",
    "ultrasound_region",
    "overlay_mask",
    "canonicalize",
    "check_mode",
    "region_iou",
]

CANONICAL_MODES = ("off", "crop", "crop+inpaint", "crop+inpaint+gray")

#: Working size (long side, px) of the region search; the mask is scaled back to the frame.
WORK_SIZE = 256
#: A region smaller than this share of the frame is not trusted: the whole frame is kept.
MIN_REGION_SHARE = 0.04
#: Chroma (max - min over RGB) above which a pixel counts as coloured (an overlay, not B-mode gray).
COLOUR_CHROMA = 40
#: Temporal standard deviation (gray levels) above which a pixel counts as moving tissue.
MOTION_STD = 2.5


def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`CANONICAL_MODES`, else a ValueError naming the choices."""
    if mode not in CANONICAL_MODES:
        raise ValueError(f"canonical must be one of {CANONICAL_MODES}, got {mode!r}")
    return mode


@dataclass
class Region:
    """Where the ultrasound image lies in a video's frames.

    mask: (H, W) bool at the frame's size. box: (top, bottom, left, right) pixel bounds of the
    crop (bottom/right exclusive). method: "motion", "still" or "whole" (nothing found).
    """

    mask: np.ndarray
    box: tuple[int, int, int, int]
    method: str  # "motion", "still" or "whole"

    @property
    def share(self) -> float:
        """Fraction of the frame the region covers."""
        return float(self.mask.mean())


def _as_stack(frames) -> np.ndarray:
    array = np.asarray(frames)
    if array.ndim == 2:
        array = array[None, :, :, None]
    elif array.ndim == 3 and array.shape[-1] in (1, 3, 4) and array.shape[0] > 4:
        array = array[None]
    elif array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4:
        raise ValueError(f"frames must be (H, W), (H, W, C) or (T, H, W, C); got shape {np.asarray(frames).shape}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])


def _odd(n: float) -> int:
    n = max(1, int(round(n)))
    return n if n % 2 else n + 1


def _ellipse(n: float) -> np.ndarray:
    size = _odd(n)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def _chroma(stack: np.ndarray) -> np.ndarray:
    """(T, H, W) max - min over RGB."""
    return (stack.max(axis=-1).astype(np.int16) - stack.min(axis=-1).astype(np.int16)).astype(np.uint8)


def _gray(stack: np.ndarray) -> np.ndarray:
    return stack.astype(np.float32).mean(axis=-1)


def _largest_hull(binary: np.ndarray) -> np.ndarray | None:
    """Convex hull (filled) of the largest connected component of ``binary``, or None."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    if count <= 1:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    points = cv2.findNonZero((labels == largest).astype(np.uint8))
    filled = np.zeros(binary.shape, np.uint8)
    cv2.fillPoly(filled, [cv2.convexHull(points)], 1)
    return filled.astype(bool)


def _motion_map(gray: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Pixels whose gray level changes over time (tissue), colour overlays excluded."""
    return (gray.std(axis=0) > MOTION_STD) & ~colour


def _foreground_map(gray: np.ndarray, colour: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """Everything but the flat backdrop around the image (black screen, white page, a panel's
    fill): flat pixels of black, white or the surround's own colour that connect to ``outside``
    (the frame's edge, or what an earlier pass left out); coloured overlays (and their
    anti-aliased rims) count as backdrop so an arrow cannot bridge two panels."""
    brightest = gray.max(axis=0)
    mean = cv2.blur(brightest, (5, 5))
    variance = cv2.blur(brightest * brightest, (5, 5)) - mean * mean
    rim = cv2.dilate(outside.astype(np.uint8), _ellipse(3)).astype(bool) & ~outside
    surround = np.median(brightest[rim]) if rim.any() else np.median(brightest)
    flat = variance < 6.0
    colour = cv2.dilate(colour.astype(np.uint8), _ellipse(3)).astype(bool)
    backdrop = (flat & ((brightest < 10) | (brightest > 240) | (np.abs(brightest - surround) < 6))) | colour
    # grown past the 5x5 window's reach, so the edge of a panel (never flat) does not wall its fill in
    grown = cv2.dilate(outside.astype(np.uint8), _ellipse(7)).astype(bool)
    count, labels = cv2.connectedComponents((backdrop | grown).astype(np.uint8), connectivity=8)
    seeds = np.unique(labels[grown])
    return ~(np.isin(labels, seeds[seeds > 0]) | grown)


def _fill_region(candidate: np.ndarray, *, close: float, open_: float) -> np.ndarray | None:
    """Merge a speckle/motion map into blobs, drop thin things (text, rulers), hull the largest."""
    binary = candidate.astype(np.uint8)
    binary = cv2.morphologyEx(binary, cv2.MORPH_CLOSE, _ellipse(close))
    opened = cv2.morphologyEx(binary, cv2.MORPH_OPEN, _ellipse(open_))
    if opened.any():
        binary = opened
    return _largest_hull(binary)


def _still_region(gray: np.ndarray, colour: np.ndarray, side: int, passes: int = 3) -> np.ndarray | None:
    """The image inside its backdrop, peeled like an onion: a figure's page, then the panel's
    black screen, until the region stops shrinking (at most ``passes`` times)."""
    outside = np.zeros(gray.shape[1:], bool)
    outside[[0, -1], :] = outside[:, [0, -1]] = True
    region = None
    for _ in range(passes):
        found = _fill_region(_foreground_map(gray, colour, outside), close=side * 0.015, open_=side * 0.03)
        if found is None or (region is not None and (region & ~found).sum() <= 0.1 * region.sum()):
            break  # a pass that peels off little only eats into dark tissue at the image's edge
        found = cv2.erode(found.astype(np.uint8), _ellipse(5)).astype(bool)  # the 5x5 window reached 2 px out
        region = found
        outside = ~region
    return region


def ultrasound_region(frames, *, min_share: float = MIN_REGION_SHARE, margin: float = 0.01) -> Region:
    """The ultrasound image of a video (all its frames at once) or a still image.

    ``frames``: (T, H, W, 3) RGB uint8 of one video (or (H, W, 3) for one image). The search runs
    at :data:`WORK_SIZE` px: motion (temporal std) when at least 3 frames move, else the
    backdrop peeled off (:func:`_still_region`); both are closed into blobs, opened to cut text and ruler strokes, and the largest blob is
    filled by its convex hull. A region smaller than ``min_share`` of the frame gives the whole
    frame (method "whole"). ``margin``: fraction of the frame added around the crop box.
    """
    stack = _as_stack(frames)
    height, width = stack.shape[1:3]
    scale = min(1.0, WORK_SIZE * (1 if len(stack) >= 3 else 2) / max(height, width))  # a still is cheap: finer
    small_size = (max(8, round(width * scale)), max(8, round(height * scale)))
    small = np.stack([cv2.resize(f, small_size, interpolation=cv2.INTER_AREA) for f in stack])
    gray = _gray(small)
    colour = _chroma(small).max(axis=0) > COLOUR_CHROMA
    side = max(small.shape[1:3])
    region, method = None, "whole"
    if len(small) >= 3:
        moving = _motion_map(gray, colour)
        if moving.mean() > min_share / 2:
            region, method = _fill_region(moving, close=side * 0.04, open_=side * 0.03), "motion"
    if region is None or region.mean() < min_share:
        region, method = _still_region(gray, colour, side), "still"
    if region is None or region.mean() < min_share:
        return Region(np.ones((height, width), bool), (0, height, 0, width), "whole")
    mask = cv2.resize(region.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    pad_y, pad_x = round(margin * height), round(margin * width)
    box = (max(0, int(rows[0]) - pad_y), min(height, int(rows[-1]) + 1 + pad_y),
           max(0, int(cols[0]) - pad_x), min(width, int(cols[-1]) + 1 + pad_x))
    return Region(mask, box, method)


def overlay_mask(frames, region: Region | None = None) -> np.ndarray:
    """(H, W) bool: burned-in overlay pixels inside the ultrasound region, to be inpainted.

    Coloured pixels in any frame (colour bars, markers, arrows, coloured text) and, for a video,
    pixels that stay bright and still while the tissue moves, in thin strokes (white top-hat:
    calipers, depth ticks, annotation text). Dilated by one pixel to catch anti-aliased edges.
    """
    stack = _as_stack(frames)
    colour = _chroma(stack).max(axis=0) > COLOUR_CHROMA
    marks = colour
    if len(stack) >= 3:
        total = np.zeros(stack.shape[1:3], np.float64)
        squares = np.zeros_like(total)
        low = np.full(stack.shape[1:3], 255, np.uint8)
        for frame in stack:
            gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            total += gray
            squares += gray.astype(np.float64) ** 2
            np.minimum(low, gray, out=low)
        variance = squares / len(stack) - (total / len(stack)) ** 2
        still = variance < 1.5 ** 2
        stroke = max(3, round(max(low.shape) / 120))
        thin = cv2.morphologyEx(low, cv2.MORPH_TOPHAT, _ellipse(2 * stroke + 1)) > 60
        marks = marks | (still & thin & (low > 180))
    marks = cv2.dilate(marks.astype(np.uint8), _ellipse(3)).astype(bool)
    if region is not None:
        marks &= region.mask
    return marks


def canonicalize(frames, mode: str = "crop+inpaint", region: Region | None = None) -> tuple[np.ndarray, Region]:
    """Canonical frames of one video: ``(frames (T, h, w, 3) uint8, region)``.

    ``mode``: "crop" (crop to the region's box, black outside the region), "crop+inpaint" (and
    inpaint overlay pixels), "crop+inpaint+gray" (and gray in all three channels); "off"
    returns the frames unchanged. ``region`` defaults to :func:`ultrasound_region` of the frames.
    """
    check_mode(mode)
    stack = _as_stack(frames)
    if mode == "off":
        height, width = stack.shape[1:3]
        return stack, region or Region(np.ones((height, width), bool), (0, height, 0, width), "whole")
    region = region or ultrasound_region(stack)
    top, bottom, left, right = region.box
    crop = stack[:, top:bottom, left:right].copy()
    inside = region.mask[top:bottom, left:right]
    crop[:, ~inside] = 0
    if "inpaint" in mode:
        marks = overlay_mask(stack, region)[top:bottom, left:right].astype(np.uint8)
        if marks.any():
            crop = np.stack([cv2.inpaint(frame, marks, 3, cv2.INPAINT_TELEA) for frame in crop])
            crop[:, ~inside] = 0
    if mode.endswith("gray"):
        gray = np.rint(_gray(crop)).astype(np.uint8)
        crop = np.repeat(gray[..., None], 3, axis=-1)
    return np.ascontiguousarray(crop), region


def region_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
