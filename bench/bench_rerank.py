"""Peak memory and time of the k-reciprocal re-ranked evaluation (mAP/CMC), dense versus chunked.

Usage:
    python bench/bench_rerank.py [--sizes small,square,msmt] [--paths dense-head,dense,chunked] [--dim 2048]

Paths (each measurement runs in a fresh subprocess, so its peak is its own):

- ``dense-head``: ``re_ranking`` of the committed ``src/mqreid/evaluation/rerank.py`` (read with
  ``git show <--rev>:...``, default HEAD, and imported from a temporary file) building the whole [Q, G]
  matrix, then ``evaluate_ranking`` of it;
- ``dense``: this checkout's ``re_ranking`` (the [Q, G] matrix assembled from blocks), then
  ``evaluate_ranking``;
- ``chunked``: this checkout's ``ReRanker`` + ``evaluate_rows``, ranking each block of queries as it
  comes (the path of ``evaluate_retrieval``).

Sizes: ``small`` Q=2,000, G=15,000 (Q x G = 30M); ``square`` Q=G=8,500 (the same Q + G order, Q x G =
72M); ``msmt`` Q=11,659, G=82,161 (MSMT17's test split, Q x G = 958M: one float64 Q x G array is 7.7
GB). Features are synthetic float32 unit vectors clustered by id with cameras, as in
``bench_eval.make_split``. "data RSS" is the resident memory just before the call (torch, features,
ids); "peak RSS" is ``ru_maxrss`` during the call, its count restarted before it through
``/proc/self/clear_refs`` (marked * where that is not possible: then it is the subprocess's peak).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

from bench_eval import REPO, current_rss_mb, make_split, peak_rss_mb, provenance, reset_peak_rss
from mqreid.evaluation import ReRanker, evaluate_ranking, evaluate_rows, re_ranking

SIZES = {
    "small": dict(num_q=2_000, num_g=15_000, num_ids=750, num_cams=6),
    "square": dict(num_q=8_500, num_g=8_500, num_ids=750, num_cams=6),
    "msmt": dict(num_q=11_659, num_g=82_161, num_ids=3_060, num_cams=15),
}
PATHS = ("dense-head", "dense", "chunked")
K1, K2, LAMBDA = 20, 6, 0.3


def committed_re_ranking(rev: str):
    """``re_ranking`` of ``src/mqreid/evaluation/rerank.py`` at git revision ``rev``."""
    source = subprocess.run(["git", "show", f"{rev}:src/mqreid/evaluation/rerank.py"], cwd=REPO, check=True,
                            capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(), "rerank_committed.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("rerank_committed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.re_ranking


def worker(args) -> None:
    size = SIZES[args.size]
    q, g, q_pids, g_pids, q_cams, g_cams = make_split(**size, dim=args.dim, noise=args.noise,
                                                      camera_shift=args.camera_shift, device=torch.device("cpu"))
    ids = (q_pids, g_pids, q_cams, g_cams)
    if args.path == "dense-head":
        dense_re_ranking = committed_re_ranking(args.rev)
    elif args.path == "dense":
        dense_re_ranking = re_ranking

    def run():
        if args.path == "chunked":
            reranker = ReRanker(q, g, K1, K2, LAMBDA)
            return evaluate_rows(reranker.rows, reranker.shape, *ids)
        return evaluate_ranking(dense_re_ranking(q, g, K1, K2, LAMBDA), *ids)

    data_rss, own_peak = current_rss_mb(), reset_peak_rss()
    start = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - start
    print(json.dumps(dict(size=args.size, path=args.path, Q=size["num_q"], G=size["num_g"], D=args.dim,
                          threads=torch.get_num_threads(), seconds=seconds, data_rss_mb=data_rss,
                          peak_rss_mb=peak_rss_mb(), own_peak=own_peak, mAP=result["mAP"],
                          R1=float(result["cmc"][0]), valid=result["num_valid_queries"])), flush=True)


def print_table(rows: list[dict]) -> None:
    header = ["size", "path", "Q", "G", "Q x G", "float64 Q x G (MB)", "D", "threads", "seconds", "data RSS (MB)",
              "peak RSS (MB)", "peak - data (MB)", "mAP", "R1"]
    print("| " + " | ".join(header) + " |")
    print("|---" * len(header) + "|")
    for r in rows:
        qg = r["Q"] * r["G"]
        cells = [r["size"], r["path"], f"{r['Q']:,}", f"{r['G']:,}", f"{qg / 1e6:,.0f}M", f"{8 * qg / 2**20:,.0f}",
                 r["D"], r["threads"], f"{r['seconds']:.1f}", f"{r['data_rss_mb']:,.0f}",
                 f"{r['peak_rss_mb']:,.0f}" + ("" if r["own_peak"] else "*"),
                 f"{r['peak_rss_mb'] - r['data_rss_mb']:,.0f}", f"{100 * r['mAP']:.2f}", f"{100 * r['R1']:.2f}"]
        print("| " + " | ".join(str(c) for c in cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="small,square,msmt", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {', '.join(PATHS)}; "
                        "the dense ones are skipped at msmt size (they need tens of GB)")
    parser.add_argument("--rev", default="HEAD", help="git revision whose rerank.py is the dense-head path")
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--noise", type=float, default=3.2, help="noise norm relative to the unit id centre")
    parser.add_argument("--camera-shift", type=float, default=0.5, help="norm of the per-camera offset")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=list(SIZES), help=argparse.SUPPRESS)
    parser.add_argument("--path", choices=PATHS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    sizes, paths = args.sizes.split(","), args.paths.split(",")
    for name, values, known in (("--sizes", sizes, SIZES), ("--paths", paths, PATHS)):
        if unknown := [v for v in values if v not in known]:
            parser.error(f"{name}: unknown {', '.join(unknown)}")
    print("\n".join(provenance()), flush=True)
    rows = []
    for size in sizes:
        for path in paths:
            if size == "msmt" and path != "chunked":
                continue
            cmd = [sys.executable, __file__, "--worker", "--size", size, "--path", path, "--rev", args.rev,
                   "--dim", str(args.dim), "--noise", str(args.noise), "--camera-shift", str(args.camera_shift)]
            out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout  # stderr shown as is
            rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            print(f"done: {size} {path} ({rows[-1]['seconds']:.0f} s)", flush=True)
    print_table(rows)
    print(f"load average at the end (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
