"""Experiment loggers: the console (default) and Weights & Biases.

Both take the same calls: ``start(config, run_dir)``, ``log(metrics, step)``, ``log_image(key, path, step)``,
``finish()``. Only rank 0 logs.
The trainer writes metrics.jsonl, results.json and the checkpoints itself, whatever the logger.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("mqreid")


class ConsoleLogger:
    """Per-step values every ``step_every`` steps at DEBUG level through :mod:`logging` (the console and,
    under Hydra, the run's train.log); the per-epoch summary line is the trainer's own log line."""

    def __init__(self, step_every: int = 50) -> None:
        self.step_every = step_every

    def start(self, config: dict[str, Any], run_dir: str) -> None:
        log.debug("run directory %s", run_dir)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if any(k.startswith("step/") for k in metrics) and step % self.step_every == 0:
            log.debug("step %d %s", step, {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()})

    def log_image(self, key: str, path, step: int) -> None:
        log.info("%s: %s", key, path)

    def finish(self) -> None:
        pass


class WandbLogger:
    """Logs the resolved config, per-epoch metrics and per-step loss/temperature to wandb.

    ``mode`` is passed to ``wandb.init`` (``online``, ``offline`` or ``disabled``); the ``WANDB_MODE``
    environment variable overrides it as usual. Runs of one Hydra multirun share a ``group`` (the sweep
    directory name) so they appear together on the dashboard.
    """

    def __init__(self, project: str = "mqreid", entity: str | None = None, group: str | None = None,
                 name: str | None = None, tags: list[str] | None = None, mode: str | None = None) -> None:
        try:
            import wandb
        except ImportError as err:
            raise ImportError("logger=wandb needs the wandb package: pip install 'mqreid[wandb]'") from err
        self._wandb = wandb
        self.kwargs = dict(project=project, entity=entity, group=group, name=name, tags=list(tags or []),
                           mode=os.environ.get("WANDB_MODE", mode))
        self.run = None

    def start(self, config: dict[str, Any], run_dir: str) -> None:
        self.run = self._wandb.init(config=config, dir=run_dir, reinit="finish_previous", **self.kwargs)
        self.run.define_metric("step/*", step_metric="global_step")
        self.run.define_metric("epoch/*", step_metric="epoch")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics)

    def log_image(self, key: str, path, step: int) -> None:
        if self.run is not None:
            self.run.log({f"images/{key}": self._wandb.Image(str(path)), "global_step": step})

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
