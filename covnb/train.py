"""Training recipes, frozen-feature caching and patient-level cross-validation.

The code lives in :mod:`covnb.experiments` (``recipes``, ``features``, ``fitting``, ``crossval``,
``training``); this module keeps every name it has always had, so ``covnb.train.run_training``
and the rest import as before. What follows is why the recipes are what they are.

The recipes (:func:`recipe_config`):

* ``"pocovid"``: POCOVID-Net's protocol (Born et al., arXiv:2004.12084; their
  ``scripts/train_covid19.py``): their head, Adam 1e-4, batch 16, 20 epochs, rotation 10 deg,
  shifts 0.1, both flips, head + last conv block trainable, no class weights, ReduceLROnPlateau
  (0.7, 7), early stopping (patience 20) -- but with seeds and an inner patient-level
  validation split for early stopping instead of the test fold. By default it trains the plain
  Keras way (every augmented batch through the backbone each epoch).
* ``"default"`` (covnb): ``"midlevel"`` below, with 0, 2, 4 or 8 within-class between-source
  directions projected out of the features (nuisance attribute projection, :mod:`covnb.nuisance`;
  Solomonoff et al., ICASSP 2005), the number chosen inside every training fold by its inner CV
  (source-aware under source-held-out folds; only the outer result is reported; the final model
  by the same inner CV). Re-selected on source-held-out folds (issue 13), POCUS, split seeds
  10-14, video balanced accuracy: 0.764 +- 0.012 against 0.718 +- 0.029 for ``"midlevel"``,
  patient-grouped 0.793 against 0.788 (README). ``"nap"`` is the same recipe under its earlier name.
  Data without sources fall back to ``"midlevel"`` (NAP 0).
* ``"midlevel"`` (the default until issue 13): the backbone is frozen, so its features are computed ONCE per frame
  (and per cached view), cached on disk, and the head is fitted on them. Choices, each measured
  on POCUS (3 classes, patient-grouped 5-fold, EfficientNet-Lite0 ImageNet at 224, video
  balanced accuracy of mean frame probability, class-weighted logistic regression with C by
  inner patient-grouped CV; split seeds 0-2 unless said otherwise):

  - ``head="midlevel"`` (:data:`covnb.models.MIDLEVEL_TAPS`): average AND max pools of the
    expansions that open stages 4, 5 and 6 (240 + 480 + 672 channels), without the top layer.
    The largest gain: 0.721 for the earlier "multiscale" head (average pools of stages 4-7 and
    of the top) -> 0.781 (stage outputs 4-6 only: 0.752; their expansions: 0.781; plus max
    pooling: 0.806; COVID sensitivity 0.55 -> 0.74). Adding stage 7 or the top lowers it
    (0.775, 0.747): the last layers are ImageNet-specific (Yosinski et al., NeurIPS 2014). On
    split seeds 10-14, never used for these choices: 0.711 -> 0.789.
  - ``mirror_view=True``: the exact left-right mirror of every frame as one more training view
    (0.780 -> 0.789 on seeds 10-14); 4 random augmented views (rotation, shift, zoom, flip,
    contrast) instead or in addition were not better (0.787, 0.794 vs 0.804) and cost 3x the
    features, so ``aug_views=0``.
  - ``train_unit="video"``: the head learns from each video's mean feature (one example per
    video, multiple-instance learning with mean pooling): 0.706 -> 0.726 (multiscale head).
  - ``solver="logistic"``: the linear head fitted by scikit-learn with C chosen by inner
    patient-grouped CV is a better-regularised optimiser of the same model than the Keras head
    (Adam, dropout 0.2, early stopping on a small inner split): 0.706 vs 0.652 (multiscale
    head). The Keras head stays available (``solver="keras"``) and is used when fine-tuning the
    last block (``fine_tune_epochs > 0``, with the "gap" head).
  - within noise, so not used: 288 px input (0.783), signed square root of the features
    (0.720 vs 0.719, multiscale), per-video standard deviation of the features (0.715), test
    on video-mean features instead of averaging frame probabilities (0.719), sector crop,
    log-probability averaging, patient-balanced weights.

  With everything outside the ultrasound sector blacked out (``FrameSettings(mask_sector=True)``,
  text, logos and rulers gone): 0.803 on seeds 0-2, 0.773 on seeds 10-14 (COVID sensitivity
  0.65): part of the gain may come from the screen around the image.

  These choices come from comparing cross-validated numbers of about 25 variants on split
  seeds 0-2, a selection on the test folds; split seeds 10-14 were kept aside and confirm the
  gain (0.789, numbers above). Inner patient-grouped CV chooses C only.
* ``"linear_probe"``: frozen pooled features -> standardised, class-weighted logistic
  regression, C chosen by inner patient-grouped CV: the strong simple baseline.
* ``"auto"``: chooses among :data:`AUTO_CANDIDATES` (top-layer probe, top layer with mirror
  per video, middle layers with and without mirror) inside every training fold by the inner CV
  (grouped by source for the positive class under ``group_by="source"``): a nested selection,
  only the outer result is reported; the final model is chosen by the same inner CV.

Evaluation (:func:`run_training`): source-held-out folds (every test fold's COVID-19 files from
sources absent from its training data, :func:`covnb.splits.source_held_out_folds`) as the
headline, patient-grouped folds beside them. On POCUS, split seeds 10-14: the mid-level recipe
0.718 +- 0.029 source-held-out (COVID-19 sensitivity 0.50, specificity 0.96) against 0.788 +-
0.018 patient-grouped (0.71 / 0.94); the default 0.764 +- 0.012 (0.62 / 0.95) against 0.793; the
linear probe 0.637 (0.33 / 0.89). The mid-level recipe's choices were made on patient-grouped folds.

Every recipe yields a full Keras model (raw RGB in, probabilities out), so a saved model is
used the same way whatever trained it.
"""

from __future__ import annotations

from covnb.experiments.crossval import (CVResult, RecipeCandidates, _check_disjoint, _split_samples, encode_frames,
                                        fit_final_model, inner_cv_groups, run_cross_validation)
from covnb.experiments.features import (_CALLS, _TAILS, DEVICE_APPEARANCE_VERSION, FEATURE_CACHE_VERSION,
                                        _backbone_fingerprint,
                                        _batched_call, _feature_key, _frames_fingerprint, _tail, _weights_key,
                                        compute_features, cut_layer, device_appearance, needed_cuts, predict_frames,
                                        recipe_features, recipe_model, view_kinds)
from covnb.experiments.fitting import (FoldData, _Batches, _balanced_weights, _EpochLine, _first_dense_after_features,
                                       _fit_linear_probe, _fit_stage, _fold_standardisation, _sample_weights,
                                       _video_means, class_weights, fit_fold, predict_rows)
from covnb.experiments.recipes import (AUTO_CANDIDATES, ENGINES, GROUPINGS, IMBALANCE_CHOICES,  # noqa: F401
                                       NAP_CANDIDATES, RECIPES, SELECTION_CANDIDATES, SOLVERS,
                                       TRAIN_UNITS, UNMIRRORABLE_MODALITIES, TrainConfig, mirror_is_plausible,
                                       recipe_config, selection_configs)
from covnb.experiments.training import (PROTOCOL_KEYS, TrainingResult, _baseline, _protocol_block, _videos_with,
                                        model_metadata, results_by_kind, results_by_source, run_training,
                                        save_final_model, write_figures)

from covnb import __version__  # noqa: F401 (names covnb.train has always had)
from covnb.cache import read_cached_array, usable_cache_dir, write_cached_array  # noqa: F401
from covnb.experiments.recipes import _RECIPE_OVERRIDES as _RECIPE_DEFAULTS  # noqa: F401
from covnb.models import (POOLED_TAP_HEADS, augmentation_spec, build_model, head_feature_layer,  # noqa: F401
                          last_block_input_layer, save_model, set_trainable)

# Names these helpers had before the split (kept for older callers).
_model_for = recipe_model
_prepare_features = recipe_features
_needed_cuts = needed_cuts
_encode_frames = encode_frames
_predict_rows = predict_rows
_Candidates = RecipeCandidates

__all__ = [
    "RECIPES",
    "IMBALANCE_CHOICES",
    "TrainConfig",
    "recipe_config",
    "CVResult",
    "FoldData",
    "compute_features",
    "class_weights",
    "fit_fold",
    "fit_final_model",
    "run_cross_validation",
    "run_training",
    "predict_frames",
    "TrainingResult",
]
