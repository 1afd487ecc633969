"""BatchNorm over fixed groups of images within one process: what it costs against plain BatchNorm.

    python bench/bench_ghost_bn.py [--batch 32] [--group 8] [--height 128] [--width 64] [--repeat 3]
                                   [--device cpu|cuda] [--channels-last] [--precision fp32|bf16]

Times a ResNet-50 training step (forward, a squared-feature loss, backward; no optimiser) with every
BatchNorm as:

- ``plain``: torch's BatchNorm over the whole per-process batch (``train.bn_group=null``);
- ``groups``: :class:`mqreid.models.ghost_bn.GhostBatchNorm` (``train.bn_group=<group>``): the batch split
  into groups, one ``F.batch_norm`` per group, ``torch.cat``.

Each variant is timed ``--repeat`` times, alternating, and the best is kept (the least disturbed by other
work on the machine).
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
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mqreid.models.ghost_bn import convert_ghost_bn  # noqa: E402
from mqreid.models.precision import autocast  # noqa: E402


def resnet50(group: int | None, device: torch.device, channels_last: bool) -> nn.Module:
    torch.manual_seed(0)
    model = torchvision.models.resnet50()
    model.fc = nn.Identity()
    model = convert_ghost_bn(model, group)
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
    models = {"plain": resnet50(None, device, args.channels_last),
              "groups": resnet50(args.group, device, args.channels_last)}
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
