"""Embed images with a trained checkpoint, and rank a gallery by distance.

    from mqreid import ReIDModel, rank_gallery

    model = ReIDModel.from_checkpoint("outputs/.../checkpoints/best.pt")
    q = model.embed(["query.jpg"])                  # [1, D] float32, L2-normalised, on the CPU
    g = model.embed(sorted(Path("gallery").glob("*.jpg")))
    indices, distances = rank_gallery(q, g, topk=5)  # [1, 5] each, closest first

:class:`ReIDModel` rebuilds the backbone and the test transform (resize to the training input size, the
training's normalisation ``input.mean``/``input.std``: ImageNet's by default, 0.5/0.5 in the ViT presets) from
the configuration stored in the checkpoint, so nothing else needs to be known about the run that produced it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms.v2 import functional as TF

from mqreid.data.transforms import build_test_transform, normalization
from mqreid.engine.checkpoint import network_from_checkpoint
from mqreid.engine.distributed import resolve_device
from mqreid.evaluation import pairwise_distance
from mqreid.models.precision import autocast, stored_precision

__all__ = ["ReIDModel", "rank_gallery"]

ImageLike = Union[Image.Image, str, os.PathLike, Tensor]


def _is_image_item(x: Any) -> bool:
    return isinstance(x, (Image.Image, str, os.PathLike)) or (isinstance(x, Tensor) and x.ndim == 3)


class ReIDModel:
    """A trained embedding network with its test transform, ready to embed images.

    Args:
        network: maps normalised images [B, 3, H, W] to L2-normalised embeddings [B, D]
            (:class:`mqreid.models.EmbeddingNet`); it is moved to ``device`` and put in eval mode.
        input_size: ``(height, width)`` the network was trained at; every image is resized to it.
        device: ``"auto"`` (CUDA when available, else CPU), a device name, or a ``torch.device``.
        batch_size: images embedded at once by :meth:`embed` and :meth:`embed_normalized`.
        config: the training configuration (a plain dict), kept as :attr:`config`; its ``input.mean`` and
            ``input.std`` (ImageNet's when absent) normalise the images.

    Use :meth:`from_checkpoint` to build one from a checkpoint written by ``train.py``.
    """

    def __init__(self, network: nn.Module, input_size: tuple[int, int], *, device: str | torch.device = "auto",
                 batch_size: int = 64, config: dict[str, Any] | None = None) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        height, width = (int(v) for v in input_size)
        self.device = device if isinstance(device, torch.device) else resolve_device(str(device))
        self.network = network.to(self.device).eval()
        self.batch_size = batch_size
        self.config: dict[str, Any] = dict(config or {})
        # the training's input normalisation (input.mean/std; ImageNet's in checkpoints without them)
        self.normalization = normalization(self.config.get("input"))
        self.transform = build_test_transform(height, width, **self.normalization)
        # the precision the network was trained in (train.precision): every embedding is computed in it
        self.precision = stored_precision(self.config)
        self.path: str | None = None
        self._input_size = (height, width)
        self._embedding_dim: int | None = getattr(network, "embedding_dim", None)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "auto",
                        batch_size: int = 64) -> "ReIDModel":
        """Load ``path`` (``best.pt``/``last.pt`` or a run directory) and rebuild its network and transform.

        The backbone is built from the stored ``backbone`` config with ``pretrained=False`` (the checkpoint
        holds every weight) and the input size is the stored ``input.height`` x ``input.width``.
        """
        network, config, where = network_from_checkpoint(path)
        size = config["input"]
        model = cls(network, (size["height"], size["width"]), device=device, batch_size=batch_size, config=config)
        model.path = where
        return model

    # ------------------------------------------------------------------ properties
    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` of the network input."""
        return self._input_size

    @property
    def embedding_dim(self) -> int:
        """Size D of the embeddings."""
        if self._embedding_dim is None:  # a network without the attribute: run it once
            self._embedding_dim = int(self._forward(torch.zeros(1, 3, *self.input_size)).shape[1])
        return self._embedding_dim

    def __repr__(self) -> str:
        return (f"ReIDModel(path={self.path!r}, input_size={self.input_size}, embedding_dim={self.embedding_dim}, "
                f"device={self.device})")

    # ------------------------------------------------------------------ embedding
    def embed(self, images: ImageLike | Sequence[ImageLike]) -> Tensor:
        """Embed raw images: resize to :attr:`input_size`, normalise, run the network.

        Args:
            images: one image or a sequence of them, each a PIL image, a file path (``str`` or
                ``Path``) or a uint8 tensor [3, H, W] of RGB pixels; or a uint8 tensor [B, 3, H, W].
                Images may have any size; files are read one batch at a time.

        Returns:
            [N, D] float32 L2-normalised embeddings on the CPU, in input order (N = 1 for a single image).

        Every kind goes through the same PIL-based test transform as training-time evaluation, so a file,
        the PIL image read from it and its pixels as a uint8 tensor give the same embedding.
        """
        items = self._as_items(images)
        out = [self._forward(torch.stack([self._prepare(x, i) for i, x in chunk]))
               for chunk in _chunks(items, self.batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.embedding_dim)

    def embed_normalized(self, images: Tensor) -> Tensor:
        """Embed images that are already resized and normalised.

        Args:
            images: float tensor [B, 3, H, W] with (H, W) = :attr:`input_size`, normalised with the training's
                mean and standard deviation, :attr:`normalization` (what ``self.transform`` returns for each
                image).

        Returns:
            [B, D] float32 L2-normalised embeddings on the CPU.
        """
        if not isinstance(images, Tensor):
            raise TypeError(f"embed_normalized: expected a float tensor [B, 3, H, W], got {type(images).__name__}; "
                            f"use embed() for PIL images or file paths")
        if not images.is_floating_point():
            raise ValueError(f"embed_normalized: expected a normalised float tensor, got dtype {images.dtype}; "
                             f"raw {images.dtype} pixels go through embed(), which resizes and normalises them")
        expected = (3, *self.input_size)
        if images.ndim != 4 or tuple(images.shape[1:]) != expected:
            hint = " (add a batch dimension with images.unsqueeze(0))" if tuple(images.shape) == expected else \
                " (use embed() to resize raw images)"
            raise ValueError(f"embed_normalized: expected a tensor [B, {', '.join(map(str, expected))}] (the "
                             f"checkpoint's input size), got {list(images.shape)}{hint}")
        out = [self._forward(images[i:i + self.batch_size].float()) for i in range(0, len(images), self.batch_size)]
        return torch.cat(out) if out else torch.empty(0, self.embedding_dim)

    def _forward(self, batch: Tensor) -> Tensor:
        """Normalised batch [B, 3, H, W] -> embeddings [B, D] float32 on the CPU."""
        with torch.inference_mode(), autocast(self.device, self.precision):
            out = self.network(batch.to(self.device))
        if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != batch.shape[0]:
            raise ValueError(f"the network must return embeddings [B, D], got "
                             f"{tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__}")
        return F.normalize(out.float(), dim=1).cpu()

    def _as_items(self, images: Any) -> list[tuple[int, ImageLike]]:
        """``(position, image)`` pairs of the input of :meth:`embed` (checked for type, not yet read)."""
        if isinstance(images, Tensor):
            if images.ndim == 4:
                images = list(images)
            elif images.ndim != 3:
                raise ValueError(f"embed: expected a uint8 tensor [3, H, W] or [B, 3, H, W], got shape "
                                 f"{list(images.shape)}")
        if _is_image_item(images):
            images = [images]
        if not isinstance(images, Sequence) and not isinstance(images, Iterator):
            raise TypeError(f"embed: expected PIL images, file paths or uint8 tensors, got {type(images).__name__}")
        items = list(enumerate(images))
        for i, x in items:
            if not _is_image_item(x):
                raise TypeError(f"embed: item {i} is a {type(x).__name__}; expected a PIL image, a file path or a "
                                f"uint8 tensor [3, H, W]")
        return items

    def _prepare(self, x: ImageLike, position: int) -> Tensor:
        """One image -> normalised float tensor [3, H, W] through the test transform."""
        if isinstance(x, Tensor):
            if x.dtype != torch.uint8:
                raise ValueError(f"embed: image {position} is a {x.dtype} tensor; embed() takes raw uint8 pixels "
                                 f"[3, H, W] (0..255); pass already normalised float tensors of the input size "
                                 f"{self.input_size} to embed_normalized()")
            if x.shape[0] != 3:
                raise ValueError(f"embed: image {position} has shape {list(x.shape)}; expected RGB pixels [3, H, W]")
            x = TF.to_pil_image(x.cpu())
        elif not isinstance(x, Image.Image):
            path = Path(x)
            if not path.is_file():
                raise FileNotFoundError(f"embed: image file {path} does not exist")
            try:
                with Image.open(path) as img:
                    x = img.convert("RGB")
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                raise ValueError(f"embed: cannot read image {path}: {err}") from err
        if x.mode != "RGB":
            x = x.convert("RGB")
        return self.transform(x)


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def rank_gallery(query_features: Tensor, gallery_features: Tensor, topk: int | None = 10,
                 metric: str = "euclidean", chunk_size: int = 1024) -> tuple[Tensor, Tensor]:
    """The closest gallery items of each query.

    Args:
        query_features: [Q, D] (torch or numpy), e.g. from :meth:`ReIDModel.embed`.
        gallery_features: [G, D].
        topk: items kept per query (at most G); ``None`` ranks the whole gallery.
        metric: ``"euclidean"`` (squared, ``2 - 2 cos`` for normalised features) or ``"cosine"`` (``1 - cos``),
            as in :func:`mqreid.evaluation.pairwise_distance`.
        chunk_size: queries ranked at once (memory is O(chunk_size x G)).

    Returns:
        indices: [Q, k] int64 gallery indices, closest first (ties keep gallery order).
        distances: [Q, k] float32 (float64 for float64 input) distances, ascending. Both on the CPU.
    """
    if topk is not None and (not isinstance(topk, int) or topk < 1):
        raise ValueError(f"rank_gallery: topk must be a positive int or None, got {topk!r}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"rank_gallery: chunk_size must be a positive int, got {chunk_size!r}")
    query = torch.as_tensor(query_features)
    gallery = torch.as_tensor(gallery_features)
    if query.ndim != 2 or gallery.ndim != 2 or 0 in gallery.shape:
        raise ValueError(f"rank_gallery: expected query features [Q, D] and a non-empty gallery [G, D], got "
                         f"{list(query.shape)} and {list(gallery.shape)}")
    k = gallery.shape[0] if topk is None else min(topk, gallery.shape[0])
    indices, distances = [], []
    for start in range(0, query.shape[0], chunk_size):
        dist = pairwise_distance(query[start:start + chunk_size], gallery, metric)
        sorted_dist, order = torch.sort(dist, dim=1, stable=True)
        indices.append(order[:, :k].cpu())
        distances.append(sorted_dist[:, :k].cpu())
    if not indices:
        return torch.empty(0, k, dtype=torch.int64), torch.empty(0, k)
    return torch.cat(indices), torch.cat(distances)
