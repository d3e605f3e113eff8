"""Decode frames from lung videos and images, the POCOVID-Net way, with an on-disk cache.

Videos are sampled at ``rate_hz`` (default 3 Hz) up to ``max_frames`` (default 30, about 10 s),
as in POCOVID-Net (Born et al., arXiv:2004.12084); images give one frame. Each frame is
converted to RGB, optionally cropped, contrast-enhanced with CLAHE (Zuiderveld 1994) and resized
to a square ``image_size`` (ignoring aspect ratio, as POCOVID-Net).

The frame rate a container reports is used only when it is plausible and agrees with the
decoded stream's timestamps; otherwise the timestamps, and when those are missing too an
assumed 30 fps, decide the sampling (POCOVID-Net divided by zero on such videos).

Decoded frames are cached under ``cache_dir("frames")`` keyed by the file's content hash and
the extraction settings, so a second extraction only reads small ``.npy`` files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from covnb.cache import cache_enabled, cache_root, warn_cache_unwritable
from covnb.canonical import canonicalize, check_mode
from covnb.io_utils import atomic_write, atomic_write_text, error_reason, to_jsonable
from covnb.media import (IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, check_image_header, check_video_header,  # noqa: F401
                         count_frames, file_sha1)
from covnb.frame_treatments import (apply_clahe, crop_fraction, mask_outside_sector, sector_mask,  # noqa: F401
                                    standardise_intensity)

ASSUMED_FPS = 30.0
PLAUSIBLE_FPS = (1.0, 240.0)
CACHE_VERSION = 1  # bump when decoding changes what a cached entry holds


@dataclass(frozen=True)
class FrameSettings:
    """How frames are taken from a file. ``crop`` is (top, bottom, left, right) as fractions.

    ``canonical`` (:data:`covnb.canonical.CANONICAL_MODES`): "off", or crop every video to its
    ultrasound image found once from all its sampled frames ("crop"), also inpaint burned-in
    overlays ("crop+inpaint"), also gray ("crop+inpaint+gray"); ``crop``, CLAHE and the resize
    then apply to that image. Stored in a model's sidecar, so predict and cam do the same.
    """

    rate_hz: float = 3.0
    max_frames: int = 30
    image_size: int = 224
    crop: tuple[float, float, float, float] | None = None
    clahe: bool = False
    clahe_clip: float = 2.0
    mask_sector: bool = False  # black out what lies outside the ultrasound sector (text, logos, rulers)
    canonical: str = "off"  # covnb.canonical.CANONICAL_MODES: crop to the ultrasound image, inpaint overlays, gray
    intensity: bool = False  # every video's image pixels mapped to one mean and spread (standardise_intensity)

    def __post_init__(self):
        if not self.rate_hz > 0:
            raise ValueError(f"rate_hz must be positive, got {self.rate_hz}")
        if int(self.max_frames) < 1:
            raise ValueError(f"max_frames must be at least 1, got {self.max_frames}")
        if int(self.image_size) < 8:
            raise ValueError(f"image_size must be at least 8, got {self.image_size}")
        if self.crop is not None:
            top, bottom, left, right = self.crop
            if not (0 <= top < bottom <= 1 and 0 <= left < right <= 1):
                raise ValueError(f"crop must be fractions (top, bottom, left, right) with top<bottom, left<right: {self.crop}")
        check_mode(self.canonical)

    def key(self) -> str:
        fields = asdict(self)
        if fields["canonical"] == "off":
            del fields["canonical"]  # the keys of caches made before the field existed stay valid
        if not fields["intensity"]:
            del fields["intensity"]
        text = json.dumps({"v": CACHE_VERSION, **fields}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:12]


def frame_settings_from_metadata(metadata: dict):
    """The :class:`FrameSettings` a model was trained with (from its sidecar JSON; also
    importable from :mod:`covnb.predict`)."""
    stored = dict(metadata.get("frame_settings") or {})
    if not stored:
        stored = {"image_size": metadata.get("image_size", 224), "rate_hz": metadata.get("rate_hz", 3.0),
                  "max_frames": metadata.get("max_frames", 30)}
    if stored.get("crop") is not None:
        stored["crop"] = tuple(stored["crop"])
    known = {f.name for f in dataclasses.fields(FrameSettings)}
    return FrameSettings(**{k: v for k, v in stored.items() if k in known})


class FrameError(ValueError):
    """A file whose frames cannot be decoded; the message names the file and the problem."""


# ----------------------------------------------------------------------------- per-frame transforms


def to_rgb(frame: np.ndarray) -> np.ndarray:
    """OpenCV's BGR, BGRA or grayscale frame as 3-channel RGB uint8."""
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    if frame.shape[2] == 1:
        return cv2.cvtColor(frame[..., 0], cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def prepare_frame(frame: np.ndarray, settings: FrameSettings) -> np.ndarray:
    """RGB, crop, CLAHE, square resize: one decoded frame ready for a model."""
    return finish_frame(to_rgb(frame), settings)


def _decoded(frame: np.ndarray, settings: FrameSettings) -> np.ndarray:
    """A decoded frame as the readers keep it: prepared, or only RGB when the canonical step
    (:mod:`covnb.canonical`) must first see the whole video at its own resolution."""
    return to_rgb(frame) if settings.canonical != "off" else prepare_frame(frame, settings)


def canonical_frames(raw_rgb: np.ndarray, settings: FrameSettings) -> np.ndarray:
    """Canonical inputs of one video's RGB frames (region found once from all of them), then
    crop, CLAHE and resize as :func:`prepare_frame`."""
    crops, _ = canonicalize(raw_rgb, settings.canonical)
    return np.stack([finish_frame(crop, settings) for crop in crops])


def finish_frame(rgb: np.ndarray, settings: FrameSettings) -> np.ndarray:
    """Crop, CLAHE, square resize of an RGB frame."""
    if settings.crop is not None:
        rgb = crop_fraction(rgb, settings.crop)
    if settings.clahe:
        rgb = apply_clahe(rgb, settings.clahe_clip)
    size = int(settings.image_size)
    interpolation = cv2.INTER_AREA if min(rgb.shape[:2]) > size else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interpolation)


# ----------------------------------------------------------------------------- sampling


def effective_fps(reported_fps: float, timestamps_ms: list[float]) -> tuple[float, str]:
    """The frame rate to sample with, and where it came from.

    Timestamps (milliseconds per decoded frame) win when they increase and disagree with the
    reported rate by more than a factor 1.5; the reported rate is used when plausible; else 30.
    """
    stamps = np.asarray(timestamps_ms, dtype=float)
    from_stamps = np.nan
    if len(stamps) >= 3 and np.all(np.diff(stamps) > 0):
        span = (stamps[-1] - stamps[0]) / 1000.0
        if span > 0:
            from_stamps = (len(stamps) - 1) / span
    plausible = PLAUSIBLE_FPS[0] <= reported_fps <= PLAUSIBLE_FPS[1]
    stamps_ok = PLAUSIBLE_FPS[0] <= from_stamps <= PLAUSIBLE_FPS[1]
    if plausible and (not stamps_ok or 1 / 1.5 <= reported_fps / from_stamps <= 1.5):
        return float(reported_fps), "container"
    if stamps_ok:
        return float(from_stamps), "timestamps"
    return ASSUMED_FPS, "assumed"


def sample_indices(n_frames: int, fps: float, rate_hz: float, max_frames: int) -> np.ndarray:
    """Indices of the frames nearest to times 0, 1/rate, 2/rate, ... (at most ``max_frames``).

    A video slower than ``rate_hz`` gives each of its frames once.
    """
    if n_frames <= 0:
        return np.zeros(0, dtype=int)
    step = max(fps / rate_hz, 1.0)
    indices = np.unique(np.round(np.arange(int(max_frames)) * step).astype(np.int64))
    return indices[indices < n_frames]


def read_video(path: Path, settings: FrameSettings) -> tuple[np.ndarray, dict]:
    """Sampled, prepared frames of a video and how they were sampled.

    One pass reads up to the last frame the reported rate asks for, decoding only those; when
    the timestamps contradict the reported rate, a second pass decodes the right frames.
    """
    reported, guess_fps, stamps, frames, ended = _first_pass(path, settings)
    n_read = len(stamps)
    if n_read == 0:
        raise FrameError(f"{path}: video has no decodable frame (empty, truncated or corrupt)")
    fps, fps_source = effective_fps(reported, stamps)
    if fps != guess_fps:
        # The container lied or said nothing: count the whole stream, then decode the right frames.
        if not ended:
            n_read = count_frames(path)
        wanted = sample_indices(n_read, fps, settings.rate_hz, settings.max_frames)
        frames = _decode_indices(path, set(int(i) for i in wanted), settings)
    else:
        wanted = sample_indices(n_read, fps, settings.rate_hz, settings.max_frames)
    kept = [int(i) for i in wanted if i in frames]
    if not kept:
        raise FrameError(f"{path}: none of the sampled frames could be decoded")
    info = {"fps_used": fps, "fps_source": fps_source, "fps_reported": reported, "frames_read": n_read,
            "frame_index": kept, "time_s": [i / fps for i in kept]}
    return np.stack([frames[i] for i in kept]), info


def _first_pass(path: Path, settings: FrameSettings) -> tuple[float, float, list[float], dict[int, np.ndarray], bool]:
    """Read a video up to the last frame its reported rate asks for, decoding only those:
    (reported fps, fps used for the guess, timestamps in ms, {index: frame}, whether the stream ended)."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise FrameError(f"{path}: not a readable video")
    try:
        try:
            check_video_header(cap)
        except ValueError as error:
            raise FrameError(f"{path}: {error}") from None
        reported = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        guess_fps = reported if PLAUSIBLE_FPS[0] <= reported <= PLAUSIBLE_FPS[1] else ASSUMED_FPS
        guess = set(int(i) for i in sample_indices(2**62, guess_fps, settings.rate_hz, settings.max_frames))
        last_guess = max(guess)
        stamps, frames = [], {}
        while len(stamps) <= last_guess and cap.grab():
            index = len(stamps)
            stamps.append(float(cap.get(cv2.CAP_PROP_POS_MSEC)))
            if index in guess:
                ok, frame = cap.retrieve()
                if ok and frame is not None:
                    frames[index] = _decoded(frame, settings)
        ended = len(stamps) <= last_guess
    finally:
        cap.release()
    return reported, guess_fps, stamps, frames, ended


def _decode_indices(path: Path, wanted: set[int], settings: FrameSettings) -> dict[int, np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames: dict[int, np.ndarray] = {}
    last = max(wanted) if wanted else -1
    try:
        index = 0
        while index <= last and cap.grab():
            if index in wanted:
                ok, frame = cap.retrieve()
                if ok and frame is not None:
                    frames[index] = _decoded(frame, settings)
            index += 1
    finally:
        cap.release()
    return frames


def read_image(path: Path, settings: FrameSettings) -> tuple[np.ndarray, dict]:
    """One prepared frame from an image file (its header is checked against the pixel limit first)."""
    try:
        check_image_header(path)
    except ValueError as error:
        raise FrameError(f"{path}: {error}") from None
    image = cv2.imdecode(np.fromfile(str(path), dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise FrameError(f"{path}: not a decodable image")
    if image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    return _decoded(image, settings)[None], {"fps_used": np.nan, "fps_source": "image", "frame_index": [0],
                                                   "time_s": [0.0], "frames_read": 1}


def read_frames(path: str | Path, settings: FrameSettings = FrameSettings(), *,
                raw: bool = False) -> tuple[np.ndarray, dict]:
    """Frames (T, S, S, 3) uint8 RGB of a video or image, and sampling info. No cache.

    ``raw=True``: the sampled frames as decoded (RGB, own size), before any preparation.
    """
    path = Path(path)
    if raw:
        settings = dataclasses.replace(settings, canonical="crop", mask_sector=False)
    if not path.is_file():
        raise FrameError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise FrameError(f"{path}: zero-byte file")
    ext = path.suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        frames, info = read_video(path, settings)
    elif ext in IMAGE_EXTENSIONS:
        frames, info = read_image(path, settings)
    else:
        raise FrameError(f"{path}: unsupported file type {ext or '(no extension)'}")
    if raw:
        return frames, info
    if settings.canonical != "off":
        frames = canonical_frames(frames, settings)
    if settings.mask_sector:
        frames = mask_outside_sector(frames)
    if settings.intensity:
        frames = standardise_intensity(frames)
    return frames, info


# ----------------------------------------------------------------------------- cache


class FrameCache:
    """Decoded frames on disk, keyed by file content (SHA-1) and extraction settings.

    The folder is ``cache_dir("frames")`` unless given; ``$COVNB_CACHE_DIR`` moves it.
    Content hashes are remembered per (path, size, mtime) within the process. The cache is a
    speed-up only: an entry that cannot be read or does not fit the settings is a miss (decoded
    again and replaced), and a folder that cannot be created or written means decoding without
    caching (one warning naming the folder), never a lost file.
    """

    def __init__(self, folder: str | Path | None = None):
        self.folder = Path(folder) if folder else cache_root() / "frames"
        self.writable = True
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            self.writable = False
            warn_cache_unwritable(self.folder, error)
        self._hashes: dict[tuple, str] = {}
        self.hits = 0
        self.misses = 0
        self.replaced = 0

    def content_hash(self, path: Path) -> str:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in self._hashes:
            self._hashes[key] = file_sha1(path)
        return self._hashes[key]

    def _paths(self, path: Path, settings: FrameSettings) -> tuple[Path, Path]:
        stem = f"{self.content_hash(path)}-{settings.key()}"
        sub = self.folder / stem[:2]
        return sub / f"{stem}.npy", sub / f"{stem}.json"

    def _read(self, array_path: Path, info_path: Path, settings: FrameSettings):
        """The cached entry, or None when it is missing, unreadable or does not fit the settings."""
        if not (array_path.is_file() and info_path.is_file()):
            return None
        try:
            frames = np.load(array_path, allow_pickle=False)
            info = json.loads(info_path.read_text())
        except (OSError, ValueError, EOFError):  # 0-byte, truncated, garbled: a miss
            self.replaced += 1
            return None
        size = int(settings.image_size)
        if not (isinstance(frames, np.ndarray) and frames.dtype == np.uint8 and frames.ndim == 4
                and frames.shape[1:] == (size, size, 3) and len(frames) >= 1 and isinstance(info, dict)
                and isinstance(info.get("frame_index"), list) and len(info["frame_index"]) == len(frames)
                and isinstance(info.get("time_s"), list) and len(info["time_s"]) == len(frames)):
            self.replaced += 1
            return None
        return frames, info

    def get(self, path: str | Path, settings: FrameSettings = FrameSettings()) -> tuple[np.ndarray, dict]:
        """Frames from the cache, decoding and storing them on a miss."""
        path = Path(path)
        if not path.is_file():
            raise FrameError(f"{path}: file not found")
        array_path, info_path = self._paths(path, settings)
        cached = self._read(array_path, info_path, settings)
        if cached is not None:
            self.hits += 1
            return cached
        frames, info = read_frames(path, settings)
        self.misses += 1
        if self.writable:
            try:
                array_path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(array_path, lambda tmp: np.save(tmp, frames, allow_pickle=False), suffix=".npy")
                atomic_write_text(info_path, json.dumps(to_jsonable(info, nan_to_none=False)))
            except OSError as error:  # read-only or full cache: keep the decoded frames, warn once
                self.writable = False
                warn_cache_unwritable(self.folder, error)
        return frames, info


# ----------------------------------------------------------------------------- whole data sets


@dataclass
class FrameSet:
    """All frames of a sample table: ``frames[i]`` belongs to row ``index.iloc[i]``."""

    frames: np.ndarray
    index: pd.DataFrame
    skipped: pd.DataFrame
    settings: FrameSettings

    def __len__(self) -> int:
        return len(self.frames)


#: Files per Dask task when frames are decoded on a cluster (see benchmarks/bench_cluster.py).
FILES_PER_TASK = 16


def extract_frames(samples: pd.DataFrame, settings: FrameSettings = FrameSettings(), cache: FrameCache | bool = True,
                   progress: bool = True, *, client=None, files_per_task: int = FILES_PER_TASK) -> FrameSet:
    """Frames of every sample (rows of a :class:`covnb.datasets.Dataset` table).

    A file that fails to decode is skipped with its reason; the run goes on. With a Dask
    ``client`` (:mod:`covnb.cluster`) the files are decoded by the workers, ``files_per_task``
    per task, each filling the frame cache (its folder must be shared by the workers; entries
    are written atomically, first writer wins) and the frames assembled here in the samples'
    order: the same :class:`FrameSet` as in this process.
    """
    frame_cache = cache if isinstance(cache, FrameCache) else (FrameCache() if cache and cache_enabled() else None)
    records = samples.to_dict("records")
    if client is not None:
        decoded = _decode_on_cluster(client, records, settings, frame_cache, int(files_per_task), progress)
    else:
        iterator = records
        if progress:
            from tqdm.auto import tqdm

            iterator = tqdm(iterator, desc="frames", unit="file", leave=False)
        decoded = (_decode_one(sample, settings, frame_cache) for sample in iterator)
    chunks, rows, skipped = [], [], []
    for sample, (frames, info, reason) in zip(records, decoded):
        path = Path(sample["path"])
        if reason is not None:
            skipped.append({"path": str(path), "reason": reason})
            continue
        chunks.append(frames)
        for position, (frame_index, time_s) in enumerate(zip(info["frame_index"], info["time_s"])):
            rows.append({"sample_id": sample["sample_id"], "path": str(path), "label": sample["label"],
                         "group": sample["group"], "kind": sample.get("kind", ""), "source": sample.get("source", "unknown"),
                         "frame_index": int(frame_index),
                         "time_s": float(time_s), "fps_used": info.get("fps_used"), "fps_source": info.get("fps_source")})
    size = int(settings.image_size)
    frames = np.concatenate(chunks) if chunks else np.zeros((0, size, size, 3), np.uint8)
    return FrameSet(frames, pd.DataFrame(rows), pd.DataFrame(skipped, columns=["path", "reason"]), settings)


def _decode_one(sample: dict, settings: FrameSettings, frame_cache: FrameCache | None):
    """``(frames, info, None)`` of one sample's file, or ``(None, None, reason)`` when it cannot be decoded."""
    path = Path(sample["path"])
    try:
        frames, info = frame_cache.get(path, settings) if frame_cache else read_frames(path, settings)
    except (FrameError, OSError, cv2.error) as error:
        return None, None, error_reason(error, path)
    return frames, info, None


def decode_chunk(samples: list[dict], settings: FrameSettings, cache_folder: str | None) -> list[tuple]:
    """:func:`_decode_one` of every sample (a Dask task of :func:`extract_frames`), through the
    frame cache in ``cache_folder`` (None: no cache)."""
    frame_cache = FrameCache(cache_folder) if cache_folder else None
    return [_decode_one(sample, settings, frame_cache) for sample in samples]


def _decode_on_cluster(client, records: list[dict], settings: FrameSettings, frame_cache: FrameCache | None,
                       files_per_task: int, progress: bool):
    """Decoded files in ``records``' order, ``files_per_task`` per Dask task."""
    if files_per_task < 1:
        raise ValueError(f"files_per_task must be at least 1, got {files_per_task}")
    folder = str(frame_cache.folder) if frame_cache is not None and frame_cache.writable else None
    chunks = [records[i:i + files_per_task] for i in range(0, len(records), files_per_task)]
    futures = [client.submit(decode_chunk, chunk, settings, folder, pure=False) for chunk in chunks]
    if progress:
        from distributed import progress as dask_progress

        dask_progress(futures)
    for future in futures:
        yield from future.result()
        future.release()
