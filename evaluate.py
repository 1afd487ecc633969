"""Evaluate a trained checkpoint: `python evaluate.py checkpoint=<run dir or .pt> [dataset=market1501]`.

Prints mAP and Rank-1/5/10 (and the re-ranked row with eval.rerank=true) and writes the results as JSON
next to the checkpoint (or to `output=`).
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

log = logging.getLogger("mqreid")


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> dict:
    from mqreid.engine.evaluator import run_evaluation

    return run_evaluation(cfg)


if __name__ == "__main__":
    main()
