"""Notebook 03's result sentences, each read from the numbers computed above it (Snell et al. 2017 style
K-shot curves; a sentence never states a finding the run did not show)."""

from __future__ import annotations

import json

import pandas as pd

__all__ = ["Findings", "shot_sentence", "shots_sentence", "leak_sentence", "learning_sentence", "at_k", "best_at_largest_k",
           "run_summary", "summary_markdown"]


class Findings(list):
    """The sentences a run states, in order; :meth:`state` also shows one under its cell."""

    def state(self, sentence: str) -> None:
        from IPython.display import Markdown, display

        self.append(sentence)
        display(Markdown(sentence))


def shot_sentence(curve: pd.DataFrame, pool: str, n_way: int) -> str:
    """What the K-shot curve of one pool shows: best method at the largest K, its gain, the runner-up."""
    if curve.empty:
        return f"On {pool} no K was possible in this run."
    k_low, k_high = int(curve["k_shot"].min()), int(curve["k_shot"].max())
    at_high = curve[curve["k_shot"] == k_high].sort_values("mean")
    best = at_high.iloc[-1]
    text = (f"On {pool}, {best['method']} is best at K={k_high} ({best['mean']:.2f} ± {best['ci95']:.2f}; "
            f"chance {1 / n_way:.2f})")
    start = curve[(curve["k_shot"] == k_low) & (curve["method"] == best["method"])]["mean"]
    if k_high > k_low and len(start):
        text += f"; from K={k_low} to K={k_high} it moves by {best['mean'] - float(start.iloc[0]):+.2f}"
    if len(at_high) > 1:
        runner = at_high.iloc[-2]
        close = best["mean"] - runner["mean"] <= best["ci95"] + runner["ci95"]
        text += f"; next is {runner['method']} ({runner['mean']:.2f}{', within the 95% intervals' if close else ''})"
    return text + "."


def at_k(curve: pd.DataFrame, k: int) -> dict:
    """method -> {mean, ci95} at K = ``k``."""
    part = curve[curve["k_shot"] == k]
    return {row["method"]: {"mean": row["mean"], "ci95": row["ci95"]} for _, row in part.iterrows()}


def best_at_largest_k(curve: pd.DataFrame) -> dict | None:
    """The best method at the largest K of a curve (None for an empty curve)."""
    if not len(curve):
        return None
    k_top = int(curve["k_shot"].max())
    best = curve[curve["k_shot"] == k_top].sort_values("mean").iloc[-1]
    return {"k_shot": k_top, "method": best["method"], "mean": best["mean"], "ci95": best["ci95"]}


def leak_sentence(leak_table: pd.DataFrame | None, n_way: int, k_shot: int) -> str:
    """Leaky (support and query may share patients) vs patient-disjoint episodes, read from their means and 95% CIs."""
    if leak_table is None or len(leak_table) != 2:
        return "**Leaky vs honest.** Too few patients in this run to compare the two protocols."
    (leaky_mean, leaky_ci), (honest_mean, honest_ci) = leak_table[["mean", "ci95"]].to_numpy()
    if leaky_mean - honest_mean > leaky_ci + honest_ci:
        return (f"**Leaky vs honest.** In this run the leaky protocol scores {leaky_mean:.2f} and the patient-disjoint "
                f"one {honest_mean:.2f} ({n_way}-way {k_shot}-shot, SimpleShot): letting support and query share "
                f"patients inflates the accuracy by {leaky_mean - honest_mean:.2f}.")
    return (f"**Leaky vs honest.** In this run the leaky protocol ({leaky_mean:.2f}) and the patient-disjoint one "
            f"({honest_mean:.2f}) differ by {leaky_mean - honest_mean:+.2f}, within their 95% intervals: this run "
            "does not show the inflation.")


def learning_sentence(summary: pd.DataFrame, recipe: str, positive: str) -> str:
    """What the patient learning curve (``n_patients`` -> mean balanced accuracy) shows."""
    if not len(summary):
        return "**Patients.** The patient learning curve has no point in this run (too few patients)."
    n_low, n_high = int(summary.index.min()), int(summary.index.max())
    low, high = float(summary.loc[n_low, "mean"]), float(summary.loc[n_high, "mean"])
    trend = (f"more {positive} patients helped ({high - low:+.2f})" if high - low > 0.02 else
             f"more {positive} patients did not help in this run ({high - low:+.2f})")
    return (f"**Patients.** The {recipe} recipe reaches video balanced accuracy {low:.2f} with "
            f"{n_low} {positive} patient(s) in training and {high:.2f} with {n_high}: {trend}.")


def shots_sentence(curve_held: pd.DataFrame, curve_all: pd.DataFrame, n_way: int) -> str:
    """The "Shots." finding: both pools' curves, and whether K=5 was reached."""
    five = ("reached" if (curve_held["k_shot"] == 5).any() or (curve_all["k_shot"] == 5).any()
            else "not reached (too few patients per class)")
    return (f"**Shots.** {shot_sentence(curve_held, 'the held-out patients', n_way)} "
            f"{shot_sentence(curve_all, 'all patients', n_way)} K=5 is {five} in this run.")


def run_summary(curve_held: pd.DataFrame, curve_all: pd.DataFrame, learning: pd.DataFrame, *, recipe: str) -> dict:
    """Notebook 03's ``summary`` block: K=5 on both pools, the best method at the largest K (all
    patients) and the trained recipe at the largest n (``learning``: :func:`covnb.fewshot_study.learning_summary`)."""
    summary = {"five_shot_held_out": at_k(curve_held, 5), "five_shot_all_patients": at_k(curve_all, 5)}
    if len(curve_all):
        summary["best_few_shot_at_largest_k"] = best_at_largest_k(curve_all)
    if len(learning):
        n_top = int(learning.index.max())
        summary["trained_recipe_at_largest_n"] = {"n_patients": n_top, "recipe": recipe,
                                                  "balanced_accuracy": float(learning.loc[n_top, "mean"])}
    return summary


def summary_markdown(summary: dict, findings, *, synthetic: bool) -> str:
    """The closing cell: one bullet per summary entry (3 digits), then the run's findings."""
    bullets = "\n".join(f"* **{key}**: `{json.dumps(value, default=lambda v: round(float(v), 3))}`"
                         for key, value in summary.items())
    return (bullets + "\n\n### What this run shows\n\n" + "\n".join(f"* {sentence}" for sentence in findings)
            + ("\n\n*Synthetic phantom: these numbers show how the methods behave, not how well anything "
               "detects COVID-19.*" if synthetic else ""))
