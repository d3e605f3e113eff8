"""Notebook 03's result sentences, each read from the numbers computed above it (Snell et al. 2017 style
K-shot curves; a sentence never states a finding the run did not show)."""

from __future__ import annotations

import pandas as pd

__all__ = ["Findings", "shot_sentence", "at_k", "best_at_largest_k"]


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
