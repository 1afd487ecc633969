"""Peak traced memory of each stage of Jaccard + kNN (tracemalloc), to find what sets the peak at scale.

    python bench/trace_memory.py --n 100000            # the features of bench_scale.py (generated on first use)
    python bench/trace_memory.py --n 100000 --cache-knn  # keep the kNN lists in the temp folder for a rerun

Each stage (input check, kNN, reciprocal sets, expanded sets, pair similarities, encoding, overlaps) prints the
memory traced before it, its peak and what it left; numpy's and Python's allocations are traced, faiss's and
torch's are not (the kNN lists and the encoding's arrays are torch tensors: for those stages compare the peak
RSS of bench_scale.py). ``--cache-knn`` saves the kNN lists after the first run and loads them in later runs, so a
change to the later stages can be traced again without the kNN's minutes.
"""

from __future__ import annotations

import argparse
import functools
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_scale import features_file

from mqreid.cluster import jaccard

STAGES = ("as_unit_features", "knn_search", "reciprocal_mask", "_expanded_entries", "_pair_dots", "_encode",
          "min_overlap")


def traced(name, fn):
    @functools.wraps(fn)
    def stage(*args, **kwargs):
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        now, peak = tracemalloc.get_traced_memory()
        print(f"{name}: held before {before / 1e6:.0f} MB, peak {peak / 1e6:.0f} MB (+{(peak - before) / 1e6:.0f}), "
              f"after {now / 1e6:.0f} MB, {time.perf_counter() - start:.1f} s", flush=True)
        return out
    return stage


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100000)
    p.add_argument("--dim", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--k1", type=int, default=30)
    p.add_argument("--k2", type=int, default=6)
    p.add_argument("--eps", type=float, default=0.6)
    p.add_argument("--knn", default="approx")
    p.add_argument("--cache-knn", action="store_true", help="save / reuse the kNN lists in --dir")
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the float16 features (and kNN lists) go")
    args = p.parse_args(argv)
    x = np.load(features_file(args), mmap_mode="r")
    search = jaccard.knn_search
    if args.cache_knn:
        path = Path(args.dir) / f"mqreid_knn_{args.n}x{args.dim}_s{args.seed}_k{args.k1}_{args.knn}.npz"

        def search(features, k, _search=jaccard.knn_search, **kwargs):
            if path.exists():
                z = np.load(path)
                return z["sims"], z["idx"]
            sims, idx = _search(features, k, **kwargs)
            np.savez(path, sims=np.asarray(sims.cpu()), idx=np.asarray(idx.cpu()))
            return sims, idx
    tracemalloc.start()
    jaccard.knn_search = search
    for name in STAGES:
        setattr(jaccard, name, traced(name, getattr(jaccard, name)))
    start = time.perf_counter()
    graph = jaccard.jaccard_distance(x, args.k1, args.k2, knn=args.knn, max_distance=args.eps)
    print(f"graph: {graph.nnz} stored pairs ({graph.nnz / args.n:.1f} per row), {time.perf_counter() - start:.1f} s "
          f"(the peaks of nested stages are reset by the inner ones)")


if __name__ == "__main__":
    main()
