"""``covnb report``, ``covnb cam`` and ``covnb audit``: the notebooks as one report, explanations, the shortcut audit."""

from __future__ import annotations

import sys
from pathlib import Path

from covnb.cli_common import (DATA_HELP, EXIT_FAILED, EXIT_OK, LAYOUT_CHOICES, LAYOUT_HELP, TASK_CHOICES, TASK_HELP,
                              UsageError, _add_data_argument, _add_model_and_inputs, _add_model_settings_args,
                              _add_no_cache_arg, _command, _existing_path, _input_paths, _load_model_arg)


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



def cmd_audit(args) -> int:
    """Shortcut audit of a data folder (covnb.audit)."""
    from covnb.audit import cmd_audit as run_audit_command

    return run_audit_command(args)


def add_report_command(commands) -> None:
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


def add_cam_command(commands) -> None:
    cam_parser = _command(commands, "cam", "heatmap overlays (PNG) and videos (MP4) of a saved model's explanations",
                          "Explain a saved model's predictions: heatmap overlays (PNG) of images and of the most "
                          "telling frames of videos, an MP4 of each video with its heatmap, and cam_index.csv.",
                          "covnb cam runs/pocus/model.keras phantom --out cams\n"
                          "covnb cam runs/pocus clip.mp4 --out cams --method gradcam++ --class covid")
    _add_model_and_inputs(cam_parser, "saved model (.keras with its sidecar .json, or a folder holding one)",
                          "videos, images or folders (searched recursively); 'phantom' for the synthetic data")
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


def add_audit_command(commands) -> None:
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
