"""Evaluate a trained checkpoint: `python evaluate.py checkpoint=<run dir or .pt> [dataset=market1501]`.

Prints mAP and Rank-1/5/10 (and the re-ranked row with eval.rerank=true) and writes the results as JSON
next to the checkpoint (or to `output=`).
"""

from __future__ import annotations

import logging

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("mqreid")


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> dict:
    from mqreid.engine.errors import exit_on_user_error
    from mqreid.engine.evaluator import run_evaluation

    if OmegaConf.is_missing(cfg, "checkpoint"):
        print("Error: checkpoint: expected the checkpoint to evaluate, a .pt file written by train.py or its run "
              "directory, e.g.\n  python evaluate.py checkpoint=outputs/2026-01-31/12-00-00/checkpoints/best.pt",
              file=sys.stderr)
        raise SystemExit(2)
    with exit_on_user_error():
        return run_evaluation(cfg)


if __name__ == "__main__":
    main()
