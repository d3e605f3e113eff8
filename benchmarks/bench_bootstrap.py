"""Patient bootstrap speed: covnb's vectorised resampling against the one-resample-at-a-time loop.

    python benchmarks/bench_bootstrap.py [--videos 200] [--patients 80] [--n-boot 1000] [--loop-boot 100]

Synthetic video-level predictions (3 classes). Both compute the same metrics as `covnb train`
(balanced accuracy, accuracy, MCC, macro ROC-AUC, per-class sensitivity and specificity) from the
same random draws; the loop (scikit-learn per resample, as before) runs fewer resamples and is
scaled to --n-boot. Prints both wall times, the ratio, and the largest difference of the bounds.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from covnb.evaluate import SUMMARY_METRICS, bootstrap_ci

CLASSES = ["covid", "pneumonia", "regular"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--patients", type=int, default=80)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--loop-boot", type=int, default=100, help="resamples of the slow loop (scaled up)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, args.videos)
    probs = rng.dirichlet(np.ones(3), args.videos)
    probs[np.arange(args.videos), y] += 0.5
    probs /= probs.sum(axis=1, keepdims=True)
    table = pd.DataFrame({"label": np.asarray(CLASSES)[y], "group": rng.integers(0, args.patients, args.videos),
                          **{f"prob_{c}": probs[:, k] for k, c in enumerate(CLASSES)}})
    names = list(SUMMARY_METRICS) + [f"{c}_{m}" for c in CLASSES for m in ("sensitivity", "specificity")]
    start = time.perf_counter()
    fast = bootstrap_ci(table, CLASSES, names, n_boot=args.n_boot, seed=0)
    fast_s = time.perf_counter() - start
    start = time.perf_counter()
    reference = bootstrap_ci(table, CLASSES, names, n_boot=args.loop_boot, seed=0, vectorised=False)
    loop_s = (time.perf_counter() - start) * args.n_boot / args.loop_boot
    same = bootstrap_ci(table, CLASSES, names, n_boot=args.loop_boot, seed=0)
    difference = max(abs(same[n][k] - reference[n][k]) for n in names for k in ("low", "high"))
    print(f"{args.videos} videos of {table['group'].nunique()} patients, {len(names)} metrics, {args.n_boot} resamples")
    print(f"vectorised          {fast_s:8.3f} s")
    print(f"loop (scaled from {args.loop_boot}) {loop_s:8.3f} s")
    print(f"speedup {loop_s / fast_s:.0f}x; largest difference of the bounds at {args.loop_boot} resamples: {difference:.2g}")
    print(f"balanced accuracy 95% interval: {fast['balanced_accuracy']['low']:.3f} - {fast['balanced_accuracy']['high']:.3f}")


if __name__ == "__main__":
    main()
