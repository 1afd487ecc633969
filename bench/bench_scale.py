"""Clustering at scale: knn=approx against the exact path (recall, ARI of the labels), time, peak RSS.

The seeded synthetic features of bench_cluster.py are written once, in chunks, to a float16 .npy
file (1M x 2048 = 4 GB of disk) and memory-mapped by each configuration, which runs in a fresh
subprocess so that its peak resident memory (ru_maxrss) is its own. ``--background F`` replaces a
fraction F of the points by background: isotropic random unit vectors that belong to no identity
(true label -1), the points a kNN by cells finds least reliably; ``--noise S`` scales the identities'
noise (S < 1: tighter identities, which keep fewer points as outliers). Recall@30 (the kNN lists of the
Jaccard distance) is measured on ``--queries`` random queries against exact brute force (numpy GEMM
over the whole set), so it is available at every N, overall and separately on background and on
clustered queries; the ARI against the exact path's labels and the outlier counts of both paths
need --exact (an exact run). CPU time is the worker's user + system time, which other jobs on a
shared machine change less than the wall time. Every table starts and ends with the commit, date,
machine and load.

    python bench/bench_scale.py --n 10000 --exact --infomap
    python bench/bench_scale.py --n 100000 --dim 256 --background 0.1 --exact
    python bench/bench_scale.py --n 100000 --dim 256 --background 0.1 --noise 0.5 --exact
    python bench/bench_scale.py --n 1000000

``--knn-only`` times the kNN search alone, exact (``knn=torch``) against ``knn=approx`` back to
back at each k the clusterers use (the Jaccard distance's k1 = 30 and InfoMap's k = 14 without the
point itself), each in a fresh subprocess; the approximate lists are scored against the exact ones
on every row (recall: found similarities >= the exact k-th). This is the measurement behind
``AUTO_APPROX_ABOVE`` in mqreid.cluster.knn:

    python bench/bench_scale.py --knn-only --n 100000 --dim 256 --background 0.1 --noise 0.5
"""

from __future__ import annotations

import argparse
import datetime
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

K = 30  # the Jaccard distance's k1: its kNN lists are 30 long, the point itself included


def features_file(args) -> Path:
    """The float16 features of this N/D/seed/background in the temp directory, generated on first use.

    With ``args.background`` > 0, ``round(N * background)`` random rows are replaced by isotropic
    random unit vectors and labelled -1 (background, no identity).
    """
    background, noise = getattr(args, "background", 0.0), getattr(args, "noise", 1.0)
    tag = (f"_bg{background:g}" if background else "") + (f"_noise{noise:g}" if noise != 1.0 else "")
    path = Path(args.dir) / f"mqreid_synth_{args.n}x{args.dim}_s{args.seed}{tag}.npy"
    if not path.exists():
        tmp = path.with_suffix(".part.npy")
        x = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(args.n, args.dim))
        _, labels = synthetic_features(args.n, args.dim, max(2, args.n // 30), args.seed, out=x, noise_scale=noise)
        if background:
            rng = np.random.default_rng([args.seed, 1])
            rows = np.sort(rng.choice(args.n, int(round(args.n * background)), replace=False))
            for s in range(0, len(rows), 1 << 15):
                chunk = rng.standard_normal((len(rows[s:s + (1 << 15)]), args.dim), dtype=np.float32)
                chunk /= np.linalg.norm(chunk, axis=1, keepdims=True)
                x[rows[s:s + (1 << 15)]] = chunk
            labels[rows] = -1
        x.flush()
        del x
        np.save(path.with_suffix(".labels.npy"), labels)
        os.replace(tmp, path)
    return path


def labels_file(args, config: str) -> Path:
    """Where a configuration's labels of these features go."""
    return Path(args.dir) / f"mqreid_labels_{config}_{features_file(args).stem.removeprefix('mqreid_synth_')}.npy"


def true_labels(args) -> np.ndarray:
    return np.load(features_file(args).with_suffix(".labels.npy"))


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
    import logging

    import torch
    from sklearn.metrics import adjusted_rand_score

    from mqreid.cluster import DBSCANClusterer, InfomapClusterer, infomap, jaccard

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    x = np.load(features_file(args), mmap_mode="r")
    found = {}
    module = jaccard if args.config.startswith("dbscan") else infomap
    knn_search = module.knn_search

    def recording_knn(*a, **kw):  # keep the kNN lists of the run for the recall
        out = knn_search(*a, **kw)
        found["rank"] = torch.as_tensor(out[1]).cpu().numpy()
        found["s"] = time.perf_counter() - start
        return out

    module.knn_search = recording_knn
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    if args.config.startswith("dbscan"):
        labels = DBSCANClusterer(eps=args.eps, k1=K, k2=6, knn=args.knn).fit_predict(x)
    else:
        labels = InfomapClusterer(knn=args.knn).fit_predict(x)
    truth = true_labels(args)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = {"config": args.config, "time_s": time.perf_counter() - start, "knn_s": found.get("s"),
           "cpu_s": usage.ru_utime + usage.ru_stime - cpu0,
           "peak_gb": usage.ru_maxrss / 2**20,
           "clusters": int(labels.max() + 1), "outliers": int(np.sum(labels == -1)),
           "ari_truth": float(adjusted_rand_score(truth, labels))}
    np.save(labels_file(args, args.config), labels)
    if "rank" in found:  # recall of random queries against exact brute force
        k = found["rank"].shape[1]
        queries = np.sort(np.random.default_rng(1).choice(args.n, min(args.queries, args.n), replace=False))
        if args.config.startswith("dbscan"):
            exact = exact_top(x, queries, k)
        else:  # Infomap's lists leave the point itself out
            exact = [[j for j in row if j != q][:k] for q, row in zip(queries, exact_top(x, queries, k + 1))]
        hits = np.array([len(set(a) & set(b)) / k for a, b in zip(found["rank"][queries], exact)])
        out.update(recall=float(hits.mean()), recall_k=k)
        background = truth[queries] == -1
        if background.any():
            out.update(recall_background=float(hits[background].mean()), recall_clustered=float(hits[~background].mean()),
                       background_queries=int(background.sum()))
    return out


def knn_worker(args) -> dict:
    """Time one kNN search (``args.knn`` at the k of ``args.config``) on the memory-mapped features."""
    import logging

    import torch

    from mqreid.cluster import InfomapClusterer
    from mqreid.cluster.knn import knn_search

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    x = np.load(features_file(args), mmap_mode="r")
    k, exclude_self = (K, False) if args.config.startswith("dbscan") else (InfomapClusterer().k, True)
    load0 = os.getloadavg()[0]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    start = time.perf_counter()
    sims, idx = knn_search(x, k, backend=args.knn, exclude_self=exclude_self)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out = {"config": args.config, "knn": args.knn, "k": k, "time_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime - cpu0,
           "peak_gb": usage.ru_maxrss / 2**20, "load_start": load0, "load_end": os.getloadavg()[0]}
    kth_file = labels_file(args, f"{args.config}_exact_kth")
    if args.knn == "torch":
        np.save(kth_file, sims[:, -1])
    elif kth_file.exists():  # a found similarity >= the exact k-th is a right neighbour
        kth = np.load(kth_file)
        out["recall"] = float((np.minimum((sims >= kth[:, None] - 1e-6).sum(1), k) / k).mean())
    return out


def knn_only(args) -> None:
    """Exact then approximate kNN, back to back, at each clusterer's k; one table row per search."""
    print("| N x D | clusterer (k) | kNN | time (s) | CPU time (s) | peak RSS (GB) | load at start / end | "
          "recall vs exact (all rows) |")
    print("|---|---|---|---|---|---|---|---|")
    for method in args.knn_methods.split(","):
        for knn in ("torch", "approx"):
            r = run_config(args, method, knn)
            recall = f"{r['recall']:.4f}" if "recall" in r else "-"
            print(f"| {args.n // 1000}k x {args.dim} | {method} ({r['k']}) | {'exact' if knn == 'torch' else knn} | "
                  f"{r['time_s']:.1f} | {r['cpu_s']:.1f} | {r['peak_gb']:.2f} | {r['load_start']:.1f} / "
                  f"{r['load_end']:.1f} | {recall} |", flush=True)
            for line in r.get("log", []):
                print(f"    {method} {knn} log: {line}", flush=True)


def run_config(args, config: str, knn: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--config", config, "--knn", knn, "--n", str(args.n),
           "--dim", str(args.dim), "--seed", str(args.seed), "--background", str(args.background), "--noise", str(args.noise),
           "--eps", str(args.eps), "--dir", args.dir, "--threads", str(args.threads), "--queries", str(args.queries)]
    cmd += ["--knn-only"] if args.knn_only else []
    res = subprocess.run(cmd, check=False, capture_output=True, text=True)
    if res.returncode:
        sys.stderr.write(res.stderr)
        raise SystemExit(f"configuration {config} failed")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["log"] = [line for line in res.stderr.splitlines() if line.startswith("mqreid.")]
    return out


def provenance() -> str:
    """Commit, date, machine and load, printed with every table."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=False).stdout.strip() or "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=Path(__file__).parent, check=False).stdout.strip()
    except OSError:
        commit, dirty = "unknown", ""
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (f"commit {commit}{' (+ uncommitted changes)' if dirty else ''}, "
            f"{datetime.datetime.now().isoformat(timespec='seconds')}, {os.cpu_count()} CPU cores, "
            f"load average {load}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--background", type=float, default=0.0,
                   help="fraction of points replaced by isotropic background that belongs to no identity")
    p.add_argument("--noise", type=float, default=1.0, help="scale of the identities' noise (< 1: tighter identities)")
    p.add_argument("--eps", type=float, default=0.6)
    p.add_argument("--exact", action="store_true", help="also run the exact path and report the ARI against it")
    p.add_argument("--infomap", action="store_true", help="also run InfoMap")
    p.add_argument("--queries", type=int, default=1000, help="random queries of the recall measurement")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the float16 features and labels go")
    p.add_argument("--knn-only", action="store_true",
                   help="time the kNN search alone: exact (knn=torch) then knn=approx, at each clusterer's k")
    p.add_argument("--knn-methods", default="dbscan,infomap",
                   help="with --knn-only: whose k to search with (dbscan: Jaccard k1 = 30; infomap: k = 14)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", default="", help=argparse.SUPPRESS)
    p.add_argument("--knn", default="approx", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(knn_worker(args) if args.knn_only else worker(args)))
        return
    if not set(args.knn_methods.split(",")) <= {"dbscan", "infomap"}:
        raise SystemExit(f"--knn-methods={args.knn_methods}: expected a comma-separated subset of dbscan,infomap")
    t0 = time.perf_counter()
    features_file(args)
    truth = true_labels(args)
    print(f"\n{provenance()}\nN={args.n} D={args.dim} float16 features ({time.perf_counter() - t0:.0f}s to generate), "
          f"{np.sum(truth == -1)} background points, eps={args.eps}, threads={args.threads}\n")
    if args.knn_only:
        knn_only(args)
        print(f"\nend: {provenance()}")
        return
    print("| configuration | time (s) | kNN (s) | CPU time (s) | peak RSS (GB) | clusters | outliers | ARI vs truth | "
          "recall@k | recall background | recall clustered |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for method in ["dbscan"] + (["infomap"] if args.infomap else []):
        approx = run_config(args, f"{method}_approx", "approx")
        print_row(approx)  # at once: the exact run can take long
        if args.exact:
            exact = run_config(args, f"{method}_exact", "torch")
            load = lambda r: np.load(labels_file(args, r["config"]))
            from sklearn.metrics import adjusted_rand_score

            print_row(exact)
            a, e = load(approx), load(exact)
            both = (a >= 0) & (e >= 0)
            print(f"{method}: ARI of approx labels vs exact labels = {adjusted_rand_score(e, a):.4f} "
                  f"(on the {both.sum()} points both cluster: {adjusted_rand_score(e[both], a[both]):.4f}); "
                  f"outliers approx {np.sum(a == -1)}, exact {np.sum(e == -1)}, both {np.sum((a == -1) & (e == -1))}",
                  flush=True)
    print(f"\nend: {provenance()}")


def print_row(r: dict) -> None:
    cell = lambda key, fmt: fmt.format(r[key]) if r.get(key) is not None else "-"
    recall = f"{r['recall']:.4f} (@{r['recall_k']})" if "recall" in r else "-"
    print(f"| {r['config']} | {r['time_s']:.1f} | {cell('knn_s', '{:.1f}')} | {cell('cpu_s', '{:.0f}')} | {r['peak_gb']:.2f} | "
          f"{r['clusters']} | {r['outliers']} | {r['ari_truth']:.4f} | {recall} | "
          f"{cell('recall_background', '{:.4f}')} | {cell('recall_clustered', '{:.4f}')} |", flush=True)
    for line in r.get("log", []):  # the run's own log: backend choice, approx check, steps and devices
        print(f"    {r['config']} log: {line}", flush=True)


if __name__ == "__main__":
    main()
