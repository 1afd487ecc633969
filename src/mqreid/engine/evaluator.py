"""Stand-alone evaluation of a checkpoint on its dataset's query/gallery split (or another, on request)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from mqreid.data.base import id_arrays
from mqreid.data.transforms import build_test_transform, normalization
from mqreid.evaluation import evaluate_retrieval
from mqreid.models.precision import stored_precision

from .checkpoint import network_from_checkpoint, write_json_atomic
from .distributed import resolve_device
from .features import extract_items
from .pictures import ranked_lists
from .validate import resolve_workers

log = logging.getLogger("mqreid")


def format_table(rows: dict[str, dict[str, float]]) -> str:
    lines = ["| method | mAP | Rank-1 | Rank-5 | Rank-10 |", "|---|---|---|---|---|"]
    lines += [f"| {name} | {r['mAP']:.1f} | {r['rank1']:.1f} | {r['rank5']:.1f} | {r['rank10']:.1f} |"
              for name, r in rows.items()]
    return "\n".join(lines)


def evaluation_dataset(cfg: DictConfig, train_cfg: DictConfig, checkpoint: str):
    """The checkpoint's own dataset, unless ``dataset=`` was given on the command line (then said so)."""
    stored = train_cfg.get("dataset")
    if cfg.get("dataset") is None:
        if stored is None:
            raise ValueError(f"{checkpoint}: the stored config has no dataset; pass dataset=<name> to choose one")
        return instantiate(stored, root=to_absolute_path(str(stored.root)))
    if stored is not None and OmegaConf.to_container(stored) != OmegaConf.to_container(cfg.dataset, resolve=True):
        log.warning("evaluating on dataset=%s as requested; the checkpoint was trained on %s (%s)", cfg.dataset.name,
                    stored.get("name"), stored.get("root"))
    return instantiate(cfg.dataset, root=to_absolute_path(cfg.dataset.root))


def run_evaluation(cfg: DictConfig) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    network, stored, checkpoint = network_from_checkpoint(to_absolute_path(str(cfg.checkpoint)))
    model, train_cfg, precision = network.to(device).eval(), OmegaConf.create(stored), stored_precision(stored)
    dataset = evaluation_dataset(cfg, train_cfg, checkpoint)
    eval_cfg = cfg.eval
    height, width = eval_cfg.height or train_cfg.input.height, eval_cfg.width or train_cfg.input.width
    transform = build_test_transform(height, width, **normalization(train_cfg.get("input")))  # as trained
    features = {split: extract_items(model, getattr(dataset, split), transform, device,
                                     batch_size=eval_cfg.batch_size, num_workers=resolve_workers(eval_cfg.num_workers),
                                     flip=eval_cfg.flip, precision=precision, progress=cfg.progress,
                                     desc=split) for split in ("query", "gallery")}
    (query_pids, query_cams), (gallery_pids, gallery_cams) = id_arrays(dataset.query), id_arrays(dataset.gallery)
    rows = evaluate_retrieval(features["query"], features["gallery"], query_pids, gallery_pids, query_cams,
                              gallery_cams, metric=eval_cfg.metric, rerank=eval_cfg.rerank, k1=eval_cfg.k1,
                              k2=eval_cfg.k2, lambda_value=eval_cfg.lambda_value, device=device)
    log.info("%s on %s (%dx%d input, %s as trained)\n%s", checkpoint, dataset.name, height, width, precision,
             format_table(rows))
    out = Path(to_absolute_path(cfg.output)) if cfg.output else \
        Path(checkpoint).with_name(f"{Path(checkpoint).stem}_eval_{dataset.name}.json")
    if eval_cfg.visualize:
        log.info("wrote %s", ranked_lists(out.with_suffix(".png"), dataset, features["query"], features["gallery"],
                                          eval_cfg.visualize, eval_cfg.metric))
    result = {"checkpoint": checkpoint, "dataset": dataset.name, "input": [height, width],
              "precision": precision, **rows}
    write_json_atomic(out, result)
    log.info("wrote %s", out)
    return result
