"""``covnb train`` and ``covnb predict``: cross-validate and fit a recipe, then apply the saved model."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from covnb.cli_common import (EXIT_FAILED, EXIT_OK, LAYOUT_CHOICES, LAYOUT_HELP, TASK_CHOICES, TASK_HELP, UsageError,
                              _add_data_argument, _add_model_and_inputs, _add_model_settings_args, _add_no_cache_arg,
                              _backbone_names, _command, _existing_path, _input_paths, _LazyChoices, _load, _load_model_arg)


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
    from covnb.frames import FrameSettings
    from covnb.train import recipe_config

    if args.folds < 2:
        raise UsageError(f"--folds must be at least 2, got {args.folds}")
    if args.n_boot < 0:
        raise UsageError(f"--n-boot must be 0 or more, got {args.n_boot}")
    from covnb.cluster import ClusterSpecError, parse_cluster_spec

    try:
        parse_cluster_spec(args.cluster)  # a bad --cluster / $COVNB_SCHEDULER fails before any work
    except ClusterSpecError as error:
        raise UsageError(str(error)) from error
    dataset = _load(args.data, args.layout)
    overrides = _recipe_overrides(args, dataset)
    try:
        config = recipe_config(args.preset, **overrides)
        settings = FrameSettings(rate_hz=args.rate_hz, max_frames=args.max_frames, image_size=args.image_size,
                                 mask_sector=args.mask_sector, canonical=args.canonical,
                                 intensity=args.intensity)
    except ValueError as error:
        raise UsageError(str(error)) from error
    from covnb.backbones import BACKBONES

    if args.backbone not in BACKBONES:
        raise UsageError(f"unknown backbone {args.backbone!r}; choose one of {', '.join(BACKBONES)}")
    out = Path(args.out)
    _train_into(out, args, dataset, config, settings)
    for line in _train_summary_lines(json.loads((out / "metrics.json").read_text())):
        print(line)
    print(f"wrote {out}")
    return EXIT_OK


def _recipe_overrides(args, dataset) -> dict:
    """The recipe settings the command line gives, with the mirrored view decided for the data (none for chests)."""
    overrides = {"backbone": args.backbone, "weights": _weights_arg(args.weights), "image_size": args.image_size,
                 "seed": args.seeds_list[0]}
    for name in ("epochs", "fine_tune_epochs", "imbalance", "alpha", "head", "aug_views", "device_views", "distribute",
                 "nuisance_dims"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.mirror is not None:
        overrides["mirror_view"] = args.mirror
    elif args.preset in ("default", "midlevel", "auto", "nap"):
        from covnb.train import AUTO_CANDIDATES, SELECTION_CANDIDATES, mirror_is_plausible

        if args.preset in ("default", "midlevel", "nap"):
            overrides["mirror_view"] = mirror_is_plausible(dataset.samples)
        else:
            overrides["select"] = tuple(name for name in AUTO_CANDIDATES if mirror_is_plausible(dataset.samples)
                                        or not SELECTION_CANDIDATES[name]["mirror_view"])
        if not mirror_is_plausible(dataset.samples):
            print("chest X-ray / CT data: no mirrored view (a mirrored chest puts the heart on the right); "
                  "--mirror forces it", file=sys.stderr)
    return overrides


def _train_into(out: Path, args, dataset, config, settings) -> None:
    """Run the training in a staging folder beside ``out``, then move its results into ``out``."""
    import shutil

    from covnb.backbones import WeightsUnavailableError
    from covnb.cache import staging_folder
    from covnb.cluster import ClusterSpecError
    from covnb.train import run_training

    staging = staging_folder(out)  # also removes .partial-* folders of interrupted runs
    try:
        run_training(dataset, out_dir=staging, config=config, task=None if args.task == "auto" else args.task,
                     n_folds=args.folds, seeds=args.seeds_list, frame_settings=settings,
                     final_model=not args.no_final_model, baseline=not args.no_baseline,
                     n_boot=args.n_boot, cluster=args.cluster,
                     protocols={"both": ("source", "patient"), "source": ("source",),
                                "patient": ("patient",)}[args.group_by])
    except (WeightsUnavailableError, ClusterSpecError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise UsageError(str(error)) from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _publish_staging(staging, out)


def _publish_staging(staging: Path, out: Path) -> None:
    """Move a finished run's files from ``staging`` into ``out`` and point metrics.json's paths at ``out``."""
    import shutil

    from covnb.cache import OWNER_FILE

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
    focus = "covid" if "covid" in metrics.get("classes", []) else None
    for name, entry in (("recipe " + str(metrics.get("config", {}).get("recipe", "?")), block),
                        ("baseline linear probe", block.get("baseline") or {})):
        lines += _entry_summary_lines(name, entry, focus)
    if block.get("selected"):
        lines.append("chosen by the inner CV (folds): " + ", ".join(f"{k} {v}" for k, v in block["selected"].items()))
    if focus and block.get("group_by") == "source":
        held = [row for row in block.get("by_source", []) if row["label"] == focus]
        lines.append(f"{focus} share found per held-out source: " + ", ".join(
            f"{row['source']} {row['share_correct']:.2f} ({row['files']})" for row in held))
    for note in block.get("notes", [])[:6]:
        lines.append(f"note: {note}")
    return lines


def _entry_summary_lines(name: str, entry: dict, focus: str | None) -> list[str]:
    """The video-level line of one recipe (or the baseline) and, with several kinds of file, a line per kind."""
    nan = float("nan")
    video = (entry.get("video_mean") or {}).get("pooled_mean")
    if not video:
        return []
    spread = (entry.get("video_mean") or {}).get("pooled_std", {})
    text = (f"{name}: video balanced accuracy {video.get('balanced_accuracy', nan):.3f} "
            f"+- {spread.get('balanced_accuracy', nan):.3f} over split seeds, macro ROC-AUC "
            f"{video.get('macro_auc', nan):.3f}")
    if focus:
        text += (f", {focus} sensitivity {video.get(focus + '_sensitivity', nan):.2f} "
                 f"specificity {video.get(focus + '_specificity', nan):.2f}")
    lines = [text]
    for kind, values in (entry.get("by_kind") or {}).items():
        if len(entry.get("by_kind")) > 1:
            lines.append(f"    {kind}s ({values['files']} files): balanced accuracy "
                         f"{values.get('balanced_accuracy', nan):.3f}"
                         + (f", {focus} sensitivity {values.get(focus + '_sensitivity', nan):.2f} "
                            f"({values.get(focus + '_files', 0)} files)" if focus else ""))
    return lines



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



def add_train_command(commands) -> None:
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
    train.add_argument("--preset", default="default", choices=["default", "midlevel", "pocovid", "linear_probe", "auto", "nap"],
                       help="recipe: covnb's default (middle layers, mirrored view, one example per video, and "
                            "0, 2, 4 or 8 within-class between-source feature directions projected out (NAP), the "
                            "number chosen inside every training fold by a nested source-aware CV; 'nap' is the "
                            "same), midlevel (the default without NAP, the default before it), POCOVID-Net's "
                            "protocol, the linear-probe baseline, or auto: the candidate recipes of "
                            "covnb.train.AUTO_CANDIDATES, chosen the same way (and for the final model)")
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
    train.add_argument("--imbalance", default=None,
                       choices=["none", "class_weight", "oversample", "source_balanced", "source_sqrt"],
                       help="class imbalance handling (default: the preset's); source_balanced: every source of a "
                            "class weighs the same (source_sqrt: by the square root of its size), logistic head")
    train.add_argument("--nuisance-dims", type=int, default=None,
                       help="project this many within-class between-source directions, estimated on each training "
                            "fold, out of the features before the logistic head (NAP; default: 0, 2, 4 or 8 "
                            "chosen by the inner CV of every training fold; giving a number fixes it)")
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
    train.add_argument("--intensity", action="store_true",
                       help="map every video's image pixels to one mean and spread before the backbone (per-video "
                            "intensity standardisation; stored in model.json, applied by predict and cam)")
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
    train.add_argument("--cluster", default=None, metavar="SPEC",
                       help="run frame decoding, frozen features and the cross-validation folds on Dask: local (one worker process "
                            "per core), local:N, or a scheduler address tcp://host:port (default: $COVNB_SCHEDULER, "
                            "else in this process); same results, the dashboard link is printed")
    train.add_argument("--distribute", default=None, choices=["none", "mirrored", "multiworker"],
                       help="Keras heads and fine-tuning under tf.distribute: mirrored (this machine's GPUs or "
                            "logical CPUs) or multiworker (the machines of $TF_CONFIG); default none")
    _add_no_cache_arg(train)
    train.set_defaults(func=cmd_train)


def add_predict_command(commands) -> None:
    predict = _command(commands, "predict", "per-frame and per-video class probabilities from a saved model",
                       "Class probabilities of every frame and every file from a saved model (the frame settings "
                       "of its training); unreadable files are reported and skipped.",
                       "covnb predict runs/pocus/model.keras phantom\n"
                       "covnb predict runs/pocus clip.mp4 images/ --format json --out predictions.json")
    _add_model_and_inputs(predict, "model.keras (with its model.json) or the folder holding it",
                          "videos, images or folders; 'phantom' for the embedded synthetic data")
    predict.add_argument("--format", default="csv", choices=["csv", "json"], help="output format")
    predict.add_argument("--out", default=None, help="file to write (CSV: also <name>_frames.csv); default stdout")
    predict.add_argument("--frames", action="store_true", help="stdout CSV: one row per frame instead of per file")
    predict.add_argument("--batch-size", type=int, default=32, help="frames per model call")
    _add_model_settings_args(predict)
    predict.add_argument("--raw-probabilities", action="store_true",
                         help="probabilities as the network gives them (default: calibrated by the model's map; "
                              "the uncertain flag always uses the calibrated ones)")
    predict.set_defaults(func=cmd_predict)
