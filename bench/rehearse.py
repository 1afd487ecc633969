"""Rehearse the real presets at real size on a CPU, without downloads: one table per preset.

Commands (run from the repository root; ``override`` = Hydra overrides of the composed config):

    python bench/rehearse.py market [--iters 3] [--backbone resnet18] [--data-root DIR] [override ...]
        experiment=market1501_dbscan on dataset=synthetic_market, backbone.pretrained=false (default backbone
        resnet18): the trainer built (dataset load, image cache, model), the training set extracted and
        clustered with the preset's DBSCAN, the memory built, --iters training steps at the preset's batch
        (Trainer.train_epoch with train.iters=--iters; on the true ids when the clustering of the untrained
        model gives fewer than 2 clusters), query and gallery evaluated (Trainer.evaluate); then one epoch and
        the preset's 50 epochs extrapolated.
    python bench/rehearse.py resnet50 [--batches 2] [--extract-batch 64] [--batch-size 256] [--fallback-batch 64]
                                      [--backbone ARCH] [override ...]
        the preset's backbone (ResNet-50, last stride 1, at input.height x input.width) built by the trainer's
        code: the extraction rate on random images (eval mode, no gradients), one training step with the
        preset's multi-queue memory loss at the preset's batch, or at --fallback-batch when the step would not
        fit in the available memory (the activation memory per image is measured on two small probe steps
        first), what a GPU needs at the preset's batch, and the epoch costs extrapolated at Market-1501 and
        MSMT17 size.
    python bench/rehearse.py msmt17 [--rate IMG_PER_S] [--step-seconds S] [--backbone ARCH] [--data-root DIR]
                                    [override ...]
        experiment=msmt17_infomap on dataset=synthetic_msmt17: the trainer built (and which splits its image
        cache holds under train.cache_limit_mb), the first batch of the training loader, the preset's InfoMap
        at full size on seeded synthetic features (Trainer.cluster) and the ranking of the full query x
        gallery on synthetic features (Trainer._rank_query_gallery, the trainer's evaluation code). Extraction
        (and, with --step-seconds, the preset's steps) is extrapolated from the rates of the resnet50 command,
        which runs first in a subprocess when --rate is not given.
    python bench/rehearse.py vit [--backbone vit_small] [--batch-size 64] [--batches 2] [override ...]
        the resnet50 command for experiment=market1501_vit_small_ics (ViT-S/16 with the IBN convolution stem at
        256x128; --backbone vit_small: without it): extraction and training steps measured at --batch-size
        (default 64, with the preset's SGD and centroid memory), the step and the GPU memory at the preset's
        batch of 256 extrapolated from them.
    python bench/rehearse.py all [options] [override ...]
        market, resnet50 and msmt17, each in its own subprocess (msmt17 takes the rates resnet50 measured).

Every command prints the provenance lines of bench/bench_eval.py (command, commit, date, machine, load
average), a Markdown table ``| stage | seconds | measured/extrapolated | peak RSS (MB) | notes |`` and, last,
one JSON line with every figure. "peak RSS" is this process's resident memory during the stage, VmRSS of
/proc/self/status sampled every 0.1 s (loader workers are other processes: see the ru_maxrss line under the
table, the exact peaks of the whole process and of its largest finished child). A stage nested in another (the trainer's
construction steps) is counted in both. ``--threads T`` sets torch's threads (default: one per core).
Tiny example (a few dozen images):

    python bench/rehearse.py all --backbone small_cnn --data-root /tmp/rehearse dataset.num_train_ids=8 \\
        dataset.num_test_ids=6 dataset.num_train_images=48 dataset.num_query=12 dataset.num_gallery=24 \\
        dataset.num_distractors=0 dataset.height=64 dataset.width=32 input.height=64 input.width=32 \\
        train.batch_size=16 train.num_instances=4 train.bn_group=8 train.test_batch_size=32
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from mqreid.data.base import id_arrays
from mqreid.engine.trainer import Trainer
from mqreid.engine.validate import resolve_workers
from mqreid.evaluation import extract_features, pseudo_label_quality

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
from bench_cluster import synthetic_features  # noqa: E402  (bench/ modules, importable once bench/ is on the path)
from bench_eval import provenance  # noqa: E402

CONF = BENCH.parent / "conf"
MARKET = dict(train=12_936, test=3_368 + 15_913, preset="market1501_dbscan", dataset="synthetic_market")
MSMT17 = dict(train=32_621, test=11_659 + 82_161, preset="msmt17_infomap", dataset="synthetic_msmt17")
MEMORY_MARGIN = 0.8  # a training step is run only if its predicted memory is below this share of what is free


# ------------------------------------------------------------------ memory and stages
def vmrss_mb() -> float:
    """This process's resident memory (VmRSS of /proc/self/status) in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def available_mb() -> float:
    """Memory a process can still take: MemAvailable, or less under a cgroup (v2) limit."""
    with open("/proc/meminfo") as f:
        free = next(int(line.split()[1]) / 1024 for line in f if line.startswith("MemAvailable:"))
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            free = min(free, (int(limit) - used) / 2**20)
    except (OSError, ValueError):
        pass
    return free


def ru_maxrss_mb() -> dict[str, float]:
    """ru_maxrss of this process and of its largest finished child (loader workers), in MB."""
    return {"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


def mem(mb: float) -> str:
    return f"{mb / 1024:.1f} GiB" if mb >= 1024 else f"{mb:,.0f} MB"


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min"


class Stages:
    """The rows of a table: each stage's seconds and the peak RSS of this process during it.

    A thread reads VmRSS every ``interval`` seconds; each stage restarts the peak from the RSS at its start
    and, when it ends, hands its peak on to the stage around it (if any). A peak shorter than ``interval``
    can be missed; ru_maxrss, printed under the table, is the exact peak of the whole process."""

    def __init__(self, interval: float = 0.1) -> None:
        self.rows: list[dict] = []
        self._lock = threading.Lock()
        self._peak = vmrss_mb()
        self._stop = threading.Event()
        threading.Thread(target=self._sample, args=(interval,), daemon=True).start()

    def _sample(self, interval: float) -> None:
        while not self._stop.wait(interval):
            rss = vmrss_mb()
            with self._lock:
                self._peak = max(self._peak, rss)

    def close(self) -> None:
        self._stop.set()

    @contextmanager
    def stage(self, name: str, notes: str = ""):
        """Time the block as the row ``name``; the row (a dict) is yielded so that notes can be added."""
        row = {"stage": name, "seconds": None, "kind": "measured", "peak_rss_mb": None, "notes": notes}
        self.rows.append(row)
        print(f"[rehearse] {name} ...", file=sys.stderr, flush=True)
        rss = vmrss_mb()
        with self._lock:
            outer, self._peak = self._peak, rss
        row["rss_before_mb"] = rss
        start = time.perf_counter()
        try:
            yield row
        finally:
            row["seconds"] = time.perf_counter() - start
            rss = vmrss_mb()
            with self._lock:
                row["peak_rss_mb"] = max(self._peak, rss)
                self._peak = max(outer, row["peak_rss_mb"])
            row["rss_after_mb"] = rss
            print(f"[rehearse] {name}: {row['seconds']:.1f} s, peak RSS {row['peak_rss_mb']:,.0f} MB",
                  file=sys.stderr, flush=True)

    def add(self, name: str, seconds: float | None, notes: str = "", kind: str = "extrapolated") -> dict:
        row = {"stage": name, "seconds": seconds, "kind": kind, "peak_rss_mb": None, "notes": notes}
        self.rows.append(row)
        return row


def report(command: str, title: str, stages: Stages, figures: dict) -> dict:
    """Print the provenance lines, the table and the JSON line of a command; return the JSON's object."""
    stages.close()
    maxrss = ru_maxrss_mb()
    print(f"\n### {title}\n")
    print("\n".join(provenance()))
    print("\n| stage | seconds | measured/extrapolated | peak RSS (MB) | notes |\n|---|---|---|---|---|")
    for r in stages.rows:
        seconds = "-" if r["seconds"] is None else f"{r['seconds']:,.1f}"
        peak = "-" if r["peak_rss_mb"] is None else f"{r['peak_rss_mb']:,.0f}"
        print(f"| {r['stage']} | {seconds} | {r['kind']} | {peak} | {r['notes']} |")
    print(f"\nru_maxrss: {maxrss['self']:,.0f} MB (this process), {maxrss['children']:,.0f} MB (largest finished "
          f"child process, e.g. a loader worker; pages shared with this process included)")
    out = {"command": command, "title": title, "figures": figures, "ru_maxrss_mb": maxrss, "rows": stages.rows}
    print(json.dumps(out), flush=True)
    return out


@contextmanager
def trainer_log():
    """The ``mqreid`` logger's INFO messages (the trainer's, the clusterer's) shown on stderr."""
    logger = logging.getLogger("mqreid")
    handler, level = logging.StreamHandler(sys.stderr), logger.level
    handler.setFormatter(logging.Formatter("[mqreid] %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


# ------------------------------------------------------------------ the trainer
def compose_config(preset: str, dataset: str, args: argparse.Namespace, backbone: str | None = None):
    """``experiment=<preset> dataset=<dataset> backbone.pretrained=false`` on the CPU, plus the command line's
    --backbone (or ``backbone``), --data-root and overrides."""
    overrides = [f"experiment={preset}", f"dataset={dataset}", "progress=false", "device=cpu"]
    backbone = args.backbone or backbone
    if backbone and not any(o.startswith("backbone=") for o in args.overrides):
        overrides.append(f"backbone={backbone}")
    overrides.append("backbone.pretrained=false")
    if args.data_root:
        overrides.append(f"data_root={Path(args.data_root).resolve()}")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=overrides + list(args.overrides))


class MarkedBatches:
    """A loader whose batches are time-stamped in ``marks`` as they are handed out."""

    def __init__(self, loader, marks: list[float]) -> None:
        self.loader, self.marks = loader, marks

    def __iter__(self):
        for batch in self.loader:
            self.marks.append(time.perf_counter())
            yield batch

    def __len__(self) -> int:
        return len(self.loader)


class RehearsedTrainer(Trainer):
    """The trainer, unchanged, with its construction steps recorded as stages, the seconds of each extraction
    and of the ranking kept, and the training batches time-stamped (``step_marks``)."""

    def __init__(self, cfg, run_dir, stages: Stages) -> None:
        self.stages = stages
        self.extractions: list[tuple[int, float]] = []
        self.ranking_seconds = 0.0
        self.step_marks: list[float] = []
        super().__init__(cfg, run_dir)

    def _build_dataset(self):
        with self.stages.stage("trainer: dataset load"):
            return super()._build_dataset()

    def _build_image_cache(self):
        with self.stages.stage("trainer: image cache"):
            return super()._build_image_cache()

    def _build_model(self):
        with self.stages.stage("trainer: model"):
            return super()._build_model()

    def extract(self, items, main_only: bool = False):
        start = time.perf_counter()
        out = super().extract(items, main_only)
        self.extractions.append((len(items), time.perf_counter() - start))
        return out

    def _rank_query_gallery(self, query_features, gallery_features):
        start = time.perf_counter()
        out = super()._rank_query_gallery(query_features, gallery_features)
        self.ranking_seconds += time.perf_counter() - start
        return out

    def train_loader(self, epoch, labels):
        return MarkedBatches(super().train_loader(epoch, labels), self.step_marks)


def build_trainer(cfg, run_dir: str, stages: Stages) -> RehearsedTrainer:
    """The trainer, with notes on its dataset, image cache and model added to their rows."""
    with stages.stage("build the trainer (total)") as total:
        trainer = RehearsedTrainer(cfg, run_dir, stages)
    total["notes"] = "dataset load + image cache + model + memory, optimiser, clusterer"
    rows = {r["stage"]: r for r in stages.rows}
    ds = trainer.dataset
    rows["trainer: dataset load"]["notes"] = (
        f"{ds.name}: train {len(ds.train):,} images of {len(set(id_arrays(ds.train)[0])):,} ids, query "
        f"{len(ds.query):,}, gallery {len(ds.gallery):,}, {len(set(id_arrays(ds.train)[1]))} cameras in train")
    rows["trainer: image cache"]["notes"] = cache_notes(trainer)
    params = sum(p.numel() for p in trainer.model.parameters())
    rows["trainer: model"]["notes"] = (f"{cfg.backbone.arch}, {params / 1e6:.1f} M parameters, "
                                       f"{trainer.model.embedding_dim}-d, BatchNorm groups of {cfg.train.bn_group}")
    return trainer


def cache_notes(trainer: Trainer) -> str:
    """Which splits the image cache holds and which are read from files, against train.cache_limit_mb."""
    limit = trainer.cfg.train.cache_limit_mb
    cache = trainer.image_cache
    if cache is None:
        return "train.cache_images=false: every split read from files"
    parts = []
    for split in ("train", "query", "gallery"):
        items = getattr(trainer.dataset, split)
        held = cache.holds(items, trainer.test_transform) is not None
        size = len(items) * cache.image_bytes() / 2**20
        parts.append(f"{split} ({len(items):,} images, {size:,.0f} MiB) {'in memory' if held else 'from files'}")
    return (f"{'; '.join(parts)}; cache {cache.nbytes / 2**20:,.0f} MiB of train.cache_limit_mb={limit}; "
            f"training reads {'memory' if trainer.train_in_memory else 'files'}")


def true_labels(items) -> np.ndarray:
    """The true identities of ``items`` as labels 0..P-1."""
    return np.unique(id_arrays(items)[0], return_inverse=True)[1]


def evaluations(cfg) -> int:
    """Evaluations of a run of ``train.epochs``: the initial one and those ``Trainer.evaluation_due`` says."""
    host = SimpleNamespace(cfg=cfg)
    return 1 + sum(Trainer.evaluation_due(host, epoch) for epoch in range(cfg.train.epochs))


def settings(node) -> str:
    return " ".join(f"{k}={v}" for k, v in node.items() if not str(k).startswith("_") and k != "seed")


# ------------------------------------------------------------------ market
def run_market(args: argparse.Namespace) -> dict:
    cfg = compose_config(MARKET["preset"], MARKET["dataset"], args, backbone="resnet18")
    stages, figures = Stages(), {}
    with tempfile.TemporaryDirectory(prefix="mqreid-rehearse-") as run_dir, trainer_log():
        trainer = build_trainer(cfg, run_dir, stages)
        train_cfg = trainer.cfg.train
        n = len(trainer.dataset.train)
        with stages.stage("extract the training set") as row:
            features = trainer.extract(trainer.dataset.train)
        workers = resolve_workers(train_cfg.num_workers, processes=1)
        figures["extract_img_s"] = n / row["seconds"]
        row["notes"] = (f"{n:,} images, {figures['extract_img_s']:.1f} img/s, batch {train_cfg.test_batch_size}, "
                        f"{workers} loader workers")

        clusterer = cfg.clusterer._target_.rsplit(".", 1)[-1]
        with stages.stage(f"cluster ({clusterer})") as row:
            labels = trainer.cluster(features)
        stats = trainer.describe_clusters(labels)
        figures.update({k: stats[k] for k in ("clusters", "outlier_ratio", "ari") if k in stats})
        row["notes"] = (f"{settings(cfg.clusterer)}: {stats['clusters']:,} clusters, "
                        f"{100 * stats['outlier_ratio']:.1f}% outliers"
                        + (f", ARI {stats['ari']:.3f}" if "ari" in stats else "") + " (features of the untrained model)")
        if not trainer.trainable({"epoch": 1, **stats}):
            labels = true_labels(trainer.dataset.train)
            row["notes"] += f"; fewer than 2 clusters: the steps below train on the {labels.max() + 1} true ids"

        with stages.stage("build the memory") as row:
            trainer.build_memory(features, labels, 0)
        memory = trainer.memory
        row["notes"] = (f"{type(memory).__name__}: {memory.num_clusters:,} clusters"
                        + (f" x queue {memory.queue_size}" if hasattr(memory, "queue_size") else "")
                        + f" x {features.shape[1]}-d")

        preset_iters, epochs = train_cfg.iters, train_cfg.epochs
        train_cfg.iters = args.iters
        trainer.step_marks.clear()
        with stages.stage(f"train {args.iters} steps at batch {train_cfg.batch_size}") as row:
            start = time.perf_counter()
            loss = trainer.train_epoch(0, labels)["loss"]
            end = time.perf_counter()
        steps = np.diff([start, *trainer.step_marks[1:], end])
        first, later = float(steps[0]), float(steps[1:].mean()) if len(steps) > 1 else float(steps[0])
        figures.update(first_step_s=first, step_s=later, steps=len(steps), batch=train_cfg.batch_size)
        row["notes"] = (f"first step {first:.1f} s (loader start-up included), "
                        + (f"then {later:.1f} s/step ({train_cfg.batch_size / later:.1f} img/s), " if len(steps) > 1
                           else "") + f"loss {loss:.3f}; Trainer.train_epoch with train.iters={args.iters}")

        trainer.extractions.clear()
        with stages.stage("evaluate (query + gallery)") as row:
            metrics = trainer.evaluate()
        (nq, tq), (ng, tg) = trainer.extractions
        figures.update(eval_s=row["seconds"], ranking_s=trainer.ranking_seconds, mAP=metrics["mAP"],
                       rank1=metrics["rank1"])
        row["notes"] = (f"query {nq:,} extracted in {tq:.1f} s, gallery {ng:,} in {tg:.1f} s, ranking "
                        f"{trainer.ranking_seconds:.1f} s; mAP {metrics['mAP']:.1f} R1 {metrics['rank1']:.1f}")

        rows = {r["stage"]: r["seconds"] for r in stages.rows}
        per_epoch = (rows["extract the training set"] + rows[f"cluster ({clusterer})"] + rows["build the memory"]
                     + first + (preset_iters - 1) * later)
        runs = evaluations(trainer.cfg)
        figures.update(epoch_s=per_epoch, run_s=epochs * per_epoch + runs * figures["eval_s"], evaluations=runs,
                       preset_iters=preset_iters, epochs=epochs)
        stages.add("epoch (without evaluation)", per_epoch,
                   f"extraction + clustering + memory + {preset_iters} steps (first {first:.1f} s, then "
                   f"{preset_iters - 1} x {later:.1f} s); {duration(per_epoch)}")
        stages.add(f"epoch with an evaluation (every {trainer.cfg.eval.every}th epoch)",
                   per_epoch + figures["eval_s"], duration(per_epoch + figures["eval_s"]))
        stages.add(f"run: {epochs} epochs + {runs} evaluations", figures["run_s"],
                   f"{cfg.backbone.arch}; evaluations at epoch 0 and every {trainer.cfg.eval.every}; "
                   f"clustering as timed above; {duration(figures['run_s'])}")
        title = f"{MARKET['preset']} on {trainer.dataset.name}, backbone={cfg.backbone.arch} (CPU)"
        return report("market", title, stages, figures)


# ------------------------------------------------------------------ resnet50
def train_step(model, memory, temperature, optimizer, images, targets) -> float:
    """One step of ``Trainer.train_epoch`` in one process: forward, memory loss, backward, optimiser step,
    temperature constraint, memory update."""
    features = model(images)
    loss = memory(features.float(), targets, temperature())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    temperature.constrain_()
    memory.update(features.detach().float(), targets)
    return loss.item()


def run_resnet50(args: argparse.Namespace, preset: str = MARKET["preset"], command: str = "resnet50") -> dict:
    cfg = compose_config(preset, MARKET["dataset"], args)
    stages, figures = Stages(), {}
    shape = (3, cfg.input.height, cfg.input.width)
    # steps are measured at `batch`; the preset's step and GPU memory are given at `target`
    target, k = cfg.train.batch_size, cfg.train.num_instances
    batch = args.batch_size or target
    clusters = int(cfg.dataset.get("num_train_ids", 751))
    gen = torch.Generator().manual_seed(cfg.seed)
    # the trainer's own construction code, on a stand-in for a trainer without a dataset
    host = SimpleNamespace(cfg=cfg, device=torch.device("cpu"), on_cuda=False, env=SimpleNamespace(enabled=False))
    with stages.stage("model, memory and optimiser") as row:
        torch.manual_seed(cfg.seed)
        host.model, _ = Trainer._build_model(host)
        host.temperature = instantiate(cfg.temp)
        optimizer = Trainer._build_optimizer(host)
        dim = host.model.embedding_dim
        memory = instantiate(cfg.memory)(num_features=dim, num_clusters=clusters, seed=cfg.seed)
        memory.reset(F.normalize(torch.randn(4 * clusters, dim, generator=gen), dim=1),
                     torch.arange(clusters).repeat(4))
    model, temperature = host.model, host.temperature
    params = sum(p.numel() for p in model.parameters())
    stride = cfg.backbone.get("last_stride")
    row["notes"] = (f"{cfg.backbone.arch}{'' if stride is None else f' (last stride {stride})'}, "
                    f"{params / 1e6:.1f} M parameters, {dim}-d; {type(memory).__name__} of {clusters} clusters "
                    f"(the dataset's training ids), {type(temperature).__name__}, "
                    f"{cfg.optim.optimizer._target_.rsplit('.', 1)[-1]}")

    def images_of(n: int) -> torch.Tensor:
        return torch.randn(n, *shape, generator=gen)

    def batch_of(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randperm(clusters, generator=gen)[torch.arange(max(1, n // k)) % clusters]
        return images_of(n), ids.repeat_interleave(k)[:n]

    size = f"{shape[1]}x{shape[2]}"
    times = []
    with stages.stage(f"extraction: {args.batches} x {args.extract_batch} random {size} images") as row:
        for _ in range(args.batches):  # one call per batch, so that the first (warm-up) can be told apart
            batch_images = [(images_of(args.extract_batch), None, None, torch.arange(args.extract_batch))]
            start = time.perf_counter()
            extract_features(model, batch_images, "cpu", flip=cfg.eval.flip, precision=cfg.train.precision,
                             progress=False)
            times.append(time.perf_counter() - start)
    counted = times[1:] or times
    rate = figures["extract_img_s"] = args.extract_batch * len(counted) / sum(counted)
    row["notes"] = (f"{rate:.1f} img/s" + (f" over batches 2..{len(times)} (first, warm-up: {times[0]:.1f} s)"
                                            if len(times) > 1 else " (one batch, warm-up included)")
                    + f"; eval mode, no gradients (extract_features, flip={cfg.eval.flip})")

    def step(n: int, name: str, notes: str = "") -> dict:
        images, targets = batch_of(n)
        model.train()
        with stages.stage(name, notes) as row:
            loss = train_step(model, memory, temperature, optimizer, images, targets)
        row["growth_mb"] = row["peak_rss_mb"] - row["rss_before_mb"]
        row["notes"] += f"{'; ' if row['notes'] else ''}loss {loss:.3f}, RSS +{row['growth_mb']:,.0f} MB over the step"
        return row

    small = max(1, min(8, batch // 4))
    step(small, f"probe step at batch {small}", "warm-up: gradients and optimiser state allocated")
    probe_a = step(small, f"probe step at batch {small}")
    probe_b = step(2 * small, f"probe step at batch {2 * small}")
    per_image = max(0.0, (probe_b["growth_mb"] - probe_a["growth_mb"]) / small)
    fixed = max(0.0, probe_a["growth_mb"] - small * per_image)
    input_mb = int(np.prod(shape)) * 4 / 2**20

    def need_mb(b: int) -> float:
        return b * (per_image + input_mb) + fixed

    free = available_mb()
    figures.update(activation_mb_per_image=per_image, step_fixed_mb=fixed, available_mb=free)
    probe_b["notes"] += (f"; {per_image:.1f} MB per image during a step (from the two probes), {fixed:,.0f} MB "
                         f"fixed; {free:,.0f} MB available before the step")
    measured_at, failure = None, ""
    for b in dict.fromkeys([batch, args.fallback_batch]):
        if need_mb(b) > MEMORY_MARGIN * free:
            failure = (f"not run at batch {b}: predicted to need ~{mem(need_mb(b))}, over {MEMORY_MARGIN:.0%} of "
                       f"the {mem(free)} available")
            stages.add(f"train step at batch {b}", None, failure, kind="not run")
            continue
        try:
            row = step(b, f"train step at batch {b}", f"predicted RSS +{need_mb(b):,.0f} MB")
        except RuntimeError as err:  # the allocator's out-of-memory error
            if "memory" not in str(err).lower():
                raise
            failure = f"batch {b} failed: {str(err).splitlines()[0][:200]}"
            stages.add(f"train step at batch {b}", None, failure, kind="failed")
            continue
        measured_at = b
        row["notes"] += f"; {b / row['seconds']:.1f} img/s; the preset's memory loss"
        break
    if measured_at is None:
        raise SystemExit(f"no training step could be measured ({failure})")
    step_s = row["seconds"] * target / measured_at
    figures.update(step_batch=measured_at, step_s_measured=row["seconds"], step_s=step_s, batch=target,
                   step_img_s=measured_at / row["seconds"], step_peak_rss_mb=row["peak_rss_mb"])
    if measured_at != target:
        stages.add(f"train step at batch {target}", step_s,
                   f"{target // measured_at if target % measured_at == 0 else target / measured_at} x the step at "
                   f"batch {measured_at} (time and activations scale with the batch){'; ' if failure else ''}{failure}")
    optimizer_name = type(optimizer).__name__
    # float32 weights and gradients, plus Adam's two moments or SGD's momentum buffer
    states = 2 if optimizer_name.startswith("Adam") else int(bool(optimizer.defaults.get("momentum")))
    params_mb = params * 4 * (2 + states) / 2**20
    memory_mb = sum(b.numel() * b.element_size() for b in memory.buffers()) / 2**20
    gpu_mb = target * per_image + params_mb + memory_mb
    figures["gpu_need_mb"] = gpu_mb
    stages.add(f"GPU memory at batch {target}", None,
               f"~{mem(gpu_mb)}: activations {target} x {per_image:.1f} MB (measured on the CPU; cuDNN "
               f"workspaces come on top) + {params_mb:,.0f} MB weights, gradients and {optimizer_name} state + "
               f"{memory_mb:,.0f} "
               f"MB memory; activations scale with the batch "
               f"(~{mem(64 * per_image + params_mb + memory_mb)} at 64)")

    for name, size_of in (("Market-1501", MARKET), ("MSMT17", MSMT17)):
        # the dataset's own preset sets the iterations and the evaluations (msmt17_dbscan: 400 and every 10;
        # msmt17_vit_small_ics: 200 and every 50)
        own = cfg if size_of is MARKET else compose_config(preset.replace("market1501", "msmt17"), size_of["dataset"],
                                                           args)
        iters = own.train.iters
        extract_train, extract_test = size_of["train"] / rate, size_of["test"] / rate
        epoch = extract_train + iters * step_s
        runs = evaluations(own)
        run = own.train.epochs * epoch + runs * extract_test
        figures[name] = dict(epoch_s=epoch, eval_extract_s=extract_test, run_s=run, iters=iters)
        stages.add(f"{name} epoch: extract {size_of['train']:,} + {iters} steps", epoch,
                   f"{extract_train:,.0f} s + {iters} x {step_s:.1f} s; clustering not included; {duration(epoch)}")
        stages.add(f"{name} evaluation: extract {size_of['test']:,} images", extract_test,
                   f"ranking not included; {duration(extract_test)}")
        stages.add(f"{name} run: {own.train.epochs} epochs + {runs} evaluations", run,
                   f"extraction and steps only; {duration(run)}")
    title = f"{cfg.backbone.arch} at {size}, batch {batch} (CPU)"
    return report(command, title, stages, figures)


def run_vit(args: argparse.Namespace) -> dict:
    """The resnet50 command for the ViT preset, measured at --batch-size (default 64)."""
    args.batch_size = args.batch_size or 64
    return run_resnet50(args, preset="market1501_vit_small_ics", command="vit")


# ------------------------------------------------------------------ msmt17
def id_features(pids: np.ndarray, cams: np.ndarray, dim: int, seed: int = 0, noise: float = 3.2,
                camera_shift: float = 0.5, block: int = 8192) -> torch.Tensor:
    """``normalize(id centre + camera offset + noise)`` for every (pid, camera): the feature model of
    bench/bench_eval.py's ``make_split`` (same noise and camera shift), for given ids and cameras. An image
    with pid <= 0 (a distractor) gets a centre of its own."""
    gen = torch.Generator().manual_seed(seed)
    ids, which = np.unique(pids, return_inverse=True)
    cam_ids, cam_of = np.unique(cams, return_inverse=True)
    centres = F.normalize(torch.randn(len(ids), dim, generator=gen), dim=1)
    cam_dirs = F.normalize(torch.randn(len(cam_ids), dim, generator=gen), dim=1) * camera_shift
    which, cam_of, own = torch.from_numpy(which), torch.from_numpy(cam_of), torch.from_numpy(pids <= 0)
    out = torch.empty(len(pids), dim)
    for start in range(0, len(pids), block):
        part = slice(start, start + block)
        centre = centres[which[part]]
        centre[own[part]] = F.normalize(torch.randn(int(own[part].sum()), dim, generator=gen), dim=1)
        noise_part = torch.randn(len(centre), dim, generator=gen) * (noise / dim**0.5)
        out[part] = F.normalize(centre + noise_part + cam_dirs[cam_of[part]], dim=1)
    return out


def run_msmt17(args: argparse.Namespace) -> dict:
    rate, step_s, source, step_source = args.rate, args.step_seconds, "--rate", "--step-seconds"
    if rate is None:
        measured = run_command("resnet50", child_argv(args, "resnet50"))["figures"]
        rate, source = measured["extract_img_s"], "the resnet50 command run first"
        if step_s is None:
            step_s, step_source = measured["step_s"], source
    cfg = compose_config(MSMT17["preset"], MSMT17["dataset"], args)
    stages, figures = Stages(), {"extract_img_s": rate, "step_s": step_s}
    with tempfile.TemporaryDirectory(prefix="mqreid-rehearse-") as run_dir, trainer_log():
        trainer = build_trainer(cfg, run_dir, stages)
        ds, train_cfg = trainer.dataset, trainer.cfg.train
        labels = true_labels(ds.train)
        with stages.stage("training loader: first batch") as row:
            images = next(iter(trainer.train_loader(0, labels)))[0]
        workers = resolve_workers(train_cfg.num_workers, trainer.train_in_memory, processes=1)
        figures["loader_img_s"] = len(images) / row["seconds"]
        row["notes"] = (f"{len(images)} images from {'memory' if trainer.train_in_memory else 'files'}, {workers} "
                        f"workers, start-up included: {figures['loader_img_s']:.1f} img/s (true ids as labels)")
        del images

        dim, n = trainer.model.embedding_dim, len(ds.train)
        with stages.stage(f"synthetic training features ({n:,} x {dim})") as row:
            x, generated = synthetic_features(n, dim, len(np.unique(labels)), seed=cfg.seed)
        row["notes"] = "bench/bench_cluster.py's generator, seeded; not part of a run"
        clusterer = cfg.clusterer._target_.rsplit(".", 1)[-1]
        with stages.stage(f"cluster ({clusterer})") as row:
            pred = trainer.cluster(torch.from_numpy(x))
        del x
        quality = pseudo_label_quality(generated, pred)
        figures.update(cluster_s=row["seconds"], clusters=int(pred.max()) + 1, outlier_ratio=float((pred < 0).mean()),
                       ari=quality["ari"])
        row["notes"] = (f"Trainer.cluster, {settings(cfg.clusterer)}: {figures['clusters']:,} clusters, "
                        f"{100 * figures['outlier_ratio']:.1f}% outliers, ARI {quality['ari']:.3f} against the "
                        f"generator's {len(np.unique(labels)):,} ids")

        (q_pids, q_cams), (g_pids, g_cams) = id_arrays(ds.query), id_arrays(ds.gallery)
        nq, ng = len(q_pids), len(g_pids)
        with stages.stage(f"synthetic query and gallery features ({nq + ng:,} x {dim})") as row:
            both = id_features(np.concatenate([q_pids, g_pids]), np.concatenate([q_cams, g_cams]), dim, cfg.seed)
        row["notes"] = "bench/bench_eval.py's feature model on the dataset's ids and cameras; not part of a run"
        with stages.stage(f"evaluation ranking ({nq:,} x {ng:,})") as row:
            metrics = trainer._rank_query_gallery(both[:nq], both[nq:])
        del both
        figures.update(ranking_s=row["seconds"], mAP=metrics["mAP"], rank1=metrics["rank1"])
        row["notes"] = (f"Trainer._rank_query_gallery (evaluate_retrieval, metric={cfg.eval.metric}, "
                        f"rerank={cfg.eval.rerank}): mAP {metrics['mAP']:.1f} R1 {metrics['rank1']:.1f}")

        extract_train, extract_test = n / rate, (nq + ng) / rate
        stages.add(f"extract the training set ({n:,} images)", extract_train,
                   f"at {rate:.1f} img/s ({source}); {duration(extract_train)}")
        stages.add(f"extract query + gallery ({nq + ng:,} images)", extract_test,
                   f"at {rate:.1f} img/s; {duration(extract_test)}")
        evaluation = extract_test + figures["ranking_s"]
        epoch = extract_train + figures["cluster_s"]
        if step_s is not None:
            epoch += train_cfg.iters * step_s
            input_bound = figures["loader_img_s"] < train_cfg.batch_size / step_s
            stages.add(f"train {train_cfg.iters} steps at batch {train_cfg.batch_size}", train_cfg.iters * step_s,
                       f"{step_s:.1f} s/step ({step_source}); the loader's first batch ran at "
                       f"{figures['loader_img_s']:.1f} img/s, {'below' if input_bound else 'above'} the "
                       f"{train_cfg.batch_size / step_s:.1f} img/s a step takes")
        runs = evaluations(trainer.cfg)
        run = train_cfg.epochs * epoch + runs * evaluation
        figures.update(epoch_s=epoch, evaluation_s=evaluation, run_s=run, evaluations=runs, iters=train_cfg.iters)
        steps = f" + {train_cfg.iters} steps" if step_s is not None else " (steps not included: no --step-seconds)"
        stages.add("epoch (without evaluation)", epoch, f"extraction + clustering{steps}; {duration(epoch)}")
        stages.add("evaluation", evaluation, f"extraction + ranking; {duration(evaluation)}")
        stages.add(f"run: {train_cfg.epochs} epochs + {runs} evaluations", run, duration(run))
        title = f"{MSMT17['preset']} on {ds.name}, backbone={cfg.backbone.arch} (CPU)"
        return report("msmt17", title, stages, figures)


# ------------------------------------------------------------------ subprocesses
def child_argv(args: argparse.Namespace, command: str) -> list[str]:
    """The command line of ``command`` with the options of ``args`` that apply to it."""
    argv = [command]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    if args.backbone:
        argv += ["--backbone", args.backbone]
    if command in ("market", "msmt17") and args.data_root:
        argv += ["--data-root", args.data_root]
    if command == "market":
        argv += ["--iters", str(args.iters)]
    if command == "resnet50":
        argv += ["--batches", str(args.batches), "--extract-batch", str(args.extract_batch),
                 "--fallback-batch", str(args.fallback_batch)]
        if args.batch_size:
            argv += ["--batch-size", str(args.batch_size)]
    return argv + list(args.overrides)


def run_command(command: str, argv: list[str]) -> dict:
    """Run ``rehearse.py <argv>`` in a subprocess, echo its output and return its JSON line."""
    proc = subprocess.Popen([sys.executable, __file__, *argv], stdout=subprocess.PIPE, text=True)
    result = None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        if line.startswith("{"):
            result = json.loads(line)
    if proc.wait() or result is None:
        raise SystemExit(f"rehearse.py {command} failed (exit status {proc.returncode})")
    return result


def run_all(args: argparse.Namespace) -> dict:
    results = [run_command("market", child_argv(args, "market"))]
    results.append(run_command("resnet50", child_argv(args, "resnet50")))
    figures = results[-1]["figures"]
    results.append(run_command("msmt17", child_argv(args, "msmt17")
                               + ["--rate", str(figures["extract_img_s"]), "--step-seconds", str(figures["step_s"])]))
    out = {"command": "all", "figures": {r["command"]: r["figures"] for r in results}}
    print(json.dumps(out), flush=True)
    return out


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["market", "resnet50", "vit", "msmt17", "all"])
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. dataset.num_train_images=48")
    p.add_argument("--data-root", default=None, help="data root (default: the config's data_root)")
    p.add_argument("--backbone", default=None,
                   help="backbone config (default: resnet18 for market, the preset's resnet50 otherwise)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    p.add_argument("--iters", type=int, default=3, help="market: training steps measured")
    p.add_argument("--batches", type=int, default=2, help="resnet50: extraction batches timed")
    p.add_argument("--extract-batch", type=int, default=64, help="resnet50: images per extraction batch")
    p.add_argument("--batch-size", type=int, default=None, help="resnet50: training batch (default: the preset's)")
    p.add_argument("--fallback-batch", type=int, default=64,
                   help="resnet50: training batch measured when the preset's would not fit in memory")
    p.add_argument("--rate", type=float, default=None, metavar="IMG_PER_S",
                   help="msmt17: extraction rate (default: measured by the resnet50 command first)")
    p.add_argument("--step-seconds", type=float, default=None, metavar="S",
                   help="msmt17: seconds of a training step at the preset's batch (default: from the resnet50 "
                        "command when it runs, else steps are left out)")
    args = p.parse_intermixed_args(argv)
    if args.iters < 1 or args.batches < 1 or args.extract_batch < 1:
        p.error("--iters, --batches and --extract-batch must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    return {"market": run_market, "resnet50": run_resnet50, "vit": run_vit, "msmt17": run_msmt17,
            "all": run_all}[args.command](args)


if __name__ == "__main__":
    main()
