"""Clustering benchmark: Jaccard + DBSCAN (and Infomap) against the floor of one exact N x N GEMM.

Each configuration runs in a fresh subprocess so its peak resident memory (ru_maxrss) is its own.
Features are synthetic and seeded: identity centres plus per-identity noise, L2-normalised.

    python bench/bench_cluster.py --n 31068 --dim 2048 --repeat 3
    python bench/bench_cluster.py --n 12936 --dim 2048 --infomap
    python bench/bench_cluster.py --n 200000 --dim 128 --no-gemm
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np


def synthetic_features(n: int, dim: int, ids: int, seed: int = 0,
                       out: np.ndarray | None = None, noise_scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """[n, dim] float32 unit rows and their identity labels [n].

    Identity centres come in groups of ~10 similar ones (spread 0.45 around a group centre) and
    samples add isotropic noise of scale 1.0-1.6 per identity, so neighbouring identities are
    confused about as much as early-epoch re-ID features (DBSCAN at eps 0.6: ARI ~0.8).
    Rows are drawn in chunks and written into ``out`` when given (e.g. a float16 memmap: 1M x 2048
    then needs 4 GB of disk and little memory); the values do not depend on the chunking.
    ``noise_scale`` multiplies the noise (< 1: tighter identities).
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, ids, n)
    groups = rng.standard_normal((ids // 10 + 1, dim), dtype=np.float32)
    centres = groups[rng.integers(0, len(groups), ids)]
    centres += 0.45 * rng.standard_normal((ids, dim), dtype=np.float32)
    noise = rng.uniform(1.0, 1.6, ids).astype(np.float32) * np.sqrt(1 + 0.45**2, dtype=np.float32) * np.float32(noise_scale)
    x = np.empty((n, dim), np.float32) if out is None else out
    for s in range(0, n, 1 << 15):
        chunk = rng.standard_normal((min(1 << 15, n - s), dim), dtype=np.float32)
        chunk *= noise[labels[s:s + len(chunk)], None]
        chunk += centres[labels[s:s + len(chunk)]]
        chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
        x[s:s + len(chunk)] = chunk
    return x, labels


def worker(args) -> dict:
    """Run one configuration in this process and return its timings."""
    import torch

    from mqreid.cluster import InfomapClusterer, jaccard_distance
    from mqreid.cluster.dbscan import dbscan_on_graph

    torch.set_num_threads(args.threads)
    x, labels = synthetic_features(args.n, args.dim, args.ids or max(2, args.n // 30), args.seed)
    out = {"config": args.config}
    start = time.perf_counter()
    if args.config in ("gemm_numpy", "gemm_torch"):  # full N x N, 4096-row chunks into one buffer
        buf = np.empty((4096, len(x)), np.float32)
        start = time.perf_counter()
        for s in range(0, len(x), 4096):
            rows = min(4096, len(x) - s)
            if args.config == "gemm_numpy":
                np.matmul(x[s:s + rows], x.T, out=buf[:rows])
            else:
                torch.matmul(torch.from_numpy(x[s:s + rows]), torch.from_numpy(x).T, out=torch.from_numpy(buf[:rows]))
    elif args.config == "dbscan":
        graph = jaccard_distance(x, args.k1, 6, knn=args.knn)
        out["jaccard_s"] = time.perf_counter() - start
        t0 = time.perf_counter()
        pred = dbscan_on_graph(graph, args.eps, 4)
        out["dbscan_s"] = time.perf_counter() - t0
        out["nnz_per_row"] = graph.nnz / len(x)
        out["clusters"] = int(pred.max() + 1)
        out["outliers"] = float(np.mean(pred == -1))
    elif args.config == "infomap":
        pred = InfomapClusterer(knn=args.knn).fit_predict(x)
        out["clusters"] = int(pred.max() + 1)
        out["outliers"] = float(np.mean(pred == -1))
    else:
        raise ValueError(f"--config: unknown {args.config!r}")
    out["time_s"] = time.perf_counter() - start
    if "clusters" in out:
        from sklearn.metrics import adjusted_rand_score

        out["ari"] = float(adjusted_rand_score(labels, pred))
    out["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def run_config(args, config: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--config", config, "--n", str(args.n), "--dim", str(args.dim),
           "--ids", str(args.ids), "--seed", str(args.seed), "--k1", str(args.k1), "--eps", str(args.eps),
           "--knn", args.knn, "--threads", str(args.threads)]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if res.returncode:
        sys.stderr.write(res.stderr)
        raise SystemExit(f"configuration {config} failed")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _cell(row: dict, key: str, fmt: str) -> str:
    return fmt.format(row[key]) if key in row else "-"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=12936)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--ids", type=int, default=0, help="identity centres (default n // 30)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k1", type=int, default=30)
    p.add_argument("--eps", type=float, default=0.6)
    p.add_argument("--knn", default="torch", choices=["auto", "faiss", "torch", "approx"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="runs of every configuration; the median x GEMM is reported")
    p.add_argument("--no-gemm", action="store_true", help="skip the GEMM floor (large N, small D)")
    p.add_argument("--torch-gemm", action="store_true", help="also time torch's CPU matmul")
    p.add_argument("--infomap", action="store_true", help="also time Infomap")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return
    configs = ([] if args.no_gemm else ["gemm_numpy"] + (["gemm_torch"] if args.torch_gemm else []))
    configs += ["dbscan"] + (["infomap"] if args.infomap else [])
    print(f"\nN={args.n} D={args.dim} ids={args.ids or args.n // 30} k1={args.k1} eps={args.eps} "
          f"knn={args.knn} threads={args.threads}\n")
    print("| run | configuration | time (s) | x GEMM | peak RSS (GB) | clusters | outliers | ARI | notes |")
    print("|---|---|---|---|---|---|---|---|---|")
    ratios = {}
    for run in range(1, args.repeat + 1):  # GEMM and clustering alternate, so both see similar load
        rows = [run_config(args, c) for c in configs]
        floor = next((r["time_s"] for r in rows if r["config"] == "gemm_numpy"), None)
        for r in rows:
            ratio = f"{r['time_s'] / floor:.2f}" if floor else "-"
            if floor:
                ratios.setdefault(r["config"], []).append(r["time_s"] / floor)
            notes = ""
            if r["config"] == "dbscan":
                notes = f"jaccard {r['jaccard_s']:.1f}s + dbscan {r['dbscan_s']:.1f}s, {r['nnz_per_row']:.0f} pairs/row"
            print(f"| {run} | {r['config']} | {r['time_s']:.1f} | {ratio} | {r['peak_gb']:.2f} | {_cell(r, 'clusters', '{}')} | "
                  f"{_cell(r, 'outliers', '{:.1%}')} | {_cell(r, 'ari', '{:.3f}')} | {notes} |", flush=True)
    for config, values in ratios.items():
        if config != "gemm_numpy":
            print(f"\n{config}: median x GEMM over {len(values)} run(s) = {np.median(values):.2f} "
                  f"({', '.join(f'{v:.2f}' for v in values)})")

if __name__ == "__main__":
    main()
