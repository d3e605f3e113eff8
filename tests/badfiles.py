"""Synthetic bad inputs: each must be skipped with a reason, never crash a run."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def write_video(path: Path, n_frames: int = 12, fps: float = 10.0, size: int = 48, seed: int = 0) -> Path:
    """A small valid video (mp4v in .mp4/.mov, MJPG in .avi)."""
    rng = np.random.default_rng(seed)
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix.lower() == ".avi" else "mp4v"))
    writer = cv2.VideoWriter(str(path), fourcc, fps, (size, size))
    for i in range(n_frames):
        frame = np.full((size, size, 3), (i * 20) % 255, np.uint8)
        frame[rng.integers(0, size), :] = 255
        writer.write(frame)
    writer.release()
    return path


def add_bad_files(folder: Path, good_video: Path) -> dict[str, Path]:
    """Write one of each kind of bad file into ``folder``; returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    bad = {
        "zero_byte": folder / "Cov_zero_byte.mp4",
        "truncated": folder / "Cov_truncated.mp4",
        "corrupt": folder / "Pneu_corrupt.avi",
        "zero_frames": folder / "Reg_zero_frames.mp4",
        "unreadable_image": folder / "Reg_unreadable.png",
        "text_as_image": folder / "Pneu_text.jpg",
        "unknown_label": folder / "Xyz_unknown_label.mp4",
    }
    bad["zero_byte"].write_bytes(b"")
    bad["truncated"].write_bytes(good_video.read_bytes()[:700])
    bad["corrupt"].write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    writer = cv2.VideoWriter(str(bad["zero_frames"]), cv2.VideoWriter_fourcc(*"mp4v"), 10, (32, 32))
    writer.release()
    if not bad["zero_frames"].exists():
        bad["zero_frames"].write_bytes(good_video.read_bytes()[:48])
    bad["unreadable_image"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    bad["text_as_image"].write_text("this is a note, not an image\n")
    write_video(bad["unknown_label"])
    return bad
