"""The ``covnb`` command line: thin calls into the modules, clear errors, non-zero exit codes.

Exit codes: 0 success, 1 a run that failed (a notebook, a training), 2 misuse (missing path,
unknown profile or parameter, bad value).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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


# ----------------------------------------------------------------------------- data summary


def _print_summary(summary: dict) -> None:
    print(f"{summary['root']} ({summary['layout']} layout): {summary['samples']} samples in {summary['groups']} patient groups")
    print(f"  {'layout':<19} {summary['layout']}: {summary.get('layout_reason') or '?'}")
    print(f"  {'grouping':<19} {summary.get('grouping') or '?'}")
    for merge in summary.get("merges", []):
        print(f"  {'merged groups':<19} {', '.join(merge['groups'])}: {merge['reason']}")
    for title, key in (("label", "by_label"), ("patients per label", "groups_by_label"), ("kind", "by_kind"),
                       ("probe / view", "by_probe"), ("modality", "by_modality"), ("source", "by_source"),
                       ("licence", "by_licence")):
        items = ", ".join(f"{k} {v}" for k, v in summary[key].items())
        print(f"  {title:<19} {items}")
    print(f"  skipped             {len(summary['skipped'])} file(s)")
    for item in summary["skipped"]:
        print(f"    {item['path']}: {item['reason']}")
    if summary["notes"]:
        print(f"  notes               {len(summary['notes'])}")
        for note in summary["notes"][:20]:
            print(f"    {note}")


def cmd_data_summary(args) -> int:
    dataset = _load(args.path, args.layout)
    summary = dataset.summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return EXIT_OK


def cmd_data_fetch(args) -> int:
    """Download the public POCUS data (covnb.fetch), or check a downloaded copy with --verify."""
    from covnb.fetch import FetchError, fetch_pocus, verify_pocus

    try:
        if args.verify:
            result = verify_pocus(args.data_home)
            bad = result["changed"] + result["missing"]
            print(f"{result['folder']}: {result['checked']} files recorded, {len(result['changed'])} changed, "
                  f"{len(result['missing'])} missing, {len(result['added'])} added since the download "
                  f"(archive SHA-256 {result['archive_sha256']})")
            for name in bad[:20]:
                print(f"  {'changed' if name in result['changed'] else 'missing'}: {name}")
            return EXIT_FAILED if bad else EXIT_OK
        kwargs = {"url": args.url} if args.url else {}
        folder = fetch_pocus(args.data_home, force=args.force, sha256=args.sha256, **kwargs)
    except FetchError as error:
        raise UsageError(str(error)) from error
    print(folder)
    return EXIT_OK


# ----------------------------------------------------------------------------- split


def cmd_split(args) -> int:
    import pandas as pd

    from covnb.datasets import check_usable, default_task, select_task
    from covnb.splits import LeakageError, audit_sources, audit_split, cv_folds, fold_table, inner_validation

    if args.folds < 2:
        raise UsageError(f"--folds must be at least 2, got {args.folds}")
    if args.inner_validation is not None and not 0 < args.inner_validation < 1:
        raise UsageError(f"--inner-validation must be a fraction in (0, 1), got {args.inner_validation}")
    dataset = _load(args.path, args.layout)
    task = default_task(dataset) if args.task == "auto" else args.task
    samples = select_task(dataset.samples, task=task, viral=args.viral)
    check_usable(samples, dataset.skipped, what="a split")
    print(f"grouping: {dataset.grouping}; {len(dataset.merges)} merge(s) of groups sharing identical files")
    for merge in dataset.merges:
        print(f"  merged {', '.join(merge['groups'])}: {merge['reason']}")
    for item in dataset.skipped.itertuples():
        print(f"skipped {item.path}: {item.reason}", file=sys.stderr)
    try:
        folds = cv_folds(samples, group_by=args.group_by, n_splits=args.folds, seed=args.seed)
    except ValueError as error:
        raise UsageError(str(error)) from error
    n_folds = int(folds.max()) + 1
    columns = ["sample_id", "path", "label", "group", "source", "kind"] if "source" in samples else \
        ["sample_id", "path", "label", "group", "kind"]
    table = samples[columns].assign(fold=folds.values)
    if args.inner_validation is not None:
        table["inner_validation_for_fold"] = ""
        for fold in range(n_folds):
            train = samples[folds.values != fold]
            mask = inner_validation(train, fraction=args.inner_validation, seed=args.seed)
            chosen = train.index[mask.values]
            table.loc[chosen, "inner_validation_for_fold"] = table.loc[chosen, "inner_validation_for_fold"].map(
                lambda text, f=fold: f"{text};{f}" if text else str(f))
    try:
        report = audit_split(table, table["fold"].to_numpy())
    except LeakageError as error:
        print(str(error), file=sys.stderr)
        return EXIT_FAILED
    source_problems = audit_sources(samples, folds.values) if folds.attrs.get("protocol") == "source" else []
    if source_problems:
        print("source audit FAILED: " + "; ".join(source_problems), file=sys.stderr)
        return EXIT_FAILED
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, out)
    print(f"task {task}: {len(table)} samples, {samples['group'].nunique()} patient groups, {n_folds} folds (seed {args.seed}), "
          f"grouped by {folds.attrs.get('protocol', args.group_by)}")
    print(fold_table(samples, folds).to_string())
    for fold, sources in folds.attrs.get("held_out", {}).items():
        print(f"  fold {fold}: covid files only from source(s) {', '.join(sources)}, absent from its training data")
    for note in folds.attrs.get("notes", []):
        print(f"  note: {note}")
    print(report.describe())
    print(f"wrote {out}")
    return EXIT_OK


# ----------------------------------------------------------------------------- report


def cmd_report(args) -> int:
    from covnb.report import ReportError, plan_report, parse_override, run_report

    try:
        overrides = dict(parse_override(text) for text in args.parameter)
        if args.seed is not None:
            overrides["seed"] = args.seed
        if args.data is not None and args.data != "phantom":
            _existing_path(args.data)
        plan = plan_report(args.profile, data=None if args.data == "phantom" else args.data, overrides=overrides)
    except ReportError as error:
        raise UsageError(str(error)) from error
    if args.data == "phantom":
        plan.data_path = None
    if plan.data_path is not None and Path(plan.data_path).is_dir():
        from covnb.datasets import explain_layout

        explain_layout(Path(plan.data_path))  # a broken layout is refused here, not inside a notebook
    run_dir, manifest = run_report(plan, out=args.out, progress=not args.no_progress)
    print(f"report {manifest['status']} in {manifest['seconds']} s: {run_dir}")
    print(f"  open {run_dir / 'index.html'}")
    return EXIT_OK if manifest["status"] == "ok" else EXIT_FAILED


# ----------------------------------------------------------------------------- cam


def cmd_cam(args) -> int:
    from covnb.cam_export import CamOptionError, export_cam
    from covnb.models import ModelFileError

    model_path = _existing_path(args.model)
    args.paths = _input_paths(args.paths)
    for item in args.paths:
        _existing_path(item)
    if args.top_k < 1:
        raise UsageError(f"--top-k must be at least 1, got {args.top_k}")
    for name, value in (("--alpha", args.alpha), ("--threshold", args.threshold)):
        if value is not None and not 0.0 <= value <= 1.0:
            raise UsageError(f"{name} must be within 0..1, got {value}")
    try:
        model_and_metadata = _load_model_arg(model_path, args)
        index = export_cam(model_and_metadata, args.paths, args.out, method=args.method, layer=args.layer,
                           class_name=args.class_name, threshold=args.threshold, alpha=args.alpha,
                           top_k=args.top_k, colormap=args.colormap, mp4=not args.no_mp4, log=print,
                           raw_probabilities=args.raw_probabilities)
    except (CamOptionError, ModelFileError) as error:
        raise UsageError(str(error)) from error
    failed = index[index["status"] == "error"]
    for row in failed.itertuples():
        print(f"covnb: failed: {row.source}: {row.error}", file=sys.stderr)
    if not (index["status"] == "ok").any():
        print("covnb: error: no explanation written", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


# ----------------------------------------------------------------------------- train


def _weights_arg(text: str):
    if text.lower() in ("none", "random"):
        return None
    if text.lower() == "imagenet":
        return "imagenet"
    _existing_path(text)
    return str(Path(text).expanduser().resolve())


def _seeds_arg(text: str) -> list[int]:
    try:
        return [int(part) for part in str(text).split(",") if part.strip()]
    except ValueError as error:
        raise UsageError(f"--seeds must be whole numbers separated by commas, got {text!r}") from error


def cmd_train(args) -> int:
    """Cross-validate a recipe, then fit and save the final model; results land in --out only on success."""
    import shutil

    from covnb.frames import FrameSettings
    from covnb.train import recipe_config

    if args.folds < 2:
        raise UsageError(f"--folds must be at least 2, got {args.folds}")
    if args.n_boot < 0:
        raise UsageError(f"--n-boot must be 0 or more, got {args.n_boot}")
    dataset = _load(args.data, args.layout)
    overrides = {"backbone": args.backbone, "weights": _weights_arg(args.weights), "image_size": args.image_size,
                 "seed": args.seeds_list[0]}
    for name in ("epochs", "fine_tune_epochs", "imbalance", "alpha", "head", "aug_views", "device_views"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.mirror is not None:
        overrides["mirror_view"] = args.mirror
    elif args.preset in ("default", "auto"):
        from covnb.train import SELECTION_CANDIDATES, mirror_is_plausible

        if args.preset == "default":
            overrides["mirror_view"] = mirror_is_plausible(dataset.samples)
        else:
            overrides["select"] = tuple(name for name, settings in SELECTION_CANDIDATES.items()
                                        if mirror_is_plausible(dataset.samples) or not settings["mirror_view"])
        if not mirror_is_plausible(dataset.samples):
            print("chest X-ray / CT data: no mirrored view (a mirrored chest puts the heart on the right); "
                  "--mirror forces it", file=sys.stderr)
    try:
        config = recipe_config(args.preset, **overrides)
        settings = FrameSettings(rate_hz=args.rate_hz, max_frames=args.max_frames, image_size=args.image_size,
                                 mask_sector=args.mask_sector, canonical=args.canonical)
    except ValueError as error:
        raise UsageError(str(error)) from error
    from covnb.backbones import BACKBONES, WeightsUnavailableError
    from covnb.train import run_training

    if args.backbone not in BACKBONES:
        raise UsageError(f"unknown backbone {args.backbone!r}; choose one of {', '.join(BACKBONES)}")
    from covnb.cache import OWNER_FILE, staging_folder

    out = Path(args.out)
    staging = staging_folder(out)  # also removes .partial-* folders of interrupted runs
    try:
        result = run_training(dataset, out_dir=staging, config=config, task=None if args.task == "auto" else args.task,
                              n_folds=args.folds, seeds=args.seeds_list, frame_settings=settings,
                              final_model=not args.no_final_model, baseline=not args.no_baseline,
                              n_boot=args.n_boot,
                              protocols={"both": ("source", "patient"), "source": ("source",),
                                         "patient": ("patient",)}[args.group_by])
    except WeightsUnavailableError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise UsageError(str(error)) from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    out.mkdir(parents=True, exist_ok=True)
    (staging / OWNER_FILE).unlink(missing_ok=True)
    for item in staging.iterdir():
        target = out / item.name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(item, target)
    staging.rmdir()
    # the metrics file names the staging folder: point it at the final one
    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["paths"] = {k: str(out / Path(v).name) for k, v in metrics.get("paths", {}).items()}
    metrics_path.write_text(json.dumps(metrics, indent=2))
    for line in _train_summary_lines(metrics):
        print(line)
    print(f"wrote {out}")
    return EXIT_OK


def _train_summary_lines(metrics: dict) -> list[str]:
    """The headline figures of a training run: video level, pooled out-of-fold, mean over split seeds;
    source-held-out first (the headline), patient-grouped beside it."""
    lines = []
    for key, title in (("source_held_out", "source-held-out (COVID-19 sources never seen in training)"),
                       ("patient_cv", "patient-grouped CV")):
        block = metrics.get(key)
        if not block:
            continue
        if block.get("available") is False:
            lines.append(f"{title}: not run: {'; '.join(block.get('notes', [])[:1])}")
            continue
        lines.append(f"{title}{' [headline]' if metrics.get('headline') == key else ''}:")
        lines += ["  " + line for line in _protocol_summary_lines(metrics, block)]
    return lines or _protocol_summary_lines(metrics, metrics)


def _protocol_summary_lines(metrics: dict, block: dict) -> list[str]:
    lines = []
    nan = float("nan")
    focus = "covid" if "covid" in metrics.get("classes", []) else None
    for name, entry in (("recipe " + str(metrics.get("config", {}).get("recipe", "?")), block),
                        ("baseline linear probe", block.get("baseline") or {})):
        video = (entry.get("video_mean") or {}).get("pooled_mean")
        if not video:
            continue
        spread = (entry.get("video_mean") or {}).get("pooled_std", {})
        text = (f"{name}: video balanced accuracy {video.get('balanced_accuracy', nan):.3f} "
                f"+- {spread.get('balanced_accuracy', nan):.3f} over split seeds, macro ROC-AUC "
                f"{video.get('macro_auc', nan):.3f}")
        if focus:
            text += (f", {focus} sensitivity {video.get(focus + '_sensitivity', nan):.2f} "
                     f"specificity {video.get(focus + '_specificity', nan):.2f}")
        lines.append(text)
        for kind, values in (entry.get("by_kind") or {}).items():
            if len(entry.get("by_kind")) > 1:
                lines.append(f"    {kind}s ({values['files']} files): balanced accuracy "
                             f"{values.get('balanced_accuracy', nan):.3f}"
                             + (f", {focus} sensitivity {values.get(focus + '_sensitivity', nan):.2f} "
                                f"({values.get(focus + '_files', 0)} files)" if focus else ""))
    if block.get("selected"):
        lines.append("chosen by the inner CV (folds): " + ", ".join(f"{k} {v}" for k, v in block["selected"].items()))
    if focus and block.get("group_by") == "source":
        held = [row for row in block.get("by_source", []) if row["label"] == focus]
        lines.append(f"{focus} share found per held-out source: " + ", ".join(
            f"{row['source']} {row['share_correct']:.2f} ({row['files']})" for row in held))
    for note in block.get("notes", [])[:6]:
        lines.append(f"note: {note}")
    return lines


# ----------------------------------------------------------------------------- predict


def _add_model_settings_args(parser) -> None:
    """--classes / --sidecar: explicit settings for a model whose sidecar JSON is missing."""
    parser.add_argument("--classes", default=None, metavar="NAMES",
                        help="class names of the model's outputs, comma-separated: needed only when its sidecar "
                             ".json is missing (frames are then taken at 3 Hz, 30 frames, unmasked)")
    parser.add_argument("--sidecar", default=None, metavar="FILE",
                        help="a sidecar JSON to use for the model (replaces the one beside it)")


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


def cmd_predict(args) -> int:
    from covnb.models import ModelFileError
    from covnb.predict import OutputInsideInputError, predict_paths, refuse_output_inside_inputs

    _existing_path(args.model)  # a missing input file is reported and skipped, not fatal
    try:
        paths = _input_paths(args.paths)
        if args.out:
            refuse_output_inside_inputs(args.out, [p for p in paths if Path(p).exists()])
        from covnb.trust import load_trust_arrays

        # the fold heads and feature density beside the model give fold_agreement, ood_score and their flags
        loaded = (*_load_model_arg(args.model, args), load_trust_arrays(args.model))
        predictions = predict_paths(loaded, paths, batch_size=args.batch_size,
                                    raw_probabilities=args.raw_probabilities)
    except (ModelFileError, OutputInsideInputError) as error:
        raise UsageError(str(error)) from error
    if args.format == "json":
        text = predictions.to_json(args.out)
        if not args.out:
            print(text)
    else:
        if args.out:
            videos, frames = predictions.to_csv(args.out)
            print(f"wrote {videos}, {frames} and {videos.with_name(videos.stem + '_skipped' + videos.suffix)}")
        else:
            table = predictions.frames if args.frames else predictions.videos
            print(table.to_csv(index=False), end="")
    for error in predictions.errors.to_dict("records"):
        print(f"skipped {error['path']}: {error['reason']}", file=sys.stderr)
    return EXIT_OK if len(predictions.videos) else EXIT_FAILED


# ----------------------------------------------------------------------------- parser


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


def cmd_audit(args) -> int:
    """Shortcut audit of a data folder (covnb.audit)."""
    from covnb.audit import cmd_audit as run_audit_command

    return run_audit_command(args)


def build_parser() -> argparse.ArgumentParser:
    from covnb import __version__

    parser = argparse.ArgumentParser(
        prog="covnb", formatter_class=_HelpFormatter,
        description="Deep learning on COVID-19 lung images (lung ultrasound, chest X-ray, CT): data, patient-level "
                    "splits, training, prediction, CAM, and the notebooks as one report.",
        epilog="examples:\n  covnb report                      the sample report on the synthetic phantom\n"
               "  covnb data summary path/to/pocus\n  covnb train path/to/pocus --out runs/pocus\n"
               "  covnb COMMAND --help              options of one command")
    parser.add_argument("--version", action="version", version=f"covnb {__version__}")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's start-up logs and the kernels' messages (also COVNB_VERBOSE=1)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    data = commands.add_parser("data", help="inspect a data folder", description="Inspect a data folder.",
                               formatter_class=_HelpFormatter, epilog="examples:\n  covnb data summary phantom")
    data_commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data_commands.required = True
    summary = _command(data_commands, "summary", "counts by label, kind, probe/modality, source, licence; skipped files",
                       "Read a data folder into covnb's sample table and print what is in it: counts by label, kind, "
                       "probe or modality, source and licence, patient groups, and every skipped file with the "
                       "reason. Nothing is written.",
                       "covnb data summary phantom\ncovnb data summary path/to/pocus --json > summary.json")
    summary.add_argument("path", metavar="DATA", help=DATA_HELP)
    summary.add_argument("--layout", default="auto", choices=LAYOUT_CHOICES, help=LAYOUT_HELP)
    summary.add_argument("--json", action="store_true", help="print JSON instead of text")
    summary.set_defaults(func=cmd_data_summary)
    fetch = _command(data_commands, "fetch", "download the public POCUS data once (pinned, checked), print its folder",
                     "Download the data/ folder of the public POCUS repository (Born et al., arXiv:2004.12084) at a "
                     "pinned commit into the covnb cache, extract it safely, and print its folder; an existing copy "
                     "is reused without network access. The archive's SHA-256 is checked against --sha256, or "
                     "against the one recorded by the first download; --verify re-checks every file of the copy.",
                     "covnb data fetch\ncovnb train \"$(covnb data fetch)\" --out runs/pocus\ncovnb data fetch --verify")
    fetch.add_argument("--data-home", default=None, metavar="DIR", help="where to keep it (default: the covnb cache)")
    fetch.add_argument("--sha256", default=None, metavar="HEX", help="expected SHA-256 of the archive")
    fetch.add_argument("--url", default=None, help="another archive URL (a zip holding <top>/data/)")
    fetch.add_argument("--force", action="store_true", help="download again and replace the copy")
    fetch.add_argument("--verify", action="store_true", help="check the copy against its download record; no network")
    fetch.set_defaults(func=cmd_data_fetch)

    split = _command(commands, "split", "patient-grouped, stratified K-fold split, audited for leakage",
                     "Assign every sample to one of K folds so that a patient's files all land in one fold and the "
                     "labels are balanced across folds; the split is audited for leakage before it is written.",
                     "covnb split phantom --out folds.csv\ncovnb split path/to/pocus --folds 5 --seed 1 --out "
                     "folds.csv --inner-validation 0.2")
    split.add_argument("path", metavar="DATA", help=DATA_HELP)
    split.add_argument("--folds", type=int, default=5, help="number of folds K (at least 2)")
    split.add_argument("--seed", "--seeds", dest="seed", type=int, default=0, help="split seed")
    split.add_argument("--out", required=True, help="CSV to write: one row per sample with its fold")
    split.add_argument("--layout", default="auto", choices=LAYOUT_CHOICES, help=LAYOUT_HELP)
    split.add_argument("--task", default="auto", choices=TASK_CHOICES, help=TASK_HELP)
    split.add_argument("--viral", default="drop", choices=["drop", "merge"], help="pocovid3: drop viral or merge into pneumonia")
    split.add_argument("--group-by", default="patient", choices=["patient", "source"],
                       help="patient: patient-grouped stratified folds; source: each COVID-19 source held out whole "
                            "(its files never in that fold's training data), other classes patient-grouped")
    split.add_argument("--inner-validation", type=float, default=None, metavar="FRACTION",
                       help="also mark an inner validation part (by patient) of each training fold")
    split.set_defaults(func=cmd_split)

    report = _command(commands, "report", "run the notebooks of a profile with papermill into a new run folder",
                      "Run the notebooks a profile names (reports/<profile>.yaml inside the package), top to bottom "
                      "with papermill, into a new folder OUT/<profile>-<UTC time>: executed notebooks, their HTML, "
                      "metrics and figures, manifest.json and index.html. Earlier runs are never touched.",
                      "covnb report\ncovnb report --profile smoke --out /tmp/runs\n"
                      "covnb report path/to/pocus --profile full -p n_seeds=1")
    _add_data_argument(report, "the profile's, the synthetic phantom for sample and smoke")
    report.add_argument("--profile", default="sample", help="profile name (sample, smoke, full) or a YAML file")
    report.add_argument("--out", default="runs", help="folder that receives the run folder")
    report.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="override a notebook parameter (repeatable)")
    report.add_argument("--seed", "--seeds", dest="seed", type=int, default=None,
                        help="the notebooks' seed (same as -p seed=N; default: the profile's)")
    report.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_no_cache_arg(report)
    report.set_defaults(func=cmd_report)

    cam_parser = _command(commands, "cam", "heatmap overlays (PNG) and videos (MP4) of a saved model's explanations",
                          "Explain a saved model's predictions: heatmap overlays (PNG) of images and of the most "
                          "telling frames of videos, an MP4 of each video with its heatmap, and cam_index.csv.",
                          "covnb cam runs/pocus/model.keras phantom --out cams\n"
                          "covnb cam runs/pocus clip.mp4 --out cams --method gradcam++ --class covid")
    cam_parser.add_argument("model", help="saved model (.keras with its sidecar .json, or a folder holding one)")
    cam_parser.add_argument("paths", nargs="+", metavar="PATH",
                            help="videos, images or folders (searched recursively); 'phantom' for the synthetic data")
    cam_parser.add_argument("--out", required=True, help="output folder (created; never an input folder)")
    cam_parser.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++", "cam"],
                            help="explanation method")
    cam_parser.add_argument("--layer", default=None, help="conv layer to explain (default: the last one)")
    cam_parser.add_argument("--class", dest="class_name", default=None, metavar="NAME",
                            help="class to explain (default: the predicted class of each file)")
    cam_parser.add_argument("--threshold", type=float, default=None, help="zero heat below this value (0..1)")
    cam_parser.add_argument("--alpha", type=float, default=0.4, help="overlay opacity (0..1)")
    cam_parser.add_argument("--colormap", default="jet", help="matplotlib colormap")
    cam_parser.add_argument("--top-k", type=int, default=3, help="overlay PNGs per video: its most telling frames")
    cam_parser.add_argument("--no-mp4", action="store_true", help="no heatmap video per input video")
    _add_model_settings_args(cam_parser)
    cam_parser.add_argument("--raw-probabilities", action="store_true",
                            help="probabilities as the network gives them, without the model's calibration map")
    cam_parser.set_defaults(func=cmd_cam)

    train = _command(commands, "train", "patient-level cross-validation of a recipe, then a final model",
                     "Cross-validate a recipe with patient-grouped folds (out-of-fold predictions, metrics at frame "
                     "and video level with patient bootstrap intervals), report the linear-probe baseline on the "
                     "same folds, then fit the final model on all the data. OUT receives the results only when the "
                     "run succeeds.",
                     "covnb train phantom --out runs/phantom\n"
                     "covnb train path/to/pocus --out runs/pocus --seeds 0,1,2\n"
                     "covnb train path/to/pocus --out runs/pocovid --preset pocovid --no-final-model")
    _add_data_argument(train, "the embedded synthetic phantom")
    train.add_argument("--out", required=True, help="folder for metrics.json, OOF predictions, figures, model.keras")
    train.add_argument("--preset", default="default", choices=["default", "pocovid", "linear_probe", "auto"],
                       help="recipe: covnb's default, POCOVID-Net's protocol, the linear-probe baseline, or auto: the "
                            "candidate recipes of covnb.train.SELECTION_CANDIDATES, chosen inside every training fold "
                            "by a nested source-aware CV (and for the final model)")
    train.add_argument("--group-by", default="both", choices=["both", "source", "patient"],
                       help="cross-validation: both (source-held-out as the headline, patient-grouped beside it), "
                            "source (COVID-19 sources held out whole) or patient (patient-grouped only)")
    train.add_argument("--backbone", default="efficientnet_lite0", choices=_LazyChoices(_backbone_names),
                       metavar="NAME", help="ImageNet backbone, one of: %(choices)s")
    train.add_argument("--weights", default="imagenet", help="imagenet, none, or a local weights file")
    train.add_argument("--alpha", type=float, default=None, help="width multiplier (mobilenet)")
    train.add_argument("--folds", type=int, default=5, help="patient-grouped cross-validation folds")
    train.add_argument("--epochs", type=int, default=None, help="epochs of a Keras-trained head (pocovid preset; the default preset fits a logistic head)")
    train.add_argument("--fine-tune-epochs", type=int, default=None, help="then fine-tune the last block")
    train.add_argument("--imbalance", default=None, choices=["none", "class_weight", "oversample"],
                       help="class imbalance handling (default: the preset's)")
    train.add_argument("--head", default=None, choices=["gap", "midlevel", "multiscale", "pocovid"],
                       help="classifier head (default: the preset's; default preset: midlevel)")
    train.add_argument("--aug-views", type=int, default=None,
                       help="random augmented views cached per frame (default preset: 0)")
    train.add_argument("--device-views", type=int, default=None,
                       help="views per frame rendered as another device might (gain, gamma, speckle, blur, JPEG, "
                            "resolution, depth crop), cached like the mirror (default 0)")
    train.add_argument("--mirror", dest="mirror", action="store_true", default=None,
                       help="cache a left-right mirrored view of every frame (default preset: on, except for "
                            "chest X-ray / CT)")
    train.add_argument("--no-mirror", dest="mirror", action="store_false", help="no mirrored view")
    train.add_argument("--image-size", type=int, default=224, help="frames resized to this square size (pixels)")
    train.add_argument("--rate-hz", type=float, default=3.0, help="frames sampled per second of video")
    train.add_argument("--max-frames", type=int, default=30, help="at most this many frames per video")
    train.add_argument("--mask-sector", action="store_true",
                       help="black out what lies outside the ultrasound sector (text, logos, rulers) in training and "
                            "in predict: checks that a model does not read the source off the screen")
    train.add_argument("--canonical", default="off", choices=["off", "crop", "crop+inpaint", "crop+inpaint+gray"],
                       help="canonical inputs (covnb.canonical): crop every video to its ultrasound image, inpaint "
                            "burned-in overlays, optionally gray; stored in model.json, applied by predict and cam")
    train.add_argument("--seed", type=int, default=None, help="one split/training seed (default 0)")
    train.add_argument("--seeds", default=None, help="several split seeds, e.g. 0,1,2 (mean over them)")
    train.add_argument("--n-boot", type=int, default=1000,
                       help="patient bootstrap resamples for the 95%% intervals (0: none)")
    train.add_argument("--task", default="auto", choices=TASK_CHOICES, help=TASK_HELP)
    train.add_argument("--layout", default="auto", choices=LAYOUT_CHOICES, help=LAYOUT_HELP)
    train.add_argument("--no-final-model", action="store_true", help="cross-validation only")
    train.add_argument("--no-baseline", action="store_true",
                       help="skip the linear-probe baseline reported beside the recipe (same folds)")
    _add_no_cache_arg(train)
    train.set_defaults(func=cmd_train)

    predict = _command(commands, "predict", "per-frame and per-video class probabilities from a saved model",
                       "Class probabilities of every frame and every file from a saved model (the frame settings "
                       "of its training); unreadable files are reported and skipped.",
                       "covnb predict runs/pocus/model.keras phantom\n"
                       "covnb predict runs/pocus clip.mp4 images/ --format json --out predictions.json")
    predict.add_argument("model", help="model.keras (with its model.json) or the folder holding it")
    predict.add_argument("paths", nargs="+", metavar="PATH",
                         help="videos, images or folders; 'phantom' for the embedded synthetic data")
    predict.add_argument("--format", default="csv", choices=["csv", "json"], help="output format")
    predict.add_argument("--out", default=None, help="file to write (CSV: also <name>_frames.csv); default stdout")
    predict.add_argument("--frames", action="store_true", help="stdout CSV: one row per frame instead of per file")
    predict.add_argument("--batch-size", type=int, default=32, help="frames per model call")
    _add_model_settings_args(predict)
    predict.add_argument("--raw-probabilities", action="store_true",
                         help="probabilities as the network gives them (default: calibrated by the model's map; "
                              "the uncertain flag always uses the calibrated ones)")
    predict.set_defaults(func=cmd_predict)
    __import__("covnb.weights").weights.add_cli(commands)  # covnb weights list / fetch / verify

    audit = _command(commands, "audit", "shortcut audit: source x class, source probe per input treatment, CAM heat "
                                        "inside vs outside the ultrasound image",
                     "How much a model could score by recognising the source instead of the lung: the source x class "
                     "table, a probe that predicts the source from frozen features (patient-grouped CV) for each "
                     "input treatment, and the share of CAM heat inside vs outside the ultrasound image.",
                     "covnb audit phantom\ncovnb audit path/to/pocus --json\n"
                     "covnb audit path/to/pocus --model runs/pocus/model.keras")
    audit.add_argument("path", metavar="DATA", help=DATA_HELP)
    audit.add_argument("--model", default=None, help="saved model to explain (default: fit the default recipe here)")
    audit.add_argument("--layout", default="auto", choices=LAYOUT_CHOICES, help=LAYOUT_HELP)
    audit.add_argument("--task", default="auto", choices=TASK_CHOICES, help=TASK_HELP)
    audit.add_argument("--frames-per-video", type=int, default=5, help="frames explained per video")
    audit.add_argument("--seed", type=int, default=0, help="seed of the probe's folds and of the fitted model")
    audit.add_argument("--json", action="store_true", help="print JSON instead of text")
    audit.set_defaults(func=cmd_audit)
    return parser


def _bad_input_errors() -> tuple:
    from covnb.cache import CacheError
    from covnb.datasets import DataError
    from covnb.models import ModelFileError

    return DataError, ModelFileError, CacheError


def _add_no_cache_arg(parser) -> None:
    parser.add_argument("--no-cache", action="store_true",
                        help="decode frames and compute features without reading or writing the cache "
                             "(same as COVNB_NO_CACHE=1)")


def _resolve_data_argument(parser, args) -> None:
    """``covnb train DATA`` and the older ``covnb train --data DATA`` mean the same."""
    if not hasattr(args, "data_option"):
        return
    if args.data is not None and args.data_option is not None and args.data != args.data_option:
        parser.error(f"data given twice: {args.data!r} and --data {args.data_option!r}")
    args.data = args.data if args.data is not None else args.data_option


def main(argv: list[str] | None = None) -> int:
    from covnb import quiet

    argv = sys.argv[1:] if argv is None else list(argv)
    if "--verbose" in argv:
        quiet.set_verbose(True)
    quiet.install()  # before anything imports TensorFlow (even parsing --backbone): its start-up lines stay out
    parser = build_parser()
    try:  # argparse exits on misuse; covnb's entry point returns its exit code (2) instead
        args = parser.parse_args(argv)
        _resolve_data_argument(parser, args)
        if getattr(args, "command", None) == "train" and args.seed is not None and args.seeds is not None:
            parser.error("give --seed or --seeds, not both")
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if getattr(args, "no_cache", False):
        os.environ["COVNB_NO_CACHE"] = "1"  # also reaches the report's notebook kernels
    if getattr(args, "command", None) == "train":
        args.seeds_list = _seeds_arg(args.seeds) if args.seeds else [args.seed if args.seed is not None else 0]
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at interpreter exit
        return code
    except UsageError as error:
        print(f"covnb: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("covnb: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `covnb data summary PATH --json | head`: the reader has gone, stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED
    except Exception as error:  # bad data, model or cache: a message, never a traceback
        if not isinstance(error, _bad_input_errors()):
            raise
        print(f"covnb: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
