"""Few-shot learning on frozen embeddings: how few COVID-19 patients does a model need?

* :func:`compute_embeddings`: pooled features of a frozen covnb backbone, computed once in
  batches inside a ``tf.function`` and cached on disk (keyed by the frames and the backbone).
  :func:`sample_embeddings` averages them per sample (video or image): a *shot* is one
  patient's sample, never a frame of a video the query also uses.
* :class:`EpisodeSampler`: N-way K-shot Q-query episodes, seeded, classes without replacement,
  support and query disjoint **by patient**; :func:`max_k` says how far the K curve can go.
* Methods side by side, all on the same embeddings:
  nearest centroid with SimpleShot normalisation (centre on the base mean, L2-normalise;
  Wang et al. 2019, arXiv:1911.04623), a prototypical network (a small projection head trained
  episodically on base patients; Snell et al., NeurIPS 2017), a linear probe (logistic
  regression on the support set) and k-NN.
* :func:`evaluate_episodes` / :func:`shot_curve`: >= 600 episodes, mean accuracy with a 95%
  confidence interval (1.96 std / sqrt(n)), accuracy against K.
* :func:`patient_learning_curve`: a trained recipe's balanced accuracy when only ``n``
  COVID-19 patients are available for training; :func:`cross_domain_evaluation`: prototypes
  of one modality applied to the other.

The code lives in one module per concept: :mod:`covnb.fewshot_embeddings`,
:mod:`covnb.fewshot_episodes`, :mod:`covnb.fewshot_methods`, :mod:`covnb.fewshot_evaluation`,
:mod:`covnb.fewshot_curves` and :mod:`covnb.fewshot_plots`; this module gathers their public names.
"""

from __future__ import annotations

from covnb.fewshot_curves import cross_domain_evaluation, patient_learning_curve
from covnb.fewshot_embeddings import EMBEDDING_CACHE_VERSION, compute_embeddings, sample_embeddings
from covnb.fewshot_episodes import Episode, EpisodeSampler, max_k
from covnb.fewshot_evaluation import (_LeaveEpisodeOutMean, accuracy_summary, base_novel_split,  # noqa: F401
                                      evaluate_episodes, shot_curve, summarize_episodes)
from covnb.fewshot_methods import (KNearestNeighbours, LinearProbe, PrototypicalNetwork, SimpleShot, default_methods,
                                   simpleshot_normalize)
from covnb.fewshot_plots import plot_learning_curve, plot_shot_curves

__all__ = [
    "EMBEDDING_CACHE_VERSION",
    "compute_embeddings",
    "sample_embeddings",
    "Episode",
    "EpisodeSampler",
    "max_k",
    "simpleshot_normalize",
    "SimpleShot",
    "LinearProbe",
    "KNearestNeighbours",
    "PrototypicalNetwork",
    "default_methods",
    "evaluate_episodes",
    "accuracy_summary",
    "summarize_episodes",
    "shot_curve",
    "base_novel_split",
    "patient_learning_curve",
    "cross_domain_evaluation",
    "plot_shot_curves",
    "plot_learning_curve",
]
