"""The model notebook 04 explains: a saved ``model.keras`` with the frame settings of its sidecar,
or, without one, a quick demo model (frozen backbone + global average pooling + dense, the head
classic CAM needs; Zhou et al. CVPR 2016) trained for a few epochs on the frames shown."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from covnb import cam
from covnb.frames import FrameSettings

__all__ = ["load_explained_model", "quick_demo_model", "model_or_settings", "quick_demo_text", "methods_for",
           "layer_notes", "model_summary"]


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


def model_or_settings(model_path, *, rate_hz: float, max_frames: int, image_size: int) -> tuple:
    """``(model, metadata, class names, frame settings, note)``: :func:`load_explained_model` when
    ``model_path`` is given (``note`` says what was loaded, and that ``image_size`` gives way to the
    model's), else ``(None, {}, None, settings from the arguments, "")`` for a quick demo model."""
    if model_path is None:
        return None, {}, None, FrameSettings(rate_hz=rate_hz, max_frames=max_frames, image_size=image_size), ""
    model, metadata, class_names, settings = load_explained_model(model_path, rate_hz=rate_hz, max_frames=max_frames)
    note = (f"Loaded **{Path(model_path).name}**: backbone `{metadata.get('backbone', '?')}`, classes "
            f"{', '.join(class_names)}, {settings.image_size} px.")
    if settings.image_size != image_size:
        note += f" The model expects {settings.image_size} px frames: image_size={image_size} is ignored."
    return model, metadata, class_names, settings, note


def quick_demo_text(backbone: str, weights) -> str:
    """What the quick demo model is, and what its heatmaps can and cannot say."""
    return ("**Quick demo model** (no `model_path` given): frozen "
            f"`{backbone}` ({weights or 'random'} weights) + global average pooling + dense, trained for a few epochs "
            "on these same frames. Its heatmaps illustrate the methods; they say little about real diagnosis.")


def methods_for(model, method: str) -> list[str]:
    """The CAM methods that apply to ``model`` (:func:`covnb.cam.available_methods`); ValueError when
    ``method`` is not one of them (CAM needs a global-average-pooling head)."""
    available = cam.available_methods(model)
    if method not in available:
        raise ValueError(f"method {method!r} needs a global-average-pooling head; this model allows {available}")
    return available


def layer_notes(model, layer: str, labels, class_names, *, image_size: int, available) -> list[str]:
    """Lines saying which frames have labels the model does not know, and the explained layer's grid."""
    labels = labels.astype(str)
    unknown = sorted(set(labels[~labels.isin(class_names)]))
    notes = [f"{int((~labels.isin(class_names)).sum())} frames have labels the model does not know ({unknown})."] \
        if unknown else []
    grid = model.get_layer(layer).output.shape
    return notes + [f"Explaining layer '{layer}' ({grid[1]}x{grid[2]} cells over a {image_size} px frame); "
                    f"methods available: {', '.join(available)}"]


def model_summary(model_path, metadata: dict, *, backbone: str, weights, image_size: int, class_names) -> dict:
    """The ``model`` block of notebook 04's ``metrics.json``: where the model comes from (``model_path``,
    or the quick demo when it is None), its backbone, weights, input size and classes."""
    quick_demo = model_path is None
    return {"source": "quick demo (trained in this notebook)" if quick_demo else str(model_path),
            "quick_demo": quick_demo, "backbone": backbone if quick_demo else metadata.get("backbone"),
            "weights": weights if quick_demo else metadata.get("weights"), "image_size": int(image_size),
            "classes": list(class_names)}
