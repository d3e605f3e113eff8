"""Few-shot evaluation speed: 600 episodes per method once the embeddings are cached.

    python benchmarks/bench_fewshot.py ../shared/data/pocus [--image-size 224] [--episodes 600]
    python benchmarks/bench_fewshot.py            # synthetic embeddings of POCUS's shape

With a data folder: frames (frame cache) -> embeddings (first call fills the embedding cache;
the timed second call reads it) -> per-sample means. Then, on the same 3-way 5-shot 2-query
patient-disjoint episodes, the wall time of each method for ``--episodes`` episodes, the
ProtoNet head's training time, and the sampler alone. Prints seconds and episodes/s.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd

from covnb import fewshot


def embeddings_from_folder(path: str, image_size: int, backbone: str):
    from covnb.datasets import default_task, load_dataset, select_task
    from covnb.frames import FrameSettings, extract_frames

    dataset = load_dataset(path)
    samples = select_task(dataset.samples, default_task(dataset))
    frameset = extract_frames(samples, FrameSettings(image_size=image_size), progress=False)
    started = time.perf_counter()
    embeddings = fewshot.compute_embeddings(frameset, backbone=backbone, image_size=image_size)
    first = time.perf_counter() - started
    started = time.perf_counter()
    embeddings = fewshot.compute_embeddings(frameset, backbone=backbone, image_size=image_size)
    cached = time.perf_counter() - started
    print(f"embeddings of {len(frameset)} frames: first call {first:.1f} s, cached call {cached:.2f} s")
    x, table = fewshot.sample_embeddings(embeddings, frameset.index)
    return x, table["label"].to_numpy(str), table["group"].to_numpy(str)


def synthetic_embeddings(seed: int = 0):
    """123 samples, 1280-d, 12/39/34 patients: the shape of the POCUS 3-class task."""
    rng = np.random.default_rng(seed)
    x, labels, groups = [], [], []
    for c, (name, patients) in enumerate((("covid", 12), ("pneumonia", 39), ("regular", 34))):
        centre = rng.normal(size=1280)
        for p in range(patients):
            for _ in range(1 + (p % 2)):
                x.append(centre + rng.normal(size=1280) * 2)
                labels.append(name)
                groups.append(f"{name}{p}")
    return np.abs(np.array(x, np.float32)), np.array(labels), np.array(groups)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", nargs="?", default=None)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--episodes", type=int, default=600)
    parser.add_argument("--k-shot", type=int, default=5)
    parser.add_argument("--q-query", type=int, default=2)
    args = parser.parse_args()
    if args.path:
        x, labels, groups = embeddings_from_folder(args.path, args.image_size, args.backbone)
    else:
        x, labels, groups = synthetic_embeddings()
        print("synthetic embeddings (no data folder given)")
    base = fewshot.base_novel_split(
        pd.DataFrame({"label": labels, "group": groups}), 0.25, seed=0)
    print(f"{len(x)} samples ({x.shape[1]}-d), {len(set(groups))} patients; base {base.sum()} samples, "
          f"held-out {(~base).sum()}")
    started = time.perf_counter()
    protonet = fewshot.PrototypicalNetwork(steps=300, seed=0).fit(x[base], labels[base], groups[base])
    print(f"{'ProtoNet head training (300 episodes)':<44} {time.perf_counter() - started:7.2f} s")
    sampler = fewshot.EpisodeSampler(labels[~base], groups[~base], 3, args.k_shot, args.q_query, seed=0)
    started = time.perf_counter()
    for _ in sampler.episodes(args.episodes):
        pass
    seconds = time.perf_counter() - started
    print(f"{'sampler alone':<44} {seconds:7.2f} s  ({args.episodes / seconds:.0f} episodes/s)")
    methods = {**fewshot.default_methods(), "protonet": protonet}
    base_mean = x[base].mean(0)
    for name, method in methods.items():
        started = time.perf_counter()
        table = fewshot.evaluate_episodes(x[~base], labels[~base], groups[~base], {name: method}, n_way=3,
                                          k_shot=args.k_shot, q_query=args.q_query, n_episodes=args.episodes,
                                          seed=0, base_mean=base_mean)
        seconds = time.perf_counter() - started
        summary = fewshot.accuracy_summary(table["accuracy"])
        print(f"{name + f' ({args.episodes} episodes, {args.k_shot}-shot)':<44} {seconds:7.2f} s  "
              f"({args.episodes / seconds:.0f} episodes/s)  accuracy {summary['mean']:.3f} ± {summary['ci95']:.3f}")


if __name__ == "__main__":
    main()
