"""The training loop: each epoch extract -> cluster -> rebuild the memory -> train -> evaluate.

Everything is built from the Hydra config with ``hydra.utils.instantiate``; this module only wires the
parts together, times them, and writes the run directory (config, metrics.jsonl, checkpoints,
results.json). Rank-aware steps go through :mod:`mqreid.engine.distributed`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import random
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mqreid.cluster import camera_centering
from mqreid.data.loader import build_test_loader, build_train_loader
from mqreid.data.transforms import build_test_transform, build_train_transform
from mqreid.models.ghost_bn import convert_ghost_bn
from mqreid.evaluation import (evaluate_features, evaluate_ranking, extract_features, pseudo_label_quality,
                               re_ranking, summarise_percent)

from . import distributed as D
from .checkpoint import load_checkpoint, save_atomic, write_json_atomic
from .loggers import ConsoleLogger

log = logging.getLogger("mqreid")


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_deterministic(enabled: bool) -> None:
    """``train.deterministic``: deterministic algorithms everywhere (CUDA: cuDNN without autotuning and
    deterministic cuBLAS workspaces; ops without a deterministic kernel raise). CPU runs are reproducible
    without it."""
    if not enabled:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by cuBLAS before its first use
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def library_versions() -> dict[str, str]:
    import hydra
    import sklearn
    import torchvision

    return {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": np.__version__, "scikit-learn": sklearn.__version__, "hydra": hydra.__version__}


class Trainer:
    """Builds every component from ``cfg`` and runs :meth:`fit`; outputs go to ``run_dir``."""

    def __init__(self, cfg: DictConfig, run_dir: str | Path) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.env, self.device = D.init_distributed(cfg.device)
        self.main = self.env.is_main
        t = cfg.train
        if t.batch_size % (t.num_instances * self.env.world_size):
            raise ValueError(f"train.batch_size={t.batch_size} must be a multiple of train.num_instances="
                             f"{t.num_instances} x world size {self.env.world_size}")
        per_process = t.batch_size // self.env.world_size
        if t.bn_group is not None and (t.bn_group < 1 or per_process % t.bn_group):
            raise ValueError(f"train.bn_group={t.bn_group} must divide the per-process batch of {per_process} "
                             f"images (train.batch_size={t.batch_size} over {self.env.world_size} process(es))")
        if t.bn_group is not None and t.sync_bn:
            raise ValueError("train.bn_group and train.sync_bn=true are exclusive: set train.bn_group=null to "
                             "normalise over the whole global batch with SyncBatchNorm")
        set_deterministic(bool(t.deterministic))
        seed_all(cfg.seed)
        self.cuda = self.device.type == "cuda"
        self.amp = bool(t.amp) and self.cuda

        # data: rank 0 first, so a generated dataset is written once
        if not self.main:
            D.barrier()
        self.dataset = instantiate(cfg.dataset, root=to_absolute_path(cfg.dataset.root), verbose=self.main)
        if self.main:
            D.barrier()
        inp = cfg.input
        self.train_tf = build_train_transform(inp.height, inp.width, flip_p=inp.flip_p, pad=inp.pad,
                                              erasing_p=inp.erasing_p, color_jitter=inp.color_jitter)
        self.test_tf = build_test_transform(inp.height, inp.width)
        self.train_camids = torch.tensor([it.camid for it in self.dataset.train])

        # model, temperature, optimiser
        model = convert_ghost_bn(instantiate(cfg.backbone), t.bn_group).to(self.device)
        if self.cuda and t.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.env.enabled and t.sync_bn:
            if not self.cuda:
                raise ValueError("train.sync_bn=true needs CUDA devices: torch's SyncBatchNorm has no CPU kernel; "
                                 "set train.sync_bn=false for gloo/CPU runs")
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        # broadcast_buffers=False: each rank keeps its own BN running statistics (those of its groups), and
        # sync_buffers_ averages them after each epoch, which equals the single-process statistics
        self.net = DistributedDataParallel(model, device_ids=[self.device] if self.cuda else None,
                                           broadcast_buffers=False) if self.env.enabled else model
        self.temperature = instantiate(cfg.temp).to(self.device)
        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
        temperature_group = self.temperature.param_group(cfg.optim.optimizer.lr,
                                                         cfg.optim.optimizer.get("weight_decay", 0.0))
        if temperature_group is not None:
            groups.append(temperature_group)
        self.optimizer = instantiate(cfg.optim.optimizer)(groups)
        self.scheduler = instantiate(cfg.optim.scheduler)(self.optimizer)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.clusterer = instantiate(cfg.clusterer)
        self.memory_factory = instantiate(cfg.memory)
        self.memory = None
        self.logger = instantiate(cfg.logger) if self.main else None

        self.start_epoch, self.global_step = 0, 0
        self.history: list[dict[str, Any]] = []
        self.results: dict[str, Any] = {}
        if cfg.resume:
            self._resume(cfg.resume)

    # ------------------------------------------------------------------ features
    def extract(self, items) -> torch.Tensor:
        """Embeddings [N, D] of ``items`` (test transform), sharded across ranks and reassembled in order."""
        loader = build_test_loader(items, transform=self.test_tf, batch_size=self.cfg.train.test_batch_size,
                                   num_workers=self.cfg.train.num_workers, rank=self.env.rank,
                                   world_size=self.env.world_size)
        feats, idx = extract_features(self.model, loader, self.device, flip=self.cfg.eval.flip, amp=self.amp,
                                      progress=self.main and self.cfg.progress, desc="extract")
        comm = self.device if self.cuda else torch.device("cpu")
        feats, idx = D.all_gather_cat(feats.to(comm)).cpu(), D.all_gather_cat(idx.to(comm)).cpu()
        out = torch.empty(len(items), feats.shape[1])
        out[idx] = feats
        return out

    def evaluate(self) -> dict[str, float]:
        """mAP and CMC on query/gallery (computed by every rank from the gathered features)."""
        ds, ev = self.dataset, self.cfg.eval
        qf, gf = self.extract(ds.query), self.extract(ds.gallery)
        ids = lambda items, k: np.array([it[k] for it in items])  # noqa: E731
        if ev.rerank:
            dist = re_ranking(qf, gf, k1=ev.k1, k2=ev.k2, lambda_value=ev.lambda_value)
            m = evaluate_ranking(dist, ids(ds.query, 1), ids(ds.gallery, 1), ids(ds.query, 2), ids(ds.gallery, 2))
        else:
            m = evaluate_features(qf.to(self.device), gf.to(self.device), ids(ds.query, 1), ids(ds.gallery, 1),
                                  ids(ds.query, 2), ids(ds.gallery, 2), metric=ev.metric)
        return summarise_percent(m)

    # ------------------------------------------------------------------ one epoch
    def cluster(self, feats: torch.Tensor) -> np.ndarray:
        """Pseudo labels [N] (-1 = outlier), computed on rank 0 and broadcast."""
        labels = None
        if self.main:
            x = camera_centering(feats, self.train_camids) if self.cfg.train.camera_centering else feats
            labels = np.asarray(self.clusterer.fit_predict(x.to(self.device)), dtype=np.int64)
        return D.broadcast_object(labels)

    def train_epoch(self, epoch: int, labels: np.ndarray) -> dict[str, float]:
        t = self.cfg.train
        loader = build_train_loader(self.dataset.train, labels, transform=self.train_tf, batch_size=t.batch_size,
                                    num_instances=t.num_instances, iters=t.iters, sampler=t.sampler,
                                    num_workers=t.num_workers, seed=self.cfg.seed, epoch=epoch,
                                    rank=self.env.rank, world_size=self.env.world_size, pin_memory=self.cuda)
        self.net.train()
        losses = []
        bar = tqdm(loader, total=t.iters, desc=f"train {epoch + 1}", disable=not (self.main and self.cfg.progress),
                   leave=False)
        autocast = torch.autocast(self.device.type, dtype=torch.float16) if self.amp else nullcontext()
        for imgs, y, _, _ in bar:
            imgs, y = imgs.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            if self.cuda and t.channels_last:
                imgs = imgs.contiguous(memory_format=torch.channels_last)
            with autocast:
                f = self.net(imgs)
            temp = self.temperature()
            loss = self.memory(f.float(), y, temp)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at epoch {epoch + 1}, step {self.global_step}; "
                                         f"try a lower optim.optimizer.lr or temp=fixed")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.temperature.learnable:  # the temperature sits outside DDP: average its gradient here
                D.all_reduce_mean_([p.grad for p in self.temperature.parameters() if p.grad is not None])
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.temperature.constrain_()
            # the memory sees the whole global batch, so every rank's memory stays identical
            self.memory.update(D.all_gather_cat(f.detach().float()), D.all_gather_cat(y))
            self.global_step += 1
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}", T=f"{temp.item():.4f}")
            if self.logger:
                self.logger.log({"step/loss": losses[-1], "step/temperature": temp.item(),
                                 "global_step": self.global_step}, self.global_step)
        D.sync_buffers_(self.model)
        # each rank's loss is the mean over its slice of the global batch; their mean is the global batch's
        mean_loss = torch.tensor(float(np.mean(losses)) if losses else math.nan, device=self.device)
        D.all_reduce_mean_([mean_loss])
        return {"loss": mean_loss.item()}

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict[str, Any]:
        cfg, t = self.cfg, self.cfg.train
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "checkpoints").mkdir(exist_ok=True)
            config = OmegaConf.to_container(cfg, resolve=True)
            write_json_atomic(self.run_dir / "environment.json", {"versions": library_versions(),
                                                             "world_size": self.env.world_size,
                                                             "device": str(self.device)})
            self.logger.start(config, str(self.run_dir))
        t_start = time.perf_counter()
        if not self.results.get("initial"):
            t0 = time.perf_counter()
            initial = self.evaluate()
            self.results["initial"] = initial
            self._log_epoch({"epoch": 0, **initial, "time_eval": time.perf_counter() - t0})
        for epoch in range(self.start_epoch, t.epochs):
            seed_all(cfg.seed * 1000 + epoch)  # identical on every rank; makes resume exact
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
            t0 = time.perf_counter()
            feats = self.extract(self.dataset.train)
            t1 = time.perf_counter()
            labels = self.cluster(feats)
            t2 = time.perf_counter()
            row.update(time_extract=t1 - t0, time_cluster=t2 - t1)
            n_clusters = int(labels.max()) + 1 if labels.size else 0
            row.update(clusters=n_clusters, outlier_ratio=float((labels < 0).mean()))
            if self.dataset.train_labels_known:
                q = pseudo_label_quality([it.pid for it in self.dataset.train], labels)
                row.update(ari=q["ari"], nmi=q["nmi"], purity=q["purity"])
            if n_clusters < 2:
                log.warning("epoch %d: clustering gave %d cluster(s) (%.0f%% outliers): nothing to contrast, "
                            "training skipped this epoch. Adjust the clusterer (e.g. clusterer.eps for dbscan, "
                            "clusterer.min_sim for infomap).", epoch + 1, n_clusters, 100 * row["outlier_ratio"])
                row.update(loss=math.nan, time_train=0.0)
            else:
                if row["outlier_ratio"] > 0.9:
                    log.warning("epoch %d: %.0f%% of the images are outliers", epoch + 1, 100 * row["outlier_ratio"])
                self.memory = self.memory_factory(num_features=feats.shape[1], num_clusters=n_clusters,
                                                  seed=cfg.seed * 1000 + epoch).to(self.device)
                self.memory.reset(feats.to(self.device), torch.from_numpy(labels).to(self.device))
                row.update(self.train_epoch(epoch, labels), time_train=time.perf_counter() - t2)
            self.scheduler.step()
            row["temperature"] = self.temperature().item()
            if (epoch + 1) % cfg.eval.every == 0 or epoch + 1 == t.epochs:
                t3 = time.perf_counter()
                row.update(self.evaluate(), time_eval=time.perf_counter() - t3)
                best = self.results.get("best")
                if best is None or row["mAP"] > best["mAP"]:
                    self.results["best"] = {k: row[k] for k in ("epoch", "mAP", "rank1", "rank5", "rank10")}
                    if self.main:
                        save_atomic({"model": self.model.state_dict(), "epoch": epoch + 1, "metrics": self.results["best"],
                                     "config": OmegaConf.to_container(cfg, resolve=True)},
                                    self.run_dir / "checkpoints" / "best.pt")
            self._log_epoch(row)
            self.start_epoch = epoch + 1
            if self.main:
                self._save_last()
        last = next((r for r in reversed(self.history) if "mAP" in r and r["epoch"] > 0), None)
        self.results["final"] = {k: last[k] for k in ("epoch", "mAP", "rank1", "rank5", "rank10")} if last \
            else self.results["initial"]
        self.results.update(world_size=self.env.world_size, epochs=t.epochs,
                            seconds=time.perf_counter() - t_start + self.results.get("seconds", 0.0))
        if self.main:
            write_json_atomic(self.run_dir / "results.json", self.results)
            self.logger.finish()
            log.info("results: initial mAP %.1f | best mAP %.1f (epoch %d) | final mAP %.1f R1 %.1f",
                     self.results["initial"]["mAP"], self.results.get("best", {}).get("mAP", math.nan),
                     self.results.get("best", {}).get("epoch", 0), self.results["final"]["mAP"],
                     self.results["final"]["rank1"])
        return self.results

    # ------------------------------------------------------------------ bookkeeping
    def _log_epoch(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if not self.main:
            return
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        self.logger.log({f"epoch/{k}": v for k, v in row.items() if k != "epoch"} | {"epoch": row["epoch"]},
                        self.global_step)
        log.info(format_epoch(row, self.cfg.train.epochs))

    def _save_last(self) -> None:
        state = {
            "model": self.model.state_dict(), "temperature": self.temperature.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "memory": self.memory.state_dict() if self.memory is not None else None,
            "epoch": self.start_epoch, "global_step": self.global_step, "history": self.history,
            "results": self.results, "config": OmegaConf.to_container(self.cfg, resolve=True),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if self.cuda else []},
        }
        save_atomic(state, self.run_dir / "checkpoints" / "last.pt")

    def _resume(self, where: str) -> None:
        state = load_checkpoint(to_absolute_path(str(where)), map_location=self.device)
        if "optimizer" not in state:
            raise ValueError(f"resume={where}: {state['path']} holds only weights (best.pt); resume from last.pt "
                             f"or the run directory")
        self.model.load_state_dict(state["model"])
        self.temperature.load_state_dict(state["temperature"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self.history, self.results = list(state["history"]), dict(state["results"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if self.main:  # the new run directory carries the whole history
            self.run_dir.mkdir(parents=True, exist_ok=True)
            with open(self.run_dir / "metrics.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.history)
        log.info("resumed from %s at epoch %d", state["path"], self.start_epoch)


def format_epoch(row: dict[str, Any], epochs: int) -> str:
    """One summary line per epoch."""
    parts = [f"epoch {row['epoch']}/{epochs}"]
    if "clusters" in row:
        parts.append(f"clusters {row['clusters']} outliers {100 * row['outlier_ratio']:.1f}%")
    if "ari" in row:
        parts.append(f"ARI {row['ari']:.3f} NMI {row['nmi']:.3f}")
    if "loss" in row:
        parts.append(f"loss {row['loss']:.3f} T {row['temperature']:.4f}")
    if "mAP" in row:
        parts.append(f"mAP {row['mAP']:.1f} R1 {row['rank1']:.1f}")
    times = " ".join(f"{k[5:]} {row[k]:.1f}s" for k in ("time_extract", "time_cluster", "time_train", "time_eval")
                     if k in row)
    return " | ".join(parts + [times])
