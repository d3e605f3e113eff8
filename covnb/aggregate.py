"""Frame -> video aggregation: one row per video (or image) from the rows of its frames.

A video's probability is the mean of its frames' probabilities, POCOVID-Net's video rule (Born et
al., arXiv:2004.12084); the alternative is the majority vote of the frames, ties broken by the
mean probability.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["AGGREGATIONS", "vote_scores", "video_level"]

AGGREGATIONS = ("mean", "vote")
#: Weight of the mean probability in a vote: it only breaks ties between equal vote counts.
VOTE_TIE_BREAK = 1e-6


def vote_scores(probs) -> np.ndarray:
    """Per frame, a one-hot vote for its most probable class plus a tie-breaking share of its probabilities."""
    probs = np.asarray(probs, dtype=float)
    return np.eye(probs.shape[1])[probs.argmax(axis=1)] + VOTE_TIE_BREAK * probs


def video_level(frames: pd.DataFrame, columns: Sequence[str], keys: Sequence[str], *, method: str = "mean",
                carry: Sequence[str] = ("group", "label"), sort: bool = False) -> pd.DataFrame:
    """One row per ``keys`` group of ``frames``: the mean of ``columns`` (``method="mean"``) or of
    :func:`vote_scores` (``"vote"``: the vote fraction of each class, plus the tie break), the
    first value of each ``carry`` column present, and ``n_frames``. Rows in first-seen order
    unless ``sort``.

    >>> frames = pd.DataFrame({"sample_id": ["a", "a", "b"], "prob_x": [0.2, 0.6, 0.9], "prob_y": [0.8, 0.4, 0.1]})
    >>> video_level(frames, ["prob_x", "prob_y"], ["sample_id"]).round(2).to_dict("list")
    {'sample_id': ['a', 'b'], 'prob_x': [0.4, 0.9], 'prob_y': [0.6, 0.1], 'n_frames': [2, 1]}
    """
    if method not in AGGREGATIONS:
        raise ValueError(f"method must be 'mean' or 'vote', got {method!r}")
    keys, columns = list(keys), list(columns)
    probs = frames[columns].to_numpy(dtype=float)
    present = [c for c in carry if c in frames]
    work = frames[keys + present].copy()
    values = probs if method == "mean" else vote_scores(probs)
    for k, column in enumerate(columns):
        work[column] = values[:, k]
    aggregations = {column: "mean" for column in columns}
    aggregations.update({column: "first" for column in present})
    grouped = work.groupby(keys, sort=sort)
    videos = grouped.agg(aggregations)
    videos["n_frames"] = grouped.size()
    return videos.reset_index()
