"""Media files: which files covnb reads, header limits checked before decoding, probing, hashing.

The lowest layer of the data side: :mod:`covnb.datasets` (layouts), :mod:`covnb.frames` (frame
sampling) and :mod:`covnb.phantom` (synthetic data) build on it; it imports no other covnb module.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
import warnings
from pathlib import Path

import cv2
import numpy as np

__all__ = ["VIDEO_EXTENSIONS", "IMAGE_EXTENSIONS", "DataError", "MAX_PIXELS", "MAX_VIDEO_FRAMES", "max_pixels",
           "image_header_size", "check_image_header", "check_video_header", "probe_media", "file_sha1",
           "symlink_problem", "count_frames"]

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mpeg", ".mpg", ".gif", ".m4v", ".wmv", ".mkv"}
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}

class DataError(ValueError):
    """A data folder that cannot be read at all (missing, empty, unknown layout)."""


#: Largest image or video frame accepted, in pixels (width x height), read from the file's header
#: before anything is decoded: a small file can declare a huge image (a decompression bomb).
#: Generous for medical images; set ``COVNB_MAX_PIXELS`` (or ``covnb.media.MAX_PIXELS``) to change it.
MAX_PIXELS = 100_000_000
#: Largest frame count a video may declare.
MAX_VIDEO_FRAMES = 1_000_000


def max_pixels() -> int:
    """The pixel limit in force: ``$COVNB_MAX_PIXELS`` when set, else :data:`MAX_PIXELS`."""
    text = os.environ.get("COVNB_MAX_PIXELS", "").strip()
    try:
        return int(float(text)) if text else int(MAX_PIXELS)
    except ValueError:
        raise DataError(f"COVNB_MAX_PIXELS must be a number of pixels, got {text!r}") from None


_PIL_LOCK = threading.Lock()


def image_header_size(path: Path) -> tuple[int, int] | None:
    """(width, height) an image file declares in its header, read without decoding the pixels
    (Pillow reads only the header on open); None when Pillow does not know the format."""
    from PIL import Image

    try:
        with _PIL_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # covnb applies its own limit
            try:
                with Image.open(path) as image:
                    return int(image.size[0]), int(image.size[1])
            finally:
                Image.MAX_IMAGE_PIXELS = limit
    except (OSError, ValueError, SyntaxError, struct.error):  # UnidentifiedImageError is an OSError
        return None


def check_image_header(path: Path) -> None:
    """Raise ``ValueError`` when an image declares more pixels than :func:`max_pixels`."""
    size = image_header_size(path)
    limit = max_pixels()
    if size is not None and size[0] * size[1] > limit:
        raise ValueError(f"image declares {size[0]}x{size[1]} pixels, more than the limit of {limit:,} "
                         "(a decompression bomb or an absurd image; COVNB_MAX_PIXELS raises the limit)")


def check_video_header(cap, limit_frames: int | None = None) -> None:
    """Raise ``ValueError`` when an opened ``cv2.VideoCapture`` declares frames larger than
    :func:`max_pixels` or more frames than :data:`MAX_VIDEO_FRAMES`."""
    width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
    height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
    count = cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0
    limit = max_pixels()
    if width * height > limit:
        raise ValueError(f"video declares {width}x{height} pixel frames, more than the limit of {limit:,} "
                         "(COVNB_MAX_PIXELS raises the limit)")
    frames_limit = MAX_VIDEO_FRAMES if limit_frames is None else limit_frames
    if count == count and count > frames_limit:
        raise ValueError(f"video declares {count:.0f} frames, more than the limit of {frames_limit:,}")


# ----------------------------------------------------------------------------- probing files


def probe_media(path: Path) -> dict:
    """Open a video or image and return its properties, or raise ``ValueError`` saying why not.

    Videos are checked by decoding their first frame (a zero-frame, truncated or corrupt video
    fails here); images by decoding them.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError("file not found")
    if path.stat().st_size == 0:
        raise ValueError("zero-byte file")
    ext = path.suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        return _probe_video(path)
    if ext in IMAGE_EXTENSIONS:
        return _probe_image(path)
    raise ValueError(f"unsupported file type {ext or '(no extension)'}")


def _probe_video(path: Path) -> dict:
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise ValueError("not a readable video (OpenCV cannot open it)")
        check_video_header(cap)
        ok, frame = cap.read()
        if not ok or frame is None:
            raise ValueError("video has no decodable frame (empty, truncated or corrupt)")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    finally:
        cap.release()
    height, width = frame.shape[:2]
    fps_value = fps if 0 < fps < 1000 else np.nan
    return {
        "kind": "video",
        "fps": fps_value,
        "frame_count": count if count > 0 else np.nan,
        "width": width,
        "height": height,
        "duration_s": count / fps_value if count > 0 and fps_value == fps_value else np.nan,
    }


def _probe_image(path: Path) -> dict:
    check_image_header(path)
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("not a decodable image (wrong content for its extension?)")
    return {"kind": "image", "fps": np.nan, "frame_count": 1, "width": image.shape[1],
            "height": image.shape[0], "duration_s": np.nan}


def file_digest(path: Path, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    """Hex digest of a file's content, read in chunks (``algorithm``: a :mod:`hashlib` name)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_sha1(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-1 of a file's content (used for cache keys and duplicate audits)."""
    return file_digest(path, "sha1", chunk)


def symlink_problem(path: Path) -> str | None:
    """Why a symlink cannot be used as a media file (None when it points to a file)."""
    try:
        target = path.resolve(strict=True)
    except RuntimeError:
        return "symlink loop"
    except OSError as error:
        if getattr(error, "errno", None) == 40:  # ELOOP
            return "symlink loop"
        return f"broken symlink (points to {os.readlink(path)})"
    if target.is_dir():
        return "symlink to a folder (not followed)"
    return None


def count_frames(path: str | Path) -> int:
    """Frames OpenCV can decode from a video (0 for an unreadable file)."""
    cap = cv2.VideoCapture(str(path))
    count = 0
    try:
        while cap.grab():
            count += 1
    finally:
        cap.release()
    return count
