"""BatchNorm over fixed groups of images within one process: what it costs against plain BatchNorm.

    python bench/bench_ghost_bn.py [--batch 32] [--group 8] [--height 128] [--width 64] [--repeat 3]
                                   [--device cpu|cuda] [--channels-last] [--precision fp32|bf16]

Times a ResNet-50 training step (forward, a squared-feature loss, backward; no optimiser) with every
BatchNorm as:

- ``plain``: torch's BatchNorm over the whole per-process batch (``train.bn_group=null``);
- ``groups``: :class:`mqreid.models.ghost_bn.GhostBatchNorm` (``train.bn_group=<group>``), whose groups are
  normalised by one kernel call each writing straight into one output;
- ``split``: the same statistics computed as a module-level loop would: split the batch, one ``F.batch_norm``
  per group, ``torch.cat`` (the extra copies forward and backward are what ``groups`` avoids).

``groups`` and ``split`` must give the same outputs and gradients (checked, printed). Each variant is timed
``--repeat`` times, alternating, and the best is kept (the least disturbed by other work on the machine).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mqreid.models.ghost_bn import GhostBatchNorm, convert_ghost_bn  # noqa: E402
from mqreid.models.precision import autocast  # noqa: E402


class SplitBatchNorm(GhostBatchNorm):
    """The same groups as a split, one F.batch_norm per group and a cat (for comparison only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        self.num_batches_tracked.add_(1)
        outs, means, variances = [], [], []
        for part in x.split(self.group_size):
            mean, var = self.running_mean.clone(), self.running_var.clone()
            outs.append(F.batch_norm(part, mean, var, self.weight, self.bias, True, self.momentum, self.eps))
            means.append(mean)
            variances.append(var)
        with torch.no_grad():
            self.running_mean.copy_(torch.stack(means).mean(0))
            self.running_var.copy_(torch.stack(variances).mean(0))
        return torch.cat(outs)


def resnet50(group: int | None, split: bool, device: torch.device, channels_last: bool) -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    model.fc = nn.Identity()
    model = convert_ghost_bn(model, group)
    if split:
        for module in model.modules():
            if isinstance(module, GhostBatchNorm):
                module.__class__ = SplitBatchNorm
    model = model.to(device).train()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def step(model: nn.Module, x: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    with autocast(x.device, precision):
        out = model(x)
    out.float().pow(2).mean().backward()
    return out.detach(), x.grad


def settings_line(args: argparse.Namespace) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"commit {commit}; {datetime.date.today()}; {platform.machine()} {os.cpu_count()} cores, torch "
            f"{torch.__version__} ({torch.get_num_threads()} threads), device {args.device}; load average {load}; "
            f"command: python bench/bench_ghost_bn.py {' '.join(sys.argv[1:])}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--group", type=int, default=8)
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--steps", type=int, default=2, help="steps per timing")
    p.add_argument("--device", default="cpu")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.batch % args.group:
        p.error(f"--group {args.group} must divide --batch {args.batch}")
    x = torch.randn(args.batch, 3, args.height, args.width, generator=torch.Generator().manual_seed(0)).to(device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    models = {"plain": resnet50(None, False, device, args.channels_last),
              "groups": resnet50(args.group, False, device, args.channels_last),
              "split": resnet50(args.group, True, device, args.channels_last)}
    (out_g, grad_g), (out_s, grad_s) = (step(models[k], x, args.precision) for k in ("groups", "split"))
    print(f"groups against split: outputs equal {torch.equal(out_g, out_s)}, max |input gradient difference| "
          f"{(grad_g - grad_s).abs().max().item():.2g}")
    best = {name: float("inf") for name in models}
    for _ in range(args.repeat):
        for name, model in models.items():
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step(model, x, args.precision)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best[name] = min(best[name], (time.perf_counter() - start) / args.steps)
    print(f"ResNet-50 {args.height}x{args.width}, batch {args.batch}, groups of {args.group}, {args.precision}"
          f"{', channels_last' if args.channels_last else ''}: best of {args.repeat} x {args.steps} steps")
    print("| BatchNorm | ms per step | against plain |\n|---|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {1000 * seconds:.0f} | {seconds / best['plain']:.2f}x |")
    print(settings_line(args))


if __name__ == "__main__":
    main()
