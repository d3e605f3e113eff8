"""Tables and figures for exploring a lung-image data set before training anything.

Every function takes the sample table of :func:`covnb.datasets.load_dataset` (or the frames of
:func:`covnb.frames.extract_frames`) and returns a pandas DataFrame or a matplotlib Figure, so
notebook 01 only explains, calls and shows. Nothing here changes global plotting styles or
writes files except :func:`save_figure`.

The near-duplicate view uses the 256-bit difference hash of :func:`covnb.splits.perceptual_hash`
(Krawetz 2013): frames of one video are nearly identical, which is why a frame-level split
leaks (Born et al., "Accelerating detection of lung pathologies with explainable ultrasound
image analysis", Applied Sciences 11:672, 2021; Roberts et al., Nature Machine Intelligence
3:199, 2021, on data leakage in COVID-19 imaging models).

The code lives in one module per view: :mod:`covnb.explore_census` (what the data set holds),
:mod:`covnb.explore_frames` (what the frames look like), :mod:`covnb.explore_duplicates`
(near-duplicates and leakage), :mod:`covnb.explore_phantom` (the synthetic classes) and
:mod:`covnb.explore_common` (colours, saving figures); this module gathers their public names.
"""

from __future__ import annotations

from covnb.explore_census import count_table, patients_table, plot_census, plot_imbalance, skipped_table
from covnb.explore_common import label_palette, save_figure
from covnb.explore_duplicates import (RELATION_COLOURS, audit_summary, hash_distances, leak_examples,
                                      per_fold_groups, plot_flagged_pairs, plot_near_duplicates)
from covnb.explore_frames import (canonical_gallery, intensity_table, plot_clahe, plot_intensity_histograms,
                                  plot_mean_frames, plot_video_sampling, sample_grid, sampling_summary, video_table)
from covnb.explore_phantom import PHANTOM_PATTERNS, plot_phantom_patterns

__all__ = ["label_palette", "save_figure", "count_table", "patients_table", "plot_census", "plot_imbalance",
           "skipped_table", "sample_grid", "video_table", "sampling_summary", "plot_video_sampling",
           "intensity_table", "plot_intensity_histograms", "plot_mean_frames", "plot_clahe", "hash_distances",
           "plot_near_duplicates", "plot_flagged_pairs", "audit_summary", "leak_examples", "per_fold_groups",
           "plot_phantom_patterns", "canonical_gallery", "PHANTOM_PATTERNS", "RELATION_COLOURS"]
