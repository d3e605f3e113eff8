"""The ``covnb`` command line: thin calls into the modules, clear errors, non-zero exit codes.

Exit codes: 0 success, 1 a run that failed (a notebook, a training), 2 misuse (missing path,
unknown profile or parameter, bad value).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up logs stay out of the output


class UsageError(Exception):
    """Misuse of the command line; printed without a traceback, exit code 2."""


def _existing_path(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.exists():
        raise UsageError(f"{text}: no such file or folder")
    return path


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


# ----------------------------------------------------------------------------- split


def cmd_split(args) -> int:
    import pandas as pd

    from covnb.datasets import check_usable, default_task, select_task
    from covnb.splits import LeakageError, audit_split, fold_table, inner_validation, patient_folds

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
        folds = patient_folds(samples, n_splits=args.folds, seed=args.seed)
    except ValueError as error:
        raise UsageError(str(error)) from error
    table = samples[["sample_id", "path", "label", "group", "kind"]].assign(fold=folds.values)
    if args.inner_validation is not None:
        table["inner_validation_for_fold"] = ""
        for fold in range(args.folds):
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
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, out)
    print(f"task {task}: {len(table)} samples, {samples['group'].nunique()} patient groups, {args.folds} folds (seed {args.seed})")
    print(fold_table(samples, folds).to_string())
    print(report.describe())
    print(f"wrote {out}")
    return EXIT_OK


# ----------------------------------------------------------------------------- report


def cmd_report(args) -> int:
    from covnb.report import ReportError, plan_report, parse_override, run_report

    try:
        overrides = dict(parse_override(text) for text in args.parameter)
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
                           top_k=args.top_k, colormap=args.colormap, mp4=not args.no_mp4, log=print)
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
    dataset = _load(args.data, args.layout)
    overrides = {"backbone": args.backbone, "weights": _weights_arg(args.weights), "image_size": args.image_size,
                 "seed": args.seeds_list[0]}
    for name in ("epochs", "fine_tune_epochs", "imbalance", "alpha", "head", "aug_views"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.mirror is not None:
        overrides["mirror_view"] = args.mirror
    elif args.preset == "default":
        from covnb.train import mirror_is_plausible

        overrides["mirror_view"] = mirror_is_plausible(dataset.samples)
        if not overrides["mirror_view"]:
            print("chest X-ray / CT data: no mirrored view (a mirrored chest puts the heart on the right); "
                  "--mirror forces it", file=sys.stderr)
    try:
        config = recipe_config(args.preset, **overrides)
        settings = FrameSettings(rate_hz=args.rate_hz, max_frames=args.max_frames, image_size=args.image_size,
                                 mask_sector=args.mask_sector)
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
                              final_model=not args.no_final_model, baseline=not args.no_baseline)
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
    """The headline figures of a training run: video level, pooled out-of-fold, mean over split seeds."""
    lines = []
    nan = float("nan")
    focus = "covid" if "covid" in metrics.get("classes", []) else None
    for name, entry in (("recipe " + str(metrics.get("config", {}).get("recipe", "?")), metrics),
                        ("baseline linear probe", metrics.get("baseline") or {})):
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
        if args.out:
            refuse_output_inside_inputs(args.out, [p for p in args.paths if Path(p).exists()])
        predictions = predict_paths(_load_model_arg(args.model, args), args.paths, batch_size=args.batch_size)
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


def build_parser() -> argparse.ArgumentParser:
    from covnb import __version__

    parser = argparse.ArgumentParser(prog="covnb", description="Deep learning on COVID-19 lung images: data, splits, reports.")
    parser.add_argument("--version", action="version", version=f"covnb {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    data = commands.add_parser("data", help="inspect a data folder")
    data_commands = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data_commands.required = True
    summary = data_commands.add_parser("summary", help="counts by label, kind, probe/modality, source, licence; skipped files")
    summary.add_argument("path", help="data folder, or 'phantom' for the embedded synthetic data")
    summary.add_argument("--layout", default="auto", choices=["auto", "pocus", "csv", "folders"])
    summary.add_argument("--json", action="store_true", help="print JSON instead of text")
    summary.set_defaults(func=cmd_data_summary)

    split = commands.add_parser("split", help="patient-grouped, stratified K-fold split, audited for leakage")
    split.add_argument("path", help="data folder, or 'phantom'")
    split.add_argument("--folds", type=int, default=5)
    split.add_argument("--seed", type=int, default=0)
    split.add_argument("--out", required=True, help="CSV to write: one row per sample with its fold")
    split.add_argument("--layout", default="auto", choices=["auto", "pocus", "csv", "folders"])
    split.add_argument("--task", default="auto", choices=["auto", "pocovid3", "pocus4", "covid_vs_other", "all"])
    split.add_argument("--viral", default="drop", choices=["drop", "merge"], help="pocovid3: drop viral or merge into pneumonia")
    split.add_argument("--inner-validation", type=float, default=None, metavar="FRACTION",
                       help="also mark an inner validation part (by patient) of each training fold")
    split.set_defaults(func=cmd_split)

    report = commands.add_parser("report", help="run the notebooks of a profile with papermill into a new run folder")
    report.add_argument("--profile", default="sample", help="profile name in reports/ or a YAML file (default: sample)")
    report.add_argument("--data", default=None, help="data folder (default: the profile's; 'phantom' for synthetic data)")
    report.add_argument("--out", default="runs", help="folder that receives the run folder (default: ./runs)")
    report.add_argument("-p", "--parameter", action="append", default=[], metavar="NAME=VALUE",
                        help="override a notebook parameter (repeatable)")
    report.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_no_cache_arg(report)
    report.set_defaults(func=cmd_report)

    cam_parser = commands.add_parser("cam", help="heatmap overlays (PNG) and videos (MP4) of a saved model's explanations")
    cam_parser.add_argument("model", help="saved model (.keras with its sidecar .json, or a folder holding one)")
    cam_parser.add_argument("paths", nargs="+", metavar="PATH", help="videos, images or folders (searched recursively)")
    cam_parser.add_argument("--out", required=True, help="output folder (created; never an input folder)")
    cam_parser.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++", "cam"])
    cam_parser.add_argument("--layer", default=None, help="conv layer to explain (default: the last one)")
    cam_parser.add_argument("--class", dest="class_name", default=None, metavar="NAME",
                            help="class to explain (default: the predicted class of each file)")
    cam_parser.add_argument("--threshold", type=float, default=None, help="zero heat below this value (0..1)")
    cam_parser.add_argument("--alpha", type=float, default=0.4, help="overlay opacity (0..1, default 0.4)")
    cam_parser.add_argument("--colormap", default="jet", help="matplotlib colormap (default jet)")
    cam_parser.add_argument("--top-k", type=int, default=3, help="overlay PNGs per video: its most telling frames")
    cam_parser.add_argument("--no-mp4", action="store_true", help="no heatmap video per input video")
    _add_model_settings_args(cam_parser)
    cam_parser.set_defaults(func=cmd_cam)

    train = commands.add_parser("train", help="patient-level cross-validation of a recipe, then a final model")
    train.add_argument("--data", default=None, help="data folder (default: the embedded synthetic phantom)")
    train.add_argument("--out", required=True, help="folder for metrics.json, OOF predictions, figures, model.keras")
    train.add_argument("--preset", default="default", choices=["default", "pocovid", "linear_probe"])
    train.add_argument("--backbone", default="efficientnet_lite0")
    train.add_argument("--weights", default="imagenet", help="imagenet, none, or a local weights file")
    train.add_argument("--alpha", type=float, default=None, help="width multiplier (mobilenet)")
    train.add_argument("--folds", type=int, default=5)
    train.add_argument("--epochs", type=int, default=None, help="epochs of a Keras-trained head (pocovid preset; the default preset fits a logistic head)")
    train.add_argument("--fine-tune-epochs", type=int, default=None, help="then fine-tune the last block")
    train.add_argument("--imbalance", default=None, choices=["none", "class_weight", "oversample"])
    train.add_argument("--head", default=None, choices=["gap", "midlevel", "multiscale", "pocovid"],
                       help="classifier head (default: the preset's; default preset: midlevel)")
    train.add_argument("--aug-views", type=int, default=None,
                       help="random augmented views cached per frame (default preset: 0)")
    train.add_argument("--mirror", dest="mirror", action="store_true", default=None,
                       help="cache a left-right mirrored view of every frame (default preset: on, except for "
                            "chest X-ray / CT)")
    train.add_argument("--no-mirror", dest="mirror", action="store_false", help="no mirrored view")
    train.add_argument("--image-size", type=int, default=224)
    train.add_argument("--rate-hz", type=float, default=3.0)
    train.add_argument("--max-frames", type=int, default=30)
    train.add_argument("--mask-sector", action="store_true",
                       help="black out what lies outside the ultrasound sector (text, logos, rulers) in training and "
                            "in predict: checks that a model does not read the source off the screen")
    train.add_argument("--seed", type=int, default=None, help="one split/training seed (default 0)")
    train.add_argument("--seeds", default=None, help="several split seeds, e.g. 0,1,2 (mean over them)")
    train.add_argument("--task", default="auto", choices=["auto", "pocovid3", "pocus4", "covid_vs_other", "all"])
    train.add_argument("--layout", default="auto", choices=["auto", "pocus", "csv", "folders"])
    train.add_argument("--no-final-model", action="store_true", help="cross-validation only")
    train.add_argument("--no-baseline", action="store_true",
                       help="skip the linear-probe baseline reported beside the recipe (same folds)")
    _add_no_cache_arg(train)
    train.set_defaults(func=cmd_train)

    predict = commands.add_parser("predict", help="per-frame and per-video class probabilities from a saved model")
    predict.add_argument("model", help="model.keras (with its model.json) or the folder holding it")
    predict.add_argument("paths", nargs="+", help="videos, images or folders")
    predict.add_argument("--format", default="csv", choices=["csv", "json"])
    predict.add_argument("--out", default=None, help="file to write (CSV: also <name>_frames.csv); default stdout")
    predict.add_argument("--frames", action="store_true", help="stdout CSV: one row per frame instead of per file")
    predict.add_argument("--batch-size", type=int, default=32)
    _add_model_settings_args(predict)
    predict.set_defaults(func=cmd_predict)
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "no_cache", False):
        os.environ["COVNB_NO_CACHE"] = "1"  # also reaches the report's notebook kernels
    if getattr(args, "command", None) == "train":
        if args.seed is not None and args.seeds is not None:
            parser.error("give --seed or --seeds, not both")
        args.seeds_list = _seeds_arg(args.seeds) if args.seeds else [args.seed if args.seed is not None else 0]
    try:
        return args.func(args)
    except UsageError as error:
        print(f"covnb: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("covnb: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # bad data, model or cache: a message, never a traceback
        if not isinstance(error, _bad_input_errors()):
            raise
        print(f"covnb: error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
