"""Ghost BatchNorm: BatchNorm statistics over fixed groups of images, whatever the per-process batch.

The original trains with DataParallel on 4 GPUs at batch 256, so each BatchNorm layer normalises over
64 images. Plain BatchNorm in one process at batch 256 normalises over 256, in 2 processes at batch 128
each over 128: the number of processes changes the run. Splitting every training batch into groups of
``group_size`` images (Hoffer et al., 2017, "ghost batch normalisation") makes the statistics those of
``group_size`` images on any number of processes, as long as ``group_size`` divides the per-process batch.

Each group is normalised by the same ``F.batch_norm`` call a process holding only that group would make.
Running statistics are updated with the mean of the groups' statistics: the running averages are linear,
so this equals averaging per-process running statistics across processes, which the trainer does after
each epoch. Evaluation mode is plain BatchNorm with the running statistics. torch has no such layer, so
it is written here; the parameters and buffers are BatchNorm's, so state dicts are interchangeable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class GhostBatchNorm(_BatchNorm):
    """BatchNorm over consecutive groups of ``group_size`` samples in training mode (any input rank)."""

    def __init__(self, num_features: int, group_size: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        if group_size < 1:
            raise ValueError(f"train.bn_group must be >= 1, got {group_size}")
        self.group_size = group_size

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GhostBatchNorm: expected input [B, C, ...], got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        n = x.shape[0]
        if not self.training or n <= self.group_size:
            return super().forward(x)
        if n % self.group_size:
            raise ValueError(f"train.bn_group={self.group_size} must divide the per-process batch of {n} images")
        if self.momentum is None:
            raise ValueError("GhostBatchNorm needs a momentum (cumulative averaging is not supported)")
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
        groups = x.split(self.group_size)
        outs, means, variances = [], [], []
        for group in groups:
            # every group starts from the same running statistics; their updates are averaged below
            mean = self.running_mean.clone() if self.track_running_stats else None
            var = self.running_var.clone() if self.track_running_stats else None
            outs.append(F.batch_norm(group, mean, var, self.weight, self.bias, True, self.momentum, self.eps))
            means.append(mean)
            variances.append(var)
        if self.track_running_stats:
            with torch.no_grad():
                self.running_mean.copy_(torch.stack(means).mean(0))
                self.running_var.copy_(torch.stack(variances).mean(0))
        return torch.cat(outs)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}"


def convert_ghost_bn(module: nn.Module, group_size: int | None) -> nn.Module:
    """Replace every BatchNorm1d/2d/3d in ``module`` by a :class:`GhostBatchNorm` of ``group_size`` images,
    keeping its parameters and running statistics. ``group_size=None`` returns ``module`` unchanged."""
    if group_size is None:
        return module
    if isinstance(module, _BatchNorm) and not isinstance(module, (GhostBatchNorm, nn.SyncBatchNorm)):
        tensors = [*module.parameters(), *module.buffers()]
        ghost = GhostBatchNorm(module.num_features, group_size, eps=module.eps, momentum=module.momentum,
                               affine=module.affine, track_running_stats=module.track_running_stats,
                               device=tensors[0].device if tensors else None)
        ghost.load_state_dict(module.state_dict())
        if module.affine:
            ghost.weight.requires_grad_(module.weight.requires_grad)
            ghost.bias.requires_grad_(module.bias.requires_grad)
        return ghost
    for name, child in module.named_children():
        setattr(module, name, convert_ghost_bn(child, group_size))
    return module
