"""Notebook 03's experiments, composed from :mod:`covnb.fewshot`: the prototypical network on base
patients (Snell et al. NeurIPS 2017), K-shot curves on held-out and on all patients, and few-shot
transfer between two data sets in both directions."""

from __future__ import annotations

import numpy as np
import pandas as pd

from covnb import fewshot

__all__ = ["fit_protonet", "shot_curves", "plot_shot_curve_pair", "cross_domain_both_ways", "leak_demo"]

_CURVE_COLUMNS = ["method", "k_shot", "mean", "ci95", "std", "n_episodes"]


def fit_protonet(x, labels, groups, *, steps: int, n_way: int, q_query: int, seed: int, log=print):
    """``(network or None, what metrics.json keeps)``: None when the base patients cannot fill one episode."""
    try:
        protonet = fewshot.PrototypicalNetwork(units=128, steps=steps, n_way=n_way, k_shot=5, q_query=q_query,
                                               seed=seed).fit(x, labels, groups, log=log)
    except ValueError as error:  # too few base patients for even one training episode
        if log:
            log(f"prototypical network skipped: {error}")
        return None, {"skipped": str(error)}
    return protonet, {"train_episode": protonet.train_episode, "steps": steps,
                      "final_loss": float(np.mean(protonet.history[-20:])),
                      "base_patients": len(protonet.trained_groups)}


def shot_curves(x, labels, groups, held, *, methods_held: dict, shots, n_way: int, q_query: int, n_episodes: int,
                seed: int, base_mean, limit_held: int) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """K-shot curves on the held-out patients (every method, centred on the base mean) and on all
    patients (training-free methods, leave-episode-out centre). Returns both curves and the notes
    saying where a curve stops."""
    if limit_held >= 1:
        curve_held, notes_held = fewshot.shot_curve(x[held], labels[held], groups[held], methods_held, shots=shots,
                                                    n_way=n_way, q_query=q_query, n_episodes=n_episodes,
                                                    seed=seed, base_mean=base_mean,
                                                    pool_name="held-out patients")
    else:
        curve_held = pd.DataFrame(columns=_CURVE_COLUMNS)
        notes_held = [f"held-out patients: no K is possible (smallest class has fewer than 1 + Q={q_query} held-out "
                      "patients)"]
    curve_all, notes_all = fewshot.shot_curve(x, labels, groups, fewshot.default_methods(), shots=shots,
                                              n_way=n_way, q_query=q_query, n_episodes=n_episodes, seed=seed,
                                              pool_name="all patients (leave-episode-out centre)")
    return curve_held, curve_all, notes_held + notes_all


def plot_shot_curve_pair(curve_held: pd.DataFrame, curve_all: pd.DataFrame, n_way: int, q_query: int):
    """The two K-shot curves side by side, chance marked."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
    fewshot.plot_shot_curves(curve_held, axes[0], title=f"held-out patients ({n_way}-way, Q={q_query})",
                             chance=1 / n_way)
    fewshot.plot_shot_curves(curve_all, axes[1], title="all patients, training-free methods", chance=1 / n_way)
    return fig


def cross_domain_both_ways(x, labels, groups, other_path, *, settings, backbone: str, image_size: int, weights,
                           q_query: int, n_episodes: int, seed: int, log=print) -> pd.DataFrame:
    """Covid vs other, 5-shot: prototypes from this data tested on ``other_path`` and the reverse
    (:func:`covnb.fewshot.cross_domain_evaluation`)."""
    from covnb.datasets import load_dataset, select_task
    from covnb.frames import extract_frames

    other = load_dataset(other_path)
    other_frames = extract_frames(select_task(other.samples, "covid_vs_other"), settings, progress=False)
    other_x, other_table = fewshot.sample_embeddings(
        fewshot.compute_embeddings(other_frames, backbone=backbone, image_size=image_size, weights=weights,
                                   log=log), other_frames.index)
    other_labels, other_groups = other_table["label"].to_numpy(str), other_table["group"].to_numpy(str)
    here, there = "this data", other.root.name
    parts = [fewshot.cross_domain_evaluation(sx, sy, tx, ty, target_groups=tg, source_name=sname, target_name=tname,
                                             k_shot=5, q_query=q_query, n_episodes=n_episodes, seed=seed)
             for (sx, sy, sname), (tx, ty, tg, tname) in (
                 ((x, labels, here), (other_x, other_labels, other_groups, there)),
                 ((other_x, other_labels, there), (x, labels, groups, here)))]
    return pd.concat(parts, ignore_index=True)


def leak_demo(frame_embeddings, index: pd.DataFrame, *, n_way: int, q_query: int, n_episodes: int, seed: int):
    """SimpleShot on frame items with support and query allowed to share patients ("leaky") and
    patient-disjoint ("honest"). Returns ``(K used, table of mean / ci95 per protocol or None)``."""
    labels, groups = index["label"].to_numpy(str), index["group"].to_numpy(str)
    limit = fewshot.max_k(labels, groups, q_query)
    k_shot = max(1, min(5, limit))
    if limit < 1:
        return k_shot, None
    rows = {}
    for name, disjoint in (("leaky: frames, patients may repeat", "item"), ("honest: patient-disjoint", "patient")):
        episodes = fewshot.evaluate_episodes(frame_embeddings, labels, groups, {"simpleshot": fewshot.SimpleShot()},
                                             n_way=n_way, k_shot=k_shot, q_query=q_query,
                                             n_episodes=n_episodes, seed=seed, disjoint=disjoint)
        rows[name] = fewshot.accuracy_summary(episodes["accuracy"])
    return k_shot, pd.DataFrame(rows).T
