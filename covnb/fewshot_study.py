"""Notebook 03's experiments, composed from :mod:`covnb.fewshot`: the prototypical network on base
patients (Snell et al. NeurIPS 2017), K-shot curves on held-out and on all patients, and few-shot
transfer between two data sets in both directions."""

from __future__ import annotations

import numpy as np
import pandas as pd

from covnb import fewshot

__all__ = ["fit_protonet", "shot_curves", "plot_shot_curve_pair", "cross_domain_both_ways", "leak_demo",
           "NOT_RECORDED", "recorded_parameters", "episode_ways", "data_metrics", "plot_learning_vs_fewshot", "embedding_counts", "split_counts", "plot_leak_vs_honest",
           "leak_metrics", "curve_table", "learning_curve", "learning_summary", "learning_metrics", "plot_cross_domain"]

#: Notebook 03's parameters left out of its ``metrics.json`` ``parameters`` block.
#: ``cluster`` says where the numbers were computed, not what they are.
NOT_RECORDED = ("dataset_kind", "learning_curve_patients", "learning_curve_repeats", "cross_domain_path", "cluster",
                "output_dir")

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
                seed: int, base_mean, limit_held: int, client=None) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """K-shot curves on the held-out patients (every method, centred on the base mean) and on all
    patients (training-free methods, leave-episode-out centre). Returns both curves and the notes
    saying where a curve stops. ``client``: every (K, method) cell a task on this Dask cluster
    (:func:`covnb.fewshot.shot_curve`), the same curves."""
    if limit_held >= 1:
        curve_held, notes_held = fewshot.shot_curve(x[held], labels[held], groups[held], methods_held, shots=shots,
                                                    n_way=n_way, q_query=q_query, n_episodes=n_episodes,
                                                    seed=seed, base_mean=base_mean,
                                                    pool_name="held-out patients", client=client)
    else:
        curve_held = pd.DataFrame(columns=_CURVE_COLUMNS)
        notes_held = [f"held-out patients: no K is possible (smallest class has fewer than 1 + Q={q_query} held-out "
                      "patients)"]
    curve_all, notes_all = fewshot.shot_curve(x, labels, groups, fewshot.default_methods(), shots=shots,
                                              n_way=n_way, q_query=q_query, n_episodes=n_episodes, seed=seed,
                                              pool_name="all patients (leave-episode-out centre)", client=client)
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
                           q_query: int, n_episodes: int, seed: int, log=print, client=None) -> pd.DataFrame:
    """Covid vs other, 5-shot: prototypes from this data tested on ``other_path`` and the reverse
    (:func:`covnb.fewshot.cross_domain_evaluation`). ``client``: the other data's frames and
    embeddings computed on this Dask cluster."""
    from covnb.datasets import load_dataset, select_task
    from covnb.frames import extract_frames

    other = load_dataset(other_path)
    other_frames = extract_frames(select_task(other.samples, "covid_vs_other"), settings, progress=False,
                                  client=client)
    other_x, other_table = fewshot.sample_embeddings(
        fewshot.compute_embeddings(other_frames, backbone=backbone, image_size=image_size, weights=weights,
                                   log=log, client=client), other_frames.index)
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


def recorded_parameters(parameters: dict) -> dict:
    """The start of notebook 03's ``metrics.json``: its parameters (without :data:`NOT_RECORDED`) and ``n_episodes``."""
    return {"parameters": {k: v for k, v in parameters.items() if k not in NOT_RECORDED},
            "n_episodes": parameters["n_episodes"]}


def episode_ways(n_way: int, classes, task_name: str) -> tuple[int, list[str]]:
    """The number of classes per episode: ``n_way``, at most the task's number of classes (with a note then)."""
    if n_way <= len(classes):
        return n_way, []
    return len(classes), [f"note: n_way={n_way} but task {task_name!r} has {len(classes)} classes: using "
                          f"{len(classes)}-way episodes"]


def embedding_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Per label: samples, patients and frames of :func:`covnb.fewshot.sample_embeddings`' table."""
    return table.groupby("label").agg(samples=("sample_id", "size"), patients=("group", "nunique"),
                                      frames=("n_frames", "sum"))


def data_metrics(counts: pd.DataFrame, *, synthetic: bool, task: str, classes, n_way: int, max_k: int) -> dict:
    """What notebook 03's ``metrics.json`` keeps of its data: task, classes, ways used, per-class counts, largest K."""
    return {"synthetic": bool(synthetic), "task": task, "classes": list(classes), "n_way_used": n_way,
            "patients_per_class": counts["patients"].to_dict(), "samples_per_class": counts["samples"].to_dict(),
            "max_k_all_patients": int(max_k)}


def split_counts(table: pd.DataFrame, base: np.ndarray) -> pd.DataFrame:
    """Per label: patients in the base set (mask ``base``) and held out."""
    return pd.DataFrame({"base patients": table[base].groupby("label")["group"].nunique(),
                         "held-out patients": table[~base].groupby("label")["group"].nunique()}).fillna(0).astype(int)


def plot_leak_vs_honest(leak_table: pd.DataFrame, n_way: int, k_shot: int):
    """:func:`covnb.study_plots.plot_interval_bars` of :func:`leak_demo`'s table, chance marked."""
    from covnb.study_plots import plot_interval_bars

    return plot_interval_bars(list(leak_table.index), leak_table["mean"], leak_table["ci95"], chance=1 / n_way,
                              xlabel=f"{n_way}-way {k_shot}-shot accuracy (SimpleShot, frame items)",
                              colors=["tab:red", "tab:green"])


def leak_metrics(k_shot: int, leak_table: pd.DataFrame | None) -> dict:
    """What ``metrics.json`` keeps of :func:`leak_demo`: K and, when run, each protocol's row."""
    return {"k_shot": k_shot, **({} if leak_table is None else leak_table.to_dict(orient="index"))}


def curve_table(curve_held: pd.DataFrame, curve_all: pd.DataFrame) -> pd.DataFrame:
    """Both K-shot curves in one table, a ``pool`` column ("held-out" or "all") telling them apart."""
    return pd.concat([curve_held.assign(pool="held-out"), curve_all.assign(pool="all")])


def learning_curve(frameset, embeddings, *, recipe: str, n_patients, repeats: int, positive: str, backbone: str,
                   image_size: int, weights, seed: int, client=None) -> tuple[pd.DataFrame, list[str]]:
    """:func:`covnb.fewshot.patient_learning_curve` (3 patient-grouped folds) with ``recipe``: the
    embeddings' logistic regression (``"embedding_logreg"``) or a covnb recipe on the frames.
    ``client``: every (fold, n, repeat) a task on this Dask cluster, the same rows."""
    train_config = None
    if recipe != "embedding_logreg":
        from covnb.train import recipe_config

        train_config = recipe_config(recipe, backbone=backbone, image_size=image_size, weights=weights, seed=seed)
    return fewshot.patient_learning_curve(frameset.index, n_patients, embeddings=embeddings, frames=frameset.frames,
                                          recipe=recipe, positive_label=positive, n_splits=3, repeats=repeats,
                                          seed=seed, train_config=train_config, client=client)


def learning_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and count of the balanced accuracy per number of positive patients."""
    return rows.groupby("n_patients")["balanced_accuracy"].agg(["mean", "std", "count"])


def learning_metrics(summary: pd.DataFrame, *, recipe: str, positive: str, notes) -> dict:
    """What ``metrics.json`` keeps of the patient learning curve (``by_n``: n -> mean, std, count)."""
    return {"recipe": recipe, "positive_label": positive, "notes": list(notes),
            "by_n": {int(n): {k: float(v) for k, v in row.items()} for n, row in summary.iterrows()}}


def plot_cross_domain(rows: pd.DataFrame):
    """Balanced accuracy with 95% intervals of :func:`cross_domain_both_ways`, one bar per direction and protocol."""
    from covnb.study_plots import plot_interval_bars

    return plot_interval_bars(rows["direction"] + " | " + rows["protocol"], rows["balanced_accuracy"],
                              rows["ci95"].fillna(0), chance=0.5, xlabel="balanced accuracy, covid vs other",
                              figsize=(7, 3))


def plot_learning_vs_fewshot(rows: pd.DataFrame, curve: pd.DataFrame, *, positive: str, data_name: str):
    """:func:`covnb.fewshot.plot_learning_curve` of the trained recipe with the few-shot ``curve`` beside it."""
    return fewshot.plot_learning_curve(rows, curve, positive_label=positive,
                                       title=f"trained recipe vs few-shot ({data_name})")
