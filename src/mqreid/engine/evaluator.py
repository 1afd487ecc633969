"""Stand-alone evaluation of a checkpoint on a dataset's query/gallery split."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from mqreid.data.loader import build_test_loader
from mqreid.data.transforms import build_test_transform
from mqreid.evaluation import (evaluate_features, evaluate_ranking, extract_features, re_ranking,
                               summarise_percent)

from .checkpoint import load_checkpoint, write_json_atomic
from .distributed import resolve_device

log = logging.getLogger("mqreid")


def _row(m: dict[str, Any]) -> dict[str, float]:
    return {**summarise_percent(m), "num_valid_queries": int(m["num_valid_queries"])}


def format_table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| method | mAP | Rank-1 | Rank-5 | Rank-10 |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['mAP']:.1f} | {r['rank1']:.1f} | {r['rank5']:.1f} | {r['rank10']:.1f} |"
              for name, r in rows.items()]
    return "\n".join(lines)


def run_evaluation(cfg: DictConfig) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    state = load_checkpoint(to_absolute_path(str(cfg.checkpoint)), map_location=device)
    train_cfg = OmegaConf.create(state["config"])
    if "backbone" not in train_cfg or "input" not in train_cfg:
        raise ValueError(f"{state['path']}: the stored config lacks 'backbone'/'input'; was it written by train.py?")
    model = instantiate(train_cfg.backbone, pretrained=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise ValueError(f"{state['path']}: the weights do not fit backbone {train_cfg.backbone.arch}: {err}") from err
    model.to(device)
    ds = instantiate(cfg.dataset, root=to_absolute_path(cfg.dataset.root))
    ev = cfg.eval
    height, width = ev.height or train_cfg.input.height, ev.width or train_cfg.input.width
    tf = build_test_transform(height, width)

    def feats(items):
        loader = build_test_loader(items, transform=tf, batch_size=ev.batch_size, num_workers=ev.num_workers)
        f, idx = extract_features(model, loader, device, flip=ev.flip, amp=device.type == "cuda",
                                  progress=cfg.progress)
        return f[np.argsort(idx.numpy())]

    qf, gf = feats(ds.query), feats(ds.gallery)
    ids = {s: (np.array([it.pid for it in items]), np.array([it.camid for it in items]))
           for s, items in (("q", ds.query), ("g", ds.gallery))}
    rows = {"plain": _row(evaluate_features(qf.to(device), gf.to(device), ids["q"][0], ids["g"][0], ids["q"][1],
                                            ids["g"][1], metric=ev.metric))}
    if ev.rerank:
        dist = re_ranking(qf, gf, k1=ev.k1, k2=ev.k2, lambda_value=ev.lambda_value)
        rows["re-ranked"] = _row(evaluate_ranking(dist, ids["q"][0], ids["g"][0], ids["q"][1], ids["g"][1]))
    log.info("%s on %s (%dx%d input)\n%s", state["path"], cfg.dataset.name, height, width, format_table(rows))
    out = Path(to_absolute_path(cfg.output)) if cfg.output else \
        Path(state["path"]).with_name(f"{Path(state['path']).stem}_eval_{cfg.dataset.name}.json")
    result = {"checkpoint": state["path"], "dataset": cfg.dataset.name, "input": [height, width], **rows}
    write_json_atomic(out, result)
    log.info("wrote %s", out)
    return result
