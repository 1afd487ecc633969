"""Time re-ID evaluation (mAP/CMC) at Market-1501 and MSMT17 scale on random clustered features.

Usage:
    python bench/bench_eval.py --scale market|msmt|both --dim 2048 --device cpu|cuda [--chunk-size N]
        [--skip-features]

Each scale runs in a fresh subprocess so its peak RSS (``ru_maxrss``) is its own. The data mimic
the test split of the dataset: its numbers of queries, gallery images, ids and cameras; every id is
seen by a few cameras; 15% of the gallery are distractors (id -1, matching no query). A feature is
``normalize(id centre + camera shift + noise)``, which gives mAP in the range of real models.
Reported, in this order and in one process per scale: time of ``evaluate_features`` (distances +
ranking, chunked); of ``pairwise_distance`` building the full [Q, G] matrix (3.8 GB at MSMT17 scale);
of the sort floor, a NumPy ``argsort`` of that matrix ``--chunk-size`` rows at a time; and of
``evaluate_ranking`` on that matrix. "x floor" is a call's time over the floor's. "data RSS" is the
resident memory just before the call (torch, features, ids and any distance matrix); "peak RSS" is
``ru_maxrss`` during the call, its count restarted before it through ``/proc/self/clear_refs`` (marked
* where that is not possible, then it is the peak of the whole subprocess, data generation included).
The table is preceded by the command, the commit, the source of ``mqreid``, the date, the machine and
its load average (see :func:`provenance`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import mqreid
from mqreid.evaluation import evaluate_features, evaluate_ranking, pairwise_distance
from mqreid.evaluation.ranking import DEFAULT_CHUNK_SIZE

REPO = Path(__file__).resolve().parent.parent

# Test splits: queries, gallery images, ids, cameras.
SCALES = {
    "market": dict(num_q=3_368, num_g=15_913, num_ids=750, num_cams=6),
    "msmt": dict(num_q=11_659, num_g=82_161, num_ids=3_060, num_cams=15),
}
DISTRACTOR_FRACTION = 0.15


def make_split(num_q, num_g, num_ids, num_cams, dim, noise, camera_shift, device, seed=0, block=8192):
    """Random query/gallery features clustered by id, with ids and cameras like the dataset's."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device=device)

    def randint(high, n):
        return torch.randint(0, high, (n,), generator=gen, device=device)

    # Each id is seen by 2..min(6, num_cams) cameras; images of an id come from those cameras.
    cams_per_id = torch.randint(2, min(6, num_cams) + 1, (num_ids,), generator=gen, device=device)
    cam_sets = torch.rand(num_ids, num_cams, generator=gen, device=device).argsort(dim=1)

    def cams_of(pids):
        return cam_sets[pids, (torch.rand(pids.numel(), generator=gen, device=device) * cams_per_id[pids]).long()]

    q_pids = torch.arange(num_q, device=device) % num_ids  # every id queried about num_q / num_ids times
    q_cams = cams_of(q_pids)
    num_distractors = int(DISTRACTOR_FRACTION * num_g)
    g_pids = torch.cat([randint(num_ids, num_g - num_distractors), torch.full((num_distractors,), -1, device=device)])
    g_cams = torch.cat([cams_of(g_pids[: num_g - num_distractors]), randint(num_cams, num_distractors)])

    centres = F.normalize(randn(num_ids, dim), dim=1)
    cam_dirs = F.normalize(randn(num_cams, dim), dim=1) * camera_shift

    def features(pids, cams):
        out = torch.empty(pids.numel(), dim, device=device)
        for start in range(0, pids.numel(), block):  # in blocks: no full-size temporaries
            p, c = pids[start : start + block], cams[start : start + block]
            f = randn(p.numel(), dim) * (noise / dim**0.5)
            f[p >= 0] += centres[p[p >= 0]]
            f[p < 0] += F.normalize(randn(int((p < 0).sum()), dim), dim=1)  # distractor: its own centre
            out[start : start + block] = F.normalize(f + cam_dirs[c], dim=1)
        return out

    return features(q_pids, q_cams), features(g_pids, g_cams), q_pids, g_pids, q_cams, g_cams


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak_rss() -> bool:
    """Restart the peak RSS count from the current RSS (Linux >= 4.0); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True, text=True).stdout.rstrip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def provenance() -> list[str]:
    """Lines saying what was measured where: command, commit, mqreid source, date, machine, load."""
    from mqreid.engine.trainer import cpu_model

    source = Path(mqreid.__file__).resolve().parent
    commit = _git("rev-parse", "--short", "HEAD")
    if source.is_relative_to(REPO):
        # uncommitted changes: named under evaluation/ and cluster/ (the code measured here), counted elsewhere
        changed = [line[3:] for line in _git("status", "--porcelain", "--", str(source.relative_to(REPO))).splitlines()]
        named = [path for path in changed if "/evaluation/" in path or "/cluster/" in path]
        others = len(changed) - len(named)
        where = f"{source.relative_to(REPO)} of this checkout" + (
            f", with uncommitted changes to {', '.join(named) or 'no file'} under evaluation/ and cluster/"
            + (f" and to {others} other files of mqreid" if others else "") if changed else "")
    else:
        where = str(source)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        mem = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (OSError, ValueError):
        mem = "? RAM"
    return [
        f"command: {' '.join([Path(sys.executable).name, *sys.argv])}",
        f"commit: {commit}; mqreid imported from {where}",
        f"date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"machine: {os.cpu_count()} CPU cores ({cpu_model()}), {mem}; torch {torch.__version__}, "
        f"numpy {np.__version__}, {torch.get_num_threads()} torch threads",
        f"load average (1, 5, 15 min): {load}",
    ]


def argsort_floor(distmat: torch.Tensor, chunk_size: int) -> None:
    """NumPy ``argsort`` of every row of ``distmat`` [Q, G], ``chunk_size`` rows at a time."""
    for start in range(0, distmat.shape[0], chunk_size):
        np.argsort(distmat[start:start + chunk_size].cpu().numpy(), axis=1)


def worker(args) -> None:
    """Run one scale and print one JSON line per measured call."""
    device = torch.device(args.device)
    size = SCALES[args.scale]
    q, g, q_pids, g_pids, q_cams, g_cams = make_split(
        **size, dim=args.dim, noise=args.noise, camera_shift=args.camera_shift, device=device
    )
    common = dict(scale=args.scale, Q=size["num_q"], G=size["num_g"], D=args.dim, device=str(device),
                  threads=torch.get_num_threads(), chunk=args.chunk_size)

    def timed(fn):
        """Seconds, result, RSS before the call and peak RSS during it (the whole run if no reset)."""
        data_rss, own_peak = current_rss_mb(), reset_peak_rss()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        result = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start, result, data_rss, own_peak

    def report(call, measured):
        seconds, result, data_rss, own_peak = measured
        row = dict(common, call=call, seconds=seconds, data_rss_mb=data_rss, peak_rss_mb=peak_rss_mb(),
                   own_peak=own_peak)
        if isinstance(result, dict):
            row.update(mAP=result["mAP"], R1=float(result["cmc"][0]), valid=result["num_valid_queries"])
        if device.type == "cuda":
            row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        print(json.dumps(row), flush=True)

    if not args.skip_features:
        report("evaluate_features", timed(
            lambda: evaluate_features(q, g, q_pids, g_pids, q_cams, g_cams, chunk_size=args.chunk_size)))
    measured = timed(lambda: pairwise_distance(q, g))
    distmat = measured[1]
    report("pairwise_distance (full [Q, G])", measured)
    report("floor: numpy argsort (chunked)", timed(lambda: argsort_floor(distmat, args.chunk_size)))
    report("evaluate_ranking (precomputed distmat)", timed(
        lambda: evaluate_ranking(distmat, q_pids, g_pids, q_cams, g_cams, chunk_size=args.chunk_size)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=["market", "msmt", "both"], default="both")
    parser.add_argument("--dim", type=int, default=2048, help="feature size (2048 = ResNet-50)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="queries ranked at once")
    parser.add_argument("--noise", type=float, default=3.2, help="noise norm relative to the unit id centre")
    parser.add_argument("--camera-shift", type=float, default=0.5, help="norm of the per-camera offset")
    parser.add_argument("--skip-features", action="store_true", help="do not time evaluate_features")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    print("\n".join(provenance()), flush=True)
    rows = []
    for scale in ["market", "msmt"] if args.scale == "both" else [args.scale]:
        cmd = [sys.executable, __file__, "--worker", "--scale", scale, "--dim", str(args.dim),
               "--device", args.device, "--chunk-size", str(args.chunk_size), "--noise", str(args.noise),
               "--camera-shift", str(args.camera_shift)] + (["--skip-features"] if args.skip_features else [])
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout  # stderr shown as is
        rows += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    print_table(rows)
    print(f"load average at the end (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


def print_table(rows: list[dict]) -> None:
    gpu = any("peak_gpu_mb" in r for r in rows)
    header = ["scale", "call", "Q", "G", "D", "device", "threads", "chunk", "seconds", "x floor", "data RSS (MB)",
              "peak RSS (MB)"] + (["peak GPU (MB)"] if gpu else []) + ["mAP", "R1"]
    print("| " + " | ".join(header) + " |")
    print("|---" * len(header) + "|")
    floors = {r["scale"]: r["seconds"] for r in rows if r["call"].startswith("floor")}
    for r in rows:
        ratio = r["seconds"] / floors[r["scale"]] if r["scale"] in floors else float("nan")
        cells = [r["scale"], r["call"], f"{r['Q']:,}", f"{r['G']:,}", r["D"], r["device"], r["threads"], r["chunk"],
                 f"{r['seconds']:.1f}", f"{ratio:.2f}", f"{r['data_rss_mb']:,.0f}",
                 f"{r['peak_rss_mb']:,.0f}" + ("" if r["own_peak"] else "*")]
        cells += [f"{r['peak_gpu_mb']:,.0f}"] if gpu else []
        cells += [f"{100 * r['mAP']:.1f}", f"{100 * r['R1']:.1f}"] if "mAP" in r else ["", ""]
        print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
