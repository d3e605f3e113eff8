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

    from covnb.datasets import default_task, select_task
    from covnb.splits import LeakageError, audit_split, fold_table, inner_validation, patient_folds

    if args.folds < 2:
        raise UsageError(f"--folds must be at least 2, got {args.folds}")
    if args.inner_validation is not None and not 0 < args.inner_validation < 1:
        raise UsageError(f"--inner-validation must be a fraction in (0, 1), got {args.inner_validation}")
    dataset = _load(args.path, args.layout)
    task = default_task(dataset) if args.task == "auto" else args.task
    samples = select_task(dataset.samples, task=task, viral=args.viral)
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
    run_dir, manifest = run_report(plan, out=args.out, progress=not args.no_progress)
    print(f"report {manifest['status']} in {manifest['seconds']} s: {run_dir}")
    print(f"  open {run_dir / 'index.html'}")
    return EXIT_OK if manifest["status"] == "ok" else EXIT_FAILED


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
    report.set_defaults(func=cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as error:
        print(f"covnb: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("covnb: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
