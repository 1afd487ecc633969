"""Clustering at scale: knn=approx against the exact path (recall@30, ARI of the labels), time, peak RSS.

The seeded synthetic features of bench_cluster.py are written once, in chunks, to a float16 .npy
file (1M x 2048 = 4 GB of disk) and memory-mapped by each configuration, which runs in a fresh
subprocess so that its peak resident memory (ru_maxrss) is its own. recall@30 is measured on
1,000 random queries against exact brute force (numpy GEMM over the whole set), so it is
available at every N; the ARI against the exact path's labels needs --exact (an exact run).

    python bench/bench_scale.py --n 10000 --exact --infomap
    python bench/bench_scale.py --n 100000 --exact
    python bench/bench_scale.py --n 1000000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_cluster import synthetic_features


def features_file(args) -> Path:
    """The float16 features of this N/D/seed in the temp directory, generated on first use."""
    path = Path(args.dir) / f"mqreid_synth_{args.n}x{args.dim}_s{args.seed}.npy"
    if not path.exists():
        tmp = path.with_suffix(".part.npy")
        x = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(args.n, args.dim))
        _, labels = synthetic_features(args.n, args.dim, max(2, args.n // 30), args.seed, out=x)
        x.flush()
        del x
        np.save(path.with_suffix(".labels.npy"), labels)
        os.replace(tmp, path)
    return path


def exact_top(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k indices of ``queries`` among all rows of ``x`` (float16 rows, chunked GEMM)."""
    q = x[queries].astype(np.float32)
    best_v = np.full((len(q), k), -np.inf, np.float32)
    best_i = np.zeros((len(q), k), np.int64)
    for s in range(0, len(x), 1 << 16):
        sims = q @ x[s:s + (1 << 16)].astype(np.float32).T
        v = np.concatenate([best_v, sims], 1)
        i = np.concatenate([best_i, np.broadcast_to(np.arange(s, s + sims.shape[1]), sims.shape)], 1)
        top = np.argpartition(-v, k - 1, axis=1)[:, :k]
        best_v, best_i = np.take_along_axis(v, top, 1), np.take_along_axis(i, top, 1)
    return best_i


def worker(args) -> dict:
    import torch

    from mqreid.cluster import DBSCANClusterer, InfomapClusterer, jaccard

    torch.set_num_threads(args.threads)
    x = np.load(features_file(args), mmap_mode="r")
    found = {}

    def recording_knn(*a, **kw):  # keep the kNN lists of the run for the recall
        found["sims"], found["rank"] = out = knn_search(*a, **kw)
        found["s"] = time.perf_counter() - start
        return out

    knn_search, jaccard.knn_search = jaccard.knn_search, recording_knn
    start = time.perf_counter()
    if args.config.startswith("dbscan"):
        labels = DBSCANClusterer(eps=args.eps, k1=30, k2=6, knn=args.knn).fit_predict(x)
    else:
        labels = InfomapClusterer(knn=args.knn).fit_predict(x)
    out = {"config": args.config, "time_s": time.perf_counter() - start, "knn_s": found.get("s"),
           "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
           "clusters": int(labels.max() + 1), "outliers": float(np.mean(labels == -1))}
    np.save(Path(args.dir) / f"mqreid_labels_{args.config}_{args.n}.npy", labels)
    if "rank" in found:  # recall@30 of 1,000 random queries against exact brute force
        queries = np.sort(np.random.default_rng(1).choice(args.n, min(1000, args.n), replace=False))
        truth = exact_top(x, queries, 30)
        rank = found["rank"][queries, :30]
        out["recall30"] = float(np.mean([len(set(a) & set(b)) / 30 for a, b in zip(rank, truth)]))
    return out


def run_config(args, config: str, knn: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--config", config, "--knn", knn, "--n", str(args.n),
           "--dim", str(args.dim), "--seed", str(args.seed), "--eps", str(args.eps), "--dir", args.dir,
           "--threads", str(args.threads)]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if res.returncode:
        sys.stderr.write(res.stderr)
        raise SystemExit(f"configuration {config} failed")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eps", type=float, default=0.6)
    p.add_argument("--exact", action="store_true", help="also run the exact path and report the ARI against it")
    p.add_argument("--infomap", action="store_true", help="also run InfoMap")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the float16 features and labels go")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", default="", help=argparse.SUPPRESS)
    p.add_argument("--knn", default="approx", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    t0 = time.perf_counter()
    features_file(args)
    print(f"\nN={args.n} D={args.dim} float16 features ({time.perf_counter() - t0:.0f}s to generate), "
          f"eps={args.eps}, threads={args.threads}\n")
    print("| configuration | time (s) | kNN (s) | peak RSS (GB) | clusters | outliers | recall@30 |")
    print("|---|---|---|---|---|---|---|")
    for method in ["dbscan"] + (["infomap"] if args.infomap else []):
        approx = run_config(args, f"{method}_approx", "approx")
        print_row(approx)  # at once: the exact run can take long
        if args.exact:
            exact = run_config(args, f"{method}_exact", "torch")
            load = lambda r: np.load(Path(args.dir) / f"mqreid_labels_{r['config']}_{args.n}.npy")
            from sklearn.metrics import adjusted_rand_score

            print_row(exact)
            print(f"{method}: ARI of approx labels vs exact labels = "
                  f"{adjusted_rand_score(load(exact), load(approx)):.4f}", flush=True)


def print_row(r: dict) -> None:
    cell = lambda key, fmt: fmt.format(r[key]) if r.get(key) is not None else "-"
    print(f"| {r['config']} | {r['time_s']:.1f} | {cell('knn_s', '{:.1f}')} | {r['peak_gb']:.2f} | "
          f"{r['clusters']} | {r['outliers']:.1%} | {cell('recall30', '{:.4f}')} |", flush=True)

if __name__ == "__main__":
    main()
