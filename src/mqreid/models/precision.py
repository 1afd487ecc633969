"""The numeric precision a model runs in: one rule for training, clustering extraction and evaluation.

``train.precision`` is stored with the run's config in every checkpoint, and ``evaluate.py``,
:class:`~mqreid.inference.ReIDModel` and the in-training evaluation all extract in the checkpoint's
precision, so one checkpoint gives one set of figures however it is evaluated.

- ``fp32``: float32 weights and activations. On CUDA, cuDNN convolutions use TF32 tensor cores on Ampere
  and newer GPUs (PyTorch's default, ``torch.backends.cudnn.allow_tf32``); matrix products outside
  convolutions stay full float32 (``torch.backends.cuda.matmul.allow_tf32`` is False), which keeps the
  exact kNN of the clustering exact. The original trains in fp32.
- ``bf16``: autocast to bfloat16 (A100/H100/H200; on CPUs with bf16 support): no loss scaling needed.
- ``fp16``: autocast to float16 with a gradient scaler.

Autocast is chosen by device type, so the same code runs on CPU and CUDA. The loss, the memory and the
features handed to clustering are float32 in every mode.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, ContextManager

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision={precision}: expected one of {', '.join(PRECISIONS)}")
    return precision


def autocast(device: torch.device | str, precision: str) -> ContextManager:
    """The autocast context of ``precision`` on ``device``'s type (none for fp32)."""
    dtype = PRECISIONS[check_precision(precision)]
    if dtype is None:
        return nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def needs_scaler(precision: str) -> bool:
    """Whether gradients need loss scaling (float16's narrow exponent range)."""
    return check_precision(precision) == "fp16"


def stored_precision(config: dict[str, Any] | None) -> str:
    """The precision a checkpoint's stored training config ran in (``train.precision``; checkpoints with the
    older ``train.amp`` flag: ``fp16`` when it was set, else ``fp32``)."""
    train = (config or {}).get("train") or {}
    if "precision" in train:
        return check_precision(str(train["precision"]))
    return "fp16" if train.get("amp") else "fp32"
