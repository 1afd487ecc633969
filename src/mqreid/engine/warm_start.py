"""``backbone.pretrained=synthetic``: a supervised warm start that stands in for ImageNet weights.

Every published run starts from ImageNet weights, so its first clustering already groups images by
appearance. A CPU cannot pretrain on ImageNet, so the synthetic benchmark gets the same kind of start
from a *disjoint source domain*: other identities, another site and other cameras (another generation
seed), stronger camera colour models and more sensor noise than the target set. The encoder is trained
with identity labels there (normalised-softmax classification), and only its trunk is kept, as an
ImageNet checkpoint would be: the pooling and the BN neck start fresh.

The weights are cached under ``<data_root>/pretrained/``, in a file named by everything that shapes them
(the backbone, the input size, the source domain and the schedule), written atomically like the generated
datasets, and reused by every later run. A file of the same name in the package (``mqreid/weights/``) is
copied into the cache instead of being trained; ``python bench/warm_start.py --retrain --package`` trains
the default recipe's and writes it there. Weights are stored in float16 (half the bytes; loaded into
float32 models), whether trained or packaged, so both start alike.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from mqreid.utils.atomic import write_atomic
from mqreid.data.base import id_arrays
from mqreid.data.loader import build_train_loader
from mqreid.data.synthetic import Synthetic
from mqreid.data.transforms import build_train_transform
from mqreid.memory.base import cross_entropy

log = logging.getLogger(__name__)

_VERSION = 3  # bump when the training below changes, so cached weights are not reused by mistake
# (2: the colour jitter runs on uint8 tensors, torchvision's tensor kernels, instead of PIL images;
#  3: weights stored in float16)
PACKAGED = Path(__file__).resolve().parents[1] / "weights"  # warm starts shipped with the package
TRUNK_NAMES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")  # torchvision ResNet


@dataclass(frozen=True)
class SourceDomain:
    """The source set and schedule of the warm start (see the module docstring).

    Against the default target set (seed 0, 6 cameras, camera_shift 0.3, noise 0.3, occlusion 0.1) it has
    other people, another site and other cameras (seed 1), more of them (8), camera colour models 1.7 times
    as strong and 1.5 times the noise, so the pretrained encoder knows people but not the target's cameras.
    """

    num_ids: int = 200
    num_cameras: int = 8
    camera_shift: float = 0.5
    noise: float = 0.45
    occlusion: float = 0.1
    seed: int = 1
    steps: int = 600          # Adam steps of batch 64 (16 identities x 4 images)
    lr: float = 1e-3
    scale: float = 16.0       # logit scale of the normalised softmax
    color_jitter: float = 0.4  # as the synthetic recipe
    extra: dict[str, Any] = field(default_factory=dict)  # further Synthetic settings (e.g. images_per_id)


SOURCE = SourceDomain()  # what backbone.pretrained=synthetic trains on


def _trunk_state(model: torch.nn.Module, arch: str) -> dict[str, torch.Tensor]:
    """The trunk's weights in the format :func:`mqreid.models.build_trunk` loads for ``arch``."""
    state = {k: v.detach().cpu().clone() for k, v in model.trunk.state_dict().items()}
    if arch.startswith(("small_cnn", "vit")):  # a ViT trunk's keys are timm's, which it loads as they are
        return state
    # ResNet trunks are nn.Sequential(conv1, bn1, relu, maxpool, layer1..4): back to torchvision's names
    out = {}
    for key, value in state.items():
        index, rest = key.split(".", 1)
        out[f"{TRUNK_NAMES[int(index)]}.{rest}"] = value
    return out


def cache_path(backbone: DictConfig, height: int, width: int, data_root: str | Path,
               source: SourceDomain | None = None) -> Path:
    """Where the warm start for this backbone and input size is (or will be) cached."""
    source = source or SOURCE
    arch_cfg = {k: v for k, v in OmegaConf.to_container(backbone, resolve=True).items() if k != "pretrained"}
    key = json.dumps({"v": _VERSION, "backbone": arch_cfg, "input": [height, width], "source": asdict(source)},
                     sort_keys=True)
    digest = hashlib.sha1(key.encode()).hexdigest()[:10]
    return Path(data_root) / "pretrained" / f"synthetic_{backbone.arch}_{height}x{width}_{digest}.pth"


def pretrain(backbone: DictConfig, height: int, width: int, data_root: str | Path, *,
             source: SourceDomain | None = None, progress: bool = True,
             device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Train the encoder with labels on the source domain; return its trunk weights (on the CPU).

    Torch's global random state is left as it was, so a run is the same whether the weights were cached."""
    source = source or SOURCE
    device = device or torch.device("cpu")
    dataset = Synthetic(data_root, num_train_ids=source.num_ids, num_test_ids=1, num_distractors=0,
                        num_cameras=source.num_cameras, camera_shift=source.camera_shift, noise=source.noise,
                        occlusion=source.occlusion, seed=source.seed, verbose=False, **source.extra)
    pids = id_arrays(dataset.train)[0]
    generator = torch.Generator().manual_seed(source.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(source.seed)
        model = instantiate(backbone, pretrained=False).to(device)
        classes = torch.nn.Parameter(torch.randn(int(pids.max()) + 1, model.embedding_dim, generator=generator)
                                     .mul_(0.01).to(device))
        optimizer = torch.optim.Adam([*model.parameters(), classes], lr=source.lr, weight_decay=5e-4)
        transform = build_train_transform(height, width, color_jitter=source.color_jitter)
        loader = build_train_loader(dataset.train, pids, transform=transform, batch_size=64, num_instances=4,
                                    iters=source.steps, seed=source.seed)
        model.train()
        for images, targets, _, _ in tqdm(loader, total=source.steps, desc="warm start", leave=False,
                                          disable=not progress):
            features = model(images.to(device))
            logits = source.scale * features @ F.normalize(classes, dim=1).T
            # the memory's cross-entropy: F.cross_entropy's value, and deterministic CUDA (train.deterministic)
            # accepts its kernels, which it refuses for nll_loss
            loss = cross_entropy(logits, targets.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return {k: v.half() if v.is_floating_point() else v for k, v in _trunk_state(model, backbone.arch).items()}


def packaged_path(cache: Path) -> Path:
    """Where the package would ship the warm start cached as ``cache`` (same file name)."""
    return PACKAGED / cache.name


def synthetic_weights(backbone: DictConfig, height: int, width: int, data_root: str | Path, *,
                      progress: bool = True,
                      device: torch.device | None = None) -> Path:
    """Path of the cached warm-start trunk weights; trains and caches them on first use."""
    path = cache_path(backbone, height, width, data_root)
    shipped = packaged_path(path)
    if not path.is_file() and shipped.is_file():
        log.info("backbone.pretrained=synthetic: the packaged warm start %s (cached as %s)", shipped.name, path)
        write_atomic(path, lambda f: f.write(shipped.read_bytes()))
    if not path.is_file():
        log.info("backbone.pretrained=synthetic: training the warm start once (cached as %s)", path)
        start = time.perf_counter()
        state = pretrain(backbone, height, width, data_root, progress=progress, device=device)
        write_atomic(path, lambda f: torch.save(state, f))
        log.info("warm start trained in %.0f s", time.perf_counter() - start)
    return path


__all__ = ["PACKAGED", "SOURCE", "SourceDomain", "cache_path", "packaged_path", "pretrain", "synthetic_weights"]
