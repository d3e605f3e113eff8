"""The trust numbers of a ``covnb train`` run: calibration (ECE raw vs calibrated, frame and video),
risk-coverage, leave-one-source-out OOD ROC-AUCs, and the synthetic phantom shown to the run's model.

Run:  python benchmarks/trust_numbers.py RUN_DIR [--phantom N]

``RUN_DIR``: a ``covnb train`` output folder with a final model (``model.keras``). ``--phantom N``:
score the first N files of the embedded synthetic phantom (0: skip) against the run's held-out
files (:func:`covnb.trust.shift_check`). Only reads the run; writes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--phantom", type=int, default=40, help="phantom files to score (0: skip)")
    args = parser.parse_args()
    run = Path(args.run)
    metrics = json.loads((run / "metrics.json").read_text())
    calibration = metrics["calibration"]
    print(f"{run}: {metrics.get('headline')} folds, seeds {metrics.get('seeds')}, backbone "
          f"{metrics['config']['backbone']}")
    print(f"calibration evaluation: {calibration['evaluation']}")
    if "selected_per_outer_fold" in calibration:
        print(f"methods chosen per outer fold: {calibration['selected_per_outer_fold']}")
    for level in ("frame", "video"):
        scores = calibration["levels"][level]
        for method in ("raw", "auto", "temperature", "vector", "platt", "isotonic"):
            if method in scores:
                ece = scores[method]["ece"]
                print(f"  {level:<5} {method:<11} ECE {ece['estimate']:.3f} [{ece['low']:.3f}, {ece['high']:.3f}]  "
                      f"Brier {scores[method]['brier']['estimate']:.3f}  log loss "
                      f"{scores[method]['log_loss']['estimate']:.3f}")
    uncertainty = metrics["uncertainty"]
    print(f"risk-coverage ({uncertainty['risk_coverage_note']}):")
    for signal, rows in uncertainty["risk_coverage"].items():
        text = ", ".join(f"abstain {r['abstain_fraction']:.0%}: accuracy {r['accuracy']:.3f} (balanced "
                         f"{r.get('balanced_accuracy', float('nan')):.3f}, n {r['n_kept']})" for r in rows)
        print(f"  {signal}: {text}")
    for row in uncertainty.get("leave_one_source_out_auroc", []):
        print(f"  leave-one-source-out OOD ROC-AUC, source {row.get('source')}: {row['auroc']:.3f} "
              f"({row['files']} files: {row['labels']})")
    if args.phantom and (run / "model.keras").is_file():
        from covnb.datasets import load_dataset
        from covnb.trust import shift_check

        phantom = load_dataset(None).samples.sort_values("sample_id").head(args.phantom)
        result = shift_check(run, list(phantom["path"]))
        print("phantom vs the run's held-out real files: " + json.dumps(result))


if __name__ == "__main__":
    main()
