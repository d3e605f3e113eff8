"""Pixel treatments of decoded frames: crop, CLAHE, the ultrasound sector mask, per-video intensity.

Leaf functions (OpenCV and NumPy only) that :mod:`covnb.frames` applies while decoding;
re-exported there.
"""

from __future__ import annotations

import cv2
import numpy as np


def crop_fraction(frame: np.ndarray, crop: tuple[float, float, float, float]) -> np.ndarray:
    """Keep rows top..bottom and columns left..right, given as fractions of the frame."""
    height, width = frame.shape[:2]
    top, bottom, left, right = crop
    return frame[int(round(top * height)):int(round(bottom * height)), int(round(left * width)):int(round(right * width))]


def apply_clahe(frame_rgb: np.ndarray, clip_limit: float = 2.0, tiles: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation on the lightness channel (Zuiderveld 1994)."""
    lab = cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2LAB)
    clahe = cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=(tiles, tiles))
    lab[..., 0] = clahe.apply(lab[..., 0])
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB)


def sector_mask(frame, threshold: int = 10, hull: bool = True, open_size: int = 5) -> np.ndarray:
    """Boolean mask of the ultrasound sector (the non-black foreground) of a frame.

    Pixels brighter than ``threshold`` (on the max over RGB, and over time for a stack (T, H, W, 3)),
    opened to cut thin text and ruler links, keep the largest connected component, then fill
    it: convex hull (``hull=True``, the fan of a convex probe) or holes only.
    """
    array = np.asarray(frame)
    if array.ndim == 4:
        array = array.max(axis=0)
    if array.ndim == 3:
        array = array.max(axis=-1)
    if array.ndim != 2:
        raise ValueError(f"frame must be (H, W), (H, W, 3) or (T, H, W, 3); got shape {np.asarray(frame).shape}.")
    binary = (array > threshold).astype(np.uint8)
    if open_size > 1:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (open_size, open_size))
        opened = cv2.morphologyEx(binary, cv2.MORPH_OPEN, kernel)
        binary = opened if opened.any() else binary
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if count <= 1:
        return np.zeros(array.shape, bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    component = (labels == largest).astype(np.uint8)
    contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(component)
    if hull:
        cv2.fillPoly(filled, [cv2.convexHull(np.concatenate(contours))], 1)
    else:
        cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def mask_outside_sector(frames: np.ndarray) -> np.ndarray:
    """Black out everything outside the ultrasound sector of a video's frames (one mask for all).

    Text, logos, rulers and colour bars outside the fan can identify a source, and so a class,
    without any anatomy (the "artifacts" of the COVID-19 imaging review; Roberts et al., Nature
    Machine Intelligence 2021). Frames whose sector covers less than a fifth of the image are
    returned unchanged (no fan found).
    """
    mask = sector_mask(frames)
    if mask.mean() < 0.2:
        return frames
    return frames * mask[None, :, :, None].astype(frames.dtype)


def standardise_intensity(frames: np.ndarray, *, target_mean: float = 100.0, target_std: float = 50.0,
                          floor: int = 8) -> np.ndarray:
    """One video's frames ``(T, H, W, 3)`` uint8 with the image pixels (brighter than ``floor``
    in gray; the black background stays black) linearly mapped to mean ``target_mean`` and
    standard deviation ``target_std`` over the whole video: a device's gain and dynamic range
    removed (Nyul & Udupa, IEEE TMI 2000, in its simplest linear form). Fewer than 16 such
    pixels: unchanged. Returns uint8 frames."""
    frames = np.asarray(frames)
    block = frames.astype(np.float32)
    gray = block.mean(axis=-1)
    inside = gray > floor
    if inside.sum() < 16:
        return frames.copy()
    mean, std = float(gray[inside].mean()), float(gray[inside].std())
    mapped = (block - mean) / max(std, 1.0) * target_std + target_mean
    mapped = np.where(inside[..., None], mapped, block)
    return np.clip(mapped + 0.5, 0, 255).astype(np.uint8)
