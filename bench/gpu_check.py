"""One prepared check of mqreid on a CUDA machine: every GPU path, the multi-process ones included, judged
against stated criteria within a fixed time.

    python bench/gpu_check.py [--sections bn_span,e2e,...] [--out DIR] [--cap NAME=SECONDS ...]
    python bench/gpu_check.py --plan [--smoke]      # the sections and their time caps, as JSON
    python bench/gpu_check.py --smoke [--out DIR]    # every section on the CPU at toy sizes (gloo)

Made for a GPU machine lent for a few minutes, once, without network or package registry: it runs from the
source tree (``src/`` is put on the path, no ``pip install -e``), installs the wheels of ``bench/wheels/``
(``bash bench/gpu_wheels.sh`` fills it) into a temporary folder when hydra, omegaconf, infomap or timm do not
import, and uses the synthetic set and warm start under ``data/`` when they travel with the tree.

Time. Each section runs in a process of its own under a cap (:data:`SECTIONS`); the caps add up to less than
the budget (:data:`BUDGET_S`), so no section is starved by the ones before it, and the sections run in order
of importance, so a check cut short loses the least useful ones. A step that does not fit in what is left of
its section's cap is a SKIP with the reason, and a section still running at its cap is ended and reported as
a SKIP naming the step it was in: running out of time is never a FAIL.

Processes. No process started by the check outlives it. Each section runs in a process group of its own,
every process the check starts carries a marker in its environment (:data:`MARKER`), and after each section,
and when the check itself is stopped (SIGTERM, SIGINT, SIGHUP), the check ends its section's process group and
then every process that carries its marker, whatever session it moved to (torchrun starts its workers in
sessions of their own). A section process also ends its children when the check dies (Linux's parent-death
signal).

Every row is PASS or FAIL against the criterion printed next to it, SKIP (not run, with the reason) or INFO (a
figure without a criterion). The table is printed and written to ``--out`` (default ``$OUT`` when set, else
``bench/gpu_check_out/``) as ``gpu_check.md`` and ``gpu_check.json``, with every section's output in
``gpu_check.log``. The exit status is 1 when a row FAILs, 128 + the signal when the check was stopped.

Sections (in the order they run; criteria in :data:`CRITERIA`; docs/gpu-check.md says more):

- ``environment``: Python, torch, CUDA, the GPU, NCCL, TF32 switches, which optional packages import.
- ``bn_span``: BatchNorm groups that span processes. Two ranks on one device over gloo (NCCL refuses two ranks
  on one GPU) with GhostBatchNorm groups spread over both, against one process: forward, backward, running
  statistics, evaluation mode, for single layers (fp32, bf16, channels_last) and a whole backbone. Then torch's
  SyncBatchNorm kernels in a 1-rank NCCL group against ``F.batch_norm`` (fp32, bf16, channels_last).
- ``e2e``: the default recipe trained on the device in fp32, bf16 and fp16 (finite losses, it learns, peak
  memory), and the fp32 run's weights evaluated in each precision (features and mAP agree).
- ``sync``: host synchronisations counted in the steady-state training step and in extraction
  (``torch.cuda.set_sync_debug_mode``); each one left is named with its reason.
- ``shapes``: ResNet-50 at 256x128, step time and peak memory at the presets' per-GPU batches 256, 64, 32 and
  16 (1, 4, 8 and 16 GPUs), with ``train.bn_group`` 64 and null, fp32 and bf16; the step with its loader (the
  presets' input pipeline) against the model alone; the ViT backbones when ``conf/backbone/`` has them.
- ``torchrun``: the trainer in 2 processes sharing the GPU (torchrun, gloo), BatchNorm groups spanning both.
- ``resume``: deterministic mode (the synthetic warm start's training included) and exact resume.
- ``cluster``, ``eval``, ``onnx``: clustering, evaluation at MSMT17 size and ONNX export on the GPU, each
  against the CPU.

``--smoke`` runs the same code on the CPU at toy sizes (the tests' tiny set, ResNet-50 at 64x32, 2k x 64
clustering, 2 processes on gloo), so the check keeps working while no GPU is around; criteria that only mean
something on a GPU or at full size are then reported as INFO, and what is CUDA-only or only repeats code
already run and is slow on a CPU is a SKIP.
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
import traceback
import uuid
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
CONF = REPO / "conf"
WHEELS = REPO / "bench" / "wheels"

PASS, FAIL, SKIP, INFO = "PASS", "FAIL", "SKIP", "INFO"
MARKER = "MQREID_GPU_CHECK_RUN"  # environment variable every process of one check carries (its value: the run)

# The whole check on the GPU machine. A lent machine gives about 15 minutes, its start and the transfers
# included: 8 minutes of checks leave time for those and for reading the output.
BUDGET_S = 480
SMOKE_BUDGET_S = 3300  # --smoke: the caps only catch a hang on a small, possibly busy CPU machine
# seconds each section may take (on the GPU, in --smoke), most important first. The GPU caps add up to 460 s:
# the other 20 s of the budget install the wheels and end sections. What each holds is sized in
# docs/gpu-check.md.
SECTIONS: dict[str, tuple[int, int]] = {
    "environment": (20, 120),
    "bn_span": (40, 240),
    "e2e": (90, 480),
    "sync": (30, 240),
    "shapes": (85, 480),
    "torchrun": (40, 300),
    "resume": (55, 600),
    "cluster": (50, 240),
    "eval": (25, 120),
    "onnx": (25, 240),
}
GRACE_S = (5, 20)  # a section's own deadline comes this long before its cap (GPU, smoke): time to report
PRECISIONS = ("fp32", "bf16", "fp16")
SMOKE_LEAVES_OUT = "repeats code run in smoke mode and is slow on a CPU: run on the GPU only"

# criteria
BN_TOL = {"fp32": 1e-4, "bf16": 2e-2}  # relative error of a BatchNorm group spread over ranks vs one process
# the same for a whole backbone (fp32, TF32 off). Its gradients carry float32 rounding amplified by cancellation
# in the backward pass of the BatchNorm before the pooling (the gradient there is nearly constant over the
# image): up to 7e-3 for a single tensor of small_cnn on the CPU, whose gradient is nearly zero, so the gradients are
# compared as one vector. Statistics not shared between the ranks (the fault this looks for) give errors of 0.48
# (features), 0.57 (gradients) and 0.012 (running statistics) there.
MODEL_TOL = {"features": 1e-3, "running statistics": 1e-3, "gradients": 1e-2}
COSINE_MIN = {"bf16": 0.99, "fp16": 0.999}   # same weights: each image's feature against fp32's
SAME_WEIGHTS_MAP = {"bf16": 1.0, "fp16": 0.5}  # same weights: |mAP - fp32's mAP|, points
LOSS_TOL = 1e-6           # resumed run: loss equal to this
LOADER_SHARE = 0.90       # step with its loader >= this share of the model alone
GHOST_COST = 1.10         # bn_group=64 step time <= this times bn_group=null's (ResNet-50, per-GPU batch 256)
CLUSTER_ARI = 0.999       # GPU labels against the CPU path's
MAP_TOL = 1e-4            # CUDA mAP against CPU mAP (fractions, not percent)
EVAL_CUDA_S = 30.0        # evaluation at MSMT17 size on CUDA
ONNX_TOL = 1e-4           # onnxruntime against torch, fp32
CRITERIA = {
    "environment": "CUDA is available; hydra, omegaconf, infomap and mqreid import",
    "bn_span": f"groups within one process equal one BatchNorm call per group; a BatchNorm group spread over 2 "
               f"ranks equals one process's BatchNorm (relative error <= "
               f"{BN_TOL['fp32']:g} fp32, {BN_TOL['bf16']:g} bf16; a backbone's step within "
               f"{'/'.join(f'{v:g}' for v in MODEL_TOL.values())} for {', '.join(MODEL_TOL)}); SyncBatchNorm's kernels "
               f"equal F.batch_norm to the same tolerances",
    "e2e": f"each precision trains with finite losses and ends above its initial mAP; from the fp32 run's "
           f"weights, bf16/fp16 features have cosine >= {COSINE_MIN['bf16']}/{COSINE_MIN['fp16']} to fp32's and "
           f"mAP within {SAME_WEIGHTS_MAP['bf16']:g}/{SAME_WEIGHTS_MAP['fp16']:g} points",
    "sync": "no host synchronisation in the steady-state step or per extraction batch; each one left has a "
            "stated reason",
    "shapes": f"with its loader the step reaches >= {LOADER_SHARE:.0%} of the model alone (batch 256); "
              f"bn_group=64 costs <= {GHOST_COST:.2f} x bn_group=null (batch 256)",
    "torchrun": "2 processes on one GPU (gloo) finish with results.json of world_size 2",
    "resume": f"the deterministic warm start trains; the three runs finish; every metrics.jsonl row equal "
              f"(loss within {LOSS_TOL:g}), time_* aside",
    "cluster": f"ARI(GPU labels, CPU labels) >= {CLUSTER_ARI} at 30k, more than one cluster",
    "eval": f"|mAP(CUDA) - mAP(CPU)| <= {MAP_TOL:g} on the same features; CUDA at MSMT17 size <= {EVAL_CUDA_S:g} s",
    "onnx": f"max |onnxruntime - torch on CUDA| < {ONNX_TOL:g} in fp32 (TF32 off)",
}

# the tests' tiny set (tests/conftest.py TINY) for --smoke
TINY = [
    "dataset.num_train_ids=8", "dataset.num_test_ids=6", "dataset.num_cameras=3",
    "dataset.camera_shift=0.3", "dataset.noise=0.3", "dataset.occlusion=0.1",
    "train.iters=2", "train.batch_size=16", "train.num_instances=4", "train.bn_group=8",
    "train.test_batch_size=128", "train.num_workers=0", "backbone.pretrained=false", "clusterer.eps=0.4",
]
# the input pipeline of every preset (conf/config.yaml): no colour jitter and no camera centring, which only
# the synthetic recipe adds
PRESET_PIPELINE = ["input.color_jitter=0.0", "train.camera_centering=false"]
# from random weights the small CNN's features make one giant cluster at DBSCAN's eps 0.6 on the synthetic set;
# eps 0.45 gives tens of clusters from the first epoch
NO_WARM_START = ["backbone.pretrained=false", "clusterer.eps=0.45"]
# (distribution as the wheel names it, module it provides)
WHEEL_MODULES = {"hydra_core": "hydra", "omegaconf": "omegaconf", "antlr4_python3_runtime": "antlr4",
                 "pyyaml": "yaml", "infomap": "infomap", "onnxscript": "onnxscript", "onnx_ir": "onnx_ir",
                 "timm": "timm"}
VIT_BACKBONES = ("vit_small", "vit_small_ics")  # timed in `shapes` when conf/backbone/<name>.yaml exists


def plan(smoke: bool, names: list[str] | None = None, caps: dict[str, int] | None = None) -> dict[str, Any]:
    """``{"budget": seconds, "sections": {name: cap seconds}}`` in the order the sections run."""
    column = 1 if smoke else 0
    chosen = names or list(SECTIONS)
    sections = {name: (caps or {}).get(name, SECTIONS[name][column]) for name in SECTIONS if name in chosen}
    return {"budget": SMOKE_BUDGET_S if smoke else BUDGET_S, "sections": sections}


# ---------------------------------------------------------------------------------------------- processes
class CheckInterrupted(Exception):
    """The check received a stop signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _proc_stat(pid: int) -> tuple[int, str] | None:
    """``(parent pid, state letter)`` of a process from /proc, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2:].split()
    return int(fields[1]), fields[0]


def ancestors(pid: int) -> set[int]:
    """``pid`` and the processes above it."""
    out = {pid}
    while pid > 1:
        stat = _proc_stat(pid)
        if stat is None:
            break
        pid = stat[0]
        out.add(pid)
    return out


def marked_processes(token: str, exclude: set[int] = frozenset()) -> list[int]:
    """The live processes (zombies aside) whose environment carries ``MARKER=token``. Linux only (/proc)."""
    needle = f"{MARKER}={token}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*") if Path("/proc").is_dir() else []:
        pid = int(entry.name)
        if pid in exclude:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        stat = _proc_stat(pid)
        if needle in environ.split(b"\0") and stat is not None and stat[1] not in "ZX":
            found.append(pid)
    return found


def end_processes(pids: list[int], wait: float = 3.0) -> list[int]:
    """SIGTERM to ``pids``, SIGKILL to those still alive after ``wait`` seconds; returns ``pids``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = [pid for pid in pids if (_proc_stat(pid) or (0, "X"))[1] not in "ZX"]
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        end = time.time() + wait
        while alive and time.time() < end:
            time.sleep(0.05)
            alive = [pid for pid in alive if (_proc_stat(pid) or (0, "X"))[1] not in "ZX"]
        if not alive:
            break
    return pids


def sweep(token: str) -> list[int]:
    """End every process of this check but this one and its ancestors; the pids that were ended."""
    return end_processes(marked_processes(token, ancestors(os.getpid())))


def stop_group(pgid: int, wait: float = 3.0) -> None:
    """SIGTERM to the process group ``pgid``, SIGKILL after ``wait`` s if any of it is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        end = time.time() + wait
        while time.time() < end:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                return
            if not _group_alive(pgid):
                return
            time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is alive (zombies, which hold nothing, aside)."""
    if not Path("/proc").is_dir():
        return True
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rfind(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] not in "ZX":
            return True
    return False


def die_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


# ---------------------------------------------------------------------------------------------- rows
class Report:
    """The rows of one section, appended to a JSON-lines file as they come (a crash keeps the earlier ones);
    :meth:`begin` names the step under way, so a section ended at its cap says where it was."""

    def __init__(self, section: str, path: Path, smoke: bool) -> None:
        self.section, self.path, self.smoke = section, path, smoke
        self.step_path = path.with_suffix(".step")

    def begin(self, step: str) -> None:
        self.step_path.write_text(step)

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

    def error(self, measure: str, err: BaseException) -> None:
        """A step that raised: FAIL with the exception (its traceback goes to the log)."""
        traceback.print_exception(err)
        self.add(measure, f"{type(err).__name__}: {str(err)[:300]}", "runs without error", FAIL)


class Context:
    """What a section worker knows: where to work, the data, the device, its deadline and its cap."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.smoke = bool(args.smoke)
        self.work = Path(args.work)
        self.data_root = Path(args.data_root)
        self.deadline = float(args.deadline)
        self.cap = float(args.cap_s)
        self.device = "cpu" if self.smoke else "cuda"
        self.env = dict(os.environ)

    def left(self) -> float:
        return self.deadline - time.time()

    def short(self, r: Report, measure: str, need: float) -> bool:
        """Whether fewer than ``need`` seconds are left (then ``measure`` is a SKIP saying so)."""
        if self.left() >= need:
            return False
        r.skip(measure, f"out of time: {max(0.0, self.left()):.0f} s left of the section's {self.cap:.0f} s cap, "
                        f"about {need:.0f} s needed")
        return True


# ---------------------------------------------------------------------------------------------- helpers
RUNNING: set[subprocess.Popen] = set()  # the commands a worker waits on: ended with it (stop_worker)


def run_logged(cmd: list[str], log: Path, timeout: float, env: dict[str, str] | None = None,
               cwd: Path = REPO) -> tuple[int | None, float]:
    """Run ``cmd`` in a process group of its own, ended with this process, with its output in ``log``; ``(exit
    status or None on timeout, seconds)``. On timeout the whole process group (e.g. torchrun) is ended."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=die_with_parent)
        RUNNING.add(proc)
        try:
            rc: int | None = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            stop_group(proc.pid)
            proc.wait()
            rc = None
        finally:
            RUNNING.discard(proc)
    return rc, time.perf_counter() - start


def stop_worker(signum, frame) -> None:
    """A section worker's handler of SIGTERM/SIGINT (the check ending it, or the check's death): end its
    commands' process groups and every other process of the check below the check itself, then exit."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for proc in list(RUNNING):
        stop_group(proc.pid)
    token = os.environ.get(MARKER)
    if token:
        sweep(token)
    os._exit(128 + signum)


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


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB"


def reset_peak(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak(device) -> str:
    import torch

    if torch.device(device).type != "cuda":
        return "n/a on the CPU"
    return gib(torch.cuda.max_memory_allocated(device))


def no_tf32() -> None:
    """Full float32 everywhere (comparisons between paths that would otherwise round differently)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def relative_error(a, b) -> float:
    """max |a - b| / max |b| (float64, on ``b``'s device; 0 when both are zero)."""
    b = b.detach().double()
    a = a.detach().to(b.device).double()
    scale = float(b.abs().max()) if b.numel() else 0.0
    return float((a - b).abs().max()) / scale if scale > 0 else float((a - b).abs().max() if a.numel() else 0.0)


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
            r.info("warm start", f"{where.name} (backbone.pretrained=synthetic)")
            return []
    r.info("warm start", f"{path.name} neither under {ctx.data_root} nor in the package: {' '.join(NO_WARM_START)}")
    return NO_WARM_START


def recipe_overrides(ctx: Context) -> list[str]:
    """The default recipe on this check's device and data, quiet and without pictures."""
    common = [f"data_root={ctx.data_root}", "progress=false", "logger=console", "train.cluster_gallery=false",
              f"device={ctx.device}"]
    return common + (TINY if ctx.smoke else [])


def build_trainer(ctx: Context, overrides: list[str], name: str):
    """A :class:`~mqreid.engine.trainer.Trainer` of ``overrides`` whose run directory is ``work/name``."""
    from omegaconf import open_dict

    from mqreid.engine.trainer import Trainer

    cfg = compose_config(overrides)
    run_dir = ctx.work / name
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)
    return Trainer(cfg, run_dir)


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


def pseudo_labels(trainer):
    """The training set's true identities as pseudo labels 0..n-1 (the steps timed here need labels, not
    clustering), and the memory built for them from the current features."""
    import numpy as np

    from mqreid.data.base import id_arrays

    labels = np.unique(id_arrays(trainer.dataset.train)[0], return_inverse=True)[1]
    trainer.build_memory(trainer.extract(trainer.dataset.train), labels, 0)
    return labels


class ReadyBatches:
    """Stands in for the epoch's loader: ``iters`` batches of random images already on the device, with
    pseudo labels drawn as the PK sampler does (``batch // k`` labels, ``k`` images each)."""

    def __init__(self, labels, iters: int, batch: int, k: int, shape: tuple[int, ...], device) -> None:
        import numpy as np
        import torch

        rng = np.random.default_rng(0)
        k = min(k, batch)
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
    """Wraps a loader: when batch ``warmup`` is handed out the device is synchronised, the clock starts and
    ``on_start`` runs; ``on_end`` runs when the loader is used up (after the last step)."""

    def __init__(self, loader, warmup: int, device, on_start: Callable[[], None] | None = None,
                 on_end: Callable[[], None] | None = None) -> None:
        self.loader, self.warmup, self.device, self.start = loader, warmup, device, None
        self.on_start, self.on_end = on_start, on_end

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.warmup:
                synchronize(self.device)
                self.start = time.perf_counter()
                if self.on_start:
                    self.on_start()
            yield batch
        if self.on_end:
            self.on_end()

    def __len__(self) -> int:
        return len(self.loader)


def time_epoch(trainer, labels, source, warmup: int, hooks: tuple = (None, None)) -> tuple[float, int]:
    """Run the trainer's ``train_epoch`` on ``source(epoch, labels)``; ``(seconds of the steps after the first
    ``warmup``, steps timed)``. train_epoch ends by reading the losses, so the device is done when it returns."""
    watch: Stopwatch | None = None
    real_loader = trainer.train_loader

    def loader(epoch, epoch_labels):
        nonlocal watch
        watch = Stopwatch(source(epoch, epoch_labels), warmup, trainer.device, *hooks)
        return watch

    trainer.train_loader = loader
    try:
        trainer.train_epoch(0, labels)
    finally:
        trainer.train_loader = real_loader
    return time.perf_counter() - watch.start, len(watch) - warmup


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
                      f"{props.minor}, {torch.cuda.device_count()} device(s); bf16 "
                      f"{'supported' if torch.cuda.is_bf16_supported() else 'not supported'}")
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
    try:
        from mqreid.cluster.knn import _faiss_support, choose_backend

        support = _faiss_support()
        r.info("faiss", {"none": "not installed: exact kNN by GEMM + top-k (knn=torch)",
                         "cpu": "CPU build only", "gpu": "GPU build"}.get(support, support))
        for n in (100_000, 400_000):
            choice = choose_backend("auto", n, 2048, ctx.device, support)
            r.info(f"knn=auto at {n // 1000}k x 2048 on {ctx.device}", f"{choice.backend} on {choice.device}: "
                                                                      f"{choice.reason}")
    except Exception as err:  # noqa: BLE001 - an informative row only
        r.info("knn=auto", f"not reported ({type(err).__name__}: {err})")
    from importlib.metadata import PackageNotFoundError, version

    for module in ("timm", "onnxscript", "onnxruntime"):
        value = "not installed"
        if importlib.util.find_spec(module) is not None:
            with contextlib.suppress(PackageNotFoundError):  # the version without importing the module
                value = version(module)
            if module == "onnxruntime":
                value += f", providers {', '.join(importlib.import_module(module).get_available_providers())}"
        r.info(module, value)


# ----- bn_span: BatchNorm groups spread over processes, on one device
def bn_layer_cases(smoke: bool) -> list[dict]:
    """The single-layer cases: one BatchNorm group of ``batch`` images spread over the ranks. On the GPU a group
    of 64 (the presets' BatchNorm group; 32 images per rank, the 8-GPU preset) of 256 channels (ResNet-50's first
    stage, at half its spatial size: what the ranks hand back is saved to disk), and the BN neck's [64, 2048]."""
    if smoke:
        image, vector = (16, 8, 8, 4), (16, 32)
    else:
        image, vector = (64, 256, 32, 16), (64, 2048)
    return [{"name": "fp32", "shape": image, "dtype": "fp32", "channels_last": False},
            {"name": "bf16", "shape": image, "dtype": "bf16", "channels_last": False},
            {"name": "fp32 channels_last", "shape": image, "dtype": "fp32", "channels_last": True},
            {"name": "BatchNorm1d fp32 (the neck)", "shape": vector, "dtype": "fp32", "channels_last": False}]


def bn_case_tensors(case: dict, device) -> dict:
    """The case's inputs, made on the CPU from a fixed seed (the same on every rank and in the reference):
    two training batches, an evaluation batch, the output gradient, the affine parameters and running stats."""
    import torch

    gen = torch.Generator().manual_seed(0)
    batch, channels = case["shape"][:2]
    dtype = torch.bfloat16 if case["dtype"] == "bf16" else torch.float32

    def image(scale=1.0, shift=0.0):
        x = (torch.randn(case["shape"], generator=gen) * scale + shift).to(device=device, dtype=dtype)
        return x.contiguous(memory_format=torch.channels_last) if case["channels_last"] else x

    # per-channel scales and shifts so that the statistics differ between channels and from the running ones
    scale = (0.5 + torch.rand(channels, generator=gen)).view(1, -1, *[1] * (len(case["shape"]) - 2))
    shift = torch.randn(channels, generator=gen).view_as(scale)
    return {"x1": image(scale, shift), "x2": image(scale, shift + 0.5), "x3": image(scale, shift),
            "grad": image(), "weight": (1 + 0.1 * torch.randn(channels, generator=gen)).to(device),
            "bias": (0.1 * torch.randn(channels, generator=gen)).to(device),
            "running_mean": (0.1 * torch.randn(channels, generator=gen)).to(device),
            "running_var": (1 + 0.1 * torch.rand(channels, generator=gen)).to(device)}


def bn_layer(case: dict, t: dict, device):
    import torch

    layer = (torch.nn.BatchNorm2d if len(case["shape"]) == 4 else torch.nn.BatchNorm1d)(case["shape"][1])
    with torch.no_grad():
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(layer, name).copy_(t[name])
    return layer.to(device)


def bn_layer_run(layer, t: dict, rows: slice) -> dict:
    """Two training steps (the first with a backward pass) and an evaluation pass of ``layer`` on ``rows`` of
    the case's batches; what is compared."""
    import torch

    layer.train()
    x = t["x1"][rows].detach().clone().requires_grad_(True)
    y = layer(x)
    (y.float() * t["grad"][rows].float()).sum().backward()
    with torch.no_grad():
        layer(t["x2"][rows])
        layer.eval()
        y_eval = layer(t["x3"][rows])
    return {"out": y.detach(), "grad_input": x.grad, "grad_weight": layer.weight.grad,
            "grad_bias": layer.bias.grad, "running_mean": layer.running_mean.detach().clone(),
            "running_var": layer.running_var.detach().clone(), "eval_out": y_eval}


def bn_model_case(smoke: bool) -> dict:
    arch, height, width, batch = ("small_cnn", 64, 32, 16) if smoke else ("resnet50", 256, 128, 64)
    return {"arch": arch, "height": height, "width": width, "batch": batch}


def bn_model_run(case: dict, device, group_size: int, rows: slice, process_group=None, ranks: int = 1) -> dict:
    """One training step of the whole backbone (GhostBatchNorm groups of ``group_size``) on ``rows`` of a
    fixed batch; features, the gradients (summed over ranks) and every BatchNorm buffer."""
    import torch
    import torch.distributed as dist

    from mqreid.models import build_model
    from mqreid.models.ghost_bn import convert_ghost_bn, set_process_group

    torch.manual_seed(0)
    model = convert_ghost_bn(build_model(case["arch"], pretrained=False), group_size)
    if ranks > 1:
        set_process_group(model, process_group, ranks)
    model = model.to(device)
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(case["batch"], 3, case["height"], case["width"], generator=gen)
    images = images.to(device)[rows]
    if torch.device(device).type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    model.train()
    features = model(images)
    grad = torch.randn(case["batch"], features.shape[1], generator=gen).to(device)[rows]
    (features * grad).sum().backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    if ranks > 1:
        for g in grads.values():
            dist.all_reduce(g, group=process_group)
    buffers = {name: b.detach().clone() for name, b in model.named_buffers() if b.is_floating_point()}
    return {"features": features.detach(), "grads": grads, "buffers": buffers}


def bn_span_rank(rank: int, world: int, work: str, device_name: str, smoke: bool) -> None:
    """One of the ranks of ``bn_span`` (torch.multiprocessing spawns it): joins a gloo group through a file,
    runs every case on its slice of the batch with the BatchNorm groups spread over all ranks, saves what is
    compared to ``work/rank<r>.pt``."""
    import torch
    import torch.distributed as dist

    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    die_with_parent()
    from mqreid.engine import distributed
    from mqreid.models.ghost_bn import convert_ghost_bn, set_process_group

    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        no_tf32()
    dist.init_process_group("gloo", init_method=f"file://{work}/rendezvous", rank=rank, world_size=world)
    try:
        group = distributed.group_of_consecutive_ranks(world)  # as the trainer forms its blocks of ranks
        out: dict[str, Any] = {}
        for case in bn_layer_cases(smoke):
            t = bn_case_tensors(case, device)
            batch = case["shape"][0]
            per_rank = batch // world
            layer = convert_ghost_bn(bn_layer(case, t, device), batch)
            set_process_group(layer, group, world)
            result = bn_layer_run(layer, t, slice(rank * per_rank, (rank + 1) * per_rank))
            for key in ("grad_weight", "grad_bias"):
                dist.all_reduce(result[key], group=group)
            out[case["name"]] = {k: v.cpu() for k, v in result.items()}
        model = bn_model_case(smoke)
        per_rank = model["batch"] // world
        result = bn_model_run(model, device, model["batch"], slice(rank * per_rank, (rank + 1) * per_rank), group,
                              world)
        out["model"] = {"features": result["features"].cpu(), "buffers": {k: v.cpu() for k, v in
                                                                         result["buffers"].items()}}
        if rank == 0:
            out["model"]["grads"] = {k: v.cpu() for k, v in result["grads"].items()}
        torch.save(out, Path(work) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def compare_bn(r: Report, name: str, got: dict, want: dict, tol: float) -> None:
    """One row: the largest relative error over the compared tensors, and which."""
    errors = {key: relative_error(got[key], want[key]) for key in want}
    worst = max(errors, key=errors.get)
    r.check(name, ", ".join(f"{k} {v:.1e}" for k, v in errors.items()), errors[worst] <= tol,
            f"relative error <= {tol:g} (worst: {worst})")


def groups_in_process(r: Report, ctx: Context, device) -> None:
    """BatchNorm groups within one process (the 1- and 2-GPU presets: 4 or 2 groups of 64 per GPU), against
    one F.batch_norm per group on the same device: output, input gradient, running statistics."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from mqreid.models.ghost_bn import convert_ghost_bn

    r.begin("BatchNorm groups within one process")
    for case in bn_layer_cases(ctx.smoke)[:3]:
        group, channels = case["shape"][:2]
        t = bn_case_tensors(dict(case, shape=(2 * group, *case["shape"][1:])), device)
        ghost = convert_ghost_bn(nn.BatchNorm2d(channels), group).to(device).train()
        x = t["x1"].detach().clone().requires_grad_(True)
        out = ghost(x)
        out.backward(t["x2"])
        ref_x = t["x1"].detach().clone().requires_grad_(True)
        mean, var = torch.zeros(channels, device=device), torch.ones(channels, device=device)
        runs = [(mean.clone(), var.clone()) for _ in range(2)]
        want = torch.cat([F.batch_norm(part, m, v, ghost.weight.detach(), ghost.bias.detach(), True, 0.1, 1e-5)
                          for part, (m, v) in zip(ref_x.split(group), runs)])
        want.backward(t["x2"])
        got = {"out": out.detach(), "grad_input": x.grad, "running_mean": ghost.running_mean}
        ref = {"out": want.detach(), "grad_input": ref_x.grad, "running_mean": (runs[0][0] + runs[1][0]) / 2}
        compare_bn(r, f"2 groups of {group} in one process, {case['name']} {tuple(t['x1'].shape)}", got, ref,
                   BN_TOL[case["dtype"]])


def section_bn_span(r: Report, ctx: Context) -> None:
    import torch

    world = 2
    device = torch.device("cpu" if ctx.smoke else "cuda:0")
    if device.type == "cuda":
        no_tf32()
    try:
        groups_in_process(r, ctx, device)
    except Exception as err:  # noqa: BLE001 - reported; the spans below are checked all the same
        r.error("BatchNorm groups within one process", err)
    try:
        groups_over_ranks(r, ctx, device, world)
    except Exception as err:  # noqa: BLE001 - reported; the kernels below are checked all the same
        r.error("BatchNorm groups over 2 ranks", err)
    r.begin("SyncBatchNorm kernels in a 1-rank NCCL group")
    if device.type != "cuda":
        r.skip("SyncBatchNorm kernels in a 1-rank NCCL group", "CUDA only: torch's SyncBatchNorm kernels "
               "(batch_norm_stats, ...) have no CPU version and NCCL needs CUDA")
        return
    try:
        sync_batchnorm_kernels(r, ctx, device)
    except Exception as err:  # noqa: BLE001
        r.error("SyncBatchNorm kernels in a 1-rank NCCL group", err)


def groups_over_ranks(r: Report, ctx: Context, device, world: int) -> None:
    """Each layer case and the backbone over ``world`` spawned ranks, against one process."""
    import torch
    import torch.multiprocessing as mp

    r.begin("two ranks over gloo")
    start = time.perf_counter()
    mp.start_processes(bn_span_rank, args=(world, str(ctx.work), str(device), ctx.smoke), nprocs=world,
                       join=True, start_method="spawn")
    ranks = [torch.load(ctx.work / f"rank{i}.pt", weights_only=True) for i in range(world)]
    r.info("two ranks", f"{world} processes on {device} over gloo, one BatchNorm group spread over both; ran in "
                        f"{time.perf_counter() - start:.1f} s")
    r.begin("against one process")
    for case in bn_layer_cases(ctx.smoke):
        t = bn_case_tensors(case, device)
        # the reference: torch's BatchNorm over the whole group in one process, in float32 from the same inputs
        ref_t = {k: (v.float() if k.startswith("x") or k == "grad" else v) for k, v in t.items()}
        want = bn_layer_run(bn_layer(case, t, device), ref_t, slice(None))
        got = {k: (torch.cat([rank[case["name"]][k] for rank in ranks]) if k in ("out", "grad_input", "eval_out")
                   else ranks[0][case["name"]][k]) for k in want}
        got["running_mean of rank 1"] = ranks[1][case["name"]]["running_mean"]
        want["running_mean of rank 1"] = want["running_mean"]
        compare_bn(r, f"group of {case['shape'][0]} over 2 ranks, {case['name']} {tuple(case['shape'])}", got,
                   want, BN_TOL[case["dtype"]])
    model = bn_model_case(ctx.smoke)
    want = bn_model_run(model, device, model["batch"], slice(None))
    got_features = torch.cat([rank["model"]["features"] for rank in ranks])
    grads = ranks[0]["model"]["grads"]
    # the gradients as one vector (a tensor whose gradient is nearly zero would make its own ratio meaningless)
    diff = sum(float((grads[k].to(v.device).double() - v.double()).square().sum()) for k, v in want["grads"].items())
    norm = sum(float(v.double().square().sum()) for v in want["grads"].values())
    worst = max(want["grads"], key=lambda k: float((grads[k].to(want["grads"][k].device) - want["grads"][k]).abs().max()))
    grad_error = (math.sqrt(diff / max(norm, 1e-300)), f"largest difference in {worst}")
    buffer_error = max((relative_error(rank["model"]["buffers"][k], v), k) for rank in ranks
                       for k, v in want["buffers"].items())
    errors = {"features": (relative_error(got_features, want["features"]), "all"),
              "running statistics": buffer_error, "gradients": grad_error}
    r.check(f"{model['arch']} {model['height']}x{model['width']}, group of {model['batch']} over 2 ranks: one "
            f"training step", "; ".join(f"{k} {v:.1e} ({where})" for k, (v, where) in errors.items()),
            all(errors[k][0] <= MODEL_TOL[k] for k in MODEL_TOL),
            "relative error <= " + ", ".join(f"{v:g} ({k})" for k, v in MODEL_TOL.items())
            + " (gradients: |a - b| / |b| over all parameters)")


def sync_batchnorm_kernels(r: Report, ctx: Context, device) -> None:
    """torch's SyncBatchNorm autograd function (what torch.nn.SyncBatchNorm calls with more than one rank, and
    what BatchNorm groups spanning NCCL processes use) in a 1-rank NCCL group against F.batch_norm, with the
    time of a forward + backward pass of each. torch.nn.SyncBatchNorm itself falls back to F.batch_norm in a
    1-rank group, so the function is called directly."""
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.modules._functions import SyncBatchNorm as SyncBatchNormFunction

    dist.init_process_group("nccl", init_method=f"file://{ctx.work}/nccl_rendezvous", rank=0, world_size=1,
                            device_id=device)
    group = dist.group.WORLD
    try:
        # ResNet-50's first stage at 256x128, a group of 64
        cases = [dict(case, shape=(64, 256, 64, 32)) for case in bn_layer_cases(False)[:3]]
        for case in cases + [{"name": "bf16 channels_last", "shape": (64, 256, 64, 32), "dtype": "bf16",
                              "channels_last": True}]:
            if ctx.short(r, f"SyncBatchNorm, {case['name']}", 3):
                continue
            t = bn_case_tensors(case, device)

            def run(fn, tensors):
                x = tensors["x1"].detach().clone().requires_grad_(True)
                weight, bias = (tensors[k].detach().clone().requires_grad_(True) for k in ("weight", "bias"))
                stats = [tensors["running_mean"].clone(), tensors["running_var"].clone()]
                y = fn(x, weight, bias, *stats)
                (y.float() * tensors["grad"].float()).sum().backward()
                return {"out": y.detach(), "grad_input": x.grad, "grad_weight": weight.grad, "grad_bias": bias.grad,
                        "running_mean": stats[0], "running_var": stats[1]}

            def sync_fn(x, weight, bias, mean, var):
                return SyncBatchNormFunction.apply(x, weight, bias, mean, var, 1e-5, 0.1, group, 1)

            def plain_fn(x, weight, bias, mean, var):
                return F.batch_norm(x, mean, var, weight, bias, True, 0.1, 1e-5)

            got = run(sync_fn, t)
            want = run(plain_fn, dict(t, x1=t["x1"].float(), grad=t["grad"].float()))  # float32, same inputs
            compare_bn(r, f"SyncBatchNorm function, 1-rank NCCL group, {case['name']} {tuple(case['shape'])}", got,
                       want, BN_TOL[case["dtype"]])
            times = {}
            for label, fn in (("SyncBatchNorm", sync_fn), ("F.batch_norm", plain_fn)):
                run(fn, t)
                synchronize(device)
                begin = time.perf_counter()
                for _ in range(10):
                    run(fn, t)
                synchronize(device)
                times[label] = (time.perf_counter() - begin) / 10 * 1e3
            r.info(f"forward + backward, {case['name']}", f"SyncBatchNorm {times['SyncBatchNorm']:.2f} ms, "
                   f"F.batch_norm {times['F.batch_norm']:.2f} ms (1 rank: its collectives move nothing)")
    finally:
        dist.destroy_process_group()


# ----- e2e: the default recipe in each precision, and one set of weights evaluated in each
def section_e2e(r: Report, ctx: Context) -> None:
    import torch

    from mqreid.data.base import id_arrays
    from mqreid.evaluation import evaluate_features

    base = recipe_overrides(ctx) + warm_start_overrides(ctx, r)
    base += ["train.epochs=1" if ctx.smoke else "train.epochs=2", "eval.every=2"]  # initial and final mAP
    r.info("overrides", " ".join(base[5:]) or "(the default recipe)")
    kept = None  # the fp32 trainer: its weights are evaluated in every precision below
    for precision in PRECISIONS:
        name = f"{precision}: training"
        if ctx.smoke and precision != "fp32":
            r.skip(name, SMOKE_LEAVES_OUT)
            continue
        if ctx.short(r, name, 20):
            continue
        r.begin(name)
        reset_peak(ctx.device)
        start = time.perf_counter()
        try:
            trainer = build_trainer(ctx, [*base, f"train.precision={precision}"], f"e2e_{precision}")
            results = trainer.fit()
        except Exception as err:  # noqa: BLE001 - the finding
            r.error(name, err)
            continue
        r.info(name, f"{time.perf_counter() - start:.0f} s; peak GPU memory {peak(ctx.device)}")
        rows = [row for row in trainer.history if row["epoch"] > 0]
        for row in trainer.history:
            r.info(f"{precision}: epoch {row['epoch']}", epoch_summary(row))
        losses = [row.get("loss") for row in rows]
        r.check(f"{precision}: losses", ", ".join(f"{x:.4f}" if x is not None else "none" for x in losses),
                bool(losses) and all(x is not None and math.isfinite(x) for x in losses),
                "every epoch trained, its loss finite")
        initial, final = results["initial"]["mAP"], results["final"]["mAP"]
        r.check(f"{precision}: mAP learnt", f"{initial:.1f} -> {final:.1f}", final > initial,
                "final mAP > initial mAP", scope="full size")
        if precision == "fp32":
            kept = trainer
        else:
            del trainer
    if kept is None:
        r.skip("the same weights in each precision", "the fp32 run did not finish")
        return
    # One set of weights, evaluated in each precision: no training noise, only the precision's rounding.
    items = kept.dataset.query + kept.dataset.gallery
    nq = len(kept.dataset.query)
    pids, cams = id_arrays(items)
    features, maps = {}, {}
    for precision in PRECISIONS:
        name = f"fp32 run's weights, extracted in {precision}"
        if ctx.short(r, name, 5):
            continue
        r.begin(name)
        kept.precision = precision
        try:
            features[precision] = kept.extract(items).float()
        except Exception as err:  # noqa: BLE001
            r.error(name, err)
            continue
        f = features[precision]
        out = evaluate_features(f[:nq], f[nq:], pids[:nq], pids[nq:], cams[:nq], cams[nq:])
        maps[precision] = 100 * float(out["mAP"])
        if precision == "fp32":
            r.info(name, f"mAP {maps[precision]:.2f} on {nq} queries x {len(items) - nq} gallery images")
            continue
        if "fp32" not in features:
            r.skip(name, "no fp32 features to compare with")
            continue
        cosine = (f * features["fp32"]).sum(1)
        finite = bool(torch.isfinite(f).all())
        gap = maps[precision] - maps["fp32"]
        r.check(f"{name}: features", f"cosine to fp32's: min {float(cosine.min()):.5f}, mean "
                f"{float(cosine.mean()):.6f}{'' if finite else '; NON-FINITE values'}",
                finite and float(cosine.min()) >= COSINE_MIN[precision],
                f"every image's cosine >= {COSINE_MIN[precision]}")
        r.check(f"{name}: mAP", f"{maps[precision]:.2f} vs {maps['fp32']:.2f} ({gap:+.2f})",
                abs(gap) <= SAME_WEIGHTS_MAP[precision], f"within {SAME_WEIGHTS_MAP[precision]:g} points of fp32's")
    kept.precision = "fp32"


# ----- sync: host synchronisations in the steady state
SYNC_MESSAGE = "called a synchronizing CUDA operation"
# why a synchronisation that happens once per epoch or extraction is there, by the package function it is in
SYNC_REASONS = {
    "train_epoch": "after the last step: the epoch's losses (the non-finite check, the logger) and temperatures "
                   "are read once",
    "extract_features": "after the last batch: the extracted features are assembled once",
    "extract_items": "after the last batch: the features are gathered and put in item order once",
    "extract": "after the last batch: the features are handed over once",
}


class SyncCounter:
    """Counts the host synchronisations CUDA's sync debug mode reports (one warning each) while it is on, by the
    innermost line of the package (src/mqreid) that led to each; off the GPU it sees nothing."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, str], int] = {}
        self.on = False
        self._saved = None

    def __enter__(self) -> "SyncCounter":
        self._catch = warnings.catch_warnings()
        self._catch.__enter__()
        warnings.filterwarnings("always", message=f".*{SYNC_MESSAGE}")
        self._saved = warnings.showwarning
        warnings.showwarning = self._show
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        warnings.showwarning = self._saved
        self._catch.__exit__(*exc)

    def start(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("warn")
        self.on = True

    def stop(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_sync_debug_mode("default")
        self.on = False

    def _show(self, message, category, filename, lineno, file=None, line=None) -> None:
        if SYNC_MESSAGE not in str(message):
            return self._saved(message, category, filename, lineno, file, line)
        if self.on:
            self.record(traceback.extract_stack()[:-1])
        return None

    def record(self, stack) -> None:
        """Count one synchronisation at the innermost frame of the package in ``stack`` (else the innermost
        frame that is not torch's or this script's)."""
        package = [f for f in stack if str(SRC) in str(Path(f.filename).resolve())]
        others = [f for f in stack if "torch" not in f.filename and Path(f.filename).name != Path(__file__).name]
        frame = (package or others or stack)[-1]
        where = Path(frame.filename)
        where = str(where.resolve().relative_to(SRC)) if package else where.name
        key = (f"{where}:{frame.lineno}", frame.name, (frame.line or "").strip())
        self.counts[key] = self.counts.get(key, 0) + 1

    def report(self, r: Report, what: str, repeats: int, unit: str) -> None:
        """Rows: the total, and one per place (per ``unit`` when it happened at least once per ``unit``, else
        with its reason). A place that syncs every ``unit`` or has no stated reason FAILs."""
        total = sum(self.counts.values())
        r.check(f"{what}: synchronisations", f"{total} over {repeats} {unit}s at {len(self.counts)} place(s)",
                all(n < max(2, repeats // 2) for n in self.counts.values()), f"none per {unit}", scope="GPU")
        for (where, function, line), n in sorted(self.counts.items(), key=lambda kv: -kv[1]):
            every = n >= max(2, repeats // 2)
            reason = SYNC_REASONS.get(function)
            r.check(f"{what}: {where} in {function}", f"{n} x `{line[:90]}`" + (f" ({reason})" if reason else ""),
                    not every and reason is not None,
                    f"not per {unit}, reason stated" if not every else f"happens per {unit}: a host wait in the "
                    f"steady state", scope="GPU")


def resnet(ctx: Context) -> str:
    """The ResNet of ``sync`` and ``shapes``: ResNet-50 on the GPU, ResNet-18 (the same code, a quarter of the
    CPU time) in --smoke."""
    return "resnet18" if ctx.smoke else "resnet50"


def sync_trainer_overrides(ctx: Context, batch: int, bn_group: int | None, precision: str = "fp32") -> list[str]:
    """ResNet-50 at 256x128 with the presets' input pipeline (toy sizes in --smoke)."""
    if ctx.smoke:
        size = ["input.height=64", "input.width=32", f"train.batch_size={batch}", "train.num_instances=4"]
    else:
        size = ["input.height=256", "input.width=128", f"train.batch_size={batch}", "train.num_instances=16",
                "train.num_workers=auto", "train.test_batch_size=256"]
    return [*recipe_overrides(ctx), *PRESET_PIPELINE, f"backbone={resnet(ctx)}", "backbone.pretrained=false", *size,
            f"train.bn_group={'null' if bn_group is None else bn_group}", "train.channels_last=true",
            f"train.precision={precision}"]


def section_sync(r: Report, ctx: Context) -> None:
    import torch

    from mqreid.engine.validate import resolve_workers

    batch, warmup, steps = (8, 1, 2) if ctx.smoke else (64, 4, 10)
    r.begin("building the trainer")
    trainer = build_trainer(ctx, sync_trainer_overrides(ctx, batch, 4 if ctx.smoke else 64), "sync")
    train_cfg = trainer.cfg.train
    workers = resolve_workers(train_cfg.num_workers, trainer.train_in_memory)
    warmup += 2 * workers  # the batches the workers prefetched before the clock starts
    train_cfg.iters = warmup + steps
    labels = pseudo_labels(trainer)
    if not torch.cuda.is_available():
        r.info("CUDA sync debug mode", "CUDA only: on the CPU nothing is counted (the counting runs all the same)")
    r.info("setup", f"{resnet(ctx)} {trainer.cfg.input.height}x{trainer.cfg.input.width}, batch {batch}, "
                    f"BatchNorm groups of {train_cfg.bn_group}, the presets' input pipeline from the image cache, "
                    f"{workers} loader workers; {steps} steps counted after {warmup}")
    for precision in ("fp32", "bf16"):
        name = f"training step, {precision}"
        if ctx.smoke and precision != "fp32":
            r.skip(name, SMOKE_LEAVES_OUT)
            continue
        if ctx.short(r, name, 8):
            continue
        r.begin(name)
        trainer.precision = precision
        with SyncCounter() as counter:
            after = {}

            def end_of_steps():
                after.update(counter.counts)
                counter.counts = {}

            time_epoch(trainer, labels, trainer.train_loader, warmup, (counter.start, end_of_steps))
            counter.stop()
        during = SyncCounter()
        during.counts = after
        during.report(r, f"{precision} steps", steps, "step")
        if counter.counts:
            counter.report(r, f"{precision} end of epoch", 1, "epoch")
    trainer.precision = "fp32"
    name = "extraction"
    if ctx.short(r, name, 8):
        return
    r.begin(name)
    items = trainer.dataset.query
    batches = math.ceil(len(items) / train_cfg.test_batch_size)
    if not ctx.smoke:
        trainer.extract(items)  # warm-up: cuDNN's choice of algorithms for the shape
    with SyncCounter() as counter:
        counter.start()
        trainer.extract(items)
    counter.report(r, f"extraction of {len(items)} images", batches, "batch")


# ----- shapes: step time and peak memory at the presets' per-GPU batches
def shapes_grid(smoke: bool) -> tuple[tuple[int, ...], tuple[int | None, ...], tuple[str, ...]]:
    """(per-GPU batches, bn_group values, precisions). The GPU's: the presets' 1-, 4-, 8- and 16-GPU shapes of
    the global batch 256, BatchNorm over 64 images or over the per-GPU batch; the smoke's, a split group and a
    plain one."""
    if smoke:
        return (8, 2), (4, None), ("fp32",)
    return (256, 64, 32, 16), (64, None), ("fp32", "bf16")


def time_model_alone(trainer, labels, batch: int, warmup: int, steps: int) -> tuple[float, str]:
    """Seconds per step of the trainer's step on batches already on the device, and the peak memory."""
    cfg = trainer.cfg
    k = min(int(cfg.train.num_instances), batch)
    ready = ReadyBatches(labels, warmup + steps, batch, k, (3, cfg.input.height, cfg.input.width), trainer.device)
    reset_peak(trainer.device)
    seconds, timed = time_epoch(trainer, labels, lambda epoch, epoch_labels: ready, warmup)
    return seconds / timed, peak(trainer.device)


def shapes_backbone(r: Report, ctx: Context, backbone: str, bn_group: int | None,
                    with_loader: bool) -> dict[tuple[str, int], float]:
    """The grid for one backbone and BatchNorm group: a row per (precision, batch), then the loader's share."""
    from mqreid.engine.validate import resolve_workers

    batches, _, precisions = shapes_grid(ctx.smoke)
    if ctx.smoke and (backbone in VIT_BACKBONES or bn_group is None):
        batches = batches[:1]  # the smoke's other shape only repeats the code at another size
    warmup, steps = (1, 1) if ctx.smoke else (3, 10)
    label = f"{backbone}, bn_group={bn_group}"
    if ctx.short(r, label, 15):
        return {}
    r.begin(f"{label}: building")
    overrides = [o if not o.startswith("backbone=") else f"backbone={backbone}"
                 for o in sync_trainer_overrides(ctx, batches[0], bn_group)]
    if ctx.smoke and backbone in VIT_BACKBONES:
        overrides.append("backbone.depth=1")  # the same code, a twelfth of the CPU time
    start = time.perf_counter()
    trainer = build_trainer(ctx, overrides, f"shapes_{backbone}_{bn_group}")
    labels = pseudo_labels(trainer)
    optimizer = trainer.optimizer
    fused = optimizer.defaults.get("fused") if hasattr(optimizer, "defaults") else None
    r.info(f"{label}: setup", f"{type(optimizer).__name__} (fused={fused}), {trainer.cfg.input.height}x"
                              f"{trainer.cfg.input.width}, channels_last, built in {time.perf_counter() - start:.1f} s")
    per_step: dict[tuple[str, int], float] = {}
    for precision in precisions:
        trainer.precision = precision
        for batch in batches:
            name = f"{label}, {precision}, batch {batch}"
            if ctx.short(r, name, 4):
                continue
            r.begin(name)
            try:
                seconds, memory = time_model_alone(trainer, labels, batch, warmup, steps)
            except Exception as err:  # noqa: BLE001 - e.g. out of memory: the finding
                r.error(name, err)
                continue
            per_step[precision, batch] = seconds
            group = "" if bn_group is None or batch >= bn_group else \
                f"; the group spans {bn_group // batch} GPUs in the preset: one GPU times its local step"
            r.info(name, f"{1e3 * seconds:.1f} ms/step, {batch / seconds:.0f} img/s, peak {memory}{group}")
    if with_loader:
        batch = batches[0]
        workers = resolve_workers(trainer.cfg.train.num_workers, trainer.train_in_memory)
        loader_warmup = warmup + 2 * workers  # the batches the workers prefetched before the clock starts
        trainer.cfg.train.batch_size = batch
        trainer.cfg.train.iters = loader_warmup + steps
        for precision in precisions:
            name = f"{label}, {precision}, batch {batch} with its loader"
            if (precision, batch) not in per_step or ctx.short(r, name, 10):
                continue
            r.begin(name)
            trainer.precision = precision
            seconds, timed = time_epoch(trainer, labels, trainer.train_loader, loader_warmup)
            alone = per_step[precision, batch]
            share = alone / (seconds / timed)
            r.check(name, f"{batch * timed / seconds:.0f} img/s = {share:.0%} of the model alone ({workers} workers, "
                          f"images from the cache)", share >= LOADER_SHARE, f">= {LOADER_SHARE:.0%} of the model alone",
                    scope="GPU")
    trainer.precision = "fp32"
    return per_step


def section_shapes(r: Report, ctx: Context) -> None:
    batches, groups, precisions = shapes_grid(ctx.smoke)
    r.info("grid", f"per-GPU batches {batches}, bn_group {groups}, {', '.join(precisions)}; the presets' input "
                   f"pipeline (no colour jitter, no camera centring); peak memory reset before each shape")
    steps = {}
    for bn_group in groups:
        steps[bn_group] = shapes_backbone(r, ctx, resnet(ctx), bn_group, with_loader=bn_group == groups[0]) or {}
    top = batches[0]
    for precision in precisions:
        if (precision, top) in steps[groups[0]] and (precision, top) in steps[None]:
            ratio = steps[groups[0]][precision, top] / steps[None][precision, top]
            r.check(f"{resnet(ctx)}, {precision}, batch {top}: bn_group={groups[0]} against null", f"{ratio:.3f} x the "
                    f"step time", ratio <= GHOST_COST, f"<= {GHOST_COST:.2f} x", scope="GPU")
    for backbone in VIT_BACKBONES:
        if ctx.smoke and backbone != VIT_BACKBONES[-1]:
            r.skip(backbone, f"in smoke mode {VIT_BACKBONES[-1]} alone: {backbone} runs the same code without its "
                             f"convolution stem")
            continue
        if not (CONF / "backbone" / f"{backbone}.yaml").is_file():
            r.skip(backbone, f"conf/backbone/{backbone}.yaml does not exist")
        elif importlib.util.find_spec("timm") is None:
            r.skip(backbone, "timm is not installed (bench/wheels carries it: bash bench/gpu_wheels.sh)")
        else:
            try:
                shapes_backbone(r, ctx, backbone, groups[0], with_loader=False)
            except Exception as err:  # noqa: BLE001
                r.error(backbone, err)


# ----- torchrun: the trainer in two processes sharing the GPU
def trainer_rank(args: argparse.Namespace) -> int:
    """One process of the ``torchrun`` section, started by torchrun: joins a gloo group (NCCL refuses two
    ranks on one GPU; the trainer keeps a group it finds already started) and trains with the given overrides."""
    import torch.distributed as dist

    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    from mqreid.engine import distributed
    from mqreid.engine.trainer import Trainer

    overrides = json.loads(args.trainer_rank)
    dist.init_process_group("gloo", timeout=datetime.timedelta(minutes=5))
    try:
        cfg = compose_config(overrides)
        from omegaconf import open_dict

        run_dir = Path(args.work)
        with open_dict(cfg):
            cfg.run_dir = str(run_dir)
        Trainer(cfg, run_dir).fit()
    finally:
        distributed.cleanup()
    return 0


def section_torchrun(r: Report, ctx: Context) -> None:
    overrides = ["debug=fast", f"data_root={ctx.data_root}", "logger=console", "train.cluster_gallery=false",
                 "train.bn_group=16", "device=cpu" if ctx.smoke else "device=cuda:0"]
    if ctx.smoke:  # one epoch: what a second one runs in two processes, the first has run
        overrides += [o for o in TINY if o.startswith("dataset.")] + ["clusterer.eps=0.4", "train.epochs=1"]
    run_dir = ctx.work / "torchrun"
    name = "2 processes, gloo on the CPU" if ctx.smoke else "2 processes on cuda:0, gloo"
    r.info("run", f"{' '.join(overrides)}: batch 16, 8 images per process, BatchNorm groups of 16 spread over "
                  f"both; the training images cached once and shared")
    if ctx.short(r, name, 20):
        return
    r.begin(name)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).resolve()), "--trainer-rank", json.dumps(overrides), "--work", str(run_dir)]
    log = ctx.work / "torchrun.out"
    rc, seconds = run_logged(cmd, log, ctx.left() - 2, dict(ctx.env, OMP_NUM_THREADS="1"))
    if rc is None:
        r.skip(name, f"out of time: stopped after {seconds:.0f} s at the section's cap")
        print(tail(log), flush=True)
        return
    results = read_json(run_dir / "results.json")
    if not r.check(name, outcome(rc, seconds, log), rc == 0 and results.get("world_size") == 2,
                   "exit 0, results.json with world_size 2"):
        print(tail(log), flush=True)
        return
    for row in read_jsonl(run_dir / "metrics.jsonl"):
        r.info(f"epoch {row['epoch']}", epoch_summary(row))


# ----- resume: deterministic mode and exact resume
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
    import torch

    from mqreid.engine.trainer import set_deterministic
    from mqreid.engine.warm_start import SourceDomain, pretrain

    # the synthetic warm start trained in deterministic mode (train.deterministic=true with no cached warm start
    # for the backbone): ResNet-50 at 256x128 on a small source set, two steps
    backbone, height, width = ("small_cnn", 64, 32) if ctx.smoke else ("resnet50", 256, 128)
    name = f"warm start of {backbone} {height}x{width} trained in deterministic mode on {ctx.device}"
    if not ctx.short(r, name, 20):
        r.begin(name)
        start = time.perf_counter()
        try:
            set_deterministic(True, on_cuda=not ctx.smoke)
            source = SourceDomain(num_ids=16, steps=2, extra={"images_per_id": (4, 4)})  # one batch of 16 x 4
            state = pretrain(compose_config([f"backbone={backbone}"]).backbone, height, width, ctx.work / "warm_start",
                             source=source, progress=False, device=torch.device(ctx.device))
            finite = all(bool(torch.isfinite(v.float()).all()) for v in state.values() if v.is_floating_point())
            r.check(name, f"{time.perf_counter() - start:.0f} s, {len(state)} tensors", finite,
                    "trains without error (every op has a deterministic kernel), finite weights")
        except Exception as err:  # noqa: BLE001
            r.error(name, err)
        finally:
            torch.use_deterministic_algorithms(False)
    # every epoch evaluated: the 1-epoch run evaluates its last epoch, so the 2-epoch run must evaluate it too
    base = recipe_overrides(ctx) + warm_start_overrides(ctx, r) + ["train.deterministic=true", "eval.every=1"]
    if not ctx.smoke:
        base.append("train.iters=50")
    part = ctx.work / "resume_part"
    runs = [("2-epoch run", ctx.work / "resume_full", ["train.epochs=2"]),
            ("1-epoch run", part, ["train.epochs=1"]),
            ("1-epoch run resumed to 2", ctx.work / "resume_cont", ["train.epochs=2", f"resume={part}"])]
    # in this process, one after the other (three processes would start Python, torch and CUDA three times)
    for name, run_dir, extra in runs:
        if ctx.short(r, name, 10):
            r.skip("metrics.jsonl rows", f"the {name} did not run")
            return
        r.begin(name)
        start = time.perf_counter()
        try:
            build_trainer(ctx, [*base, *extra], run_dir.name).fit()
        except Exception as err:  # noqa: BLE001
            r.error(name, err)
            r.skip("metrics.jsonl rows", f"the {name} did not finish")
            return
        r.check(name, f"{time.perf_counter() - start:.0f} s", True, "finishes")
    same, how = compare_rows(read_jsonl(runs[0][1] / "metrics.jsonl"), read_jsonl(runs[2][1] / "metrics.jsonl"))
    r.check("metrics.jsonl: 2 epochs against 1 + 1 resumed", how, same,
            f"every row equal, loss within {LOSS_TOL:g}, time_* aside")


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
    # Infomap at the package's default min_sim 0.5 leaves >90 % of these features without links; 0.3 gives
    # a few hundred clusters. Infomap runs on the host whatever the device: timed at the smaller size only.
    clusterers = {"DBSCAN": lambda: DBSCANClusterer(), "Infomap": lambda: InfomapClusterer(min_sim=0.3)}
    r.info("clusterers", "DBSCAN eps 0.6, k1 30, k2 6 (the defaults); Infomap k 14, min_sim 0.3; knn=auto")
    # most useful first: the 30k comparison with the CPU path, DBSCAN at 100k, then Infomap
    steps = [(sizes[0], "DBSCAN", True)] + [(n, "DBSCAN", False) for n in sizes[1:]] + [(sizes[0], "Infomap", True)]
    made: dict[int, tuple] = {}
    for n, name, compare in steps:
        if ctx.short(r, f"{n}: {name} on {ctx.device}", 12):
            continue
        r.begin(f"{n}: {name}")
        if n not in made:
            made.clear()
            if ctx.device == "cuda":
                torch.cuda.empty_cache()
            start = time.perf_counter()
            x, truth = clustered_features(n, dim, ctx.device)
            synchronize(ctx.device)
            r.info(f"{n} x {dim}: features", f"made on {ctx.device} in {time.perf_counter() - start:.1f} s")
            floor = gemm_seconds(x)
            r.info(f"{n} x {dim}: GEMM x @ x.T", f"{floor:.3g} s ({2 * n * n * dim / floor / 1e12:.3g} TFLOP/s, fp32)")
            made[n] = (x, truth.cpu().numpy(), floor)
        x, truth_np, floor = made[n]
        make = clusterers[name]
        synchronize(ctx.device)
        start = time.perf_counter()
        labels = make().fit_predict(x)
        seconds = time.perf_counter() - start
        clusters = int(labels.max()) + 1
        r.info(f"{n}: {name} on {ctx.device}", f"{seconds:.1f} s = {seconds / floor:.0f} x GEMM; {clusters} "
               f"clusters, {100 * np.mean(labels < 0):.0f}% outliers, ARI to the identities "
               f"{adjusted_rand_score(truth_np, labels):.3f}")
        r.info(f"{n}: {name} steps", handler.last)
        if not compare or ctx.short(r, f"{n}: {name} labels, {ctx.device} against CPU", 2 * seconds + 5):
            continue
        start = time.perf_counter()
        cpu_labels = make().fit_predict(x.cpu())
        seconds = time.perf_counter() - start
        r.info(f"{n}: {name} on the CPU", f"{seconds:.1f} s; {handler.last}")
        ari = adjusted_rand_score(cpu_labels, labels)
        r.check(f"{n}: {name} labels, {ctx.device} against CPU", f"ARI {ari:.5f}, {clusters} clusters",
                ari >= CLUSTER_ARI and clusters > 1, f"ARI >= {CLUSTER_ARI}, more than one cluster")


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

    r.begin("evaluation on the device")
    timed(q[:64], g, q_pids[:64], g_pids, q_cams[:64], g_cams)  # warm-up
    seconds, full = timed(q, g, q_pids, g_pids, q_cams, g_cams)
    r.check(f"{ctx.device}: all queries", f"{seconds:.2f} s, mAP {100 * full['mAP']:.2f}, "
            f"R1 {100 * full['cmc'][0]:.2f}", seconds <= EVAL_CUDA_S, f"<= {EVAL_CUDA_S:g} s", scope="GPU")
    rows = torch.arange(0, size["num_q"], round(1 / fraction), device=q.device)
    what = "all queries" if fraction == 1 else f"every {round(1 / fraction)}th query ({len(rows)})"
    device_s, device_out = timed(q[rows], g, q_pids[rows], g_pids, q_cams[rows], g_cams)
    if ctx.short(r, f"mAP, {ctx.device} against CPU ({what})", 8):
        return
    r.begin("evaluation on the CPU")
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
        if ctx.short(r, name, 10 if exporter == "torchscript" else 20):
            continue
        r.begin(name)
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
    "environment": section_environment, "bn_span": section_bn_span, "e2e": section_e2e, "sync": section_sync,
    "shapes": section_shapes, "torchrun": section_torchrun, "resume": section_resume, "cluster": section_cluster,
    "eval": section_eval, "onnx": section_onnx,
}


# ---------------------------------------------------------------------------------------------- the check
def missing_modules() -> list[str]:
    return [m for m in ("hydra", "omegaconf", "infomap", "timm") if importlib.util.find_spec(m) is None]


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
                          "--disable-pip-version-check", "--no-compile", "--target", str(target), *map(str, wheels)],
                         capture_output=True, text=True)
    if pip.returncode == 0:
        return f"{names} (pip --target {target})"
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as z:
            z.extractall(target)
    return f"{names} (unpacked into {target}; pip said: {pip.stderr.strip().splitlines()[-1:]})"


def prepare_environment(work: Path, token: str) -> tuple[dict[str, str], str]:
    """The environment of the section processes: src/ (and the installed wheels) on PYTHONPATH, the marker."""
    paths = [str(SRC)]
    installed = ""
    if missing_modules() and WHEELS.is_dir():
        target = work / "site"
        installed = install_wheels(target)
        if installed:
            paths.append(str(target))
    env = dict(os.environ, WANDB_MODE="disabled", WANDB_SILENT="true", PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="1",
               MQREID_GPU_CHECK_WHEELS=installed)
    env[MARKER] = token
    env["PYTHONPATH"] = os.pathsep.join(paths + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env, installed


class Section:
    """One section's process: started in a process group of its own, ended (group, then every process of the
    check) however the wait ends."""

    def __init__(self, name: str, cmd: list[str], out: Path, env: dict[str, str], token: str) -> None:
        self.name, self.token = name, token
        self.out = open(out, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            return None

    def end(self) -> list[int]:
        """End the section's process group and then every process of the check; the pids of the latter."""
        stop_group(self.proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        strays = sweep(self.token)
        self.out.close()
        return strays


def cpu_seconds_of_children() -> float:
    """User + system seconds of this process's ended (waited for) descendants."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_section(name: str, args: argparse.Namespace, env: dict[str, str], work: Path, data_root: Path,
                allowed: float, log, token: str, running: list) -> tuple[list[dict], dict]:
    """Run one section in its own process for at most ``allowed`` seconds; its rows, and a summary."""
    rows_path = work / f"{name}.rows.jsonl"
    out_path = work / f"{name}.out"
    section_work = work / name
    section_work.mkdir(parents=True, exist_ok=True)
    grace = GRACE_S[1 if args.smoke else 0]
    start = time.time()
    cpu_before = cpu_seconds_of_children()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--rows", str(rows_path),
           "--work", str(section_work), "--data-root", str(data_root), "--deadline", str(start + allowed - grace),
           "--cap-s", str(allowed), "--parent", str(os.getpid())]
    cmd += ["--smoke"] if args.smoke else []
    section = Section(name, cmd, out_path, env, token)
    running.append(section)
    try:
        rc = section.wait(allowed)
    finally:
        strays = section.end()
        running.remove(section)
    seconds = time.time() - start
    cpu = cpu_seconds_of_children() - cpu_before
    rows = read_jsonl(rows_path)
    log.write(f"\n===== {name}: {outcome(rc, seconds, out_path)}\n{tail(out_path, 20000)}\n")
    log.flush()
    step = rows_path.with_suffix(".step")
    if rc is None:
        where = step.read_text() if step.is_file() else "its start"
        rows.append({"section": name, "measure": "section", "value": f"ran out of its {allowed:.0f} s cap during "
                     f"'{where}' and was ended (the rows above are kept)", "criterion": "", "status": SKIP})
    elif rc != 0:
        rows.append({"section": name, "measure": "section ran to the end", "value": f"exit {rc} after {seconds:.0f} "
                     f"s: {last_error_line(out_path)}", "criterion": "no error", "status": FAIL})
    elif not rows:
        rows.append({"section": name, "measure": "section reported", "value": "no row", "criterion": "rows written",
                     "status": FAIL})
    if strays:
        rows.append({"section": name, "measure": "processes left running by the section", "value": f"{len(strays)} "
                     f"(pids {', '.join(map(str, strays[:8]))}), ended by the check", "criterion": "", "status": INFO})
    return rows, {"seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "exit": rc, "cap": round(allowed)}


def section_status(rows: list[dict], finished: bool = True) -> str:
    """FAIL if any row failed; a section ended by its cap is otherwise a SKIP (what it did not reach is unchecked),
    however many of its rows passed; else PASS, INFO, SKIP in that order."""
    statuses = {row["status"] for row in rows}
    if FAIL in statuses:
        return FAIL
    if not finished:
        return SKIP
    for status in (PASS, INFO):
        if status in statuses:
            return status
    return SKIP


def cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def markdown(rows: list[dict], header: list[str], summary: dict[str, dict]) -> str:
    lines = [*header, "", "| section | measure | value | criterion | result |", "|---|---|---|---|---|"]
    lines += [f"| {row['section']} | {cell(row['measure'])} | {cell(row['value'])} | {cell(row['criterion'])} | "
              f"{row['status']} |" for row in rows]
    lines += ["", "| section | result | seconds | cap | CPU seconds | criterion |", "|---|---|---|---|---|---|"]
    lines += [f"| {name} | {s['status']} | {s['seconds']} | {s.get('cap', '')} | {s.get('cpu_seconds', '')} | "
              f"{CRITERIA[name]} |" for name, s in summary.items()]
    counts = {status: sum(row["status"] == status for row in rows) for status in (PASS, FAIL, SKIP, INFO)}
    lines += ["", ", ".join(f"{n} {status}" for status, n in counts.items())]
    return "\n".join(lines) + "\n"


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git metadata)"


def parse_caps(values: list[str]) -> dict[str, int]:
    caps = {}
    for value in values:
        name, _, seconds = value.partition("=")
        if name not in SECTIONS or not seconds.isdigit() or int(seconds) < 1:
            raise ValueError(f"--cap {value}: expected NAME=SECONDS with NAME one of {', '.join(SECTIONS)} and "
                             f"SECONDS an integer >= 1")
        caps[name] = int(seconds)
    return caps


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of: {', '.join(SECTIONS)}")
    p.add_argument("--smoke", action="store_true", help="every section on the CPU at toy sizes")
    p.add_argument("--plan", action="store_true", help="print the budget and the sections' caps as JSON and exit")
    p.add_argument("--out", default=None, help="where the table goes (default $OUT, else bench/gpu_check_out)")
    p.add_argument("--cap", action="append", default=[], metavar="NAME=SECONDS",
                   help="another cap for a section (e.g. when it runs alone); the budget still bounds the whole")
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds for the whole check (default {BUDGET_S}; {SMOKE_BUDGET_S} with --smoke)")
    p.add_argument("--data-root", default=None,
                   help="the datasets and warm starts (default: data/ of the tree; with --smoke a fresh folder)")
    p.add_argument("--keep", action="store_true", help="keep the working folder (run directories, outputs)")
    for hidden in ("--worker", "--rows", "--work", "--deadline", "--cap-s", "--parent", "--trainer-rank"):
        p.add_argument(hidden, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def worker(args: argparse.Namespace) -> int:
    """A section's process: runs the section, ends its children when ended or when the check dies."""
    die_with_parent()
    if args.parent and os.getppid() != int(args.parent):  # the check died before the line above took effect
        return 128 + signal.SIGTERM
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop_worker)
    ctx = Context(args)
    report = Report(args.worker, Path(args.rows), ctx.smoke)
    SECTION_FUNCTIONS[args.worker](report, ctx)
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.trainer_rank:
        return trainer_rank(args)
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        print(f"gpu_check: unknown section(s) {', '.join(unknown)}; expected: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    try:
        caps = parse_caps(args.cap)
    except ValueError as err:
        print(f"gpu_check: {err}", file=sys.stderr)
        return 2
    the_plan = plan(args.smoke, names, caps)
    if args.budget:
        the_plan["budget"] = args.budget
    if args.plan:
        print(json.dumps(the_plan, indent=2))
        return 0
    out = Path(args.out or os.environ.get("OUT") or REPO / "bench" / "gpu_check_out")
    out.mkdir(parents=True, exist_ok=True)
    budget = the_plan["budget"]
    started = time.time()
    end = started + budget
    token = os.environ.get(MARKER) or uuid.uuid4().hex  # a check started inside another keeps its marker
    work = Path(tempfile.mkdtemp(prefix="mqreid-gpu-check-"))
    data_root = Path(args.data_root).resolve() if args.data_root else (work / "data" if args.smoke else REPO / "data")
    env, installed = prepare_environment(work, token)
    rows: list[dict] = []
    summary: dict[str, dict] = {}
    running: list[Section] = []
    stopped: CheckInterrupted | None = None
    mode = "smoke (CPU, toy sizes)" if args.smoke else "GPU"

    def on_signal(signum, frame):
        raise CheckInterrupted(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    print(f"gpu_check: {mode}; sections {', '.join(names)}; budget {budget:.0f} s; work {work}; data {data_root}"
          + (f"; installed {installed}" if installed else ""), flush=True)
    log = open(out / "gpu_check.log", "w")
    try:
        for name, cap in the_plan["sections"].items():
            left = end - time.time()
            if left < 10:
                rows.append({"section": name, "measure": "section", "value": f"not run: {left:.0f} s of the "
                             f"{budget:.0f} s budget left", "criterion": CRITERIA[name], "status": SKIP})
                summary[name] = {"status": SKIP, "seconds": 0, "exit": None, "cap": cap}
                continue
            allowed = min(cap, left)
            print(f"--- {name} (at most {allowed:.0f} s)", flush=True)
            section_rows, info = run_section(name, args, env, work, data_root, allowed, log, token, running)
            for row in section_rows:
                print(f"  [{row['status']}] {row['measure']}: {row['value']}", flush=True)
            rows += section_rows
            summary[name] = {"status": section_status(section_rows, finished=info["exit"] is not None), **info}
    except CheckInterrupted as err:
        stopped = err
    finally:
        for sig in previous:  # the clean-up below is not interrupted again
            signal.signal(sig, signal.SIG_IGN)
        for section in list(running):
            section.end()
        sweep(token)
    if stopped is not None:
        for name in the_plan["sections"]:
            if name not in summary:
                rows.append({"section": name, "measure": "section", "value": f"not run or not finished: the check "
                             f"was stopped by {stopped}", "criterion": CRITERIA[name], "status": SKIP})
                summary[name] = {"status": SKIP, "seconds": 0, "exit": None, "cap": the_plan["sections"][name]}
    log.close()
    seconds = time.time() - started
    header = [f"# mqreid GPU check: {mode}", "",
              f"- command: {' '.join([Path(sys.executable).name, *sys.argv])}",
              f"- commit: {git_commit()}; date {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}; "
              f"host {platform.node()}; {seconds:.0f} s of a {budget:.0f} s budget"
              + (f"; stopped by {stopped}" if stopped else ""),
              f"- wheels installed from bench/wheels: {installed or 'none needed'}"]
    text = markdown(rows, header, summary)
    (out / "gpu_check.md").write_text(text)
    (out / "gpu_check.json").write_text(json.dumps({
        "mode": "smoke" if args.smoke else "gpu", "seconds": round(seconds, 1), "plan": the_plan,
        "stopped": str(stopped) if stopped else None, "commit": git_commit(), "sections": summary,
        "criteria": CRITERIA, "rows": rows}, indent=2))
    print("\n" + text, flush=True)
    print(f"written: {out / 'gpu_check.md'}, {out / 'gpu_check.json'}, {out / 'gpu_check.log'}", flush=True)
    if args.keep:
        print(f"working folder kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if stopped is not None:
        return 128 + stopped.signum
    return 1 if any(row["status"] == FAIL for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
