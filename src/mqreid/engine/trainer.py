"""The training loop: each epoch extract -> cluster -> rebuild the memory -> train -> evaluate.

Every component is built from the Hydra config with ``hydra.utils.instantiate``; this module wires them
together and keeps the run's books (run directory, metrics.jsonl, checkpoints, results.json). Steps that
touch "all features" go through :mod:`mqreid.engine.distributed`.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import random
import re
import tempfile
import time
import warnings
import zlib
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mqreid.cluster import camera_centering, permute_cameras
from mqreid.data.base import id_arrays
from mqreid.data.loader import ImageCache, TrainLoader
from mqreid.data.transforms import build_test_transform, build_train_transform, normalization, split_stages
from mqreid.evaluation import evaluate_retrieval, pseudo_label_quality
from mqreid.models.ghost_bn import convert_ghost_bn, set_process_group
from mqreid.models.precision import autocast, needs_scaler

from . import distributed, pictures, warm_start
from .checkpoint import FORMAT_VERSION, load_checkpoint, to_json, write_atomic, write_json_atomic
from .features import extract_items
from .validate import camera_id_problems
from .validate import (ConfigError, available_cores, batch_layout_problems, bn_span, deterministic_problems,
                       resolve_workers, validate_config)

log = logging.getLogger("mqreid")

RANKING_KEYS = ("mAP", "rank1", "rank5", "rank10")
PROGRESS_EVERY = 20  # steps between two reads of the loss for the progress bar (each read waits on the device)
# settings that may change when a run is resumed: they do not change what is trained
RESUMABLE_CHANGES = ("resume", "progress", "device", "data_root", "dataset.root", "dataset.on_bad_image",
                     "dataset._convert_", "logger", "eval.every",
                     "train.num_workers", "train.test_batch_size", "train.epochs", "run_dir",
                     "train.cache_images", "train.cache_limit_mb", "dist_timeout_min")


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": value}`` for every leaf of nested dicts."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """``(refused, allowed)``: the settings that differ between a checkpoint's config and the current one,
    as ``"key: saved -> current"`` lines, split by :data:`RESUMABLE_CHANGES`."""
    old, new = flatten(saved), flatten(current)
    refused, allowed = [], []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key, "<unset>") == new.get(key, "<unset>"):
            continue
        line = f"{key}: {old.get(key, '<unset>')!r} in the checkpoint, {new.get(key, '<unset>')!r} now"
        safe = any(key == k or key.startswith(f"{k}.") for k in RESUMABLE_CHANGES)
        (allowed if safe else refused).append(line)
    return refused, allowed


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of everything random in ``epoch`` (0-based): global RNGs, the memory's draws."""
    return seed * 1000 + epoch


def set_deterministic(enabled: bool, on_cuda: bool = False) -> None:
    """``train.deterministic``: deterministic algorithms everywhere (CUDA: cuDNN without autotuning and
    deterministic cuBLAS workspaces; ops without a deterministic kernel raise, which the start-up check
    rules out for mqreid's own settings). CPU runs are reproducible without it. Otherwise, on CUDA, cuDNN
    picks the fastest convolution algorithms for the (fixed) input size (``cudnn.benchmark``).

    Matrix products stay full float32 (no TF32) in every mode: the exact kNN of the clustering relies on it;
    convolutions follow PyTorch's default (TF32 on Ampere and newer), see :mod:`mqreid.models.precision`."""
    torch.backends.cuda.matmul.allow_tf32 = False
    if not enabled:
        torch.backends.cudnn.benchmark = on_cuda
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read by cuBLAS at its first use
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def cpu_model() -> str:
    """The host CPU's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numerics(device: torch.device) -> dict[str, Any]:
    """The switches that decide what "float32" means on ``device`` (recorded with every run). On the CPU the
    vector instructions torch dispatches to and the thread count change the order of float sums, and so the
    low bits of every result: a run can be repeated bit for bit only where they are the same."""
    host = {"cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads()}
    if device.type != "cuda":
        return host
    return {**host, "cuda": torch.version.cuda, "gpu": torch.cuda.get_device_name(device),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32, "tf32_cudnn": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark}


def library_versions() -> dict[str, str]:
    import hydra
    import sklearn
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "scikit-learn": sklearn.__version__, "hydra": hydra.__version__}


def fused_on_cuda(opt_cfg: DictConfig, device: torch.device) -> dict[str, bool]:
    """``{"fused": True}`` on CUDA for an optimiser that has a fused kernel (torch's Adam, AdamW, SGD): one
    kernel for every parameter's update instead of a few per parameter tensor; the same algorithm. Nothing on
    the CPU, or where the config sets ``fused`` itself."""
    if torch.device(device).type != "cuda" or "fused" in opt_cfg:
        return {}
    import inspect

    from hydra.utils import get_class

    return {"fused": True} if "fused" in inspect.signature(get_class(opt_cfg._target_)).parameters else {}


@contextmanager
def timed(row: dict[str, Any], step: str) -> Iterator[None]:
    """Add the seconds spent in the block to ``row[f"time_{step}"]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        row[f"time_{step}"] = row.get(f"time_{step}", 0.0) + time.perf_counter() - start


class Trainer:
    """Builds every component from ``cfg`` and runs :meth:`fit`; outputs go to ``run_dir`` (rank 0's)."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path) -> None:
        validate_config(cfg)
        self.cfg = cfg
        self.env, self.device = distributed.init_distributed(cfg.device, timeout_min=cfg.dist_timeout_min)
        self.run_dir = Path(distributed.shared_run_dir(str(run_dir)))
        self.is_main = self.env.is_main
        self.on_cuda = self.device.type == "cuda"
        problems = batch_layout_problems(cfg.train, self.env.world_size) + deterministic_problems(cfg, self.device)
        if problems:
            raise ConfigError("\n".join(problems))
        set_deterministic(bool(cfg.train.deterministic), self.on_cuda)
        seed_all(cfg.seed)
        self.precision = str(cfg.train.precision)
        # the node's cores, shared by its processes (torchrun starts each with one thread)
        self.cores = available_cores()

        self.dataset = self._build_dataset()
        if not getattr(self.dataset, "cameras_known", True):  # e.g. a custom CSV without the camid column
            problems = camera_id_problems(cfg, f"{self.dataset.name} at {self.dataset.root} has no camera ids")
            if problems:
                raise ConfigError("\n".join(problems))
        n_train = len(self.dataset.train)
        for key in ("k1", "k"):  # neighbourhoods as large as the set make every point everyone's neighbour
            k = cfg.clusterer.get(key)
            if k is not None and k >= n_train:
                raise ConfigError(f"clusterer.{key}={k}: expected fewer neighbours than the {n_train} training images "
                                  f"of {self.dataset.name}; set clusterer.{key}={max(1, n_train // 4)} or less")
        input_cfg = cfg.input
        norm = normalization(input_cfg)  # input.mean/std
        self.train_transform = build_train_transform(input_cfg.height, input_cfg.width, flip_p=input_cfg.flip_p,
                                                     pad=input_cfg.pad, erasing_p=input_cfg.erasing_p,
                                                     color_jitter=input_cfg.color_jitter, **norm)
        self.test_transform = build_test_transform(input_cfg.height, input_cfg.width, **norm)
        self.image_cache = self._build_image_cache()
        # whether training reads the cache (it is filled once, here): then loader workers only augment
        self.train_in_memory = (self.image_cache is not None
                                and self.image_cache.holds(self.dataset.train, self.train_transform) is not None)
        self.model, self.train_model = self._build_model()
        self.temperature = instantiate(cfg.temp).to(self.device)
        self.optimizer = self._build_optimizer()
        self.scheduler = instantiate(cfg.optim.scheduler)(self.optimizer)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=needs_scaler(self.precision))
        self.clusterer = instantiate(cfg.clusterer)
        self.memory_factory = instantiate(cfg.memory)
        self.memory = None
        self._train_loader: TrainLoader | None = None  # built at the first epoch's training (train_loader)
        # camera=proxies: camera-aware proxies whose two loss terms add to the memory's (None: camera=none)
        self.camera_factory = instantiate(cfg.camera) if cfg.get("camera") else None
        self.camera_proxies = None
        self.logger = instantiate(cfg.logger) if self.is_main else None

        self.start_epoch, self.global_step = 0, 0
        self.resumed_from: Path | None = None
        self.history: list[dict[str, Any]] = []
        self.results: dict[str, Any] = {}
        if cfg.resume:
            self.restore(load_checkpoint(to_absolute_path(str(cfg.resume)), map_location=self.device))

    # ------------------------------------------------------------------ construction
    def _build_dataset(self):
        # rank 0 first, so that a generated dataset is written once
        if not self.is_main:
            distributed.barrier()
        dataset = instantiate(self.cfg.dataset, root=to_absolute_path(self.cfg.dataset.root), verbose=self.is_main)
        if self.is_main:
            distributed.barrier()
        return dataset

    def _build_image_cache(self) -> ImageCache | None:
        """``train.cache_images``: the training, query and gallery images decoded and resized once, in this
        order, as long as they fit in ``train.cache_limit_mb``; a split that does not is read from its files.

        Per node, not per process: the training images are decoded by the node's first process and mapped
        by the others (:meth:`ImageCache.share`), and of the query and gallery each process keeps only the
        block it extracts."""
        train_cfg = self.cfg.train
        if not train_cfg.cache_images:
            return None
        env = self.env
        sharing = env.local_world_size > 1
        writer = env.rank % env.local_world_size == 0  # torchrun numbers the ranks of a node consecutively
        cache = ImageCache(split_stages(self.test_transform).resize, max_bytes=train_cfg.cache_limit_mb * 2**20,
                           threads=max(1, available_cores() // env.local_world_size))
        start = time.perf_counter()
        needed: dict[str, float] = {}  # MiB a split that was not held lacks, for the message

        def add(split: str, items, decode: bool = True) -> bool:
            held = cache.add(items, decode=decode)
            if not held:  # the cache is unchanged by a refused split
                needed[split] = cache.shortfall(items) / 2**20
            return held

        held = {"train": add("train", self.dataset.train, decode=writer or not sharing)}
        if sharing and held["train"]:
            name = f"mqreid-cache-{zlib.crc32(str(self.run_dir).encode()):08x}-{env.rank // env.local_world_size}.u8"
            cache.share(Path(tempfile.gettempdir()) / name, writer, distributed.barrier)
        for split in ("query", "gallery"):
            items = getattr(self.dataset, split)
            n = len(items)
            held[split] = add(split, items[env.rank * n // env.world_size:(env.rank + 1) * n // env.world_size])
        log.info("image cache: %s in memory (%.0f MiB per process%s, %.1f s)%s",
                 ", ".join(s for s in held if held[s]) or "nothing", cache.nbytes / 2**20,
                 "; the training images once per node" if sharing else "", time.perf_counter() - start,
                 "".join(f"; {s} read from files (it needs {needed[s]:.0f} MiB more than train.cache_limit_mb="
                         f"{train_cfg.cache_limit_mb} leaves)" for s in held if not held[s]))
        return cache

    def _build_model(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The model, and the module the training step calls (the model itself, or its DDP wrapper)."""
        train_cfg = self.cfg.train
        backbone = self.cfg.backbone
        if str(backbone.get("pretrained")) == "synthetic":
            backbone = OmegaConf.merge(backbone, {"pretrained": str(self._warm_start())})
        model = convert_ghost_bn(instantiate(backbone), train_cfg.bn_group).to(self.device)
        if self.on_cuda and train_cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if not self.env.enabled:
            return model, model
        span = bn_span(train_cfg, self.env.world_size)
        if span > 1:  # every BatchNorm group is spread over `span` consecutive processes
            set_process_group(model, distributed.group_of_consecutive_ranks(span), span)
            log.info("BatchNorm groups of %d images span %d processes (%d images each)", train_cfg.bn_group, span,
                     train_cfg.batch_size // self.env.world_size)
        if train_cfg.sync_bn:
            if not self.on_cuda:
                raise ValueError("train.sync_bn=true needs CUDA devices: torch's SyncBatchNorm has no CPU kernel; "
                                 "set train.sync_bn=false for gloo/CPU runs")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # broadcast_buffers=False: every rank keeps the running statistics of its own BN groups, and
        # sync_buffers_ averages them after each epoch, which equals the single-process statistics
        return model, DistributedDataParallel(model, device_ids=[self.device] if self.on_cuda else None,
                                              broadcast_buffers=False)

    def _warm_start(self) -> Path:
        """The synthetic warm start's weight file, trained on first use by rank 0 while the others wait."""
        args = (self.cfg.backbone, self.cfg.input.height, self.cfg.input.width, to_absolute_path(self.cfg.data_root))
        if self.is_main:
            with distributed.main_works_alone(self.env, self.cores):
                warm_start.synthetic_weights(*args, progress=self.cfg.progress, device=self.device)
        distributed.barrier()
        return warm_start.cache_path(*args)

    def _build_optimizer(self) -> torch.optim.Optimizer:
        opt_cfg = self.cfg.optim.optimizer
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        temperature_group = self.temperature.param_group(opt_cfg.lr, opt_cfg.get("weight_decay", 0.0))
        if temperature_group is not None:
            groups.append(temperature_group)
        return instantiate(opt_cfg)(groups, **fused_on_cuda(opt_cfg, self.device))

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        """Train ``train.epochs`` epochs (from where a resumed run stopped) and return the results."""
        self._open_run()
        if "initial" not in self.results:
            row: dict[str, Any] = {"epoch": 0}
            with timed(row, "eval"):
                row.update(self.evaluate())
            self.results["initial"] = {k: row[k] for k in RANKING_KEYS}
            self._close_epoch(row)
        for epoch in range(self.start_epoch, self.cfg.train.epochs):
            seed_all(epoch_seed(self.cfg.seed, epoch))
            row = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
            with timed(row, "extract"):
                features = self.extract(self.dataset.train)
            with timed(row, "cluster"):
                labels = self.cluster(features, epoch)
            row.update(self.describe_clusters(labels))
            if self.evaluation_due(epoch) and self.cfg.train.cluster_gallery and self.is_main:
                self.picture(f"clusters/epoch{epoch + 1:03d}.png", pictures.cluster_gallery, self.dataset, labels,
                             seed=self.cfg.seed)
            row["loss"] = math.nan  # stays NaN (null in metrics.jsonl) when the epoch cannot train
            if self.trainable(row):
                with timed(row, "train"):
                    self.build_memory(features, labels, epoch)
                    row.update(self.train_epoch(epoch, labels))
            self.step_schedule()
            row["temperature"] = self.temperature().item()
            if self.evaluation_due(epoch):
                with timed(row, "eval"):
                    row.update(self.evaluate())
            self.start_epoch = epoch + 1
            self._close_epoch(row)
        return self._close_run()

    # ------------------------------------------------------------------ the steps
    def extract(self, items, main_only: bool = False) -> torch.Tensor | None:
        """Embeddings [N, D] of ``items`` under the test transform, on the device: the same on every rank, or
        on rank 0 alone with ``main_only`` (None elsewhere)."""
        return extract_items(self.model, items, self.test_transform, self.device,
                             batch_size=self.cfg.train.test_batch_size,
                             num_workers=resolve_workers(self.cfg.train.num_workers, self.image_cache is not None,
                                                         processes=self.env.local_world_size),
                             flip=self.cfg.eval.flip, precision=self.precision,
                             progress=self.is_main and self.cfg.progress, cache=self.image_cache, main_only=main_only)

    def cluster(self, features: torch.Tensor, epoch: int | None = None) -> np.ndarray:
        """Pseudo labels [N] (-1 = outlier), computed on rank 0 and broadcast. A camera-aware clusterer gets the
        training images' cameras and whether this is the run's first clustering (``epoch`` 0)."""
        labels = None
        if self.is_main:
            with distributed.main_works_alone(self.env, self.cores):
                if self.cfg.train.camera_centering:
                    cameras = id_arrays(self.dataset.train)[1]
                    if self.cfg.train.get("camera_permutation_seed") is not None:  # the placebo
                        cameras = permute_cameras(cameras, self.cfg.train.camera_permutation_seed)
                    features = camera_centering(features, torch.from_numpy(cameras).to(features.device))
                camera_aware = {"cameras": id_arrays(self.dataset.train)[1], "first": epoch == 0} \
                    if getattr(self.clusterer, "camera_aware", False) else {}
                labels = np.asarray(self.clusterer.fit_predict(features.to(self.device), **camera_aware), dtype=np.int64)
        return distributed.broadcast_object(labels)

    def describe_clusters(self, labels: np.ndarray) -> dict[str, Any]:
        """Cluster count, outlier ratio and (when the true ids are known) ARI/NMI/purity of the labels."""
        stats: dict[str, Any] = {"clusters": int(labels.max()) + 1 if labels.size else 0,
                                 "outlier_ratio": float((labels < 0).mean())}
        if self.dataset.train_labels_known:
            stats.update(pseudo_label_quality(id_arrays(self.dataset.train)[0], labels))
        return stats

    def trainable(self, row: dict[str, Any]) -> bool:
        """Whether this epoch's clustering gives something to contrast; says what to change if not."""
        if row["clusters"] < 2:
            log.warning("epoch %d: clustering gave %d cluster(s) (%.0f%% outliers): nothing to contrast, training "
                        "skipped this epoch. Adjust the clusterer (e.g. clusterer.eps for dbscan, clusterer.min_sim "
                        "for infomap).", row["epoch"], row["clusters"], 100 * row["outlier_ratio"])
            return False
        if row["outlier_ratio"] > 0.9:
            log.warning("epoch %d: %.0f%% of the images are outliers", row["epoch"], 100 * row["outlier_ratio"])
        return True

    def build_memory(self, features: torch.Tensor, labels: np.ndarray, epoch: int) -> None:
        """A fresh memory for this epoch's clusters, initialised from the training features."""
        self.memory = self.memory_factory(num_features=features.shape[1], num_clusters=int(labels.max()) + 1,
                                          seed=epoch_seed(self.cfg.seed, epoch)).to(self.device)
        self.memory.reset(features.to(self.device), torch.from_numpy(labels).to(self.device))
        if self.camera_factory is not None:
            self.camera_proxies = self.camera_factory(num_features=features.shape[1],
                                                      seed=epoch_seed(self.cfg.seed, epoch)).to(self.device)
            self.camera_proxies.reset(features.to(self.device), torch.from_numpy(labels).to(self.device),
                                      torch.from_numpy(id_arrays(self.dataset.train)[1]).to(self.device))

    def train_loader(self, epoch: int, labels: np.ndarray):
        """This process's loader of ``epoch``: ``train.iters`` batches of the pseudo-labelled images. One
        :class:`~mqreid.data.loader.TrainLoader` serves every epoch, so its workers start once per run."""
        if self._train_loader is None:
            train_cfg = self.cfg.train
            self._train_loader = TrainLoader(
                self.dataset.train, transform=self.train_transform, batch_size=train_cfg.batch_size,
                num_instances=train_cfg.num_instances, iters=train_cfg.iters, sampler=train_cfg.sampler,
                num_workers=resolve_workers(train_cfg.num_workers, self.train_in_memory,
                                            processes=self.env.local_world_size),
                seed=self.cfg.seed, rank=self.env.rank, world_size=self.env.world_size, pin_memory=self.on_cuda,
                cache=self.image_cache, device=self.device)
        return self._train_loader.epoch(labels, epoch)

    def train_epoch(self, epoch: int, labels: np.ndarray) -> dict[str, float]:
        """``train.iters`` steps on the pseudo-labelled images; returns the epoch's mean loss.

        The step never waits on the host: losses and temperatures stay on the device and are read once at
        the end of the epoch (where a non-finite loss is reported with its step), the labels are checked on
        the host before they are copied, and the progress bar reads the loss every ``PROGRESS_EVERY`` steps
        only when it is shown."""
        train_cfg = self.cfg.train
        loader = self.train_loader(epoch, labels)
        self.train_model.train()
        losses, temperatures = [], []
        intras, inters = [], []  # the camera terms of each step (camera=proxies)
        inter_on = self.camera_proxies is not None and self.camera_proxies.inter_active(epoch)
        first_step = self.global_step
        num_clusters = self.memory.num_clusters
        show = self.is_main and self.cfg.progress
        bar = tqdm(loader, total=train_cfg.iters, desc=f"train {epoch + 1}", leave=False, disable=not show)
        # a bound of any cluster's images in a global batch, for the memory update: the sampler's, computed once
        # on the host for the epoch (a loader without one: this batch's, times the processes)
        epoch_bound = getattr(loader, "max_per_cluster", None)
        for images, targets, cameras, _ in bar:
            if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= num_clusters):  # host tensor
                raise ValueError(f"epoch {epoch + 1}: a batch holds pseudo labels outside [0, {num_clusters - 1}]")
            max_per_cluster = epoch_bound if epoch_bound is not None else \
                (int(torch.bincount(targets).max()) * self.env.world_size if targets.numel() else 0)
            targets = targets.to(self.device, non_blocking=True)
            if self.on_cuda and train_cfg.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.precision):
                features = self.train_model(images)
            temperature = self.temperature()
            loss = self.memory(features.float(), targets, temperature)
            if self.camera_proxies is not None:
                cameras = cameras.to(self.device, non_blocking=True)
                intra, inter = self.camera_proxies(features.float(), targets, cameras, inter=inter_on)
                loss = loss + self.camera_proxies.intra_weight * intra
                intras.append(intra.detach())
                if inter is not None:
                    loss = loss + self.camera_proxies.inter_weight * inter
                    inters.append(inter.detach())
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.temperature.learnable:  # the temperature sits outside DDP: average its gradient here
                distributed.all_reduce_mean_([p.grad for p in self.temperature.parameters() if p.grad is not None])
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.temperature.constrain_()
            # the memory sees the whole global batch, so every rank's memory stays identical
            self.memory.update(distributed.all_gather_cat(features.detach().float(), same_size=True),
                               distributed.all_gather_cat(targets, same_size=True), max_per_cluster)
            if self.camera_proxies is not None:  # every (cluster, camera) proxy, from the whole global batch
                self.camera_proxies.update(distributed.all_gather_cat(features.detach().float(), same_size=True),
                                           distributed.all_gather_cat(targets, same_size=True),
                                           distributed.all_gather_cat(cameras, same_size=True), max_per_cluster)
            self.global_step += 1
            losses.append(loss.detach())
            temperatures.append(temperature.detach().clone())
            if show and len(losses) % PROGRESS_EVERY == 0:
                bar.set_postfix(loss=f"{losses[-1].item():.3f}", T=f"{temperatures[-1].item():.4f}")
        step_losses = torch.stack(losses).float().cpu() if losses else torch.empty(0)  # the epoch's one wait
        bad = torch.nonzero(~torch.isfinite(step_losses))
        if len(bad):
            step = first_step + int(bad[0])
            raise FloatingPointError(f"loss became {float(step_losses[int(bad[0])])} at epoch {epoch + 1}, step "
                                     f"{step + 1}; try a lower optim.optimizer.lr or temp=fixed")
        if self.logger:
            step_temperatures = torch.stack(temperatures).float().cpu().tolist()
            for j, (value, t) in enumerate(zip(step_losses.tolist(), step_temperatures)):
                step = first_step + j + 1
                self.logger.log({"step/loss": value, "step/temperature": t, "global_step": step}, step)
        distributed.sync_buffers_(self.model)
        # each rank's loss is the mean over its slice of the global batch; their mean is the global batch's
        mean_loss = torch.tensor(float(step_losses.mean()) if len(step_losses) else math.nan, device=self.device)
        distributed.all_reduce_mean_([mean_loss])
        return {"loss": mean_loss.item(), **self._camera_terms(intras, inters, first_step)}

    def _camera_terms(self, intras: list[torch.Tensor], inters: list[torch.Tensor], first_step: int) -> dict[str, float]:
        """camera=proxies: the epoch's mean of each camera term (``loss_intra``, ``loss_inter``; NaN, null in
        metrics.jsonl, for the inter term before ``camera.inter_start_epoch``) and each step's value for the
        logger, read from the device once per epoch."""
        if self.camera_proxies is None:
            return {}
        out = {}
        for name, values in (("loss_intra", intras), ("loss_inter", inters)):
            steps = torch.stack(values).float().cpu() if values else torch.empty(0)
            if self.logger:
                for j, value in enumerate(steps.tolist()):
                    self.logger.log({f"step/{name}": value, "global_step": first_step + j + 1}, first_step + j + 1)
            mean = torch.tensor(float(steps.mean()) if len(steps) else math.nan, device=self.device)
            distributed.all_reduce_mean_([mean])
            out[name] = mean.item()
        return out

    def step_schedule(self) -> None:
        with warnings.catch_warnings():
            # an epoch whose training was skipped makes no optimiser step; the schedule still advances
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
            self.scheduler.step()

    def evaluation_due(self, epoch: int) -> bool:
        return (epoch + 1) % self.cfg.eval.every == 0 or epoch + 1 == self.cfg.train.epochs

    def evaluate(self) -> dict[str, float]:
        """mAP and CMC on query/gallery; with ``eval.rerank`` the re-ranked figures are added as
        ``rerank_mAP`` etc. Extraction is sharded over the ranks; rank 0 alone gathers the features and
        computes the figures (re-ranking's memory does not grow with Q x G), then shares them."""
        query_features = self.extract(self.dataset.query, main_only=True)
        gallery_features = self.extract(self.dataset.gallery, main_only=True)
        out = None
        if self.is_main:
            with distributed.main_works_alone(self.env, self.cores):
                out = self._rank_query_gallery(query_features, gallery_features)
        return distributed.broadcast_object(out)

    def _rank_query_gallery(self, query_features: torch.Tensor, gallery_features: torch.Tensor) -> dict[str, float]:
        eval_cfg = self.cfg.eval
        (query_pids, query_cams), (gallery_pids, gallery_cams) = map(id_arrays, (self.dataset.query,
                                                                                 self.dataset.gallery))
        if eval_cfg.visualize:
            self.picture(f"ranked_lists/epoch{len(self.history):03d}.png", pictures.ranked_lists, self.dataset,
                         query_features.cpu(), gallery_features.cpu(), eval_cfg.visualize, eval_cfg.metric,
                         seed=self.cfg.seed)
        rows = evaluate_retrieval(query_features, gallery_features, query_pids, gallery_pids, query_cams, gallery_cams,
                                  metric=eval_cfg.metric, rerank=eval_cfg.rerank, k1=eval_cfg.k1, k2=eval_cfg.k2,
                                  lambda_value=eval_cfg.lambda_value, device=self.device)
        out = {k: rows["plain"][k] for k in RANKING_KEYS}
        if "re-ranked" in rows:
            out.update({f"rerank_{k}": rows["re-ranked"][k] for k in RANKING_KEYS})
        return out

    def picture(self, name: str, draw, *args, **kwargs) -> None:
        """Draw a picture into the run directory and hand it to the logger (e.g. wandb images)."""
        self.logger.log_image(name.split("/")[0], draw(self.run_dir / name, *args, **kwargs), self.global_step)

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_state(self) -> dict[str, Any]:
        """Everything a resumed run needs, and nothing more.

        Resume is exact without the memory or RNG states: each epoch reseeds every generator from
        (seed, epoch), the sampler and augmentations draw from (seed, epoch, position), and the memory is
        rebuilt from the clustering at the start of every epoch.
        """
        return {"format": FORMAT_VERSION, "model": self.model.state_dict(),
                "temperature": self.temperature.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "epoch": self.start_epoch, "global_step": self.global_step, "history": self.history,
                "results": self.results, "config": OmegaConf.to_container(self.cfg, resolve=True)}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`checkpoint_state` (``last.pt``)."""
        if "optimizer" not in state:
            raise ConfigError(f"resume={self.cfg.resume}: {state['path']} holds only weights (best.pt); resume from "
                             f"last.pt or the run directory")
        saved = state["config"]  # checkpoints from before input.mean/std were settings ran with ImageNet's
        saved.setdefault("input", {}).update({k: list(v) for k, v in normalization(saved.get("input")).items()})
        refused, allowed = config_changes(saved, OmegaConf.to_container(self.cfg, resolve=True))
        if refused:
            raise ConfigError(f"resume={self.cfg.resume}: these settings differ from the checkpoint's and would change "
                             f"the run:\n" + "\n".join(f"  - {line}" for line in refused) + "\nResume without these "
                             f"overrides, or start a new run. Settings that may change on resume: "
                             f"{', '.join(RESUMABLE_CHANGES)}.")
        for line in allowed:
            log.info("resume: %s", line)
        self.model.load_state_dict(state["model"])
        self.temperature.load_state_dict(state["temperature"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self.history, self.results = list(state["history"]), dict(state["results"])
        self.resumed_from = Path(state["path"]).parent.parent if Path(state["path"]).parent.name == "checkpoints" \
            else Path(state["path"]).parent
        if self.is_main:  # a write interrupted by a crash leaves its temporary file: the real file is intact
            for stale in self.resumed_from.rglob(".*.tmp"):
                log.info("resume: removing %s, left by an interrupted write", stale)
                stale.unlink(missing_ok=True)
        log.info("resumed from %s at epoch %d", state["path"], self.start_epoch)

    # ------------------------------------------------------------------ the run's books
    def _open_run(self) -> None:
        self._started = time.perf_counter() - self.results.get("seconds", 0.0)  # a resumed run keeps counting
        if not self.is_main:
            return
        (self.run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.run_dir / "environment.json", {"versions": library_versions(),
                                                              "world_size": self.env.world_size,
                                                              "device": str(self.device),
                                                              "precision": self.precision,
                                                              **numerics(self.device)})
        if self.resumed_from is not None and self.resumed_from.resolve() != self.run_dir.resolve():
            self._carry_over(self.resumed_from)
        self.logger.start(OmegaConf.to_container(self.cfg, resolve=True), str(self.run_dir))
        log.info("run directory: %s", self.run_dir)

    def _carry_over(self, old_dir: Path) -> None:
        """A resumed run's directory is complete on its own: the metrics so far (written below), best.pt and
        the earlier train.log lines come along."""
        best = old_dir / "checkpoints" / "best.pt"
        if best.is_file():
            write_atomic(self.run_dir / "checkpoints" / "best.pt", lambda f: f.write(best.read_bytes()))
        old_log = old_dir / "train.log"
        for handler in logging.getLogger().handlers:  # Hydra's file handler of this run's train.log
            if isinstance(handler, logging.FileHandler) and old_log.is_file() \
                    and Path(handler.baseFilename).resolve() != old_log.resolve():
                handler.acquire()
                try:
                    handler.stream.write(old_log.read_text() + f"--- resumed from {old_dir} ---\n")
                    handler.flush()
                finally:
                    handler.release()

    def _close_epoch(self, row: dict[str, Any]) -> None:
        """Record an epoch: history, metrics.jsonl, the logger, best.pt when it improved, last.pt.

        Every file is rewritten atomically, so a crash at any point leaves complete files."""
        self.history.append(row)
        self.results["seconds"] = time.perf_counter() - self._started
        improved = "mAP" in row and row["mAP"] > self.results.get("best", {}).get("mAP", -math.inf)
        if improved:
            self.results["best"] = {"epoch": row["epoch"], **{k: row[k] for k in RANKING_KEYS}}
        if not self.is_main:
            return
        self._write("metrics.jsonl", lambda f: f.writelines(to_json(r) + "\n" for r in self.history), mode="w")
        self.logger.log({f"epoch/{k}": v for k, v in row.items() if k != "epoch"} | {"epoch": row["epoch"]},
                        self.global_step)
        log.info(format_epoch(row, self.cfg.train.epochs))
        if improved:
            best = {"format": FORMAT_VERSION, "model": self.model.state_dict(), "epoch": row["epoch"],
                    "metrics": self.results["best"], "config": OmegaConf.to_container(self.cfg, resolve=True)}
            self._write("checkpoints/best.pt", lambda f: torch.save(best, f))
        state = self.checkpoint_state()
        self._write("checkpoints/last.pt", lambda f: torch.save(state, f))

    def _write(self, name: str, write, mode: str = "wb") -> None:
        """Write a run file atomically; a failed write (e.g. a full disk) stops the run with a clear message."""
        path = self.run_dir / name
        try:
            write_atomic(path, write, mode)
        except OSError as err:
            raise RuntimeError(f"could not write {path}: {err}. The previous {path.name} is intact; free space (or "
                               f"fix the file system) and continue with resume={self.run_dir}") from err

    def _close_run(self) -> dict[str, Any]:
        last = next((r for r in reversed(self.history) if "mAP" in r and r["epoch"] > 0), None)
        self.results["final"] = {"epoch": last["epoch"], **{k: last[k] for k in RANKING_KEYS}} if last \
            else {"epoch": 0, **self.results["initial"]}
        self.results.update(world_size=self.env.world_size, epochs=self.cfg.train.epochs,
                            seconds=time.perf_counter() - self._started)
        if self.is_main:
            self._write("results.json", lambda f: f.write(to_json(self.results, indent=2)), mode="w")
            self.logger.finish()
            best = self.results["best"]
            log.info("results: initial mAP %.1f | best mAP %.1f (epoch %d) | final mAP %.1f R1 %.1f | %s",
                     self.results["initial"]["mAP"], best["mAP"], best["epoch"], self.results["final"]["mAP"],
                     self.results["final"]["rank1"], self.run_dir)
        return self.results


def format_epoch(row: dict[str, Any], epochs: int) -> str:
    """One summary line per epoch."""
    parts = [f"epoch {row['epoch']}/{epochs}"]
    if "clusters" in row:
        parts.append(f"clusters {row['clusters']} outliers {100 * row['outlier_ratio']:.1f}%")
    if "ari" in row:
        parts.append(f"ARI {row['ari']:.3f} NMI {row['nmi']:.3f}")
    if "loss" in row:
        parts.append(f"loss {row['loss']:.3f} T {row['temperature']:.4f}")
    if "loss_intra" in row:  # camera=proxies
        parts.append(f"camera intra {row['loss_intra']:.3f} inter {row['loss_inter']:.3f}")
    if "mAP" in row:
        parts.append(f"mAP {row['mAP']:.1f} R1 {row['rank1']:.1f}")
    times = " ".join(f"{k[5:]} {row[k]:.1f}s" for k in ("time_extract", "time_cluster", "time_train", "time_eval")
                     if k in row)
    return " | ".join(parts + [times])
