import argparse
import json
import subprocess
import sys

import pandas as pd
import pytest

from badfiles import add_bad_files
from covnb.cli import main


def test_data_summary_json_on_the_pocus_share(pocus_root, capsys):
    assert main(["data", "summary", str(pocus_root), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 128 and summary["groups"] == 87
    assert summary["by_label"] == {"covid": 26, "pneumonia": 41, "regular": 56, "viral": 5}


def test_data_summary_text_on_cxr(cxr_root, capsys):
    assert main(["data", "summary", str(cxr_root)]) == 0
    out = capsys.readouterr().out
    assert "278 samples in 127 patient groups" in out and "licence" in out


def test_summary_lists_skipped_files(pocus_subset, capsys):
    add_bad_files(pocus_subset / "pocus_videos" / "convex", pocus_subset / "pocus_videos/convex/pneu-radiopaeda.mp4")
    assert main(["data", "summary", str(pocus_subset)]) == 0
    out = capsys.readouterr().out
    assert "skipped             7 file(s)" in out and "zero-byte file" in out


@pytest.mark.parametrize("which", ["pocus", "cxr"])
def test_split_writes_patient_folds(which, pocus_root, cxr_root, tmp_path, capsys):
    root = pocus_root if which == "pocus" else cxr_root
    out = tmp_path / "folds.csv"
    assert main(["split", str(root), "--folds", "5", "--seed", "2", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert table.groupby("group")["fold"].nunique().max() == 1
    assert sorted(table["fold"].unique()) == [0, 1, 2, 3, 4]
    per_fold = table.groupby(["fold", "label"]).size().unstack()
    assert (per_fold.min() >= per_fold.max() - 2).all()  # stratified
    assert "audit passed" in capsys.readouterr().out


def test_misuse_gives_clear_errors_and_exit_code_2(tmp_path, capsys):
    assert main(["data", "summary", str(tmp_path / "missing")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["split", str(tmp_path), "--folds", "1", "--out", str(tmp_path / "x.csv")]) == 2
    assert main(["split", str(tmp_path), "--folds", "three", "--out", "x.csv"]) == 2  # argparse's own check
    assert "invalid int value" in capsys.readouterr().err
    assert main(["report", "--profile", "nope"]) == 2
    assert main(["report", "--data", str(tmp_path / "missing")]) == 2


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "covnb.cli", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.startswith("covnb ")


def test_a_closed_pipe_ends_quietly():
    # `covnb data summary phantom --json | head -c 10`: the reader goes away before covnb has written
    process = subprocess.Popen([sys.executable, "-m", "covnb.cli", "data", "summary", "phantom", "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    _, err = process.communicate(timeout=300)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()
    assert process.returncode == 1


def _subcommands(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = list(_subcommands(sub))
                yield from nested if nested else [(name, sub)]


def test_every_command_has_a_description_an_example_and_help_with_defaults_for_every_option():
    from covnb.cli import build_parser

    commands = dict(_subcommands(build_parser()))
    assert set(commands) == {"summary", "split", "report", "cam", "train", "predict", "audit", "list", "fetch",
                             "verify"}
    for name, sub in commands.items():
        assert sub.description and "examples:" in (sub.epilog or ""), name
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help text"
        text = sub.format_help()
        assert "(default:" in text and f"covnb {name}" in text.replace("covnb data summary", "covnb summary").replace(
            "covnb weights ", "covnb "), name
    assert "efficientnet_lite0" in commands["train"].format_help() and "mobilenet" in commands["train"].format_help()


def test_the_data_path_is_positional_everywhere_and_the_old_data_option_still_works(tmp_path, capsys):
    from covnb.cli import _resolve_data_argument, build_parser

    parser = build_parser()
    for command in (["train", "--out", "x"], ["report"]):
        for argv in ([command[0], "phantom", *command[1:]], [command[0], "--data", "phantom", *command[1:]]):
            args = parser.parse_args(argv)
            _resolve_data_argument(parser, args)
            assert args.data == "phantom", argv
    assert parser.parse_args(["split", "phantom", "--seeds", "3", "--out", "f.csv"]).seed == 3
    assert parser.parse_args(["report", "--seed", "4"]).seed == 4
    assert main(["train", "phantom", "--data", str(tmp_path), "--out", "x"]) == 2
    assert "data given twice" in capsys.readouterr().err


def test_an_empty_folder_names_the_layouts_looked_for(tmp_path, capsys):
    assert main(["data", "summary", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path) in err and all(layout in err for layout in ("pocus_videos/", "index CSV", "<label>/<file>"))
