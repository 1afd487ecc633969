"""Ghost BatchNorm: BatchNorm statistics over fixed groups of images, whatever the per-process batch.

The original trains with DataParallel on 4 GPUs at batch 256, so each BatchNorm layer normalises over
64 images. Plain BatchNorm in one process at batch 256 normalises over 256, in 2 processes at batch 128
each over 128: the number of processes changes the run. Splitting every training batch into groups of
``group_size`` images (Hoffer et al., 2017, "ghost batch normalisation") makes the statistics those of
``group_size`` images on any number of processes.

- A process holding more images than a group (or as many) splits its batch into groups ("ghost" groups).
- A process holding fewer images than a group shares each group with the neighbouring processes that hold
  the rest of it: consecutive ranks hold consecutive slices of the global batch, so ranks
  ``[j * s, (j + 1) * s)`` with ``s = group_size / per-process batch`` form group ``j``. Each rank computes
  the mean and variance of its slice, one all-reduce per layer combines them (in float64, with the
  parallel-variance formula), and the backward pass all-reduces the gradients of those statistics, so the
  forward and backward passes are those of one BatchNorm over the whole group. This is the path the CPU
  tests run with gloo. Over NCCL the layers become torch's SyncBatchNorm restricted to the group's ranks
  (:func:`set_process_group`): the same statistics with fused CUDA kernels (SyncBatchNorm has no CPU
  kernel, and ``train.sync_bn`` alone normalises the whole global batch rather than fixed groups).

Each group is normalised by the same ``F.batch_norm`` call a process holding only that group would make.
Running statistics are updated with the mean of the groups' statistics: the running averages are linear,
so this equals averaging per-process running statistics across processes, which the trainer does after
each epoch. Evaluation mode is plain BatchNorm with the running statistics. torch has no such layer, so
it is written here; the parameters and buffers are BatchNorm's, so state dicts are interchangeable.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _AllReduceSum(torch.autograd.Function):
    """Differentiable sum over a process group: the backward pass sums the gradients the same way.
    (torch.distributed.nn.functional.all_reduce does this too but is deprecated; the functional collectives
    that replace it carry no gradient.)"""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        out = tensor.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class GhostBatchNorm(_BatchNorm):
    """BatchNorm over consecutive groups of ``group_size`` samples in training mode (any input rank)."""

    def __init__(self, num_features: int, group_size: int, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        if group_size < 1:
            raise ValueError(f"train.bn_group={group_size}: expected an integer >= 1")
        self.group_size = group_size
        # set by set_process_group when a group spans processes: the group's ranks and their count
        self.process_group = None
        self.group_ranks = 1

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"GhostBatchNorm: expected input [B, C, ...], got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        n = x.shape[0]
        if self.training and self.group_ranks > 1:
            if n * self.group_ranks != self.group_size:
                raise ValueError(f"train.bn_group={self.group_size} spans {self.group_ranks} processes, which "
                                 f"expects {self.group_size // self.group_ranks} images per process, got {n}")
            return self._across_processes(x)
        if not self.training or n <= self.group_size:
            return super().forward(x)
        if n % self.group_size:
            raise ValueError(f"train.bn_group={self.group_size} must divide the per-process batch of {n} images")
        if self.momentum is None:
            raise ValueError("GhostBatchNorm needs a momentum (cumulative averaging is not supported)")
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
        # One F.batch_norm per group and a cat. A version writing each group's kernel output straight into one
        # tensor (native_batch_norm's out= variants) was no faster on the CPU (a ResNet-50 step at 128x64, batch
        # 32, groups of 8: 1.20x plain BatchNorm's time, this form 1.09x in the same run and 1.18x in another;
        # docs/benchmarks.md), so this stays; the GPU check's shapes section times bn_group=64 against null.
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

    def _across_processes(self, x: torch.Tensor) -> torch.Tensor:
        """BatchNorm over a group whose images are spread over ``group_ranks`` processes (same count each)."""
        if self.momentum is None:
            raise ValueError("GhostBatchNorm needs a momentum (cumulative averaging is not supported)")
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xf = x.float()
        count = xf.numel() // xf.shape[1]  # values per channel in this process
        var, mean = torch.var_mean(xf, dim=dims, correction=0)
        channels = mean.numel()
        # [mean_r, M2_r, mean_r^2] summed over the group's ranks; float64 keeps the variance of the rank
        # means (sum of squares minus a square) exact enough whatever the activations' scale
        stats = _AllReduceSum.apply(torch.cat([mean, var * count, mean * mean]).double(), self.process_group)
        ranks, total = self.group_ranks, count * self.group_ranks
        group_mean = stats[:channels] / ranks
        m2 = stats[channels:2 * channels] + count * (stats[2 * channels:] - ranks * group_mean * group_mean)
        group_var = (m2 / total).clamp_min(0)
        out = (xf - group_mean.float().view(shape)) * torch.rsqrt(group_var.float().view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum
                self.running_mean.mul_(1 - m).add_(group_mean.to(self.running_mean.dtype), alpha=m)
                unbiased = group_var * total / max(total - 1, 1)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        return out.to(x.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}"


def convert_ghost_bn(module: nn.Module, group_size: int | None) -> nn.Module:
    """Replace every BatchNorm1d/2d/3d in ``module`` by a :class:`GhostBatchNorm` of ``group_size`` images,
    keeping its parameters and running statistics. ``group_size=None`` returns ``module`` unchanged."""
    if group_size is None:
        return module
    if isinstance(module, _BatchNorm) and not isinstance(module, (GhostBatchNorm, nn.SyncBatchNorm)):
        return _replaced(module, GhostBatchNorm, group_size=group_size)
    for name, child in module.named_children():
        setattr(module, name, convert_ghost_bn(child, group_size))
    return module


def _backend(group) -> str:
    return dist.get_backend(group)


def set_process_group(module: nn.Module, group, ranks: int) -> nn.Module:
    """Let every :class:`GhostBatchNorm` of ``module`` share its groups with the ``ranks`` processes of
    ``group`` (a ``torch.distributed`` process group; ``None`` = the default group). ``ranks=1`` keeps the
    groups within the process. Returns ``module`` (changed in place).

    Over NCCL (CUDA) each such layer becomes a :class:`torch.nn.SyncBatchNorm` over ``group``, with the same
    parameters and buffers: the same statistics (one BatchNorm over the group's images; running statistics
    from the group's mean and unbiased variance), computed by torch's fused CUDA kernels (channels_last and
    bfloat16 included) with one all-gather per layer, where this module's autograd version launches some ten
    small ops and two all-reduces per layer. gloo (CPU) keeps the autograd version: SyncBatchNorm has no CPU
    kernel."""
    nccl = ranks > 1 and _backend(group) == "nccl"
    if isinstance(module, GhostBatchNorm) and not nccl:
        module.process_group, module.group_ranks = (group, ranks) if ranks > 1 else (None, 1)
    for name, child in module.named_children():
        if isinstance(child, GhostBatchNorm) and nccl:
            setattr(module, name, _sync_batch_norm(child, group))
        else:
            set_process_group(child, group, ranks)
    return module


def _sync_batch_norm(layer: GhostBatchNorm, group) -> nn.SyncBatchNorm:
    return _replaced(layer, nn.SyncBatchNorm, process_group=group)


def _replaced(layer: _BatchNorm, cls, **kwargs) -> _BatchNorm:
    """A ``cls`` BatchNorm layer (with ``kwargs``) holding ``layer``'s settings, parameters, buffers, device and
    frozen flags."""
    tensors = [*layer.parameters(), *layer.buffers()]
    new = cls(layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
              track_running_stats=layer.track_running_stats, device=tensors[0].device if tensors else None, **kwargs)
    new.load_state_dict(layer.state_dict())
    if layer.affine:
        new.weight.requires_grad_(layer.weight.requires_grad)
        new.bias.requires_grad_(layer.bias.requires_grad)
    return new
