"""Experiment loggers: the console (default), Weights & Biases and TensorBoard.

All take the same calls: ``start(config, run_dir)``, ``log(metrics, step)``, ``log_image(key, path, step)``,
``finish()``. Only rank 0 logs.
The trainer writes metrics.jsonl, results.json and the checkpoints itself, whatever the logger.
"""

from __future__ import annotations

import logging
import numbers
import os
from pathlib import Path
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


class TensorBoardLogger:
    """Writes the same scalars and pictures as :class:`WandbLogger` to TensorBoard event files in
    ``<run_dir>/tensorboard/`` (``tensorboard --logdir <run dir or its parent>``).

    Every numeric value given to ``log`` becomes a scalar under its own key (``step/loss``, ``epoch/mAP``);
    non-numeric values are skipped. As on the wandb dashboard, ``step/*`` values are plotted against
    ``global_step`` and ``epoch/*`` values against ``epoch`` when the call carries them (the step given to
    ``log`` otherwise); those two axis keys are not written as scalars of their own. The resolved config is
    written once as text (``config``), pictures as images under ``images/<key>`` at the global step.
    """

    AXES = {"step/": "global_step", "epoch/": "epoch"}  # key prefix -> the key holding its step

    def __init__(self, subdir: str = "tensorboard", flush_secs: int = 30) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ImportError("logger=tensorboard needs the tensorboard package: pip install tensorboard "
                              "(or pip install 'mqreid[tensorboard]')") from err
        self._writer_class = SummaryWriter
        self.subdir = subdir
        self.flush_secs = flush_secs
        self.writer = None

    def start(self, config: dict[str, Any], run_dir: str) -> None:
        import yaml

        self.writer = self._writer_class(log_dir=str(Path(run_dir) / self.subdir), flush_secs=self.flush_secs)
        text = yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
        # four spaces of indentation: TensorBoard renders text as Markdown, this keeps it a code block
        self.writer.add_text("config", "".join(f"    {line}\n" for line in text.splitlines()), 0)
        self.writer.flush()

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.writer is None:
            return
        axes = self.AXES.values()
        for key, value in metrics.items():
            if key in axes:
                continue
            if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
                value = value.item()
            if isinstance(value, numbers.Real):
                self.writer.add_scalar(key, float(value), self._step(key, metrics, step))

    def _step(self, key: str, metrics: dict[str, Any], step: int) -> int:
        for prefix, axis in self.AXES.items():
            if key.startswith(prefix) and isinstance(metrics.get(axis), numbers.Integral):
                return int(metrics[axis])
        return step

    def log_image(self, key: str, path, step: int) -> None:
        if self.writer is None:
            return
        import numpy as np
        from PIL import Image

        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        self.writer.add_image(f"images/{key}", pixels, step, dataformats="HWC")
        self.writer.flush()

    def finish(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
