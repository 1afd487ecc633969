"""Train an unsupervised re-ID model: `python train.py [group=option ...] [key=value ...]`.

Examples:
    python train.py                                   # synthetic data, small CNN, CPU-friendly
    python train.py clusterer=infomap temp=learnable
    python train.py experiment=market1501_dbscan      # a preset from conf/experiment/
    python train.py -m memory.queue_size=2,4,8,16,32  # a sweep (Hydra multirun)
    torchrun --standalone --nproc_per_node=4 train.py experiment=msmt17_infomap
"""

from __future__ import annotations

import logging
import os

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    from mqreid.engine import distributed
    from mqreid.engine.errors import exit_on_user_error
    from mqreid.engine.trainer import Trainer

    if int(os.environ.get("RANK", "0")) > 0:
        logging.getLogger().setLevel(logging.WARNING)  # only rank 0 talks
    try:
        with exit_on_user_error():  # a missing dataset, a bad setting: one message, exit status 2
            results = Trainer(cfg, hydra.core.hydra_config.HydraConfig.get().runtime.output_dir).fit()
    finally:
        distributed.cleanup()
    return results["best"]["mAP"]  # the value a sweeper optimises


if __name__ == "__main__":
    main()
