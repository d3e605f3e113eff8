"""The ``covnb`` command line: thin calls into the modules, clear errors, non-zero exit codes.

Exit codes: 0 success, 1 a run that failed (a notebook, a training), 2 misuse (missing path,
unknown profile or parameter, bad value).
"""

from __future__ import annotations

import argparse
import os
import sys

# the commands live in cli_data (data, split), cli_train (train, predict) and cli_cam (report, cam, audit), what
# they share in cli_common; every name stays importable from here
from covnb.cli_cam import (add_audit_command, add_cam_command, add_report_command, cmd_audit,  # noqa: F401
                           cmd_cam, cmd_report)
from covnb.cli_common import (DATA_HELP, EXIT_FAILED, EXIT_OK, EXIT_USAGE, LAYOUT_CHOICES, LAYOUT_HELP,  # noqa: F401
                              TASK_CHOICES, TASK_HELP, UsageError, _add_data_argument, _add_model_settings_args,
                              _add_no_cache_arg, _backbone_names, _command, _existing_path, _HelpFormatter,
                              _input_paths, _LazyChoices, _load, _load_model_arg)
from covnb.cli_data import (_print_summary, add_data_commands, add_split_command, cmd_data_fetch,  # noqa: F401
                            cmd_data_summary, cmd_split)
from covnb.cli_train import (_protocol_summary_lines, _seeds_arg, _train_summary_lines, _weights_arg,  # noqa: F401
                             add_predict_command, add_train_command, cmd_predict, cmd_train)


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

    add_data_commands(commands)
    add_split_command(commands)
    add_report_command(commands)
    add_cam_command(commands)
    add_train_command(commands)
    add_predict_command(commands)
    __import__("covnb.weights").weights.add_cli(commands)  # covnb weights list / fetch / verify
    add_audit_command(commands)
    return parser


def _bad_input_errors() -> tuple:
    from covnb.cache import CacheError
    from covnb.datasets import DataError
    from covnb.models import ModelFileError

    return DataError, ModelFileError, CacheError


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
        args = _parse_arguments(parser, argv)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else EXIT_USAGE
    if getattr(args, "no_cache", False):
        os.environ["COVNB_NO_CACHE"] = "1"  # also reaches the report's notebook kernels
    if getattr(args, "command", None) == "train":
        args.seeds_list = _seeds_arg(args.seeds) if args.seeds else [args.seed if args.seed is not None else 0]
    return _run_command(args)


def _parse_arguments(parser, argv: list[str]):
    """The parsed arguments; misuse exits through ``parser.error`` (SystemExit)."""
    args = parser.parse_args(argv)
    _resolve_data_argument(parser, args)
    if getattr(args, "command", None) == "train" and args.seed is not None and args.seeds is not None:
        parser.error("give --seed or --seeds, not both")
    return args


def _run_command(args) -> int:
    """Run the chosen command; misuse and bad input become a message and an exit code, never a traceback."""
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
