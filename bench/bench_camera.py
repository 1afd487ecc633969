"""Camera-aware learning: parity of the sparse CA-Jaccard with its dense reference, its time against one GEMM,
and the camera terms' share of a training step.

    python bench/bench_camera.py parity
    python bench/bench_camera.py jaccard --n 31068 --dim 2048 --cameras 15
    python bench/bench_camera.py step

``parity``: the sparse camera-aware Jaccard against the explicit dense, loop-based reference of
tests/cluster/test_camera_jaccard.py on small fabricated features: the largest absolute difference of the
distances and whether DBSCAN gives the same labels on both.

``jaccard``: on seeded clustered features (bench/bench_cluster.py's generator) with cameras drawn uniformly at
random: one exact N x N similarity GEMM (numpy, 4096-row chunks: the floor of exact kNN), the plain Jaccard
(k1 30, k2 6) and the camera-aware one (the published settings), in this order in one process, each step's
time from the library's own step timings.

``step``: the camera terms (forward, backward and the proxy update) at the synthetic recipe's batch (64, the
small CNN's 256-d features, 120 clusters x 6 cameras of proxies) and at the presets' 256 (2048-d, 5,000
proxies: about MSMT17's 1,000 clusters x 5 cameras), against a measured training step of the model (small CNN
at 64x32, batch 64; ResNet-50 at 256x128, measured at batch 32 and scaled linearly to 256: one batch of 256 on
2 CPU cores takes minutes). Batches are shaped like the sampler's (batch / K clusters of K images; K = 4 and
16), and the memories' per-sample updates get the sampler's bound K. No training on any dataset: fabricated
batches only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def settings_line(command: str) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    load = os.getloadavg()
    return (f"settings: commit {commit}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, 2-core CPU, 24 GiB, "
            f"{torch.get_num_threads()} torch threads, shared machine (load average {load[0]:.1f} / {load[1]:.1f} / "
            f"{load[2]:.1f} at the end), `{command}`")


def parity() -> None:
    from sklearn.cluster import DBSCAN

    from mqreid.cluster import jaccard_distance
    from mqreid.cluster.dbscan import dbscan_on_graph

    sys.path.insert(0, str(REPO / "tests" / "cluster"))
    from test_camera_jaccard import camera_blobs, dense_ca_jaccard, densify

    print("| N | cameras | k1_intra | k1_inter | k2_intra | k2_inter | max abs difference | labels equal (eps 0.4 / 0.6) |")
    print("|---|---|---|---|---|---|---|---|")
    cases = [(110, 4, 5, 20, 2, 4), (110, 4, 5, 20, 3, 3), (110, 3, 3, 8, 1, 0), (110, 6, 2, 30, 0, 1),
             (200, 6, 5, 20, 2, 4), (60, 1, 5, 20, 2, 4)]
    for n, cams, k1i, k1e, k2i, k2e in cases:
        x, c = camera_blobs(n=n, cameras=cams, seed=k1e + n)
        params = dict(k1_intra=k1i, k1_inter=k1e, k2_intra=k2i, k2_inter=k2e)
        graph = jaccard_distance(x, cameras=c, knn="torch", **params)
        ref = dense_ca_jaccard(x, c, **params)
        diff = np.abs(densify(graph) - ref).max()
        same = [np.array_equal(dbscan_on_graph(graph, eps, 4), DBSCAN(eps=eps, min_samples=4, metric="precomputed")
                               .fit_predict(ref)) for eps in (0.4, 0.6)]
        print(f"| {n} | {cams} | {k1i} | {k1e} | {k2i} | {k2e} | {diff:.2e} | {' / '.join(map(str, same))} |")
    # copies of 30 images on two other cameras each (ties across the cut of the inter-camera lists)
    x, c = camera_blobs(n=70, cameras=4, seed=9)
    x, c = np.concatenate([x, x[:30], x[:30]]), np.concatenate([c, (c[:30] + 1) % 4, (c[:30] + 2) % 4])
    params = dict(k1_intra=3, k1_inter=4, k2_intra=2, k2_inter=2)
    graph, ref = jaccard_distance(x, cameras=c, knn="torch", **params), dense_ca_jaccard(x, c, **params)
    # eps 0.45 (not 0.4): with copies, 56 pairs lie at exactly 0.4, where float32 against float64 decides
    same = [np.array_equal(dbscan_on_graph(graph, eps, 4), DBSCAN(eps=eps, min_samples=4, metric="precomputed")
                           .fit_predict(ref)) for eps in (0.45, 0.6)]
    print(f"| 130 (60 copies) | 4 | 3 | 4 | 2 | 2 | {np.abs(densify(graph) - ref).max():.2e} | "
          f"{' / '.join(map(str, same))} (eps 0.45 / 0.6) |")
    print(settings_line("python bench/bench_camera.py parity"))


def jaccard(args) -> None:
    sys.path.insert(0, str(REPO / "bench"))
    from bench_cluster import synthetic_features

    from mqreid.cluster.jaccard import jaccard_distance_with_steps

    torch.set_num_threads(args.threads)
    x, _ = synthetic_features(args.n, args.dim, max(2, args.n // 30), args.seed)
    cams = np.random.default_rng(args.seed + 1).integers(0, args.cameras, args.n)
    buf = np.empty((4096, len(x)), np.float32)
    t0 = time.perf_counter()
    for s in range(0, len(x), 4096):
        rows = min(4096, len(x) - s)
        np.matmul(x[s:s + rows], x.T, out=buf[:rows])
    gemm = time.perf_counter() - t0
    del buf
    print(f"one N x N GEMM (numpy): {gemm:.1f} s", flush=True)
    rows = []
    for name, cameras in (("camera-aware (k1_intra 5, k1_inter 20, k2 2 + 4)", cams), ("plain (k1 30, k2 6)", None)):
        t0 = time.perf_counter()
        graph, steps = jaccard_distance_with_steps(x, 30, 6, "torch", 0.6, cameras,
                                                   dict(k1_intra=5, k1_inter=20, k2_intra=2, k2_inter=4))
        total = time.perf_counter() - t0
        rows.append((name, total, steps, graph.nnz / args.n))
        print(f"{name}: {total:.1f} s", flush=True)
    print(f"\nN = {args.n}, D = {args.dim}, {args.cameras} cameras (uniform), eps 0.6 (pairs stored up to it)\n")
    print("| distance | time (s) | x GEMM | steps (s) | stored pairs per row |")
    print("|---|---|---|---|---|")
    print(f"| one N x N similarity GEMM (numpy) | {gemm:.1f} | 1.00 | - | - |")
    for name, total, steps, per_row in rows:
        detail = ", ".join(f"{s} {t:.1f}" for s, t, _ in steps)
        print(f"| {name} | {total:.1f} | {total / gemm:.2f} | {detail} | {per_row:.1f} |")
    print(settings_line(f"python bench/bench_camera.py jaccard --n {args.n} --dim {args.dim} --cameras {args.cameras}"))


def _time(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def step(args) -> None:
    import torch.nn.functional as F

    from mqreid.memory import CameraProxies, CentroidMemory
    from mqreid.models import build_model

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)

    def camera_terms(batch: int, dim: int, clusters: int, cameras: int, instances: int) -> float:
        n = clusters * cameras * 4
        labels = torch.arange(clusters).repeat_interleave(cameras * 4)
        cams = torch.arange(cameras).repeat_interleave(4).repeat(clusters)
        proxies = CameraProxies(dim)
        proxies.reset(F.normalize(torch.randn(n, dim, generator=g), dim=1), labels, cams)
        # batches as the sampler makes them: batch / K clusters, K images each, from the cluster's cameras
        chosen = torch.randperm(clusters, generator=g)[:batch // instances]
        pick = (chosen[:, None] * cameras * 4 + torch.randint(cameras * 4, (len(chosen), instances), generator=g)).reshape(-1)
        features = torch.randn(batch, dim, generator=g, requires_grad=True)

        def run():
            intra, inter = proxies(features, labels[pick], cams[pick])
            (intra + 0.5 * inter).backward()
            proxies.update(features.detach(), labels[pick], cams[pick], max_per_cluster=instances)  # the sampler's K
        return _time(run, args.repeat)

    def model_step(arch: str, batch: int, height: int, width: int, clusters: int, instances: int) -> float:
        model = build_model(arch, pretrained=False)
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=3.5e-4)
        images = torch.randn(batch, 3, height, width, generator=g)
        with torch.no_grad():
            dim = model(images[:2]).shape[1]
        memory = CentroidMemory(dim, clusters)
        memory.reset(F.normalize(torch.randn(clusters * 2, dim, generator=g), dim=1),
                     torch.arange(clusters).repeat(2))
        targets = torch.randperm(clusters, generator=g)[:batch // instances].repeat_interleave(instances)

        def run():
            features = model(images)
            loss = memory(features, targets, 0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            memory.update(features.detach(), targets, instances)
        return _time(run, args.repeat)

    rows = []
    small_step = model_step("small_cnn", 64, 64, 32, 120, 4)
    small_terms = camera_terms(64, 256, 120, 6, 4)
    rows.append(("synthetic recipe: small CNN 64x32, batch 64", "measured", small_step, "256-d, 720 proxies", small_terms))
    r50 = model_step("resnet50", args.r50_batch, 256, 128, 1000, 16)
    r50_256 = r50 * 256 / args.r50_batch
    terms_256 = camera_terms(256, 2048, 1000, 5, 16)
    rows.append(("presets: ResNet-50 256x128, batch 256", f"batch {args.r50_batch} x {256 // args.r50_batch}",
                 r50_256, "2048-d, 5,000 proxies", terms_256))
    print("| step | model step (s) | how | camera terms (s) | terms | share of the step |")
    print("|---|---|---|---|---|---|")
    for name, how, model_s, terms_desc, terms_s in rows:
        print(f"| {name} | {model_s:.3f} | {how} | {terms_s:.4f} | {terms_desc} | {100 * terms_s / (model_s + terms_s):.2f} % |")
    print(settings_line(f"python bench/bench_camera.py step --repeat {args.repeat} --r50-batch {args.r50_batch}"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    sub.add_parser("parity")
    j = sub.add_parser("jaccard")
    j.add_argument("--n", type=int, default=31068)
    j.add_argument("--dim", type=int, default=2048)
    j.add_argument("--cameras", type=int, default=15)
    j.add_argument("--seed", type=int, default=0)
    j.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("step")
    s.add_argument("--repeat", type=int, default=3)
    s.add_argument("--r50-batch", type=int, default=32)
    s.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    {"parity": lambda: parity(), "jaccard": lambda: jaccard(args), "step": lambda: step(args)}[args.what]()


if __name__ == "__main__":
    main()
