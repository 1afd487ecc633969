"""Ablation on the synthetic benchmark: memory x temperature x clusterer, several seeds, mean ± std.

    python bench/ablation.py                      # 2 x 2 x 2 settings x 3 seeds, the default schedule
    python bench/ablation.py --seeds 0 1 2 --set train.epochs=8   # any extra override for every run

Each run is the same as `python train.py memory=... temp=... clusterer=... seed=...` (plus --set overrides);
runs go to bench/runs/ablation/<setting>/seed<k>/ and the table to stdout and --out (markdown).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import time
from pathlib import Path

from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]


def run_one(overrides: list[str], run_dir: Path) -> dict:
    from mqreid.engine.trainer import Trainer

    results_file = run_dir / "results.json"
    if results_file.exists():  # finished before: reuse (delete the folder to rerun)
        return json.loads(results_file.read_text())
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    return Trainer(cfg, run_dir).fit()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--memories", nargs="+", default=["multi_queue", "centroid"])
    ap.add_argument("--temps", nargs="+", default=["fixed", "learnable"])
    ap.add_argument("--clusterers", nargs="+", default=["dbscan", "infomap"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--set", nargs="*", default=[], help="extra Hydra overrides for every run")
    ap.add_argument("--runs", type=Path, default=REPO / "bench" / "runs" / "ablation")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    rows = []
    for memory, temp, clusterer in itertools.product(args.memories, args.temps, args.clusterers):
        name = f"{memory}-{temp}-{clusterer}"
        finals, bests, inits, secs = [], [], [], []
        for seed in args.seeds:
            overrides = [f"memory={memory}", f"temp={temp}", f"clusterer={clusterer}", f"seed={seed}",
                         "progress=false", *args.set]
            t0 = time.perf_counter()
            res = run_one(overrides, args.runs / name / f"seed{seed}")
            secs.append(res.get("seconds", time.perf_counter() - t0))
            finals.append((res["final"]["mAP"], res["final"]["rank1"]))
            bests.append(res["best"]["mAP"])
            inits.append(res["initial"]["mAP"])
            print(f"{name} seed {seed}: initial {inits[-1]:.1f} -> final mAP {finals[-1][0]:.1f} "
                  f"R1 {finals[-1][1]:.1f} ({secs[-1]:.0f} s)", flush=True)
        rows.append((memory, temp, clusterer, inits, [f[0] for f in finals], [f[1] for f in finals], secs))

    def ms(v):
        return f"{statistics.mean(v):.1f} ± {statistics.stdev(v):.1f}" if len(v) > 1 else f"{v[0]:.1f}"

    lines = [f"seeds {args.seeds}; overrides {args.set or 'none'}", "",
             "| memory | temperature | clusterer | initial mAP | final mAP | final Rank-1 | s/run |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {m} | {t} | {c} | {ms(i)} | {ms(f)} | {ms(r)} | {statistics.mean(s):.0f} |"
              for m, t, c, i, f, r, s in rows]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
