"""Frame cache speed: first vs second extraction of a whole data folder, side by side.

    python benchmarks/bench_frames.py ../shared/data/pocus [--image-size 224]

The first pass decodes every video and image (OpenCV) and fills a fresh cache folder; the
second reads the cached ``.npy`` files. Prints both wall times and the ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from covnb.datasets import load_dataset
from covnb.frames import FrameCache, FrameSettings, extract_frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--rate-hz", type=float, default=3.0)
    parser.add_argument("--max-frames", type=int, default=30)
    args = parser.parse_args()
    samples = load_dataset(args.path).samples
    settings = FrameSettings(rate_hz=args.rate_hz, max_frames=args.max_frames, image_size=args.image_size)
    with tempfile.TemporaryDirectory() as folder:
        times = []
        for run in ("first (decode + fill cache)", "second (from cache)"):
            cache = FrameCache(os.path.join(folder, "frames"))  # new object: no in-process memo
            start = time.perf_counter()
            frame_set = extract_frames(samples, settings, cache=cache, progress=False)
            times.append(time.perf_counter() - start)
            print(f"{run:<28} {times[-1]:7.2f} s  {len(frame_set.frames)} frames from {len(samples)} files "
                  f"({len(frame_set.frames) / times[-1]:.0f} frames/s)")
    print(f"speedup of the cached extraction: {times[0] / times[1]:.1f}x")


if __name__ == "__main__":
    main()
