"""Check a finished `covnb report` run folder: `python .ci/check_run.py RUN_DIR_OR_OUT_FOLDER`.

Given the folder that receives run folders (e.g. `runs`), checks the newest run in it. Exit 0 when the
manifest says ok, every notebook wrote its metrics.json and HTML, and every link of index.html resolves.
"""

import sys
from pathlib import Path

from covnb.report import verify_run


def newest_run(folder: Path) -> Path:
    if (folder / "manifest.json").is_file():
        return folder
    runs = [p for p in folder.iterdir() if (p / "manifest.json").is_file()]
    if not runs:
        sys.exit(f"check_run: no run folder in {folder}")
    return max(runs, key=lambda p: (p / "manifest.json").stat().st_mtime)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    run_dir = newest_run(Path(sys.argv[1]))
    problems = verify_run(run_dir)
    for problem in problems:
        print(f"check_run: {run_dir}: {problem}", file=sys.stderr)
    print(f"check_run: {run_dir}: {'FAILED' if problems else 'ok'}")
    sys.exit(1 if problems else 0)
