"""Which backbone: :func:`covnb.backbone_comparison.compare_backbones` on one data folder, table to CSV.

Patient-grouped ``--folds``-fold CV, the same split seeds for every backbone, default recipe and
its linear probe, video level. Prints the table and writes ``OUT/backbones.csv`` (+ ``.png``);
each backbone's run files are in ``OUT/NAME``.

Run:  nice -n 10 python benchmarks/run_backbone_comparison.py --data ../shared/data/pocus \
          --out runs/backbones_pocus --seeds 10,11,12,13,14
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--backbones", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2,resnet50")
    parser.add_argument("--seeds", default="10,11,12,13,14")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--n-boot", type=int, default=200)
    parser.add_argument("--cluster", default=None,
                        help="Dask cluster for the whole grid: local, local:N, tcp://host:port")
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import pandas as pd

    from covnb.backbone_comparison import compare_backbones
    from covnb.cluster import open_cluster

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    with open_cluster(args.cluster) as client:  # one cluster for every backbone of the grid
        for name in [n.strip() for n in args.backbones.split(",") if n.strip()]:
            table, figure = compare_backbones(args.data, [name], seeds=seeds, n_folds=args.folds, out_dir=out,
                                              n_boot=args.n_boot, time_features=False, cluster=client)
            rows.append(table)
            done = pd.concat(rows, ignore_index=True)
            done.to_csv(out / "backbones.csv.tmp", index=False)
            os.replace(out / "backbones.csv.tmp", out / "backbones.csv")
    from covnb.backbone_comparison import plot_backbone_comparison

    plot_backbone_comparison(done).savefig(out / "backbones.png", dpi=100, bbox_inches="tight")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(done.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
