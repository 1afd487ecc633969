"""One prepared check of mqreid on a CUDA machine: every GPU path, judged against stated criteria.

    python bench/gpu_check.py [--sections environment,e2e,...] [--out DIR] [--budget SECONDS]
    python bench/gpu_check.py --smoke [--out DIR]     # every section on the CPU at toy sizes

Made for a machine lent for a few minutes, without network or package registry: it runs from the source
tree (``src/`` is put on the path, no ``pip install -e``), installs the wheels of ``bench/wheels/``
(``bash bench/gpu_wheels.sh`` fills it) into a temporary folder when hydra, omegaconf or infomap do not
import, and uses the synthetic set and warm start under ``data/`` when they travel with the tree.

Each section runs in a subprocess of its own, under a timeout and within the overall ``--budget`` (470 s by
default: the whole check fits 8 minutes), so a failing or hanging section does not hide the others. Every row is
PASS or FAIL against the criterion printed next to it, SKIP (not run, with the reason) or INFO (a figure
without a criterion). The table is printed and written to ``--out`` (default ``$OUT`` when set, else
``bench/gpu_check_out/``) as ``gpu_check.md`` and ``gpu_check.json``, with every section's output in
``gpu_check.log``. The exit status is 1 when a row FAILs.

Sections, in the order they run (criteria in :data:`CRITERIA`):

- ``environment``: Python, torch, CUDA, GPU, TF32 switches, which optional packages import.
- ``e2e``: the default recipe through ``python train.py`` on CUDA in fp32, bf16 and fp16, 3 epochs, evaluated
  every epoch: clusters, ARI, loss, mAP and the seconds of each stage, per epoch.
- ``resume``: with ``train.deterministic=true``, a 2-epoch run and a 1-epoch run resumed to 2 epochs write
  the same ``metrics.jsonl`` rows.
- ``resnet``: ResNet-50 at 256x128, batch 256, channels_last, fp32 and bf16: images/s of the training step
  on batches already on the GPU against the same step fed by the trainer's own loader.
- ``cluster``: Jaccard + DBSCAN at 30k and 100k x 2048 and Infomap at 30k, on features generated on the GPU,
  timed against the N x N similarity GEMM; the labels compared with the CPU path's at 30k.
- ``eval``: mAP/CMC at MSMT17 size (11,659 x 82,161 x 2048) on CUDA, and against the CPU on a quarter of
  the queries (the CPU needs minutes for all of them).
- ``onnx``: the exporter of :mod:`mqreid.tools.export` on a CUDA model; onnxruntime against torch on CUDA.
- ``torchrun``: ``debug=fast`` under ``torchrun --standalone`` with 1 process, and with 2 processes sharing
  the one GPU over NCCL (last: NCCL may refuse two ranks on one GPU, or hang on it).

``--smoke`` runs the same code on the CPU at toy sizes (the tiny set of the tests, ResNet-50 at 64x32 batch
16, 2k x 64 clustering, 200 x 1000 evaluation, 2 processes on gloo), so the check keeps working while no GPU
is around; criteria that only mean something on a GPU or at full size are then reported as INFO, and what
only repeats code already run there and is slow on a CPU (bf16 and fp16 end to end, ResNet-50 in bf16,
torchrun with 1 process, the dynamo ONNX exporter) is a SKIP.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.util
import json
import logging
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
CONF = REPO / "conf"
WHEELS = REPO / "bench" / "wheels"

PASS, FAIL, SKIP, INFO = "PASS", "FAIL", "SKIP", "INFO"
BUDGET_S = 470          # the whole check on the GPU machine (a section may overrun its share by 10 s)
SMOKE_BUDGET_S = 3600   # --smoke: the limits only catch a hang on a small, possibly busy CPU machine
# seconds a section may take (on the GPU, in --smoke), in the order the sections run: torchrun, whose
# 2-process run NCCL may refuse, comes last
SECTIONS: dict[str, tuple[int, int]] = {
    "environment": (40, 300),
    "e2e": (150, 900),
    "resume": (100, 600),
    "resnet": (80, 600),
    "cluster": (130, 600),
    "eval": (75, 300),
    "onnx": (90, 600),
    "torchrun": (70, 600),
}
PRECISIONS = ("fp32", "bf16", "fp16")
# --smoke leaves out what only repeats code already run there and is slow on a CPU (autocast has no fast CPU
# kernels): bf16 and fp16 end to end, ResNet-50 in bf16, torchrun with 1 process, the dynamo ONNX exporter
SMOKE_LEAVES_OUT = "repeats code run in smoke mode and is slow on a CPU: run on the GPU only"
MAP_POINTS = 5.0          # bf16/fp16 final mAP at most this many points from fp32's
LOSS_TOL = 1e-6           # resumed run: loss equal to this
LOADER_SHARE = 0.90       # step with its loader >= this share of the model alone
CLUSTER_ARI = 0.999       # GPU labels against the CPU path's
MAP_TOL = 1e-4            # CUDA mAP against CPU mAP (fractions, not percent)
EVAL_CUDA_S = 30.0        # evaluation at MSMT17 size on CUDA
ONNX_TOL = 1e-4           # onnxruntime against torch, fp32
CRITERIA = {
    "environment": "CUDA is available; hydra, omegaconf, infomap and mqreid import",
    "e2e": f"each precision finishes; final mAP > initial mAP; bf16 and fp16 final mAP within {MAP_POINTS:g} "
           f"points of fp32",
    "resume": f"the three runs finish; every metrics.jsonl row equal (loss within {LOSS_TOL:g}), time_* aside",
    "resnet": f"step with its loader >= {LOADER_SHARE:.0%} of the model alone (fp32 and bf16)",
    "cluster": f"ARI(GPU labels, CPU labels) >= {CLUSTER_ARI} at 30k, more than one cluster",
    "eval": f"|mAP(CUDA) - mAP(CPU)| <= {MAP_TOL:g} on the same features; CUDA at MSMT17 size <= {EVAL_CUDA_S:g} s",
    "onnx": f"max |onnxruntime - torch on CUDA| < {ONNX_TOL:g} in fp32 (TF32 off)",
    "torchrun": "1 process and 2 processes (NCCL) finish",
}

# the tests' tiny set (tests/conftest.py TINY) for --smoke
TINY = [
    "dataset.num_train_ids=8", "dataset.num_test_ids=6", "dataset.num_cameras=3",
    "dataset.camera_shift=0.3", "dataset.noise=0.3", "dataset.occlusion=0.1",
    "train.iters=2", "train.batch_size=16", "train.num_instances=4", "train.bn_group=8",
    "train.test_batch_size=128", "train.num_workers=0", "backbone.pretrained=false", "clusterer.eps=0.4",
]
# from random weights the small CNN's features make one giant cluster at DBSCAN's eps 0.6 on the synthetic set;
# eps 0.45 gives tens of clusters from the first epoch
NO_WARM_START = ["backbone.pretrained=false", "clusterer.eps=0.45"]
# (distribution as the wheel names it, module it provides)
WHEEL_MODULES = {"hydra_core": "hydra", "omegaconf": "omegaconf", "antlr4_python3_runtime": "antlr4",
                 "pyyaml": "yaml", "infomap": "infomap", "onnxscript": "onnxscript", "onnx_ir": "onnx_ir"}


# ---------------------------------------------------------------------------------------------- rows
class Report:
    """The rows of one section, appended to a JSON-lines file as they come (a crash keeps the earlier ones)."""

    def __init__(self, section: str, path: Path, smoke: bool) -> None:
        self.section, self.path, self.smoke = section, path, smoke

    def add(self, measure: str, value: Any, criterion: str = "", status: str = INFO) -> None:
        row = {"section": self.section, "measure": measure, "value": str(value), "criterion": criterion,
               "status": status}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"[{status}] {measure}: {value}" + (f"  ({criterion})" if criterion else ""), flush=True)

    def info(self, measure: str, value: Any) -> None:
        self.add(measure, value)

    def skip(self, measure: str, why: str) -> None:
        self.add(measure, why, status=SKIP)

    def check(self, measure: str, value: Any, ok: bool, criterion: str, scope: str | None = None) -> bool:
        """PASS or FAIL; with ``scope`` ("GPU" or "full size") a criterion that is only reported in --smoke."""
        if self.smoke and scope:
            self.add(measure, value, f"{criterion} [{scope} only: {'met' if ok else 'not met'}, not judged]")
        else:
            self.add(measure, value, criterion, PASS if ok else FAIL)
        return ok


class Context:
    """What a section worker knows: where to work, the data, the device and its deadline."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.smoke = bool(args.smoke)
        self.work = Path(args.work)
        self.data_root = Path(args.data_root)
        self.deadline = float(args.deadline)
        self.device = "cpu" if self.smoke else "cuda"
        self.env = dict(os.environ)

    def left(self) -> float:
        return self.deadline - time.time()


# ---------------------------------------------------------------------------------------------- helpers
RUNNING: set[subprocess.Popen] = set()  # the commands a worker waits on: ended with it (stop_running)


def run_logged(cmd: list[str], log: Path, timeout: float, env: dict[str, str] | None = None,
               cwd: Path = REPO) -> tuple[int | None, float]:
    """Run ``cmd`` in a process group of its own with its output in ``log``; ``(exit status or None on timeout,
    seconds)``. On timeout the whole process group (e.g. torchrun's workers) is ended."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        RUNNING.add(proc)
        try:
            rc: int | None = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            stop_group(proc)
            rc = None
        finally:
            RUNNING.discard(proc)
    return rc, time.perf_counter() - start


def stop_running(signum, frame) -> None:
    """SIGTERM handler of a worker: end the process groups of its commands, then the worker."""
    for proc in list(RUNNING):
        stop_group(proc)
    sys.exit(128 + signum)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group started for ``proc``, SIGKILL after 5 s."""
    for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tail(path: Path, chars: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-chars:]


def last_error_line(path: Path) -> str:
    """The last meaningful line of a failed command's output (usually the exception)."""
    lines = [ln.strip() for ln in tail(path, 20000).splitlines() if ln.strip()]
    for line in reversed(lines):
        if not line.startswith(("[", "File ", "^", "~")) or "Error" in line:
            return line[:200]
    return lines[-1][:200] if lines else "no output"


def outcome(rc: int | None, seconds: float, log: Path) -> str:
    if rc is None:
        return f"timed out after {seconds:.0f} s"
    if rc != 0:
        return f"exit {rc} after {seconds:.0f} s: {last_error_line(log)}"
    return f"{seconds:.0f} s"


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def compose_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def synchronize(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def train_command(overrides: list[str], run_dir: Path, nproc: int | None = None) -> list[str]:
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc else []
    return [sys.executable, *launcher, "train.py", *overrides, f"hydra.run.dir={run_dir}"]


def warm_start_overrides(ctx: Context, r: Report) -> list[str]:
    """The default recipe's warm start when its file is in the cache under the data root or shipped in the
    package (mqreid/weights/), else random init."""
    if ctx.smoke:
        return []
    from mqreid.engine import warm_start

    cfg = compose_config([f"data_root={ctx.data_root}"])
    path = warm_start.cache_path(cfg.backbone, cfg.input.height, cfg.input.width, ctx.data_root)
    packaged = getattr(warm_start, "packaged_path", lambda cache: cache)(path)
    for where in (path, packaged):
        if where.is_file():
            r.info("warm start", f"{where} (backbone.pretrained=synthetic)")
            return []
    r.info("warm start", f"{path.name} neither under {ctx.data_root} nor in the package: {' '.join(NO_WARM_START)}")
    return NO_WARM_START


def recipe_overrides(ctx: Context) -> list[str]:
    """The default recipe on this check's device and data, quiet and without pictures."""
    common = [f"data_root={ctx.data_root}", "progress=false", "logger=console", "train.cluster_gallery=false",
              f"device={ctx.device}"]
    return common + (TINY if ctx.smoke else [])


def epoch_summary(row: dict) -> str:
    parts = []
    if "clusters" in row:
        parts.append(f"clusters {row['clusters']} ({100 * row.get('outlier_ratio', 0):.0f}% outliers)")
    if "ari" in row:
        parts.append(f"ARI {row['ari']:.3f}")
    if row.get("loss") is not None:
        parts.append(f"loss {row['loss']:.3f}")
    if "mAP" in row:
        parts.append(f"mAP {row['mAP']:.1f}")
    times = ", ".join(f"{k[5:]} {row[k]:.1f}" for k in ("time_extract", "time_cluster", "time_train", "time_eval")
                      if k in row)
    return " | ".join(parts + ([f"s: {times}"] if times else []))


# ---------------------------------------------------------------------------------------------- sections
def section_environment(r: Report, ctx: Context) -> None:
    import torch

    r.info("python", f"{platform.python_version()} ({sys.executable})")
    r.info("torch", f"{torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
    cuda = torch.cuda.is_available()
    r.check("CUDA available", cuda, cuda, "torch.cuda.is_available()", scope="GPU")
    if cuda:
        props = torch.cuda.get_device_properties(0)
        r.info("GPU", f"{props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}."
                      f"{props.minor}, {torch.cuda.device_count()} device(s)")
        with contextlib.suppress(Exception):
            version = torch.cuda.nccl.version()
            r.info("NCCL", ".".join(map(str, version)) if isinstance(version, tuple) else version)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flags = (f"cuda.matmul.allow_tf32={torch.backends.cuda.matmul.allow_tf32}, "
                 f"cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}")
        for name, where in (("matmul", torch.backends.cuda.matmul), ("cudnn", torch.backends.cudnn)):
            value = getattr(where, "fp32_precision", None)
            if value is not None:
                flags += f", {name}.fp32_precision={value}"
    r.info("TF32 switches (torch defaults)", flags + "; the trainer sets cuda.matmul.allow_tf32=False")
    r.info("CPU cores", len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    r.info("bench/wheels installed", os.environ.get("MQREID_GPU_CHECK_WHEELS") or "not needed")
    for module in ("hydra", "omegaconf", "infomap"):
        try:
            mod = importlib.import_module(module)
            where = Path(mod.__file__).resolve().parent.parent
            r.check(f"import {module}", f"{getattr(mod, '__version__', '?')} from {where}", True, "imports")
        except Exception as err:  # noqa: BLE001 - any import failure is the finding
            r.check(f"import {module}", f"{type(err).__name__}: {err}", False, "imports")
    try:
        import mqreid.engine.trainer  # noqa: F401  (the whole training stack)
        import mqreid

        r.check("import mqreid", f"from {Path(mqreid.__file__).resolve().parent}", True, "imports")
    except Exception as err:  # noqa: BLE001
        r.check("import mqreid", f"{type(err).__name__}: {err}", False, "imports")
        return
    from mqreid.cluster.knn import _faiss_support, choose_backend

    support = _faiss_support()
    r.info("faiss", {"none": "not installed: exact kNN by GEMM + top-k (knn=torch)",
                     "cpu": "CPU build only", "gpu": "GPU build"}[support])
    choice = choose_backend("auto", 100_000, 2048, ctx.device, support)
    r.info(f"knn=auto at 100k x 2048 on {ctx.device}", f"{choice.backend} on {choice.device}: {choice.reason}")
    for module in ("onnxscript", "onnxruntime"):
        spec = importlib.util.find_spec(module)
        value = "not installed"
        if spec is not None:
            mod = importlib.import_module(module)
            value = getattr(mod, "__version__", "?")
            if module == "onnxruntime":
                value += f", providers {', '.join(mod.get_available_providers())}"
        r.info(module, value)


def section_e2e(r: Report, ctx: Context) -> None:
    base = recipe_overrides(ctx) + warm_start_overrides(ctx, r)
    base += ["train.epochs=1"] if ctx.smoke else ["train.epochs=3"]
    base += ["eval.every=1"]
    r.info("overrides", " ".join(base[5:]) or "(the default recipe)")
    finals: dict[str, float] = {}
    for precision in PRECISIONS:
        if ctx.smoke and precision != "fp32":
            r.skip(f"{precision}: train.py", SMOKE_LEAVES_OUT)
            continue
        run_dir = ctx.work / f"e2e_{precision}"
        log = ctx.work / f"e2e_{precision}.out"
        rc, seconds = run_logged(train_command([*base, f"train.precision={precision}"], run_dir), log,
                                 ctx.left() - 2, ctx.env)
        results = read_json(run_dir / "results.json")
        if not r.check(f"{precision}: train.py", outcome(rc, seconds, log), rc == 0 and bool(results),
                       "exit 0, results.json written"):
            print(tail(log), flush=True)
            continue
        for row in read_jsonl(run_dir / "metrics.jsonl"):
            r.info(f"{precision}: epoch {row['epoch']}", epoch_summary(row))
        if precision == "fp32":
            numerics = read_json(run_dir / "environment.json")
            r.info("numerics recorded by the run", ", ".join(f"{k} {numerics[k]}" for k in
                                                             ("gpu", "tf32_matmul", "tf32_cudnn", "cudnn_benchmark")
                                                             if k in numerics) or "CPU run")
        initial, final = results["initial"]["mAP"], results["final"]["mAP"]
        finals[precision] = final
        r.check(f"{precision}: mAP learnt", f"{initial:.1f} -> {final:.1f}", final > initial,
                "final mAP > initial mAP", scope="full size")
    for precision in PRECISIONS[1:]:
        if precision in finals and "fp32" in finals:
            gap = finals[precision] - finals["fp32"]
            r.check(f"{precision}: final mAP against fp32", f"{finals[precision]:.1f} vs {finals['fp32']:.1f} "
                    f"({gap:+.1f})", abs(gap) <= MAP_POINTS, f"within {MAP_POINTS:g} points", scope="full size")
        else:
            r.skip(f"{precision}: final mAP against fp32", SMOKE_LEAVES_OUT if ctx.smoke else "a run did not finish")


def compare_rows(a: list[dict], b: list[dict]) -> tuple[bool, str]:
    """Whether two metrics.jsonl histories agree (time_* aside; loss within LOSS_TOL), and how."""
    if [row["epoch"] for row in a] != [row["epoch"] for row in b]:
        return False, f"epochs {[row['epoch'] for row in a]} vs {[row['epoch'] for row in b]}"
    worst = 0.0
    for x, y in zip(a, b):
        for key in sorted(set(x) | set(y)):
            if key.startswith("time_"):
                continue
            u, v = x.get(key), y.get(key)
            if key == "loss" and isinstance(u, float) and isinstance(v, float):
                worst = max(worst, abs(u - v))
                if not abs(u - v) <= LOSS_TOL:
                    return False, f"epoch {x['epoch']}: loss {u!r} vs {v!r}"
            elif u != v and not (isinstance(u, float) and isinstance(v, float) and math.isnan(u) and math.isnan(v)):
                return False, f"epoch {x['epoch']}: {key} {u!r} vs {v!r}"
    maps = "; ".join(f"epoch {row['epoch']} mAP {row['mAP']:.2f}" for row in a if "mAP" in row)
    return True, f"{len(a)} rows equal, max |loss difference| {worst:.1g}; {maps}"


def section_resume(r: Report, ctx: Context) -> None:
    base = recipe_overrides(ctx) + warm_start_overrides(ctx, r) + ["train.deterministic=true", "eval.every=1"]
    if not ctx.smoke:
        base.append("train.iters=50")
    part = ctx.work / "resume_part"
    runs = [("2-epoch run", ctx.work / "resume_full", ["train.epochs=2"]),
            ("1-epoch run", part, ["train.epochs=1"]),
            ("1-epoch run resumed to 2", ctx.work / "resume_cont", ["train.epochs=2", f"resume={part}"])]
    for name, run_dir, extra in runs:
        log = run_dir.with_suffix(".out")
        rc, seconds = run_logged(train_command([*base, *extra], run_dir), log, ctx.left() - 2, ctx.env)
        if not r.check(name, outcome(rc, seconds, log), rc == 0, "exit 0"):
            print(tail(log), flush=True)
            r.skip("metrics.jsonl rows", f"the {name} did not finish")
            return
    same, how = compare_rows(read_jsonl(runs[0][1] / "metrics.jsonl"), read_jsonl(runs[2][1] / "metrics.jsonl"))
    r.check("metrics.jsonl: 2 epochs against 1 + 1 resumed", how, same,
            f"every row equal, loss within {LOSS_TOL:g}, time_* aside")


def section_torchrun(r: Report, ctx: Context) -> None:
    base = ["debug=fast", f"data_root={ctx.data_root}", "logger=console", "train.cluster_gallery=false"]
    if ctx.smoke:
        base += [o for o in TINY if o.startswith("dataset.")] + ["clusterer.eps=0.4"]
    finals = {}
    plans = [(1, f"device={ctx.device}", "1 process"),
             (2, "device=cpu" if ctx.smoke else "device=cuda:0",
              "2 processes, gloo on the CPU" if ctx.smoke else "2 processes on cuda:0, NCCL")]
    for nproc, device, name in plans:
        if ctx.smoke and nproc == 1:
            r.skip(f"torchrun, {name}", SMOKE_LEAVES_OUT)
            continue
        if nproc == 2 and ctx.left() < 25:
            r.skip(f"torchrun, {name}", f"{ctx.left():.0f} s left in the section")
            continue
        run_dir = ctx.work / f"torchrun_{nproc}"
        log = ctx.work / f"torchrun_{nproc}.out"
        env = dict(ctx.env, OMP_NUM_THREADS="1")
        # two NCCL ranks on one GPU may hang instead of failing: their run gets at most 45 s
        limit = min(ctx.left() - 2, 45) if nproc == 2 and not ctx.smoke else ctx.left() - 2
        rc, seconds = run_logged(train_command([*base, device], run_dir, nproc=nproc), log, limit, env)
        results = read_json(run_dir / "results.json")
        text = tail(log, 50000)
        if rc != 0 and nproc == 2 and "Duplicate GPU" in text:
            r.skip(f"torchrun, {name}", "NCCL refuses two ranks on one GPU (Duplicate GPU detected)")
            continue
        ok = rc == 0 and results.get("world_size") == nproc
        if not r.check(f"torchrun, {name}", outcome(rc, seconds, log), ok,
                       f"exit 0, results.json with world_size {nproc}"):
            print(tail(log), flush=True)
            continue
        finals[nproc] = results["final"]["mAP"]
        r.info(f"torchrun, {name}: final mAP", f"{finals[nproc]:.2f}")
    if len(finals) == 2:
        r.info("final mAP, 2 processes against 1", f"{finals[2] - finals[1]:+.2f} points (same BatchNorm groups "
                                                   f"of 8: expected close, not bit-equal)")


class ReadyBatches:
    """Stands in for the epoch's loader: ``iters`` batches of random images already on the device, with
    pseudo labels drawn as the PK sampler does (``batch // k`` labels, ``k`` images each)."""

    def __init__(self, labels, iters: int, batch: int, k: int, shape: tuple[int, ...], device) -> None:
        import numpy as np
        import torch

        rng = np.random.default_rng(0)
        names = np.unique(labels[labels >= 0])
        pool = [torch.randn(batch, *shape, device=device) for _ in range(2)]
        self.batches = []
        for step in range(iters):
            ids = rng.choice(names, size=batch // k, replace=len(names) < batch // k)
            targets = torch.from_numpy(np.repeat(ids, k).astype(np.int64))
            self.batches.append((pool[step % 2], targets, torch.zeros_like(targets), torch.arange(batch)))

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class Stopwatch:
    """Wraps a loader: the clock starts when batch ``warmup`` is handed out (after a device sync)."""

    def __init__(self, loader, warmup: int, device) -> None:
        self.loader, self.warmup, self.device, self.start = loader, warmup, device, None

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.warmup:
                synchronize(self.device)
                self.start = time.perf_counter()
            yield batch

    def __len__(self) -> int:
        return len(self.loader)


def section_resnet(r: Report, ctx: Context) -> None:
    import numpy as np
    import torch
    from omegaconf import open_dict

    from mqreid.data.base import id_arrays
    from mqreid.engine.trainer import Trainer
    from mqreid.engine.validate import resolve_workers

    steps = 1 if ctx.smoke else 20
    size = ["input.height=64", "input.width=32", "train.batch_size=16", "train.num_instances=4",
            "train.bn_group=8"] if ctx.smoke else \
        ["input.height=256", "input.width=128", "train.batch_size=256", "train.num_instances=16",
         "train.bn_group=64", "train.num_workers=auto"]
    overrides = [*recipe_overrides(ctx), "backbone=resnet50", "backbone.pretrained=false", *size,
                 "train.channels_last=true", "train.precision=fp32"]
    cfg = compose_config(overrides)
    run_dir = ctx.work / "resnet"
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    start = time.perf_counter()
    trainer = Trainer(cfg, run_dir)
    train_cfg, input_cfg = cfg.train, cfg.input
    batch = train_cfg.batch_size
    workers = resolve_workers(train_cfg.num_workers, trainer.train_in_memory)
    # the loader's workers prefetch 2 batches each; the warm-up empties that head start before the clock runs
    warmup = 1 if ctx.smoke else 5 + 2 * workers
    train_cfg.iters = warmup + steps
    r.info("setup", f"ResNet-50 {input_cfg.height}x{input_cfg.width}, batch {batch} = "
                    f"{batch // train_cfg.num_instances} x {train_cfg.num_instances}, BatchNorm groups of "
                    f"{train_cfg.bn_group}, channels_last, {len(trainer.dataset.train)} training images "
                    f"{'in memory' if trainer.train_in_memory else 'read from files'}, {workers} loader workers, "
                    f"{steps} timed steps after {warmup}; built in {time.perf_counter() - start:.1f} s")
    labels = np.unique(id_arrays(trainer.dataset.train)[0], return_inverse=True)[1]
    trainer.build_memory(trainer.extract(trainer.dataset.train), labels, 0)
    ready = ReadyBatches(labels, warmup + steps, batch, train_cfg.num_instances,
                         (3, input_cfg.height, input_cfg.width), trainer.device)
    real_loader = trainer.train_loader

    def images_per_s(source) -> float:
        watch: Stopwatch | None = None

        def loader(epoch, epoch_labels):
            nonlocal watch
            watch = Stopwatch(source(epoch, epoch_labels), warmup, trainer.device)
            return watch

        trainer.train_loader = loader
        try:
            trainer.train_epoch(0, labels)  # ends by reading the losses: the device is done
        finally:
            trainer.train_loader = real_loader
        return steps * batch / (time.perf_counter() - watch.start)

    for precision in ("fp32", "bf16"):
        if ctx.smoke and precision == "bf16":
            r.skip(f"{precision}: step with its loader", SMOKE_LEAVES_OUT)
            continue
        trainer.precision = precision
        alone = images_per_s(lambda epoch, epoch_labels: ready)
        fed = images_per_s(real_loader)
        r.info(f"{precision}: model alone", f"{alone:.3g} img/s")
        r.check(f"{precision}: step with its loader", f"{fed:.3g} img/s = {fed / alone:.0%} of the model alone",
                fed >= LOADER_SHARE * alone, f">= {LOADER_SHARE:.0%} of the model alone", scope="GPU")
    if torch.cuda.is_available() and trainer.on_cuda:
        r.info("peak GPU memory", f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


def clustered_features(n: int, dim: int, device, seed: int = 0):
    """[n, dim] float32 unit rows made on ``device`` and their identities [n]: identity centres in groups of
    ~10 similar ones and per-identity noise (the recipe of bench/bench_cluster.py, in torch)."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator(device=device).manual_seed(seed)
    ids = max(2, n // 30)
    labels = torch.randint(0, ids, (n,), generator=gen, device=device)
    groups = torch.randn(ids // 10 + 1, dim, generator=gen, device=device)
    centres = groups[torch.randint(0, len(groups), (ids,), generator=gen, device=device)]
    centres += 0.45 * torch.randn(ids, dim, generator=gen, device=device)
    noise = torch.rand(ids, generator=gen, device=device) * 0.6 + 1.0
    noise *= math.sqrt(1 + 0.45**2)
    x = torch.empty(n, dim, device=device)
    for s in range(0, n, 1 << 14):
        part = labels[s:s + (1 << 14)]
        chunk = torch.randn(len(part), dim, generator=gen, device=device) * noise[part, None] + centres[part]
        x[s:s + len(part)] = F.normalize(chunk, dim=1)
    return x, labels


def gemm_seconds(x, block: int = 8192) -> float:
    """Seconds of every similarity of ``x`` [N, D] with itself (x @ x.T, ``block`` rows at a time)."""
    import torch

    buf = torch.empty(min(block, len(x)), len(x), device=x.device)
    torch.matmul(x[:256], x.T, out=buf[:256])  # warm-up
    synchronize(x.device)
    start = time.perf_counter()
    for s in range(0, len(x), block):
        rows = min(block, len(x) - s)
        torch.matmul(x[s:s + rows], x.T, out=buf[:rows])
    synchronize(x.device)
    return time.perf_counter() - start


class LastMessages(logging.Handler):
    """Keeps the last log message of the clusterers (their step-by-step timings)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.endswith(".knn"):
            self.last = record.getMessage()


def section_cluster(r: Report, ctx: Context) -> None:
    import numpy as np
    import torch
    from sklearn.metrics import adjusted_rand_score

    from mqreid.cluster import DBSCANClusterer, InfomapClusterer

    torch.backends.cuda.matmul.allow_tf32 = False  # as the trainer: the exact kNN is full float32
    handler = LastMessages()
    logger = logging.getLogger("mqreid.cluster")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    dim = 64 if ctx.smoke else 2048
    sizes = [2000] if ctx.smoke else [30_000, 100_000]
    compare_at = sizes[0]
    # Infomap at the package's default min_sim 0.5 leaves >90 % of these features without links; 0.3 gives
    # a few hundred clusters. Infomap runs on the host whatever the device: timed at the smaller size only.
    clusterers = {"DBSCAN": lambda: DBSCANClusterer(), "Infomap": lambda: InfomapClusterer(min_sim=0.3)}
    r.info("clusterers", "DBSCAN eps 0.6, k1 30, k2 6 (the defaults); Infomap k 14, min_sim 0.3; knn=auto")
    for n in sizes:
        start = time.perf_counter()
        x, truth = clustered_features(n, dim, ctx.device)
        synchronize(ctx.device)
        r.info(f"{n} x {dim}: features", f"made on {ctx.device} in {time.perf_counter() - start:.1f} s")
        floor = gemm_seconds(x)
        r.info(f"{n} x {dim}: GEMM x @ x.T", f"{floor:.3g} s ({2 * n * n * dim / floor / 1e12:.3g} TFLOP/s, fp32)")
        truth_np = truth.cpu().numpy()
        for name, make in clusterers.items():
            if name == "Infomap" and n != compare_at:
                continue
            if ctx.left() < 15:
                r.skip(f"{n}: {name}", f"{ctx.left():.0f} s left in the section")
                continue
            synchronize(ctx.device)
            start = time.perf_counter()
            labels = make().fit_predict(x)
            seconds = time.perf_counter() - start
            clusters = int(labels.max()) + 1
            r.info(f"{n}: {name} on {ctx.device}", f"{seconds:.1f} s = {seconds / floor:.0f} x GEMM; {clusters} "
                   f"clusters, {100 * np.mean(labels < 0):.0f}% outliers, ARI to the identities "
                   f"{adjusted_rand_score(truth_np, labels):.3f}")
            r.info(f"{n}: {name} steps", handler.last)
            if n != compare_at:
                continue
            start = time.perf_counter()
            cpu_labels = make().fit_predict(x.cpu())
            seconds = time.perf_counter() - start
            r.info(f"{n}: {name} on the CPU", f"{seconds:.1f} s; {handler.last}")
            ari = adjusted_rand_score(cpu_labels, labels)
            r.check(f"{n}: {name} labels, {ctx.device} against CPU", f"ARI {ari:.5f}, {clusters} clusters",
                    ari >= CLUSTER_ARI and clusters > 1, f"ARI >= {CLUSTER_ARI}, more than one cluster")
        del x
        if ctx.device == "cuda":
            torch.cuda.empty_cache()


def section_eval(r: Report, ctx: Context) -> None:
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from bench_eval import SCALES, make_split

    from mqreid.evaluation import evaluate_features

    torch.backends.cuda.matmul.allow_tf32 = False
    size = dict(num_q=200, num_g=1000, num_ids=50, num_cams=6) if ctx.smoke else SCALES["msmt"]
    dim = 64 if ctx.smoke else 2048
    fraction = 1.0 if ctx.smoke else 0.25
    q, g, q_pids, g_pids, q_cams, g_cams = make_split(**size, dim=dim, noise=3.2, camera_shift=0.5,
                                                      device=torch.device(ctx.device))
    r.info("features", f"{size['num_q']} queries x {size['num_g']} gallery x {dim}, {size['num_ids']} ids, "
                       f"{size['num_cams']} cameras (bench/bench_eval.py's split)")

    def timed(*args):
        synchronize(ctx.device)
        start = time.perf_counter()
        out = evaluate_features(*args)
        synchronize(ctx.device)
        return time.perf_counter() - start, out

    timed(q[:64], g, q_pids[:64], g_pids, q_cams[:64], g_cams)  # warm-up
    seconds, full = timed(q, g, q_pids, g_pids, q_cams, g_cams)
    r.check(f"{ctx.device}: all queries", f"{seconds:.2f} s, mAP {100 * full['mAP']:.2f}, "
            f"R1 {100 * full['cmc'][0]:.2f}", seconds <= EVAL_CUDA_S, f"<= {EVAL_CUDA_S:g} s", scope="GPU")
    rows = torch.arange(0, size["num_q"], round(1 / fraction), device=q.device)
    what = "all queries" if fraction == 1 else f"every {round(1 / fraction)}th query ({len(rows)})"
    device_s, device_out = timed(q[rows], g, q_pids[rows], g_pids, q_cams[rows], g_cams)
    cpu = [t.cpu() for t in (q[rows], g, q_pids[rows], g_pids, q_cams[rows], g_cams)]
    cpu_s, cpu_out = timed(*cpu)
    r.info(f"CPU, {what}", f"{cpu_s:.1f} s on {torch.get_num_threads()} threads ({device_s:.2f} s on {ctx.device})")
    gap = abs(device_out["mAP"] - cpu_out["mAP"])
    r.check(f"mAP, {ctx.device} against CPU ({what})", f"{100 * device_out['mAP']:.4f} vs "
            f"{100 * cpu_out['mAP']:.4f} (difference {gap:.1e}); R1 {100 * device_out['cmc'][0]:.2f} vs "
            f"{100 * cpu_out['cmc'][0]:.2f}", gap <= MAP_TOL, f"within {MAP_TOL:g}")


def section_onnx(r: Report, ctx: Context) -> None:
    import torch

    from mqreid.tools.export import export_onnx, onnx_max_abs_diff
    from mqreid.inference import ReIDModel
    from mqreid.models import build_model

    have_onnxscript = importlib.util.find_spec("onnxscript") is not None
    arch, height, width = ("small_cnn", 64, 32) if ctx.smoke else ("resnet50", 256, 128)
    device = torch.device(ctx.device)
    for exporter in ("torchscript", "dynamo"):
        name = f"{arch} {height}x{width}, {exporter} exporter"
        if ctx.smoke and exporter == "dynamo":
            r.skip(name, SMOKE_LEAVES_OUT)
            continue
        if exporter == "dynamo" and not have_onnxscript:
            r.skip(name, "onnxscript is not installed (bench/wheels carries it)")
            continue
        if ctx.left() < 15:
            r.skip(name, f"{ctx.left():.0f} s left in the section")
            continue
        torch.manual_seed(0)
        network = build_model(arch, pretrained=False).to(device)
        network.train()
        with torch.no_grad():  # BatchNorm statistics of the inputs, so that eval-mode activations stay in range
            for _ in range(3):
                network(torch.randn(16, 3, height, width, device=device))
        model = ReIDModel(network, (height, width), device=device, batch_size=8, config={"train": {"precision": "fp32"}})
        path = ctx.work / f"{arch}_{exporter}.onnx"
        start = time.perf_counter()
        export_onnx(model, path, exporter=exporter)
        r.info(f"{name}: export", f"{time.perf_counter() - start:.1f} s, {path.stat().st_size / 1e6:.1f} MB")
        tf32 = torch.backends.cudnn.allow_tf32
        try:
            torch.backends.cudnn.allow_tf32 = False
            diff = onnx_max_abs_diff(path, model, batch_size=4)
            torch.backends.cudnn.allow_tf32 = True
            diff_tf32 = onnx_max_abs_diff(path, model, batch_size=4)
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
        r.check(f"{name}: onnxruntime (CPU) against torch on {ctx.device}", f"max abs difference {diff:.2e}",
                diff < ONNX_TOL, f"< {ONNX_TOL:g}, fp32 with cudnn.allow_tf32=False")
        if device.type == "cuda":
            r.info(f"{name}: the same with TF32 convolutions (torch's default)", f"{diff_tf32:.2e}")
            ort_cuda_diff(r, name, path, model)


def ort_cuda_diff(r: Report, name: str, path: Path, model) -> None:
    """onnxruntime's CUDA provider against torch, when that provider is there (an INFO row)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        r.info(f"{name}: onnxruntime CUDA provider", "not available (onnxruntime runs on the CPU)")
        return
    images = torch.randn(4, 3, *model.input_size, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
    out = session.run(["features"], {"images": images.numpy()})[0]
    r.info(f"{name}: onnxruntime CUDA against torch", f"{np.abs(out - model.embed_normalized(images).numpy()).max():.2e}")


SECTION_FUNCTIONS: dict[str, Callable[[Report, Context], None]] = {
    "environment": section_environment, "e2e": section_e2e, "resume": section_resume,
    "torchrun": section_torchrun, "resnet": section_resnet, "cluster": section_cluster, "eval": section_eval,
    "onnx": section_onnx,
}


# ---------------------------------------------------------------------------------------------- the parent
def missing_modules() -> list[str]:
    return [m for m in ("hydra", "omegaconf", "infomap") if importlib.util.find_spec(m) is None]


def install_wheels(target: Path) -> str:
    """Install the wheels of bench/wheels whose module does not import into ``target``: with pip when it is
    there (no index, no dependencies), else by unpacking them (a wheel is a zip of its installed files)."""
    wheels = []
    for wheel in sorted(WHEELS.glob("*.whl")):
        module = WHEEL_MODULES.get(wheel.name.split("-")[0].lower())
        if module is None or importlib.util.find_spec(module) is None:
            wheels.append(wheel)
    if not wheels:
        return ""
    target.mkdir(parents=True, exist_ok=True)
    names = ", ".join(w.name.split("-")[0] for w in wheels)
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet",
                          "--disable-pip-version-check", "--target", str(target), *map(str, wheels)],
                         capture_output=True, text=True)
    if pip.returncode == 0:
        return f"{names} (pip --target {target})"
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(target)
    return f"{names} (unpacked into {target}; pip said: {pip.stderr.strip().splitlines()[-1:]})"


def prepare_environment(work: Path) -> tuple[dict[str, str], str]:
    """The environment of the section processes: src/ (and the installed wheels) on PYTHONPATH."""
    paths = [str(SRC)]
    installed = ""
    if missing_modules() and WHEELS.is_dir():
        target = work / "site"
        installed = install_wheels(target)
        if installed:
            paths.append(str(target))
    env = dict(os.environ, WANDB_MODE="disabled", WANDB_SILENT="true", PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1",
               MQREID_GPU_CHECK_WHEELS=installed)
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env, installed


def run_section(name: str, args: argparse.Namespace, env: dict[str, str], work: Path, data_root: Path,
                deadline: float, log) -> tuple[list[dict], dict]:
    """Run one section in its own process; its rows, and a summary (seconds, exit status)."""
    rows_path = work / f"{name}.rows.jsonl"
    out_path = work / f"{name}.out"
    section_work = work / name
    section_work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--rows", str(rows_path),
           "--work", str(section_work), "--data-root", str(data_root), "--deadline", str(deadline)]
    cmd += ["--smoke"] if args.smoke else []
    rc, seconds = run_logged(cmd, out_path, deadline - time.time() + 10, env)  # the worker watches its deadline
    rows = read_jsonl(rows_path)
    text = tail(out_path, 20000)
    log.write(f"\n===== {name}: {outcome(rc, seconds, out_path)}\n{text}\n")
    log.flush()
    if rc != 0:
        status = "timed out" if rc is None else f"exit {rc}"
        rows.append({"section": name, "measure": "section ran to the end", "value": f"{status} after {seconds:.0f} s: "
                     f"{last_error_line(out_path)}", "criterion": "no error, within its time", "status": FAIL})
    elif not rows:
        rows.append({"section": name, "measure": "section reported", "value": "no row", "criterion": "rows written",
                     "status": FAIL})
    return rows, {"seconds": round(seconds, 1), "exit": rc}


def section_status(rows: list[dict]) -> str:
    statuses = {row["status"] for row in rows}
    for status in (FAIL, PASS, INFO):
        if status in statuses:
            return status
    return SKIP


def cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def markdown(rows: list[dict], header: list[str], summary: dict[str, dict]) -> str:
    lines = [*header, "", "| section | measure | value | criterion | result |", "|---|---|---|---|---|"]
    lines += [f"| {row['section']} | {cell(row['measure'])} | {cell(row['value'])} | {cell(row['criterion'])} | "
              f"{row['status']} |" for row in rows]
    lines += ["", "| section | result | seconds | criterion |", "|---|---|---|---|"]
    lines += [f"| {name} | {s['status']} | {s['seconds']} | {CRITERIA[name]} |" for name, s in summary.items()]
    counts = {status: sum(row["status"] == status for row in rows) for status in (PASS, FAIL, SKIP, INFO)}
    lines += ["", ", ".join(f"{n} {status}" for status, n in counts.items())]
    return "\n".join(lines) + "\n"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git metadata)"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of: {', '.join(SECTIONS)}")
    p.add_argument("--smoke", action="store_true", help="every section on the CPU at toy sizes")
    p.add_argument("--out", default=None, help="where the table goes (default $OUT, else bench/gpu_check_out)")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds for the whole check (default {BUDGET_S}; {SMOKE_BUDGET_S} with --smoke)")
    p.add_argument("--data-root", default=None,
                   help="the datasets and warm starts (default: data/ of the tree; with --smoke a fresh folder)")
    p.add_argument("--keep", action="store_true", help="keep the working folder (run directories, outputs)")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--rows", default=None, help=argparse.SUPPRESS)
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    p.add_argument("--deadline", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(args: argparse.Namespace) -> int:
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    signal.signal(signal.SIGTERM, stop_running)
    ctx = Context(args)
    report = Report(args.worker, Path(args.rows), ctx.smoke)
    SECTION_FUNCTIONS[args.worker](report, ctx)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        print(f"gpu_check: unknown section(s) {', '.join(unknown)}; expected: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    out = Path(args.out or os.environ.get("OUT") or REPO / "bench" / "gpu_check_out")
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget or (SMOKE_BUDGET_S if args.smoke else BUDGET_S)
    started = time.time()
    end = started + budget
    work = Path(tempfile.mkdtemp(prefix="mqreid-gpu-check-"))
    data_root = Path(args.data_root).resolve() if args.data_root else (work / "data" if args.smoke else REPO / "data")
    env, installed = prepare_environment(work)
    rows: list[dict] = []
    summary: dict[str, dict] = {}
    mode = "smoke (CPU, toy sizes)" if args.smoke else "GPU"
    print(f"gpu_check: {mode}; sections {', '.join(names)}; budget {budget:.0f} s; work {work}; data {data_root}"
          + (f"; installed {installed}" if installed else ""), flush=True)
    with open(out / "gpu_check.log", "w") as log:
        for name in names:
            limit = SECTIONS[name][1 if args.smoke else 0]
            left = end - time.time()
            if left < 10:
                rows.append({"section": name, "measure": "section", "value": f"{left:.0f} s of the budget left",
                             "criterion": CRITERIA[name], "status": SKIP})
                summary[name] = {"status": SKIP, "seconds": 0, "exit": None}
                continue
            print(f"--- {name} (at most {min(limit, left):.0f} s)", flush=True)
            section_rows, info = run_section(name, args, env, work, data_root, time.time() + min(limit, left), log)
            for row in section_rows:
                print(f"  [{row['status']}] {row['measure']}: {row['value']}", flush=True)
            rows += section_rows
            summary[name] = {"status": section_status(section_rows), **info}
    seconds = time.time() - started
    header = [f"# mqreid GPU check: {mode}", "",
              f"- command: {' '.join([Path(sys.executable).name, *sys.argv])}",
              f"- commit: {git_commit()}; date {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; "
              f"host {platform.node()}; {seconds:.0f} s of a {budget:.0f} s budget",
              f"- wheels installed from bench/wheels: {installed or 'none needed'}"]
    text = markdown(rows, header, summary)
    (out / "gpu_check.md").write_text(text)
    (out / "gpu_check.json").write_text(json.dumps({"mode": "smoke" if args.smoke else "gpu", "seconds": round(seconds, 1),
                                                    "budget": budget, "commit": git_commit(), "sections": summary,
                                                    "criteria": CRITERIA, "rows": rows}, indent=2))
    print("\n" + text, flush=True)
    print(f"written: {out / 'gpu_check.md'}, {out / 'gpu_check.json'}, {out / 'gpu_check.log'}", flush=True)
    if args.keep:
        print(f"working folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if any(row["status"] == FAIL for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
