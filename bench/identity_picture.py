"""A picture of a few training identities of a dataset, one row each, their images spread over cameras.

    python bench/identity_picture.py dataset=synthetic_hard --out docs/img/synthetic_hard_ids.png
    python bench/identity_picture.py dataset=synthetic --ids 6 --per-id 8

Extra arguments are Hydra overrides of conf/config.yaml (the set is generated on first use). Identities are
drawn at random (``--seed``) among those seen by the most cameras; each row takes one image per camera in
turn (in file order within a camera) until it has ``--per-id`` images, so a row shows the camera changes
first and then the changes within a camera (illuminants, outfits, near-duplicate frames). Each image is
captioned with its camera; the row title gives the identity, its image count and its cameras.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from mqreid.visualize import image_rows_figure, save_figure

CONF = str(Path(__file__).resolve().parents[1] / "conf")


def pick(train, ids: int, per_id: int, seed: int) -> dict[int, list[int]]:
    """Identity -> indices into ``train``: ``per_id`` images of each of ``ids`` identities, one camera after
    another (identities in increasing order)."""
    by_id: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, item in enumerate(train):
        by_id[item.pid][item.camid].append(i)
    most = max(len(cams) for cams in by_id.values())
    wide = sorted(pid for pid, cams in by_id.items() if len(cams) >= min(most, 4))
    chosen = np.random.default_rng(seed).choice(wide, size=min(ids, len(wide)), replace=False)
    out = {}
    for pid in sorted(int(p) for p in chosen):
        queues = [list(v) for _, v in sorted(by_id[pid].items())]
        row = []
        while len(row) < per_id and any(queues):
            row += [q.pop(0) for q in queues if q][:per_id - len(row)]
        out[pid] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("identities.png"), help="the PNG to write (default: %(default)s)")
    ap.add_argument("--ids", type=int, default=4, help="identities (rows), default %(default)s")
    ap.add_argument("--per-id", type=int, default=10, help="images per identity, default %(default)s")
    ap.add_argument("--seed", type=int, default=0, help="which identities, default %(default)s")
    args, overrides = ap.parse_known_args(argv)
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    ds = instantiate(cfg.dataset, verbose=False)
    rows = []
    for pid, idx in pick(ds.train, args.ids, args.per_id, args.seed).items():
        mine = [it for it in ds.train if it.pid == pid]
        title = f"id {pid}: {len(mine)} training images on {len({it.camid for it in mine})} cameras"
        rows.append((title, [ds.train[i].path for i in idx], [f"cam {ds.train[i].camid + 1:02d}" for i in idx]))
    fig = image_rows_figure(rows, image_size=(cfg.dataset.height, cfg.dataset.width))
    print(f"{save_figure(fig, args.out)}: " + "; ".join(title for title, _, _ in rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
