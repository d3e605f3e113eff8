"""``covnb data summary``, ``covnb data fetch`` and ``covnb split``: reading a data folder and its patient-grouped folds."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from covnb.cli_common import (DATA_HELP, EXIT_FAILED, EXIT_OK, LAYOUT_CHOICES, LAYOUT_HELP, TASK_CHOICES, TASK_HELP,
                              UsageError, _command, _HelpFormatter, _load)


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
    from covnb.datasets import check_usable, default_task, select_task
    from covnb.splits import LeakageError, audit_sources, audit_split, cv_folds

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
        table["inner_validation_for_fold"] = _inner_validation_column(samples, folds, n_folds, args)
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
    _write_csv_atomically(table, out)
    _print_split(task, table, samples, folds, n_folds, args)
    print(report.describe())
    print(f"wrote {out}")
    return EXIT_OK



def _inner_validation_column(samples, folds, n_folds: int, args):
    """For every sample, the training folds ("0;3") whose inner validation part holds it ("" for none)."""
    from covnb.splits import inner_validation

    column = samples["label"].map(lambda _: "")
    for fold in range(n_folds):
        train = samples[folds.values != fold]
        mask = inner_validation(train, fraction=args.inner_validation, seed=args.seed)
        chosen = train.index[mask.values]
        column.loc[chosen] = column.loc[chosen].map(lambda text, f=fold: f"{text};{f}" if text else str(f))
    return column


def _write_csv_atomically(table, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, out)


def _print_split(task: str, table, samples, folds, n_folds: int, args) -> None:
    """The split's headline, its fold table, the held-out sources and the notes."""
    from covnb.splits import fold_table

    print(f"task {task}: {len(table)} samples, {samples['group'].nunique()} patient groups, {n_folds} folds (seed {args.seed}), "
          f"grouped by {folds.attrs.get('protocol', args.group_by)}")
    print(fold_table(samples, folds).to_string())
    for fold, sources in folds.attrs.get("held_out", {}).items():
        print(f"  fold {fold}: covid files only from source(s) {', '.join(sources)}, absent from its training data")
    for note in folds.attrs.get("notes", []):
        print(f"  note: {note}")


def add_data_commands(commands) -> None:
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


def add_split_command(commands) -> None:
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
