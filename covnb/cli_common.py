"""What every ``covnb`` command shares: exit codes, usage errors, input paths, the help formatter and the
arguments several commands take."""

from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """Misuse of the command line; printed without a traceback, exit code 2."""


def _existing_path(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.exists():
        raise UsageError(f"{text}: no such file or folder")
    return path


def _input_paths(paths: list[str]) -> list[str]:
    """The files or folders to read; ``phantom`` stands for the folder of the embedded synthetic data."""
    if "phantom" in paths and not Path("phantom").exists():
        from covnb.phantom import phantom_dataset

        folder = str(phantom_dataset())
        return [folder if item == "phantom" else item for item in paths]
    return paths


def _load(path: str | None, layout: str):
    from covnb.datasets import DataError, load_dataset

    if path not in (None, "phantom"):
        _existing_path(path)
    try:
        return load_dataset(path, layout=layout)
    except DataError as error:
        raise UsageError(str(error)) from error


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option shows its default (unless its help already says it, or there is none to show); example
    epilogs keep their line breaks."""

    def _get_help_string(self, action):
        text = action.help or ""
        nothing = action.default is None or action.default is False or action.default is argparse.SUPPRESS
        if "default" in text or nothing or action.default == [] or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


class _LazyChoices:
    """Choices read only when needed (the backbone registry imports Keras: not for ``covnb --help``)."""

    def __init__(self, load):
        self._load = load

    def __contains__(self, item):
        return item in self._load()

    def __iter__(self):
        return iter(self._load())


def _backbone_names() -> list[str]:
    from covnb.backbones import BACKBONES

    return list(BACKBONES)


LAYOUT_CHOICES = ["auto", "pocus", "csv", "folders"]
TASK_CHOICES = ["auto", "pocovid3", "pocus4", "covid_vs_other", "all"]
DATA_HELP = "data folder, or 'phantom' for the embedded synthetic data"
LAYOUT_HELP = ("folder layout: pocus (pocus_videos/, pocus_images/, dataset_metadata.csv), csv (images/ + an index "
               "CSV), folders (<label>/<file>); auto guesses")
TASK_HELP = "classes to learn: auto (3 classes for ultrasound, covid vs other for X-ray/CT), or a named task"


def _command(commands, name: str, summary: str, description: str, examples: str):
    return commands.add_parser(name, help=summary, description=textwrap.fill(description, 100),
                               formatter_class=_HelpFormatter,
                               epilog="examples:\n" + "\n".join(f"  {line}" for line in examples.strip().splitlines()))


def _add_data_argument(parser, default_text: str) -> None:
    """The data folder: positional, as in every command; the older ``--data PATH`` still works."""
    parser.add_argument("data", nargs="?", default=None, metavar="DATA", help=f"{DATA_HELP} (default: {default_text})")
    parser.add_argument("--data", dest="data_option", default=None, metavar="PATH", help=argparse.SUPPRESS)


def _add_no_cache_arg(parser) -> None:
    parser.add_argument("--no-cache", action="store_true",
                        help="decode frames and compute features without reading or writing the cache "
                             "(same as COVNB_NO_CACHE=1)")



def _add_model_settings_args(parser) -> None:
    """--classes / --sidecar: explicit settings for a model whose sidecar JSON is missing."""
    parser.add_argument("--classes", default=None, metavar="NAMES",
                        help="class names of the model's outputs, comma-separated: needed only when its sidecar "
                             ".json is missing (frames are then taken at 3 Hz, 30 frames, unmasked)")
    parser.add_argument("--sidecar", default=None, metavar="FILE",
                        help="a sidecar JSON to use for the model (replaces the one beside it)")


def _add_model_and_inputs(parser, model_help: str, paths_help: str) -> None:
    """The saved model and the files to run it on: the first two positionals of cam and predict."""
    parser.add_argument("model", help=model_help)
    parser.add_argument("paths", nargs="+", metavar="PATH", help=paths_help)


def _load_model_arg(model_path, args):
    """``(model, metadata)`` of a saved model, with --classes / --sidecar when given."""
    from covnb.models import load_model

    metadata = None
    if getattr(args, "sidecar", None):
        sidecar = _existing_path(args.sidecar)
        try:
            metadata = json.loads(sidecar.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UsageError(f"{sidecar}: not a readable JSON sidecar ({error})") from error
        if not isinstance(metadata, dict):
            raise UsageError(f"{sidecar}: the sidecar must be a JSON object")
    if getattr(args, "classes", None):
        metadata = {**(metadata or {}), "classes": [c.strip() for c in args.classes.split(",")]}
    return load_model(model_path, metadata=metadata)

