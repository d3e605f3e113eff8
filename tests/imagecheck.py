"""Helpers for tests that look at figures a run wrote: they must be real, non-blank pictures."""

from pathlib import Path

import cv2
import numpy as np


def assert_real_image(path, min_side: int = 100) -> np.ndarray:
    """``path`` decodes as an image at least ``min_side`` px on each side, with visible content
    (not one flat colour: several distinct grey levels and some contrast). Returns the pixels."""
    path = Path(path)
    assert path.is_file(), f"{path} was not written"
    pixels = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert pixels is not None, f"{path} does not decode as an image"
    assert min(pixels.shape[:2]) >= min_side, f"{path} is only {pixels.shape[1]}x{pixels.shape[0]} px"
    gray = cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
    assert gray.std() > 5 and len(np.unique(gray)) > 8, f"{path} is (nearly) blank"
    return pixels
