"""How the DBSCAN radius ``eps`` shapes the clusters of a trained checkpoint.

    mqreid-eps outputs/.../checkpoints/best.pt [--eps 0.3:0.8:0.02 | --eps 0.4 0.5 0.6]
                         [--out eps_sweep.png] [--gallery clusters.png] [--data-root DIR]

Embeds the training set of the checkpoint's dataset (its stored ``dataset`` config; ``--data-root`` replaces
the stored root, which is relative to the folder training was started from) as the trainer does before
clustering (test transform, ``eval.flip``, then per-camera centering when ``train.camera_centering`` was on),
builds one k-reciprocal Jaccard graph with the stored clusterer's ``k1``/``k2`` and runs DBSCAN for every
eps on it. Prints a table and draws the number of clusters, the outlier ratio and, when the training ids are
known, ARI/NMI against eps, with the configured eps marked (default output: ``eps_sweep.png`` beside the
checkpoint). The configured eps is always part of the sweep; ``--gallery`` also draws its clusters.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["DEFAULT_EPS", "EpsSweep", "eps_figure", "format_table", "main", "parse_eps", "run_eps_sweep"]

DEFAULT_EPS = "0.3:0.8:0.02"
DBSCAN_KEYS = ("eps", "k1", "k2")


@dataclass
class EpsSweep:
    """The result of :func:`run_eps_sweep`.

    ``rows``: one dict per eps, ascending (``eps``, ``num_clusters``, ``outlier_ratio``, and ``ari``/``nmi``
    when the training ids are known; see :meth:`mqreid.cluster.DBSCANClusterer.sweep_eps`).
    ``num_true_ids``: identities in the training set, None when unknown.
    ``labels``: [N] DBSCAN labels at the configured eps; ``paths`` [N] and ``true_pids`` [N] (or None) of the
    training images, for a cluster gallery.
    """

    rows: list[dict]
    configured_eps: float
    num_images: int
    num_true_ids: int | None
    checkpoint: str
    dataset: str
    labels: np.ndarray | None = None
    paths: list[str] | None = None
    true_pids: np.ndarray | None = None


def parse_eps(tokens: str | Sequence[str]) -> list[float]:
    """eps values from ``"start:stop:step"`` ranges (stop included), comma lists and single numbers.

    ``parse_eps(["0.3:0.5:0.1", "0.55"])`` -> ``[0.3, 0.4, 0.5, 0.55]`` (sorted, duplicates removed). Every
    value must lie in (0, 1), the range of a Jaccard distance.
    """
    tokens = [tokens] if isinstance(tokens, str) else list(tokens)
    values: set[float] = set()
    for token in (t.strip() for tok in tokens for t in tok.split(",")):
        if not token:
            continue
        parts = [_number(p, token) for p in token.split(":")]
        if len(parts) == 1:
            values.add(round(parts[0], 10))
            continue
        if len(parts) != 3 or parts[2] <= 0 or parts[1] < parts[0]:
            raise ValueError(f"--eps {token}: expected start:stop:step with step > 0 and stop >= start "
                             f"(e.g. {DEFAULT_EPS})")
        start, stop, step = parts
        count = int(np.floor((stop - start) / step + 1e-9)) + 1
        values.update(round(start + i * step, 10) for i in range(count))
    if not values:
        raise ValueError("--eps: no value given")
    bad = sorted(v for v in values if not 0 < v < 1)
    if bad:
        raise ValueError(f"--eps: {bad} outside (0, 1); DBSCAN runs on Jaccard distances, which lie in [0, 1]")
    return sorted(values)


def _number(text: str, token: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"--eps {token!r}: expected a number, a comma list or start:stop:step "
                         f"(e.g. {DEFAULT_EPS})") from None


def _dbscan_config(config: dict, where: str) -> dict:
    """The stored clusterer's DBSCAN parameters, or a ValueError saying why there are none."""
    clusterer = config.get("clusterer")
    if not isinstance(clusterer, dict):
        raise ValueError(f"{where}: the stored config has no 'clusterer' node")
    missing = [k for k in DBSCAN_KEYS if k not in clusterer]
    if missing:
        raise ValueError(f"{where}: the stored clusterer ({clusterer.get('_target_', '?')}) is not DBSCAN-like: it "
                         f"has no {', '.join(missing)}; an eps sweep needs a run trained with clusterer=dbscan")
    return {"eps": float(clusterer["eps"]), "k1": int(clusterer["k1"]), "k2": int(clusterer["k2"]),
            "min_samples": int(clusterer.get("min_samples", 4)), "knn": str(clusterer.get("knn", "auto"))}


def run_eps_sweep(checkpoint: str | Path, eps_values: Sequence[float] | None = None, *,
                  data_root: str | Path | None = None, device: str | torch.device = "auto", batch_size: int = 256,
                  num_workers: int = 0, progress: bool = False) -> EpsSweep:
    """Embed the checkpoint's training set and run DBSCAN for every eps on one Jaccard graph.

    Args:
        checkpoint: a .pt written by train.py or a run directory.
        eps_values: radii to try (default :data:`DEFAULT_EPS`); the configured eps is added.
        data_root: replaces the stored ``dataset.root``.
        device, batch_size, num_workers, progress: feature extraction settings.
    """
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from mqreid.cluster import DBSCANClusterer, camera_centering
    from mqreid.engine.features import extract_items
    from mqreid.inference import ReIDModel

    model = ReIDModel.from_checkpoint(checkpoint, device=device, batch_size=batch_size)
    config, where = model.config, model.path
    params = _dbscan_config(config, where)
    eps_values = sorted({*(parse_eps(DEFAULT_EPS) if eps_values is None else parse_eps([str(e) for e in eps_values])),
                         params["eps"]})
    if not isinstance(config.get("dataset"), dict) or "_target_" not in config["dataset"]:
        raise ValueError(f"{where}: the stored config has no 'dataset' node with a '_target_'")
    root = str(data_root if data_root is not None else config["dataset"].get("root", "."))
    dataset = instantiate(OmegaConf.create(config["dataset"]), root=root, verbose=False)
    items = dataset.train
    if not items:
        raise ValueError(f"the training set of {config['dataset'].get('name', '?')} under {root} is empty")

    train_cfg, eval_cfg = config.get("train", {}), config.get("eval", {})
    features = extract_items(model.network, items, model.transform, model.device, batch_size=batch_size,
                             num_workers=num_workers, flip=bool(eval_cfg.get("flip", False)),
                             precision=model.precision,
                             progress=progress, desc="extract train")
    if train_cfg.get("camera_centering", False):
        features = camera_centering(features, torch.tensor([it.camid for it in items], device=features.device))
    true = np.array([it.pid for it in items]) if dataset.train_labels_known else None
    clusterer = DBSCANClusterer(**params)
    rows = clusterer.sweep_eps(features.to(model.device), eps_values, true_labels=true)
    labels = next(row["labels"] for row in rows if abs(row["eps"] - params["eps"]) < 1e-12)
    for row in rows:
        row.pop("labels")
    return EpsSweep(rows=rows, configured_eps=params["eps"], num_images=len(items),
                    num_true_ids=len(np.unique(true)) if true is not None else None, checkpoint=where,
                    dataset=str(config["dataset"].get("name", "?")), labels=labels,
                    paths=[it.path for it in items], true_pids=true)


def format_table(sweep: EpsSweep) -> str:
    """A plain-text table of the sweep; the configured eps is marked with ``*``."""
    known = sweep.num_true_ids is not None
    lines = [f"  {'eps':>6} {'clusters':>8} {'outliers':>9}" + (f" {'ARI':>6} {'NMI':>6}" if known else "")]
    for row in sweep.rows:
        mark = "*" if abs(row["eps"] - sweep.configured_eps) < 1e-9 else " "
        line = f"{mark} {row['eps']:>6.3f} {row['num_clusters']:>8d} {100 * row['outlier_ratio']:>8.1f}%"
        if known:
            line += f" {row['ari']:>6.3f} {row['nmi']:>6.3f}"
        lines.append(line)
    return "\n".join(lines)


def eps_figure(sweep: EpsSweep) -> Figure:
    """Clusters, outlier ratio and ARI/NMI against eps, the configured eps marked by a vertical line."""
    eps = np.array([r["eps"] for r in sweep.rows])
    fig = Figure(figsize=(13, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_clusters, ax_outliers, ax_quality = fig.subplots(1, 3)
    ax_clusters.plot(eps, [r["num_clusters"] for r in sweep.rows], "o-", markersize=3, label="clusters")
    if sweep.num_true_ids is not None:
        ax_clusters.axhline(sweep.num_true_ids, color="gray", linestyle=":", label=f"true ids ({sweep.num_true_ids})")
    ax_clusters.set(title="Clusters", ylabel="clusters")
    ax_outliers.plot(eps, [r["outlier_ratio"] for r in sweep.rows], "o-", markersize=3, color="C1",
                     label="outlier ratio")
    ax_outliers.set(title="Outliers", ylabel="outlier ratio", ylim=(-0.02, 1.02))
    ax_quality.set(title="Agreement with the true ids", ylabel="score")
    if sweep.num_true_ids is not None:
        ari = np.array([r["ari"] for r in sweep.rows])
        ax_quality.plot(eps, ari, "o-", markersize=3, color="C2", label="ARI")
        ax_quality.plot(eps, [r["nmi"] for r in sweep.rows], "s--", markersize=3, color="C4", label="NMI")
        best = int(np.nanargmax(ari)) if np.isfinite(ari).any() else None
        if best is not None:
            ax_quality.plot(eps[best], ari[best], "*", markersize=12, color="C2",
                            label=f"best ARI {ari[best]:.3f} at eps {eps[best]:.3g}")
    else:
        ax_quality.text(0.5, 0.5, "training ids unknown", transform=ax_quality.transAxes, ha="center",
                        va="center", color="gray")
    for ax in (ax_clusters, ax_outliers, ax_quality):
        ax.axvline(sweep.configured_eps, color="black", linestyle="--", linewidth=1,
                   label=f"configured eps {sweep.configured_eps:g}")
        ax.set_xlabel("eps (Jaccard distance)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"DBSCAN eps sweep: {sweep.dataset} training set ({sweep.num_images} images), {sweep.checkpoint}",
                 fontsize=10)
    return fig


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mqreid-eps", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a .pt written by train.py (best.pt, last.pt) or a run directory")
    parser.add_argument("--eps", nargs="+", default=[DEFAULT_EPS], metavar="EPS",
                        help=f"start:stop:step (stop included), comma lists or numbers (default {DEFAULT_EPS})")
    parser.add_argument("--out", metavar="PNG", help="the picture to write (default: eps_sweep.png beside the "
                                                     "checkpoint)")
    parser.add_argument("--gallery", metavar="PNG", help="also draw a cluster gallery of the configured eps's clusters")
    parser.add_argument("--data-root", metavar="DIR", help="the data folder (default: the stored dataset.root)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=256, help="images embedded at once (default 256)")
    parser.add_argument("--num-workers", type=int, default=4, help="image loading processes (default 4)")
    args = parser.parse_args(argv)
    try:
        eps_values = parse_eps(args.eps)
    except ValueError as err:
        parser.error(str(err))
    from mqreid.visualize import save_figure

    try:
        sweep = run_eps_sweep(args.checkpoint, eps_values, data_root=args.data_root, device=args.device,
                              batch_size=args.batch_size, num_workers=args.num_workers,
                              progress=sys.stderr.isatty())
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"mqreid-eps: error: {err}", file=sys.stderr)
        return 2
    print(f"DBSCAN on {sweep.dataset} training set ({sweep.num_images} images"
          + (f", {sweep.num_true_ids} true ids" if sweep.num_true_ids is not None else "") + "); * = configured eps")
    print(format_table(sweep))
    out = save_figure(eps_figure(sweep), args.out or Path(sweep.checkpoint).parent / "eps_sweep.png")
    print(f"wrote {out}")
    if args.gallery:
        from mqreid.visualize import cluster_gallery_figure

        print(f"wrote {save_figure(cluster_gallery_figure(sweep.paths, sweep.labels, sweep.true_pids), args.gallery)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
