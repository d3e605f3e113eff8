"""The parameters of every notebook, declared once: type, bounds or choices, and meaning.

Each notebook keeps one ``parameters`` cell of literals (papermill replaces it) and, in the cell
after it, calls :func:`validate_parameters` on the merged values; ``covnb report`` calls the same
function on every notebook's parameters (defaults + profile + ``--set``) before anything runs.
One schema per notebook (:data:`SCHEMAS`); a test checks that each schema lists exactly the
names of its notebook's ``parameters`` cell.

Example::

    >>> validate_parameters("01_data_exploration", {**defaults, "image_size": 16})
    Traceback (most recent call last):
    ParameterError: 01_data_exploration: image_size must be an integer in 32..1024, got 16
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from covnb.run_folders import default_output_dir

__all__ = ["Parameter", "ParameterError", "SCHEMAS", "validate_parameters"]


class ParameterError(ValueError):
    """A notebook parameter with a wrong type or value; the message names the notebook and the parameter."""


@dataclass(frozen=True)
class Parameter:
    """One notebook parameter.

    ``kind``: ``"int"``, ``"number"``, ``"bool"``, ``"choice"`` (``choices``), ``"text"``,
    ``"folder"`` / ``"file"`` (a path, checked to exist when the notebook runs), ``"int_list"``
    or ``"choice_list"``. ``low`` / ``high`` bound numbers (``open_low`` / ``open_high``: strictly);
    ``optional``: ``None`` is allowed (and means what ``meaning`` says). ``choices`` may be a
    function returning them (registries that import TensorFlow are read only when needed) or a
    mapping of accepted spellings to canonical values.
    """

    kind: str
    meaning: str
    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    choices: Any = None
    optional: bool = False

    def resolved_choices(self):
        return self.choices() if callable(self.choices) else self.choices


def _layouts():
    from covnb.datasets import LAYOUTS

    return LAYOUTS


def _tasks():
    from covnb.datasets import TASKS

    return ("auto",) + tuple(TASKS)


def _backbones():
    from covnb.backbones import BACKBONES

    return tuple(BACKBONES)


def _recipes():
    from covnb.train import RECIPES

    return RECIPES


def _cam_methods():
    from covnb.cam import METHOD_ALIASES

    return METHOD_ALIASES


# Parameters several notebooks share (same meaning, same bounds).
DATA_PATH = Parameter("folder", "None (or \"phantom\") for the embedded synthetic phantom, or a data folder",
                      optional=True)
DATASET_KIND = Parameter("choice", "folder layout: auto, pocus, csv (images + index CSV) or folders", choices=_layouts)
TASK = Parameter("choice", "\"auto\" or a covnb task name (classes kept)", choices=_tasks)
IMAGE_SIZE = Parameter("int", "square frame size in pixels", low=32, high=1024)
RATE_HZ = Parameter("number", "video frames sampled per second", low=0, high=120, open_low=True)
MAX_FRAMES = Parameter("int", "at most this many frames per video", low=1)
SEED = Parameter("int", "seed of every random choice (splits, models)", low=0)
BACKBONE = Parameter("choice", "ImageNet backbone", choices=_backbones)
WEIGHTS = Parameter("text", "\"imagenet\", a weights file, or None for random weights", optional=True)
OUTPUT_DIR = Parameter("text", "where metrics.json, figures and models go (None: a new runs/<notebook>-<UTC time>)",
                       optional=True)

SCHEMAS: dict[str, dict[str, Parameter]] = {
    "01_data_exploration": {
        "data_path": DATA_PATH, "dataset_kind": DATASET_KIND, "task": TASK, "image_size": IMAGE_SIZE,
        "rate_hz": RATE_HZ, "max_frames": MAX_FRAMES, "seed": SEED,
        "n_folds": Parameter("int", "folds of the patient-level split", low=2),
        "output_dir": OUTPUT_DIR,
        "gallery_files": Parameter("int", "files in the gallery of canonical inputs (None: every file)", low=1,
                                   optional=True),
        "audit_cam": Parameter("bool", "fit the default recipe and measure where its Grad-CAM heat lies"),
    },
    "02_transfer_learning": {
        "data_path": DATA_PATH, "dataset_kind": DATASET_KIND, "task": TASK, "backbone": BACKBONE,
        "weights": WEIGHTS,
        "alpha": Parameter("number", "width of mobilenet / mobilenet_v2 (None: the default width)", low=0, high=1.4,
                           open_low=True, optional=True),
        "image_size": IMAGE_SIZE, "rate_hz": RATE_HZ, "max_frames": MAX_FRAMES, "seed": SEED,
        "n_folds": Parameter("int", "patient-grouped cross-validation folds", low=2, high=20),
        "n_seeds": Parameter("int", "split seeds seed, seed + 1, ...", low=1, high=20),
        "recipe": Parameter("choice", "the recipe evaluated in detail and saved as the final model", choices=_recipes),
        "epochs": Parameter("int", "epochs of a Keras-trained head", low=1),
        "aug_views": Parameter("int", "random augmented views cached per frame", low=0, high=16),
        "mirror_view": Parameter("choice", "cache a left-right mirror of every frame (\"auto\": not for X-ray / CT)",
                                 choices=(True, False, "auto")),
        "fine_tune_epochs": Parameter("int", "> 0 adds a variant fine-tuning the backbone's last block", low=0),
        "compare_imbalance": Parameter("bool", "compare no correction, class weights and oversampling"),
        "compare_leaky_split": Parameter("bool", "run the recipe on a deliberately leaky frame-level split"),
        "compare_source_split": Parameter("bool", "run the recipe on source-held-out folds"),
        "projection": Parameter("choice", "2-D picture of the frozen features", choices=("tsne", "pca")),
        "n_boot": Parameter("int", "patient bootstrap resamples for the 95% intervals (0 skips them)", low=0),
        "backbones": Parameter("choice_list", "backbones compared in the 'which backbone' section ([] skips it)",
                               choices=_backbones),
        "cluster": Parameter("text", "Dask cluster of section 2's run_training: \"local\", \"local:N\" or "
                             "\"tcp://host:port\" (None: $COVNB_SCHEDULER, else this kernel)", optional=True),
        "output_dir": OUTPUT_DIR,
    },
    "03_few_shot": {
        "data_path": DATA_PATH, "dataset_kind": DATASET_KIND, "task": TASK, "image_size": IMAGE_SIZE,
        "rate_hz": RATE_HZ, "max_frames": MAX_FRAMES, "seed": SEED, "backbone": BACKBONE, "weights": WEIGHTS,
        "n_episodes": Parameter("int", "episodes per point (600 or more for reporting)", low=2),
        "n_way": Parameter("int", "classes per episode", low=2),
        "q_query": Parameter("int", "query patients per class and episode", low=1),
        "shots": Parameter("int_list", "K: support patients per class", low=1),
        "base_fraction": Parameter("number", "share of patients that trains the prototypical network", low=0.1,
                                   high=0.5),
        "protonet_steps": Parameter("int", "training episodes of the prototypical network", low=1),
        "learning_curve_recipe": Parameter("choice", "recipe of the patient learning curve",
                                           choices=("embedding_logreg", "linear_probe", "default")),
        "learning_curve_patients": Parameter("int_list", "training patients of the positive class per point", low=1),
        "learning_curve_repeats": Parameter("int", "repeats per point of the learning curve", low=1),
        "cross_domain_path": Parameter("folder", "a second data set for the cross-domain section (None skips it)",
                                       optional=True),
        "cluster": Parameter("text", "Dask cluster of the frames, embeddings, shot curves and learning curve: "
                             "\"local\", \"local:N\" or \"tcp://host:port\" (None: $COVNB_SCHEDULER, else this "
                             "kernel)", optional=True),
        "output_dir": OUTPUT_DIR,
    },
    "04_cam_explorer": {
        "data_path": DATA_PATH, "dataset_kind": DATASET_KIND, "task": TASK,
        "model_path": Parameter("file", "a saved model.keras (None: a quick demo model is trained)", optional=True),
        "backbone": BACKBONE, "weights": WEIGHTS, "image_size": IMAGE_SIZE, "rate_hz": RATE_HZ,
        "max_frames": MAX_FRAMES, "seed": SEED,
        "method": Parameter("choice", "heatmap method of the gallery and the explorer", choices=_cam_methods),
        "layer": Parameter("text", "layer to explain (None: the last convolutional layer)", optional=True),
        "threshold": Parameter("number", "heat below this share of the maximum is not drawn", low=0, high=1,
                               open_high=True, optional=True),
        "n_gallery": Parameter("int", "frames per class in the gallery", low=1, high=12),
        "output_dir": OUTPUT_DIR,
    },
    "05_trust": {
        "data_path": DATA_PATH, "dataset_kind": DATASET_KIND, "task": TASK,
        "recipe": Parameter("choice", "the recipe trained and calibrated", choices=_recipes),
        "backbone": BACKBONE,
        "weights": Parameter("choice", "\"imagenet\" or None for random weights", choices=("imagenet", None)),
        "image_size": IMAGE_SIZE, "rate_hz": RATE_HZ, "max_frames": MAX_FRAMES, "seed": SEED,
        "n_folds": Parameter("int", "cross-validation folds", low=2),
        "n_seeds": Parameter("int", "split seeds seed, seed + 1, ...", low=1),
        "n_boot": Parameter("int", "bootstrap resamples of the intervals", low=10),
        "cluster": Parameter("text", "Dask cluster of run_training (frames, features, folds, final model): "
                             "\"local\", \"local:N\" or \"tcp://host:port\" (None: $COVNB_SCHEDULER, else this "
                             "kernel)", optional=True),
        "output_dir": OUTPUT_DIR,
    },
}


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _bounds_text(spec: Parameter, what: str) -> str:
    if spec.low is not None and spec.high is not None:
        if what == "an integer":
            return f"{what} in {spec.low:g}..{spec.high:g}"
        return f"{what} in {'(' if spec.open_low else '['}{spec.low:g}, {spec.high:g}{')' if spec.open_high else ']'}"
    if spec.low is not None:
        return f"{what} {'>' if spec.open_low else '>='} {spec.low:g}"
    return what


def _in_bounds(spec: Parameter, value) -> bool:
    if spec.low is not None and (value <= spec.low if spec.open_low else value < spec.low):
        return False
    return spec.high is None or (value < spec.high if spec.open_high else value <= spec.high)


def _check_int(name, spec, value, none_text, running):
    if not _is_int(value) or not _in_bounds(spec, value):
        raise ValueError(f"{name} must be {none_text}{_bounds_text(spec, 'an integer')}, got {value!r}")
    return int(value)


def _check_number(name, spec, value, none_text, running):
    if not _is_number(value) or not _in_bounds(spec, value):
        raise ValueError(f"{name} must be {none_text}{_bounds_text(spec, 'a number')}, got {value!r}")
    return float(value)


def _check_bool(name, spec, value, none_text, running):
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def _check_choice(name, spec, value, none_text, running):
    choices = spec.resolved_choices()
    key = value.lower() if isinstance(value, str) and isinstance(choices, Mapping) else value
    if not any(key is c or (type(key) is type(c) and key == c) for c in choices):
        shown = sorted(set(choices.values())) if isinstance(choices, Mapping) else choices
        raise ValueError(f"{name} must be one of {', '.join(map(repr, shown))}; got {value!r}")
    return choices[key] if isinstance(choices, Mapping) else value


def _check_int_list(name, spec, value, none_text, running):
    if not isinstance(value, (list, tuple)) or not value or not all(_is_int(v) and _in_bounds(spec, v) for v in value):
        raise ValueError(f"{name} must be a non-empty list of {_bounds_text(spec, 'integers')}, got {value!r}")
    return sorted({int(v) for v in value})


def _check_choice_list(name, spec, value, none_text, running):
    choices = spec.resolved_choices()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v in choices for v in value):
        raise ValueError(f"{name} must be a list of names from {', '.join(sorted(choices))}; got {value!r}")
    return list(value)


def _check_path(name, spec, value, none_text, running):
    if not isinstance(value, (str, Path)):
        raise ValueError(f"{name} must be {none_text}{'a path' if spec.kind != 'text' else 'text'}, got {value!r}")
    if running and spec.kind == "folder" and str(value) != "phantom" and not Path(value).expanduser().is_dir():
        raise ValueError(f"{name} {str(value)!r} is not an existing folder")
    if running and spec.kind == "file" and not Path(value).expanduser().exists():
        raise ValueError(f"{name} {str(value)!r} does not exist")
    return str(value) if isinstance(value, Path) else value


_CHECKS = {"int": _check_int, "number": _check_number, "bool": _check_bool, "choice": _check_choice,
           "int_list": _check_int_list, "choice_list": _check_choice_list, "text": _check_path,
           "folder": _check_path, "file": _check_path}


def _check_one(name: str, spec: Parameter, value, running: bool):
    """The value, normalised (ints as int, numbers as float, choices canonical); raises ValueError."""
    if value is None and spec.optional:
        return None
    if spec.kind not in _CHECKS:
        raise TypeError(f"unknown parameter kind {spec.kind!r} of {name}")
    return _CHECKS[spec.kind](name, spec, value, "None or " if spec.optional else "", running)


def _check_together(notebook: str, values: dict) -> None:
    """Rules that tie two parameters together."""
    if notebook == "02_transfer_learning" and values.get("alpha") is not None \
            and values.get("backbone") not in ("mobilenet", "mobilenet_v2"):
        raise ValueError(f"alpha applies to mobilenet / mobilenet_v2 only, not {values['backbone']!r}")
    if values.get("cluster") is not None:
        from covnb.cluster import parse_cluster_spec

        parse_cluster_spec(values["cluster"])  # ClusterSpecError (a ValueError) names what is accepted


def validate_parameters(notebook: str, params: Mapping[str, Any], *, running: bool = True) -> dict:
    """Check a notebook's parameters against its schema; return them normalised.

    Parameters
    ----------
    notebook : str
        The notebook's name without ``.ipynb`` (a key of :data:`SCHEMAS`).
    params : mapping
        Its parameter values (a notebook passes ``globals()``); names outside the schema are ignored.
    running : bool, keyword-only
        True in the notebook about to run: folders and files must exist and ``output_dir=None``
        becomes a new folder (:func:`covnb.report.default_output_dir`). False in ``covnb report``
        before anything runs (paths named ``{run_dir}/...`` do not exist yet).

    Returns
    -------
    dict
        name -> value for every schema parameter: integers as ``int``, numbers as ``float``, a
        method's spelling made canonical, ``shots``-like lists sorted and without repeats.

    Raises
    ------
    ParameterError
        naming the notebook and the parameter, e.g. ``02_transfer_learning: n_folds must be an
        integer in 2..20, got 37``.
    """
    if notebook not in SCHEMAS:
        raise ParameterError(f"no parameter schema for notebook {notebook!r}; known: {', '.join(SCHEMAS)}")
    schema = SCHEMAS[notebook]
    # an optional parameter a notebook does not set is None (a notebook older than the parameter still runs)
    params = {**{name: None for name, spec in schema.items() if spec.optional and name not in params}, **params}
    missing = [name for name in schema if name not in params]
    if missing:
        raise ParameterError(f"{notebook}: parameter(s) {', '.join(missing)} not given")
    values = {}
    try:
        for name, spec in schema.items():
            values[name] = _check_one(name, spec, params[name], running)
        _check_together(notebook, values)
    except ValueError as error:
        raise ParameterError(f"{notebook}: {error}") from None
    if running and "output_dir" in values and values["output_dir"] is None:
        values["output_dir"] = str(default_output_dir(notebook))
        print(f"output_dir: {values['output_dir']}")
    return values


def describe_parameters(notebook: str) -> list[tuple[str, str, str]]:
    """``(name, kind, meaning)`` of every parameter of a notebook, for documentation."""
    return [(name, spec.kind, spec.meaning) for name, spec in SCHEMAS[notebook].items()]

