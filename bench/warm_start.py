"""The synthetic warm start (``backbone.pretrained=synthetic``): its cost, its own mAP, and the first clustering.

    python bench/warm_start.py                        # the default set: random init vs warm start
    python bench/warm_start.py --retrain              # time the pretraining again (ignores the cache)
    python bench/warm_start.py --retrain --package    # ... and write the result as the packaged warm start

For random initialisation and for the warm start it prints the initial mAP / Rank-1 on the target's
query/gallery, and the epoch-1 clustering of the target's training images (the trainer's own extraction,
camera centring and clusterers) with DBSCAN at the paper's eps 0.6 and InfoMap at the paper's min_sim 0.5:
clusters, outlier ratio and ARI against the true identities; and how the first clustering follows cameras:
clusters per true identity, the share of single-camera clusters, and the share of same-camera images among
each image's 15 nearest neighbours (on the features the clusterer sees). Extra arguments are Hydra
overrides, e.g. ``dataset.camera_shift=0.5`` or ``dataset=synthetic_hard`` (the calibration statistics of
docs/benchmark-hard.md).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from mqreid.cluster.camera import camera_centering
from mqreid.data.base import id_arrays
from mqreid.engine.trainer import Trainer
from mqreid.evaluation import camera_statistics, same_camera_neighbours
from mqreid.engine.warm_start import cache_path, packaged_path

CONF = str(Path(__file__).resolve().parents[1] / "conf")
CLUSTERERS = {"dbscan eps 0.6": ["clusterer=dbscan", "clusterer.eps=0.6"],
              "infomap min_sim 0.5": ["clusterer=infomap", "clusterer.min_sim=0.5"]}


def measure(start: str, overrides: list[str]) -> dict:
    row: dict = {"start": start}
    with initialize_config_dir(CONF, version_base=None):
        cfg = compose("config", overrides=[f"backbone.pretrained={start}", "progress=false", *overrides])
        if start == "synthetic":
            path = cache_path(cfg.backbone, cfg.input.height, cfg.input.width, cfg.data_root)
            t0 = time.perf_counter()
            cached = path.is_file()
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = Trainer(cfg, run_dir)
        if start == "synthetic":
            row["pretrain_s"] = None if cached else round(time.perf_counter() - t0, 1)
        row.update({k: round(v, 1) for k, v in trainer.evaluate().items() if k in ("mAP", "rank1")})
        features = trainer.extract(trainer.dataset.train)
        pids, cameras = id_arrays(trainer.dataset.train)
        seen = camera_centering(features, torch.from_numpy(cameras)) if cfg.train.camera_centering else features
        row["same_camera_top15"] = round(same_camera_neighbours(seen, cameras, k=15), 3)  # what clustering sees
        for name, extra in CLUSTERERS.items():
            trainer.clusterer = instantiate(compose("config", overrides=[*overrides, *extra]).clusterer)
            labels = trainer.cluster(features)
            stats = {**trainer.describe_clusters(labels), **camera_statistics(pids, cameras, labels)}
            row[name] = {k: round(stats[k], 3) for k in ("clusters", "outlier_ratio", "ari", "clusters_per_id",
                                                         "single_camera_clusters")}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--retrain", action="store_true", help="delete the cached warm start first, to time it")
    ap.add_argument("--package", action="store_true",
                    help="with --retrain: copy the trained weights to the package (src/mqreid/weights/)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides for both starts")
    args = ap.parse_args()
    with initialize_config_dir(CONF, version_base=None):
        cfg = compose("config", overrides=args.overrides)
        cache = cache_path(cfg.backbone, cfg.input.height, cfg.input.width, cfg.data_root)
    if args.retrain:
        cache.unlink(missing_ok=True)
        shipped = packaged_path(cache)
        hidden = shipped.with_name(shipped.name + ".hidden")
        if shipped.is_file():  # retrain, do not copy the packaged file
            shipped.rename(hidden)
    try:
        rows = [measure(start, args.overrides) for start in ("false", "synthetic")]
    finally:
        if args.retrain and hidden.is_file():
            hidden.rename(shipped)
    if args.package:
        shipped.parent.mkdir(parents=True, exist_ok=True)
        shipped.write_bytes(cache.read_bytes())
        print(f"wrote {shipped}")
    print("| start | pretraining (s) | mAP | Rank-1 | " + " | ".join(f"{c}: clusters / outliers / ARI"
                                                                  for c in CLUSTERERS) + " |")
    print("|---|---|---|---|" + "---|" * len(CLUSTERERS))
    for r in rows:
        cells = [f"{r[c]['clusters']} / {r[c]['outlier_ratio']:.0%} / {r[c]['ari']:.2f}" for c in CLUSTERERS]
        pre = "-" if r["start"] == "false" else ("cached" if r["pretrain_s"] is None else f"{r['pretrain_s']:.0f}")
        print(f"| {'random init' if r['start'] == 'false' else 'warm start'} | {pre} | {r['mAP']} | {r['rank1']} | "
              + " | ".join(cells) + " |")
    print("\n| start | same-camera share of the top 15 | " + " | ".join(
        f"{c}: clusters per true id / single-camera clusters" for c in CLUSTERERS) + " |")
    print("|---|---|" + "---|" * len(CLUSTERERS))
    for r in rows:
        cells = [f"{r[c]['clusters_per_id']:.2f} / {r[c]['single_camera_clusters']:.0%}" for c in CLUSTERERS]
        print(f"| {'random init' if r['start'] == 'false' else 'warm start'} | {r['same_camera_top15']:.0%} | "
              + " | ".join(cells) + " |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
