"""The model notebook 04 explains: a saved ``model.keras`` with the frame settings of its sidecar,
or, without one, a quick demo model (frozen backbone + global average pooling + dense, the head
classic CAM needs; Zhou et al. CVPR 2016) trained for a few epochs on the frames shown."""

from __future__ import annotations

import dataclasses
from pathlib import Path

__all__ = ["load_explained_model", "quick_demo_model"]


def load_explained_model(model_path: str | Path, *, rate_hz: float, max_frames: int):
    """``(model, metadata, class names, frame settings)`` of a saved model; video sampling from the arguments,
    everything else (size, canonical inputs, ...) from its ``model.json``."""
    from covnb.models import load_model
    from covnb.predict import frame_settings_from_metadata

    model, metadata = load_model(Path(model_path).expanduser())
    settings = dataclasses.replace(frame_settings_from_metadata(metadata), rate_hz=float(rate_hz),
                                   max_frames=int(max_frames))
    return model, metadata, [str(name) for name in metadata["classes"]], settings


def quick_demo_model(frame_set, *, backbone: str, weights, image_size: int, seed: int, log=print):
    """``(model, class names)``: the demo model, trained on ``frame_set`` (early stopping on whole files)."""
    from covnb.train import fit_final_model, recipe_config

    index = frame_set.index
    class_names = sorted(str(label) for label in index["label"].unique())
    # The early-stopping split takes whole files (patients); with few files per class it must take a larger share.
    fewest_files = int(index.drop_duplicates("sample_id")["label"].value_counts().min())
    validation_fraction = min(0.5, max(0.2, 1.0 / max(fewest_files, 2)))
    config = recipe_config("default", backbone=backbone, weights=weights, image_size=int(image_size), head="gap",
                           trainable="head", augmentation=None, aug_views=0, epochs=8, patience=4,
                           validation_fraction=validation_fraction, seed=int(seed))
    model, _ = fit_final_model(frame_set, config, classes=class_names, log=log)
    return model, class_names
