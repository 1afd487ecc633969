"""Vision Transformers for re-ID on timm's ``VisionTransformer``, as TransReID-SSL fine-tunes them.

- ``vit_small``: ViT-S/16 (384-d, 12 blocks, 6 heads); ``vit_base``: ViT-B/16 (768-d, 12 blocks, 12 heads);
  both with qkv bias, LayerNorm eps 1e-6 and linearly increasing drop-path (stochastic depth).
- ``vit_small_ics``: ViT-S/16 whose patch embedding is the IBN convolution stem (ICS) of TransReID-SSL:
  conv 7x7 stride 2 -> IBN -> ReLU -> conv 3x3 -> IBN -> ReLU -> conv 3x3 -> BN -> ReLU (64 channels), then
  a (16/2)x(16/2) projection of stride 8, so one token still covers 16x16 input pixels.

The class token after the final LayerNorm goes through a BN neck (no shift) and L2 normalisation, as in the
reference. Each model is built for one input size (``img_size``, a multiple of the patch size), its position
embedding covering that grid.

Weights from a file (``pretrained=PATH``, read with ``weights_only=True``): DINO checkpoints (``{"teacher":
{"backbone.<key>": ...}}``: the layout of the LUPerson weights), TransReID-SSL and PASS files (``"model"`` or
``"state_dict"`` wrappers, ``module.`` and ``base.`` prefixes), plain timm state dicts and mqreid checkpoints.
Head, classifier and bottleneck keys are ignored, as the reference does. A position embedding of another grid
is resized as the reference resizes it: the old grid is ``h x w`` with ``h = int(sqrt(tokens * hw_ratio))``,
``w = h // hw_ratio`` (LUPerson weights, trained at 256x128: ``hw_ratio=2``), bilinear, without
anti-aliasing. Any other key that does not load is listed, and loading fails unless ``strict=False``.

timm is an optional dependency (``pip install 'mqreid[vit]'``): it is imported when a ViT is built.
"""

from __future__ import annotations

import argparse
import logging
import math
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import IBN

log = logging.getLogger(__name__)

PATCH_SIZE = 16
# arch -> (embedding width, blocks, heads, convolution stem)
VIT_ARCHS: dict[str, tuple[int, int, int, bool]] = {
    "vit_small": (384, 12, 6, False),
    "vit_small_ics": (384, 12, 6, True),
    "vit_base": (768, 12, 12, False),
}
# substrings of checkpoint keys that are not the backbone's, skipped as the reference skips them (and the BN neck
# of an mqreid checkpoint, which starts fresh like the reference's bottleneck)
IGNORED_KEYS = ("head", "dist", "pre_logits", "fc.", "classifier", "bottleneck", "neck.")
# prefixes a trained model's keys carry in the files that hold it (DataParallel, TransReID, mqreid)
PREFIXES = ("module.", "base.", "trunk.")


def _timm():
    """timm's VisionTransformer module, or a clear message naming the extra to install."""
    try:
        import timm.layers
        import timm.models.vision_transformer as vision_transformer
    except ImportError as err:
        raise ImportError("the ViT backbones (backbone=vit_small | vit_small_ics | vit_base) are built on timm, "
                          "which is not installed: pip install 'mqreid[vit]' (or pip install timm)") from err
    return vision_transformer, timm.layers


# ------------------------------------------------------------------ settings
def settings_problems(arch: Any = "vit_small", img_size: Any = (256, 128), hw_ratio: Any = 1, drop_path: Any = 0.0,
                      depth: Any = None, strict: Any = True, neck: Any = True, pretrained: Any = False,
                      check_file: bool = True) -> list[str]:
    """Every invalid setting of a ViT backbone config, as ``"<key>=<value>: expected ..."`` lines (the input
    size is named by the ``input.height`` / ``input.width`` keys it comes from). Cheap: builds nothing.
    ``check_file``: a ``pretrained`` path must exist (the builder leaves that to the loader)."""
    problems = []
    if arch not in VIT_ARCHS:
        problems.append(f"backbone.arch={arch}: expected one of {', '.join(VIT_ARCHS)}")
    size = list(img_size) if isinstance(img_size, Sequence) and not isinstance(img_size, str) else None
    if size is None or len(size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in size):
        problems.append(f"backbone.img_size={img_size}: expected [height, width], two integers (the config takes "
                        f"them from input.height and input.width)")
    else:
        for key, value in zip(("input.height", "input.width"), size):
            if value < PATCH_SIZE or value % PATCH_SIZE:
                fit = max(PATCH_SIZE, round(value / PATCH_SIZE) * PATCH_SIZE)
                problems.append(f"{key}={value}: expected a multiple of the ViT patch size {PATCH_SIZE} (backbone="
                                f"{arch} covers the input with {PATCH_SIZE}x{PATCH_SIZE} patches), e.g. {key}={fit}")
    if not isinstance(hw_ratio, int) or isinstance(hw_ratio, bool) or hw_ratio < 1:
        problems.append(f"backbone.hw_ratio={hw_ratio}: expected an integer >= 1 (the height/width ratio of the "
                        f"pretrained weights' patch grid: 2 for LUPerson weights trained at 256x128)")
    if not isinstance(drop_path, (int, float)) or isinstance(drop_path, bool) or not 0 <= drop_path < 1:
        problems.append(f"backbone.drop_path={drop_path}: expected a number in [0, 1)")
    if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool) or depth < 1):
        problems.append(f"backbone.depth={depth}: expected null (the architecture's 12 blocks) or an integer >= 1")
    for key, value in (("strict", strict), ("neck", neck)):
        if not isinstance(value, bool):
            problems.append(f"backbone.{key}={value}: expected true or false")
    if pretrained is True or str(pretrained).lower() in ("true", "imagenet"):
        problems.append(f"backbone.pretrained={pretrained}: no weights are downloaded for {arch}; set it to the path "
                        f"of a weight file (DINO/LUPerson, TransReID-SSL, PASS or timm layout) or to false")
    elif check_file and pretrained not in (False, None) \
            and str(pretrained).lower() not in ("false", "none", "", "synthetic") \
            and not Path(str(pretrained)).expanduser().is_file():
        problems.append(f"backbone.pretrained: weight file {pretrained} does not exist")
    return problems


# ------------------------------------------------------------------ the convolution stem
class ConvStemEmbed(nn.Module):
    """TransReID-SSL's IBN convolution stem as a timm patch embedding: images [B, 3, H, W] -> tokens
    [B, (H/16) * (W/16), embed_dim].

    Module names (``conv.0`` ... ``conv.7``, ``proj``) are those of the reference's weight files, so its
    LUPerson ICS weights load as they are. IBN is :class:`mqreid.models.IBN` (half InstanceNorm, half BatchNorm).
    """

    def __init__(self, img_size: Sequence[int] = (256, 128), patch_size: int = PATCH_SIZE, in_chans: int = 3,
                 embed_dim: int = 384, hidden_dim: int = 64, stem_stride: int = 2, bias: bool = True,
                 dynamic_img_pad: bool = False, **_: Any) -> None:  # timm also passes device/dtype
        super().__init__()
        if dynamic_img_pad:
            raise ValueError("ConvStemEmbed: dynamic image padding is not supported")
        patch = int(patch_size[0] if isinstance(patch_size, Sequence) else patch_size)
        self.img_size = (int(img_size[0]), int(img_size[1]))
        self.patch_size = (patch, patch)
        self.grid_size = (self.img_size[0] // patch, self.img_size[1] // patch)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, hidden_dim, 7, stride=stem_stride, padding=3, bias=False), IBN(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, bias=False), IBN(hidden_dim), nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, bias=False), nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
        )
        inner = patch // stem_stride
        self.proj = nn.Conv2d(hidden_dim, embed_dim, inner, stride=inner, bias=bias)

    def feat_ratio(self, as_scalar: bool = True):
        return self.patch_size[0] if as_scalar else self.patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.img_size:
            raise ValueError(f"input {x.shape[-2]}x{x.shape[-1]}: the model was built for {self.img_size[0]}x"
                             f"{self.img_size[1]} (input.height x input.width)")
        return self.proj(self.conv(x)).flatten(2).transpose(1, 2)


# ------------------------------------------------------------------ the model
class ViTEmbeddingNet(nn.Module):
    """ViT -> class token -> BN neck -> L2-normalised embedding [B, D], in train and eval mode.

    ``trunk`` is timm's ``VisionTransformer`` without a head (its output is the class token after the final
    LayerNorm); ``neck`` the BatchNorm1d (no shift) of :class:`mqreid.models.EmbeddingNet`."""

    def __init__(self, trunk: nn.Module, channels: int, *, neck: bool = True) -> None:
        super().__init__()
        self.trunk = trunk
        self.neck = nn.BatchNorm1d(channels) if neck else nn.Identity()
        if neck:
            self.neck.bias.requires_grad_(False)
            nn.init.ones_(self.neck.weight)
            nn.init.zeros_(self.neck.bias)
        self.embedding_dim = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.neck(self.trunk(x)), dim=1)


def build_vit(arch: str = "vit_small", *, img_size: Sequence[int] = (256, 128), pretrained: bool | str = False,
              strict: bool = True, hw_ratio: int = 1, drop_path: float = 0.0, depth: int | None = None,
              neck: bool = True) -> ViTEmbeddingNet:
    """Build a ViT embedding model (``backbone=vit_small | vit_small_ics | vit_base``) for ``img_size``
    (height, width), optionally loading ``pretrained`` (a weight file; see the module docstring).

    ``depth`` overrides the number of blocks (``None``: the architecture's 12), e.g. for tests.
    """
    img_size = list(img_size) if isinstance(img_size, Sequence) and not isinstance(img_size, str) else img_size
    problems = settings_problems(arch, img_size, hw_ratio, drop_path, depth, strict, neck, pretrained,
                                 check_file=False)
    if problems:
        raise ValueError("; ".join(problems))
    vision_transformer, _ = _timm()
    width, blocks, heads, stem = VIT_ARCHS[arch]
    trunk = vision_transformer.VisionTransformer(
        img_size=tuple(img_size), patch_size=PATCH_SIZE, num_classes=0, global_pool="token", embed_dim=width,
        depth=depth or blocks, num_heads=heads, mlp_ratio=4.0, qkv_bias=True, drop_path_rate=float(drop_path),
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        embed_layer=ConvStemEmbed if stem else vision_transformer.PatchEmbed)
    if pretrained not in (False, None) and str(pretrained).lower() not in ("false", "none", ""):
        load_vit_weights(trunk, pretrained, hw_ratio=hw_ratio, strict=strict)
    return ViTEmbeddingNet(trunk, width, neck=neck)


# ------------------------------------------------------------------ weights from a file
def read_weight_file(path: str | Path) -> dict[str, Any]:
    """The object saved in a weight file, read with ``weights_only=True``.

    DINO's training checkpoints also hold their command-line arguments (an ``argparse.Namespace`` of plain
    values); that one class is allowed besides tensors and containers."""
    if str(path) == "synthetic":
        raise ValueError("backbone.pretrained=synthetic is resolved to a weight file by the trainer; in Python, pass "
                         "the path from mqreid.engine.warm_start.synthetic_weights(...)")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"backbone.pretrained: weight file {path} does not exist")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"backbone.pretrained={path}: cannot be read safely (weights_only=True): it is not a torch "
                         f"file of tensors and plain containers ({str(err).splitlines()[0][:200]})") from err
    if not isinstance(state, dict):
        raise ValueError(f"backbone.pretrained={path}: expected a state dict (or a checkpoint holding one), got a "
                         f"{type(state).__name__}")
    return state


def backbone_state(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The backbone's tensors of a loaded weight file, keyed as in timm (prefixes removed, DINO's teacher
    taken). Head, classifier and bottleneck keys are kept here; :func:`load_vit_weights` skips them."""
    for wrapper in ("model", "state_dict"):  # TransReID-SSL/PASS training checkpoints, mqreid checkpoints
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if isinstance(state.get("teacher"), dict):  # DINO: the teacher's "backbone." keys (its "head." is dropped)
        teacher = {k.removeprefix("module."): v for k, v in state["teacher"].items()}
        state = {k.removeprefix("backbone."): v for k, v in teacher.items() if k.startswith("backbone.")}
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        for prefix in PREFIXES:
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def old_grid(tokens: int, hw_ratio: int) -> tuple[int, int]:
    """The patch grid (h, w) of a position embedding of ``tokens`` grid tokens, as the reference infers it."""
    h = int(math.sqrt(tokens * hw_ratio))
    return h, h // hw_ratio


def resize_pos_embed(posemb: torch.Tensor, grid: tuple[int, int], hw_ratio: int) -> torch.Tensor:
    """A position embedding [1, 1 + n, D] (class token first) resized to ``grid`` = (h, w): bilinear, no
    anti-aliasing, the old grid from ``hw_ratio`` (:func:`old_grid`), as the reference resizes it."""
    _, layers = _timm()
    tokens = posemb.shape[1] - 1
    old = old_grid(tokens, hw_ratio)
    if old[0] * old[1] != tokens:
        raise ValueError(f"backbone.hw_ratio={hw_ratio}: the weights' position embedding has {tokens} patch tokens, "
                         f"which is not a grid of height/width ratio {hw_ratio} ({old[0]}x{old[1]} = "
                         f"{old[0] * old[1]}); set backbone.hw_ratio to the ratio the weights were trained at (2 "
                         f"for LUPerson weights, 256x128; 1 for square ImageNet ones)")
    return layers.resample_abs_pos_embed(posemb, new_size=list(grid), old_size=list(old), num_prefix_tokens=1,
                                         interpolation="bilinear", antialias=False)


def _listing(keys: list[str], limit: int = 8) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_vit_weights(trunk: nn.Module, path: str | Path, *, hw_ratio: int = 1, strict: bool = True) -> dict[str, Any]:
    """Load a weight file into a timm ``VisionTransformer`` (``trunk``); returns what was done
    (``loaded``, ``total``, ``ignored``, ``resized`` = (old tokens, new tokens) or None, ``unloaded``).

    Raises ``RuntimeError`` listing every key that does not load (not in the model, another shape, or a
    model tensor the file lacks) unless ``strict`` is False, when they are logged and left out."""
    source = backbone_state(read_weight_file(path))
    own = trunk.state_dict()
    ignored = sorted(k for k in source if any(s in k for s in IGNORED_KEYS) and k not in own)
    chosen, resized = {}, None
    unexpected, mismatched = [], []
    for key, value in source.items():
        if key in ignored:
            continue
        if key not in own:
            unexpected.append(key)
            continue
        target = own[key]
        if key == "patch_embed.proj.weight" and value.dim() < 4 and value.numel() == target.numel():
            value = value.reshape(target.shape)  # early timm weights: a linear patch projection
        elif key == "pos_embed" and value.shape != target.shape and value.dim() == 3 \
                and value.shape[-1] == target.shape[-1]:
            old = value.shape[1]
            value = resize_pos_embed(value.float(), tuple(trunk.patch_embed.grid_size), hw_ratio).to(target.dtype)
            resized = (old, value.shape[1])
        if value.shape != target.shape:
            mismatched.append(f"{key} {list(value.shape)} in the file, {list(target.shape)} in the model")
            continue
        chosen[key] = value
    listed = {m.split(" ", 1)[0] for m in mismatched}
    missing = sorted(k for k in own if k not in chosen and k not in listed)
    problems = ([f"not in the model: {_listing(unexpected)}"] if unexpected else []) + \
        ([f"other shapes: {_listing(mismatched, 4)}"] if mismatched else []) + \
        ([f"missing from the file: {_listing(missing)}"] if missing else [])
    if problems and strict:
        raise RuntimeError(f"backbone.pretrained={path}: {len(unexpected) + len(mismatched) + len(missing)} "
                           f"tensor(s) do not load into {type(trunk).__name__} ({'; '.join(problems)}). Check "
                           f"backbone.arch (vit_small_ics needs ICS weights), or set backbone.strict=false to load "
                           f"the rest")
    trunk.load_state_dict(chosen, strict=False)
    if resized:
        log.info("backbone.pretrained: position embedding resized from %d to %d tokens (hw_ratio %d)", resized[0] - 1,
                 resized[1] - 1, hw_ratio)
    if problems:
        log.warning("backbone.pretrained=%s (backbone.strict=false): %s", path, "; ".join(problems))
    log.info("backbone.pretrained: loaded %d / %d tensors from %s (%d head/classifier/bottleneck keys ignored)",
             len(chosen), len(own), path, len(ignored))
    return {"loaded": len(chosen), "total": len(own), "ignored": ignored, "resized": resized,
            "unloaded": unexpected + mismatched + missing}
