"""Ablation on the synthetic benchmark: memory x temperature x clusterer, several seeds, mean ± std.

    python bench/ablation.py                                   # 2 x 2 x 2 settings x 3 seeds
    python bench/ablation.py --jobs 2 --set train.epochs=12 train.iters=50 eval.every=12

Every run is the command line `python train.py memory=M temp=T clusterer=C seed=S <--set overrides>`,
written to <runs>/<M>-<T>-<C>/seed<S>/ (a finished run is reused: delete its folder to rerun). With
--jobs N, N runs go at once, each with cpu_count // N threads. The markdown table goes to stdout and --out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_one(overrides: list[str], run_dir: Path, threads: int) -> dict:
    results = run_dir / "results.json"
    if not results.exists():
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), WANDB_MODE=os.environ.get("WANDB_MODE", "disabled"))
        cmd = [sys.executable, str(REPO / "train.py"), *overrides, "progress=false", f"hydra.run.dir={run_dir}"]
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return json.loads(results.read_text())


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}" if len(values) > 1 else f"{values[0]:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--memories", nargs="+", default=["multi_queue", "centroid"])
    ap.add_argument("--temps", nargs="+", default=["fixed", "learnable"])
    ap.add_argument("--clusterers", nargs="+", default=["dbscan", "infomap"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--set", nargs="*", default=[], help="extra Hydra overrides for every run")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once")
    ap.add_argument("--runs", type=Path, default=REPO / "bench" / "runs" / "ablation")
    ap.add_argument("--out", type=Path, default=None, help="also write the markdown table here")
    args = ap.parse_args()
    threads = max(1, (os.cpu_count() or 1) // args.jobs)

    settings = list(itertools.product(args.memories, args.temps, args.clusterers))
    jobs = [(s, seed) for s in settings for seed in args.seeds]

    def work(job):
        (memory, temp, clusterer), seed = job
        overrides = [f"memory={memory}", f"temp={temp}", f"clusterer={clusterer}", f"seed={seed}", *args.set]
        res = run_one(overrides, args.runs / f"{memory}-{temp}-{clusterer}" / f"seed{seed}", threads)
        print(f"{memory}-{temp}-{clusterer} seed {seed}: mAP {res['initial']['mAP']:.1f} -> "
              f"{res['final']['mAP']:.1f}, R1 {res['final']['rank1']:.1f} ({res['seconds']:.0f} s)", flush=True)
        return job, res

    with ThreadPoolExecutor(args.jobs) as pool:
        results = dict(pool.map(work, jobs))

    lines = [f"seeds {args.seeds}; overrides: {' '.join(args.set) or 'none'}", "",
             "| memory | temperature | clusterer | initial mAP | final mAP | final Rank-1 | s / run |",
             "|---|---|---|---|---|---|---|"]
    for s in settings:
        rs = [results[(s, seed)] for seed in args.seeds]
        lines.append(f"| {s[0]} | {s[1]} | {s[2]} | {mean_std([r['initial']['mAP'] for r in rs])} | "
                     f"{mean_std([r['final']['mAP'] for r in rs])} | {mean_std([r['final']['rank1'] for r in rs])} | "
                     f"{statistics.mean(r['seconds'] for r in rs):.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
