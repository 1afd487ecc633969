"""Time the input pipeline against the model it feeds: training steps and feature extraction.

Usage:
    python bench/bench_train.py [--iters N] [--workers 0,1,2] [--threads T] [--height H --width W]
                                [--repeat R] [--market N] [--json out.json] [override ...]

Everything runs in one process, with the trainer built from the composed config (``conf/config.yaml``
plus the Hydra ``override``s, e.g. ``train.batch_size=128``), so the model (with its BatchNorm groups),
the memory, the optimiser, the transforms and the loaders are the ones ``python train.py`` uses:

- model alone: ``Trainer.train_epoch`` with the loader replaced by ready-made batches of random images
  (the sampler's real pseudo labels), i.e. forward, memory loss, backward, optimiser step, memory update;
- loader alone: iterating ``Trainer.train_loader`` (the epoch's loader) without the model;
- train step with loader: ``Trainer.train_epoch`` as the run calls it, one epoch of ``train.iters`` steps
  (the run's first epoch: its loader workers start here and stay for the later epochs);
- extraction: ``extract_features`` on ready-made random batches (model alone) and ``Trainer.extract`` of
  the training set (with its loader);
- ``--market N`` (a mode of its own: only this is measured): the loader alone on N temporary 256x128 JPEGs
  (the synthetic images scaled up x2, under the Market-1501 recipe's transform), read from the files and
  from the in-memory cache, to show how many images per second a number of workers delivers to a GPU.

Pseudo labels are the training set's true identities. Each measurement is taken ``--repeat`` times,
alternating, and the best is reported (the least disturbed by other work on the machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from PIL import Image

from mqreid.data.base import ImageItem, id_arrays
from mqreid.data.loader import ImageCache, build_train_loader
from mqreid.data.transforms import build_train_transform, split_stages
from mqreid.engine.trainer import Trainer
from mqreid.engine.validate import available_cores, resolve_workers
from mqreid.evaluation import extract_features

CONF = Path(__file__).resolve().parents[1] / "conf"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("overrides", nargs="*", help="Hydra overrides of the training config, e.g. train.batch_size=128")
    p.add_argument("--iters", type=int, default=None, help="steps per measured epoch (default: train.iters)")
    p.add_argument("--workers", default=None,
                   help="comma-separated loader worker counts (default: 0, 1 and train.num_workers=auto's)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    p.add_argument("--height", type=int, default=None, help="input height (default: input.height)")
    p.add_argument("--width", type=int, default=None, help="input width (default: input.width)")
    p.add_argument("--repeat", type=int, default=2, help="times each measurement is taken (the best is reported)")
    p.add_argument("--market", type=int, default=0, metavar="N",
                   help="instead, time only the loader alone on N temporary 256x128 JPEGs")
    p.add_argument("--only", choices=("train", "extract"), default=None,
                   help="measure only the training rows or only the extraction rows")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


def rate(images: int, seconds: float) -> float:
    return images / seconds


def best_of(repeat: int, measure, what: str = "") -> float:
    best = max(measure() for _ in range(repeat))
    if what:
        print(f"  {what}: {best:.0f} img/s", file=sys.stderr, flush=True)
    return best


class ReadyBatches:
    """Stands in for the epoch's loader: the sampler's batches of indices and labels, random images."""

    def __init__(self, loader, labels: np.ndarray, shape: tuple[int, ...]) -> None:
        kept = torch.from_numpy(np.flatnonzero(labels >= 0))  # what the loader's positions refer to
        labels = torch.from_numpy(labels)
        gen = torch.Generator().manual_seed(0)
        self.batches = []
        loader = getattr(loader, "loader", loader)  # the DataLoader inside the trainer's DeviceBatches
        for batch in loader.batch_sampler if loader.batch_sampler is not None else loader.sampler:
            idx = kept[torch.tensor([i for i, _ in batch])]
            self.batches.append((torch.randn(len(idx), *shape, generator=gen), labels[idx], torch.zeros_like(idx), idx))

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def build_trainer(args: argparse.Namespace, run_dir: str) -> Trainer:
    overrides = ["progress=false", "device=cpu", *args.overrides]
    if args.iters:
        overrides.append(f"train.iters={args.iters}")
    if args.height:
        overrides.append(f"input.height={args.height}")
    if args.width:
        overrides.append(f"input.width={args.width}")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    with open_dict(cfg):
        cfg.run_dir = run_dir
    return Trainer(cfg, run_dir)


def set_workers(trainer: Trainer, workers: int) -> None:
    trainer.cfg.train.num_workers = workers


def time_train_epoch(trainer: Trainer, labels: np.ndarray, ready: ReadyBatches | None = None) -> float:
    """img/s of one ``train_epoch`` (with ``ready`` batches in place of the loader when given)."""
    if ready is not None:
        trainer.train_loader = lambda epoch, labels: ready
    try:
        start = time.perf_counter()
        trainer.train_epoch(0, labels)
        seconds = time.perf_counter() - start
    finally:
        trainer.__dict__.pop("train_loader", None)
    return rate(trainer.cfg.train.iters * trainer.cfg.train.batch_size, seconds)


def time_loader(loader) -> float:
    start = time.perf_counter()
    n = sum(len(batch[0]) for batch in loader)
    return rate(n, time.perf_counter() - start)


def time_extract_alone(trainer: Trainer, n: int, shape: tuple[int, ...]) -> float:
    size = trainer.cfg.train.test_batch_size
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(min(size, n - s), *shape, generator=gen), None, None, torch.arange(s, min(s + size, n)))
               for s in range(0, n, size)]
    start = time.perf_counter()
    extract_features(trainer.model, batches, trainer.device, flip=trainer.cfg.eval.flip, precision=trainer.precision, progress=False)
    return rate(n, time.perf_counter() - start)


def time_extract(trainer: Trainer) -> float:
    start = time.perf_counter()
    trainer.extract(trainer.dataset.train)
    return rate(len(trainer.dataset.train), time.perf_counter() - start)


def market_jpegs(items: list[ImageItem], n: int, folder: Path) -> list[ImageItem]:
    """``n`` 256x128 JPEGs made by scaling up the synthetic training images (x2, bicubic)."""
    out = []
    for i in range(n):
        item = items[i % len(items)]
        path = folder / f"{i:05d}.jpg"
        with Image.open(item.path) as img:
            img.convert("RGB").resize((128, 256), Image.Resampling.BICUBIC).save(path, quality=95)
        out.append(ImageItem(str(path), item.pid, item.camid))
    return out


def market_rows(trainer: Trainer, n: int, workers: list[int], repeat: int) -> list[dict]:
    transform = build_train_transform(256, 128)  # the Market-1501 recipe: no colour jitter
    train_cfg = trainer.cfg.train
    rows = []
    with tempfile.TemporaryDirectory(prefix="mqreid-market-") as tmp:
        items = market_jpegs(trainer.dataset.train, n, Path(tmp))
        pids = np.unique(id_arrays(items)[0], return_inverse=True)[1]
        cache = ImageCache(split_stages(transform).resize, threads=available_cores())
        cache.add(items)
        iters = max(1, n // train_cfg.batch_size)
        for source, held in (("files", None), ("in memory", cache)):
            for w in workers:
                def measure(w=w, held=held):
                    return time_loader(build_train_loader(items, pids, transform=transform,
                                                          batch_size=train_cfg.batch_size,
                                                          num_instances=train_cfg.num_instances, iters=iters,
                                                          sampler=train_cfg.sampler, num_workers=w, cache=held))
                rows.append({"measure": f"loader alone, 256x128 JPEGs, {source}", "workers": w,
                             "img_s": best_of(repeat, measure, f"256x128 JPEGs, {source}, {w} workers")})
    return rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mqreid-bench-") as run_dir:
        return report(args, build_trainer(args, run_dir))


def report(args: argparse.Namespace, trainer: Trainer) -> dict:
    auto = resolve_workers("auto", trainer.train_in_memory)  # what train.num_workers=auto gives training
    workers = [int(w) for w in args.workers.split(",")] if args.workers else sorted({0, 1, auto})
    train_cfg, input_cfg = trainer.cfg.train, trainer.cfg.input
    shape = (3, input_cfg.height, input_cfg.width)
    n = len(trainer.dataset.train)
    rows: list[dict] = market_rows(trainer, args.market, workers, args.repeat) if args.market else measure_all(
        trainer, workers, shape, args.repeat, args.only)
    setup = {"threads": torch.get_num_threads(), "cores": available_cores(),
             "batch_size": train_cfg.batch_size, "test_batch_size": train_cfg.test_batch_size,
             "iters": train_cfg.iters, "input": [input_cfg.height, input_cfg.width], "train_images": n,
             "overrides": args.overrides, "repeat": args.repeat, "auto_workers": auto}
    what = f"{args.market} JPEGs of 256x128" if args.market else \
        f"{shape[1]}x{shape[2]}, {setup['iters']} steps per epoch, {n} training images"
    print(f"{setup['cores']} cores, {setup['threads']} torch threads, batch {setup['batch_size']} of {what}, best of "
          f"{args.repeat}; train.num_workers=auto is {auto} here")
    print("\n| measure | workers | img/s | of the model alone |\n|---|---|---|---|")
    for row in rows:
        share = f"{100 * row['img_s'] / row['reference']:.0f} %" if "reference" in row else ""
        workers_cell = "" if row["workers"] is None else row["workers"]
        print(f"| {row['measure']} | {workers_cell} | {row['img_s']:.0f} | {share} |")
    result = {"setup": setup, "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def measure_all(trainer: Trainer, workers: list[int], shape: tuple[int, ...], repeat: int,
                only: str | None = None) -> list[dict]:
    labels = np.unique(id_arrays(trainer.dataset.train)[0], return_inverse=True)[1]
    features = trainer.extract(trainer.dataset.train)  # also warms up the model
    rows: list[dict] = []
    if only != "extract":
        rows += measure_train(trainer, workers, shape, repeat, labels, features)
    if only != "train":
        rows += measure_extract(trainer, workers, shape, repeat)
    return rows


def measure_train(trainer: Trainer, workers: list[int], shape: tuple[int, ...], repeat: int, labels: np.ndarray,
                  features: torch.Tensor) -> list[dict]:
    trainer.build_memory(features, labels, 0)
    ready = ReadyBatches(trainer.train_loader(0, labels), labels, shape)
    time_train_epoch(trainer, labels, ready)  # warm-up

    rows: list[dict] = []
    alone = best_of(repeat, lambda: time_train_epoch(trainer, labels, ready), "train step, model alone")
    rows.append({"measure": "train step, model alone", "workers": None, "img_s": alone})
    for w in workers:
        set_workers(trainer, w)
        rows.append({"measure": "loader alone", "workers": w,
                     "img_s": best_of(repeat, lambda: time_loader(trainer.train_loader(0, labels)),
                                      f"loader alone, {w} workers")})
    for w in workers:
        set_workers(trainer, w)
        rows.append({"measure": "train step with loader", "workers": w, "reference": alone,
                     "img_s": best_of(repeat, lambda: time_train_epoch(trainer, labels),
                                      f"train step with loader, {w} workers")})
    return rows


def measure_extract(trainer: Trainer, workers: list[int], shape: tuple[int, ...], repeat: int) -> list[dict]:
    rows: list[dict] = []
    n = len(trainer.dataset.train)
    extract_alone = best_of(repeat, lambda: time_extract_alone(trainer, n, shape), "extraction, model alone")
    rows.append({"measure": "extraction, model alone", "workers": None, "img_s": extract_alone})
    for w in workers:
        set_workers(trainer, w)
        rows.append({"measure": "extraction with loader", "workers": w, "reference": extract_alone,
                     "img_s": best_of(repeat, lambda: time_extract(trainer), f"extraction with loader, {w} workers")})
    return rows


if __name__ == "__main__":
    sys.exit(main() and 0)
