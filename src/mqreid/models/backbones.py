"""Convolutional trunks: torchvision ResNets (with IBN-a option) and a small CNN for CPU runs.

Every builder returns ``(trunk, out_channels)`` where ``trunk`` maps images [B, 3, H, W] to a
feature map [B, C, h, w].
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet

log = logging.getLogger(__name__)

_TORCHVISION_WEIGHTS = {
    "resnet18": resnet.ResNet18_Weights.IMAGENET1K_V1,
    "resnet50": resnet.ResNet50_Weights.IMAGENET1K_V1,
}
ARCHS = ("resnet18", "resnet50", "resnet50_ibn", "small_cnn", "small_cnn_ibn")


class IBN(nn.Module):
    """Instance-Batch Normalisation (Pan et al., ECCV 2018): half the channels InstanceNorm, half BatchNorm.

    torchvision has no IBN-Net, and the module is a few lines, so it is written here.
    """

    def __init__(self, planes: int, ratio: float = 0.5) -> None:
        super().__init__()
        self.half = int(planes * ratio)
        self.IN = nn.InstanceNorm2d(self.half, affine=True)
        self.BN = nn.BatchNorm2d(planes - self.half)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = torch.split(x, [self.half, x.shape[1] - self.half], dim=1)
        # the output keeps the input's memory format (InstanceNorm returns the default one), so a channels_last
        # model stays channels_last after each IBN layer
        fmt = torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
            else torch.contiguous_format
        return torch.cat([self.IN(a.contiguous()).contiguous(memory_format=fmt),
                          self.BN(b.contiguous(memory_format=fmt))], dim=1)


def _to_ibn_a(net: resnet.ResNet) -> None:
    """Turn a torchvision ResNet-50 into ResNet-50-IBN-a: IBN replaces bn1 of the bottlenecks of layers 1-3."""
    for layer in (net.layer1, net.layer2, net.layer3):
        for block in layer:
            block.bn1 = IBN(block.bn1.num_features)


class SmallCNN(nn.Module):
    """Four stages of two conv-BN-ReLU (default 32-256 channels, ~1.2 M parameters): trains on a CPU.

    ``ibn=True`` is its instance-norm variant (``small_cnn_ibn``), placed as IBN-a places it in a ResNet: the
    first normalisation of every stage but the last is :class:`IBN` (half InstanceNorm, half BatchNorm), the
    rest stay BatchNorm. Same convolutions and parameter count up to the InstanceNorm's affine pairs."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), ibn: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for i, w in enumerate(widths):
            stride = 1 if i == len(widths) - 1 else 2
            first_norm = IBN(w) if ibn and i < len(widths) - 1 else nn.BatchNorm2d(w)
            layers += [nn.Conv2d(cin, w, 3, padding=1, bias=False), first_norm, nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(w),
                       nn.ReLU(inplace=True)]
            cin = w
        self.body = nn.Sequential(*layers)
        self.out_channels = cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def load_pretrained(arch: str, pretrained: bool | str) -> dict[str, torch.Tensor] | None:
    """Pretrained weights for ``arch``: ``True`` uses torchvision's ImageNet cache (downloading when online),
    a path loads that file (safely, ``weights_only=True``), ``False`` returns None. (``"synthetic"``, the
    synthetic warm start, is turned into a path by :mod:`mqreid.engine.warm_start`.)"""
    if pretrained is False or pretrained is None:
        return None
    if str(pretrained) == "synthetic":
        raise ValueError("backbone.pretrained=synthetic is resolved to a weight file by the trainer; in Python, pass "
                         "the path from mqreid.engine.warm_start.synthetic_weights(...)")
    if isinstance(pretrained, (str, os.PathLike)) and str(pretrained).lower() not in ("true", "imagenet"):
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"backbone.pretrained: weight file {path} does not exist")
        state = torch.load(path, map_location="cpu", weights_only=True)
        return state.get("state_dict", state) if isinstance(state, dict) else state
    if arch not in _TORCHVISION_WEIGHTS:
        raise ValueError(
            f"backbone.pretrained=true: torchvision ships no ImageNet weights for {arch!r}; "
            f"set backbone.pretrained to the path of a weight file (e.g. resnet50_ibn_a-d9d0bb7b.pth) or false"
        )
    weights = _TORCHVISION_WEIGHTS[arch]
    try:
        return weights.get_state_dict(progress=True)
    except (OSError, RuntimeError) as err:  # URLError is an OSError
        target = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
        raise RuntimeError(
            f"cannot download ImageNet weights for {arch} ({err}). Offline? Put the file {weights.url} at "
            f"{target}, or set backbone.pretrained=/path/to/weights.pth, or backbone.pretrained=false"
        ) from err


def build_trunk(arch: str, *, pretrained: bool | str = False, last_stride: int = 1,
                widths: tuple[int, ...] | None = None) -> tuple[nn.Module, int]:
    """Build a trunk by name (one of :data:`ARCHS`); ``widths`` sets the stage widths of ``small_cnn``."""
    if widths is not None and not arch.startswith("small_cnn"):
        raise ValueError(f"backbone.widths applies to small_cnn and small_cnn_ibn only, not to {arch!r}")
    if arch.startswith("small_cnn") and arch in ARCHS:
        net = SmallCNN(tuple(widths) if widths is not None else (32, 64, 128, 256), ibn=arch == "small_cnn_ibn")
        if pretrained is True or str(pretrained).lower() in ("true", "imagenet"):
            raise ValueError(f"backbone.pretrained: {arch} has no ImageNet weights; set it to false, to synthetic "
                             f"(the synthetic warm start) or to the path of a {arch} weight file")
        state = load_pretrained(arch, pretrained)
        if state is not None:
            try:
                net.load_state_dict(state)
            except RuntimeError as err:
                raise RuntimeError(f"backbone.pretrained={pretrained}: not {arch} weights of widths "
                                   f"{widths or (32, 64, 128, 256)}: {err}") from err
        return net, net.out_channels
    if arch not in ARCHS:
        raise ValueError(f"backbone.arch={arch}: expected one of {', '.join(ARCHS)}")
    net = getattr(resnet, arch.removesuffix("_ibn"))(weights=None)
    if arch.endswith("_ibn"):
        _to_ibn_a(net)
    state = load_pretrained(arch, pretrained)
    if state is not None:
        missing, unexpected = net.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing:
            raise RuntimeError(f"backbone.pretrained: the weights lack {len(missing)} {arch} tensors, e.g. {missing[:3]}")
        log.info("loaded ImageNet weights for %s (%d unused keys)", arch, len(unexpected))
    if last_stride == 1:  # Cluster Contrast's trick: keep a 2x larger final map for re-ID
        block = net.layer4[0]
        # torchvision puts the stride on conv1 of a BasicBlock and on conv2 of a Bottleneck
        strided = block.conv1 if isinstance(block, resnet.BasicBlock) else block.conv2
        strided.stride = (1, 1)
        block.downsample[0].stride = (1, 1)
    trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    return trunk, net.fc.in_features
