"""Check the whole composed training config before any data is generated, loaded or evaluated.

Every problem is collected and reported in one message (setting, value, what is expected), instead of
stopping at the first one: a schema in Hydra's ConfigStore would stop at the first bad value and cannot
express relations between settings (the batch and its identity blocks, a Jaccard k1 and the dataset size).
Component settings are checked by the components themselves: each is built once on tiny dummy inputs,
so the rules live in one place and the messages are the constructors' own.
"""

from __future__ import annotations

import csv
import inspect
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from hydra.experimental.callback import Callback
from hydra.utils import get_method, instantiate, to_absolute_path
from omegaconf import DictConfig, OmegaConf

from mqreid.data.sampler import SAMPLERS
from mqreid.data.transforms import build_train_transform, normalization
from mqreid.evaluation import METRICS
from mqreid.models.precision import PRECISIONS
from mqreid.utils.errors import SettingError, setting_problem, typed


class ConfigError(ValueError):
    """One or more settings are invalid; the message lists every one."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def positive_int(v: Any) -> bool:
    return _is_int(v) and v >= 1


def non_negative_int(v: Any) -> bool:
    return _is_int(v) and v >= 0


def probability(v: Any) -> bool:
    return _is_number(v) and 0 <= v <= 1


def boolean(v: Any) -> bool:
    return isinstance(v, bool)


def workers(v: Any) -> bool:
    return v == "auto" or non_negative_int(v)


def _triple(v: Any) -> bool:
    return isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 3 and all(_is_number(x) for x in v)


def devices(v: Any) -> bool:
    return isinstance(v, str) and (v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()))


# (setting, check, what is expected)
RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("seed", non_negative_int, "an integer >= 0"),
    ("device", devices, "auto, cpu, cuda or cuda:<index>"),
    ("dist_timeout_min", positive_int, "an integer >= 1 (minutes a process waits in a collective)"),
    ("progress", boolean, "true or false"),
    ("input.height", positive_int, "an integer >= 1"),
    ("input.width", positive_int, "an integer >= 1"),
    ("input.flip_p", probability, "a probability in [0, 1]"),
    ("input.erasing_p", probability, "a probability in [0, 1]"),
    ("input.pad", non_negative_int, "an integer >= 0"),
    ("input.color_jitter", lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    ("train.epochs", positive_int, "an integer >= 1"),
    ("train.iters", positive_int, "an integer >= 1"),
    ("train.batch_size", positive_int, "an integer >= 1"),
    ("train.num_instances", positive_int, "an integer >= 1"),
    ("train.test_batch_size", positive_int, "an integer >= 1"),
    ("train.num_workers", workers, "auto or an integer >= 0"),
    ("train.cache_images", boolean, "true or false"),
    ("train.cache_limit_mb", non_negative_int, "an integer >= 0 (MiB of decoded images kept in memory)"),
    ("train.sampler", lambda v: v in SAMPLERS, f"one of {', '.join(SAMPLERS)}"),
    ("train.bn_group", lambda v: v is None or positive_int(v), "null or an integer >= 1"),
    ("train.precision", lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    ("train.channels_last", boolean, "true or false"),
    ("train.deterministic", boolean, "true or false"),
    ("train.sync_bn", boolean, "true or false"),
    ("train.camera_centering", boolean, "true or false"),
    ("train.camera_permutation_seed", lambda v: v is None or non_negative_int(v), "null or an integer >= 0"),
    ("train.cluster_gallery", boolean, "true or false"),
    ("eval.every", positive_int, "an integer >= 1 (evaluate every N epochs)"),
    ("eval.metric", lambda v: v in METRICS, f"one of {', '.join(METRICS)}"),
    ("eval.flip", boolean, "true or false"),
    ("eval.rerank", boolean, "true or false"),
    ("eval.visualize", non_negative_int, "an integer >= 0 (ranked lists to draw; 0 = none)"),
    ("eval.k1", positive_int, "an integer >= 1"),
    ("eval.k2", positive_int, "an integer >= 1"),
    ("eval.lambda_value", probability, "a number in [0, 1]"),
    ("optim.optimizer.lr", lambda v: _is_number(v) and v > 0, "a number > 0"),
    ("input.mean", lambda v: _triple(v), "three numbers, the RGB means subtracted (ImageNet's [0.485, 0.456, 0.406] "
                                         "or [0.5, 0.5, 0.5])"),
    ("input.std", lambda v: _triple(v) and all(x > 0 for x in v), "three numbers > 0, the RGB standard deviations"),
]


# Settings checked only where the chosen option has them (another optimiser or schedule may not).
OPTIONAL_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("optim.optimizer.weight_decay", lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    ("optim.optimizer.momentum", lambda v: _is_number(v) and v >= 0, "a number >= 0"),
    ("optim.scheduler.step_size", positive_int, "an integer >= 1 (epochs between learning-rate steps)"),
    ("optim.scheduler.gamma", lambda v: _is_number(v) and v > 0, "a number > 0"),
]


def _value(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, throw_on_missing=False, default="<missing>")


def _signature_problems(node: DictConfig, group: str, extra: dict[str, Any]) -> list[str]:
    """Settings of a ``_target_`` node that its constructor does not take."""
    try:
        target = get_method(node._target_)
    except Exception as err:  # an unknown class or function
        return [f"{group}._target_={node._target_!r} cannot be imported: {err}"]
    params = inspect.signature(target).parameters
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return []
    keys = [k for k in node if not str(k).startswith("_")]
    return [f"{group}.{k} is not a setting of {node._target_} (valid: {', '.join(p for p in params if p not in extra)})"
            for k in keys if k not in params]


def _type_problems(node: DictConfig, group: str) -> list[str]:
    """Settings of a ``_target_`` node whose value is not of the kind of the constructor's default (a number
    where the default is a number, true/false where it is a bool). Found here, before the constructor
    compares a string with a bound and fails with a TypeError that names no setting."""
    params = inspect.signature(get_method(node._target_)).parameters
    problems = []
    for key in (k for k in node if not str(k).startswith("_") and k in params):
        default, value = params[key].default, node[key]
        annotation = str(params[key].annotation)  # "float | None", "<class 'float'>", ... (may be empty)
        if isinstance(default, bool):
            ok, expected = boolean(value), "true or false"
        elif isinstance(default, int) and "float" not in annotation:  # torch's Adam: weight_decay: float = 0
            ok, expected = _is_int(value), "an integer"
        elif isinstance(default, (int, float)):
            ok, expected = _is_number(value), "a number"
        elif default is None and "float" in annotation:
            ok, expected = value is None or _is_number(value), "a number or null"
        else:
            continue
        if not ok:
            problems.append(setting_problem(f"{group}.{key}", value, expected))
    return problems


def component_problem(group: str, err: BaseException) -> str:
    """A component's error as one line of the start-up check. A :class:`SettingError` (a clusterer's
    ``eps``) gets the group's prefix (``clusterer.eps=-1: expected ...``); a message that already names a
    setting of the group is kept; anything else is shown after the group's name."""
    err = err.__cause__ or err  # instantiate wraps the constructor's error
    if isinstance(err, SettingError):
        name = err.name if err.name.startswith(f"{group}.") else f"{group}.{err.name}"
        return setting_problem(name, err.value, err.expected)
    message = str(err)
    return message if message.startswith(f"{group}.") else f"{group}: {message}"


def _component_problems(cfg: DictConfig, optim_reported: bool = False) -> list[str]:
    """Build each component once; ``optim_reported``: an optim setting is already reported by a rule."""
    problems: list[str] = []

    def build(group: str, make: Callable[[], Any]) -> None:
        node = cfg.get(group)
        if node is None:
            problems.append(f"{group}: missing from the config")
            return
        unknown = _signature_problems(node, group, {"num_features": 0, "num_clusters": 0, "seed": 0})
        if unknown:
            problems.extend(unknown)
            return
        wrong_kind = _type_problems(node, group)
        if wrong_kind:
            problems.extend(wrong_kind)
            return
        try:
            make()
        except Exception as err:  # the component's own message names the setting
            problems.append(component_problem(group, err))

    def clusterer() -> None:
        instance = instantiate(cfg.clusterer)
        if hasattr(instance, "_validate"):
            instance._validate()

    build("clusterer", clusterer)
    build("memory", lambda: instantiate(cfg.memory)(num_features=2, num_clusters=2, seed=0))
    build("temp", lambda: instantiate(cfg.temp))
    if cfg.get("camera"):  # camera=none is an empty node
        build("camera", lambda: instantiate(cfg.camera)(num_features=2))
    dummy = torch.nn.Parameter(torch.zeros(1))
    optim_cfg = cfg.get("optim", {})
    if optim_reported:
        return problems
    wrong_kind = [p for part in ("optimizer", "scheduler") if optim_cfg.get(part) is not None
                  for p in _type_problems(optim_cfg[part], f"optim.{part}")]
    if wrong_kind:
        return problems + wrong_kind
    try:
        optimizer = instantiate(optim_cfg.optimizer)([dummy])
        instantiate(optim_cfg.scheduler)(optimizer)
    except Exception as err:
        problems.append(f"optim: {err}")
    return problems


def bn_span(train_cfg: DictConfig, world_size: int) -> int:
    """How many consecutive processes share one BatchNorm group (1: groups lie within a process)."""
    per_process = train_cfg.batch_size // world_size
    group = train_cfg.bn_group
    if group is None or per_process == 0 or group <= per_process:
        return 1
    return group // per_process


def batch_layout_problems(train_cfg: DictConfig, world_size: int = 1) -> list[str]:
    """The global batch must split into whole identity blocks per process; a BN group must either divide
    each process's share (groups within a process) or be made of whole shares of consecutive processes
    (groups spanning processes); SyncBatchNorm and BN groups exclude each other."""
    problems = []
    processes = f" x {world_size} processes" if world_size > 1 else ""
    if train_cfg.batch_size % (train_cfg.num_instances * world_size):
        problems.append(f"train.batch_size={train_cfg.batch_size}: expected a multiple of train.num_instances="
                        f"{train_cfg.num_instances}{processes} (batches hold whole identity blocks)")
    per_process = train_cfg.batch_size // world_size
    group = train_cfg.bn_group
    if group is not None and per_process and train_cfg.batch_size % group:
        problems.append(f"train.bn_group={group}: expected a divisor of train.batch_size={train_cfg.batch_size} "
                        f"(BatchNorm normalises fixed groups of images of the global batch)")
    elif group is not None and per_process and per_process % group and group % per_process:
        problems.append(f"train.bn_group={group}: expected a divisor or a multiple of the per-process batch of "
                        f"{per_process} images (train.batch_size={train_cfg.batch_size} over {world_size} "
                        f"processes)")
    if group is not None and train_cfg.sync_bn:
        problems.append("train.sync_bn=true: expected train.bn_group=null (SyncBatchNorm normalises the whole "
                        "global batch; ghost BatchNorm fixed groups of images)")
    return problems


# Backbone settings whose backward pass has no deterministic CUDA kernel (torch raises on the first backward
# under torch.use_deterministic_algorithms): checked at start-up instead. The other ops of the paths that
# train.deterministic enables were read against torch's list of refused ops (torch.use_deterministic_algorithms):
# every loss, the warm start's included, is mqreid.memory.cross_entropy (log-softmax + gather; nll_loss is
# refused); GeM is avg_pool2d (not adaptive); ResNet's stem max-pools in 2-d (only 3-d is refused); the memories'
# updates use index_copy_, index_add_, scatter_reduce with amin (only prod is refused) and bincount without
# weights, none of them differentiated; nothing interpolates, pads by reflection or uses histc/median/kthvalue.
NONDETERMINISTIC_ON_CUDA = {
    ("backbone.pooling", "avg"): "adaptive average pooling",
    ("backbone.pooling", "max"): "adaptive max pooling",
}


def deterministic_problems(cfg: DictConfig, device: torch.device) -> list[str]:
    """Settings that cannot run with ``train.deterministic=true`` on ``device``, named."""
    if not cfg.train.get("deterministic") or torch.device(device).type != "cuda":
        return []
    return [setting_problem(key, value, f"gem (the default) with train.deterministic=true on CUDA: {what} has no "
                                        "deterministic CUDA backward; or set train.deterministic=false")
            for (key, value), what in NONDETERMINISTIC_ON_CUDA.items() if _value(cfg, key) == value]


def backbone_problems(cfg: DictConfig) -> list[str]:
    """What a ViT backbone's settings break, found without building it (ResNets are checked when built): the
    input size against the patch size (named by input.height / input.width), hw_ratio, drop_path, the file."""
    node = cfg.get("backbone")
    if node is None or node.get("_target_") != "mqreid.models.build_vit":
        return []
    from mqreid.models.vit import settings_problems

    unknown = _signature_problems(node, "backbone", {})
    return unknown or settings_problems(**{str(k): node[k] for k in node if not str(k).startswith("_")})


def config_problems(cfg: DictConfig) -> list[str]:
    """Every invalid setting of a composed training config, as ``"<setting>=<value>: expected ..."`` lines."""
    problems = []
    for key, ok, expected in RULES:
        value = _value(cfg, key)
        if not ok(value):
            problems.append(setting_problem(key, value, expected))
    for key, ok, expected in OPTIONAL_RULES:
        value = _value(cfg, key)
        if value != "<missing>" and not ok(value):
            problems.append(setting_problem(key, value, expected))
    bad = {p.split("=")[0] for p in problems}
    if not bad & {"train.batch_size", "train.num_instances", "train.bn_group", "train.sync_bn"}:
        problems += batch_layout_problems(cfg.train)
    resume = cfg.get("resume")
    if resume and not Path(to_absolute_path(str(resume))).exists():
        problems.append(f"resume={resume}: expected an existing run directory or last.pt")
    if not any(key.startswith("input.") for key in bad):
        try:
            inp = cfg.input
            build_train_transform(inp.height, inp.width, flip_p=inp.flip_p, pad=inp.pad, erasing_p=inp.erasing_p,
                                  color_jitter=inp.color_jitter, **normalization(inp))
        except Exception as err:
            problems.append(f"input: {err}")
    problems += backbone_problems(cfg)
    problems += _component_problems(cfg, optim_reported=any(p.startswith("optim.") for p in problems))
    problems += camera_id_problems(cfg)
    if _value(cfg, "train.camera_permutation_seed") not in (None, "<missing>") and \
            _value(cfg, "train.camera_centering") is False:  # the placebo permutes the ids centring uses
        problems.append(f"train.camera_permutation_seed={_value(cfg, 'train.camera_permutation_seed')}: "
                        "acts only with train.camera_centering=true (it permutes the camera ids centring uses)")
    return problems


def camera_settings(cfg: DictConfig) -> list[str]:
    """The settings of ``cfg`` that use the training images' camera ids, as typed on the command line, each
    with the value that turns it off."""
    found = []
    if _value(cfg, "clusterer.camera_aware") is True:
        found.append(("clusterer.camera_aware=true", "clusterer.camera_aware=false"))
    if cfg.get("camera"):
        found.append(("camera=proxies", "camera=none"))
    if _value(cfg, "train.camera_centering") is True:
        found.append(("train.camera_centering=true", "train.camera_centering=false"))
    return found


def missing_camera_ids(cfg: DictConfig) -> str | None:
    """Why the configured dataset has no camera ids, known before it is loaded (a custom CSV without the
    ``camid`` column: its header is read), or None. A file that cannot be read is left to the loader's
    message."""
    csv_name, root = _value(cfg, "dataset.csv"), _value(cfg, "dataset.root")
    if _value(cfg, "dataset.name") != "custom" or csv_name in (None, "<missing>") or root == "<missing>":
        return None
    try:
        csv_file = Path(str(csv_name)).expanduser()
        csv_file = csv_file if csv_file.is_absolute() else Path(to_absolute_path(str(root))).expanduser() / csv_file
        with csv_file.open(newline="", encoding="utf-8-sig") as f:
            header = {name.strip() for name in next(csv.reader(f), [])}
    except (OSError, ValueError):
        return None
    return None if "camid" in header else f"dataset.csv={csv_name} has no camid column"


def camera_id_problems(cfg: DictConfig, reason: str | None = None) -> list[str]:
    """One line per setting that needs camera ids when the dataset has none (``reason``: why; by default
    :func:`missing_camera_ids`)."""
    reason = reason or missing_camera_ids(cfg)
    if not reason:
        return []
    return [f"{setting}: expected a dataset with camera ids, but {reason}; add them (the CSV's camid column) "
            f"or set {off}" for setting, off in camera_settings(cfg)]


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` listing every invalid setting of ``cfg``."""
    problems = config_problems(cfg)
    if problems:
        raise ConfigError(f"{len(problems)} invalid setting(s):\n" + "\n".join(f"  - {p}" for p in problems))


def available_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def resolve_workers(value: int | str, in_memory: bool = False, processes: int = 1) -> int:
    """``auto``: the available cores shared by the node's ``processes`` (at most 8 workers each; 0 when a
    process has a single core); an integer as given.

    ``in_memory``: the images are in the image cache, so a worker only augments. With two cores or fewer per
    process ``auto`` then loads in the main process: workers would compete with the model's threads for the
    same cores (measured with bench/bench_train.py on 2 cores: 168 img/s training without workers, 158 with 2).
    """
    if value != "auto":
        return int(value)
    cores = available_cores() // max(1, processes)
    return 0 if cores <= (2 if in_memory else 1) else min(8, cores)


class ValidateConfig(Callback):
    """Hydra callback: validate a single run's config before Hydra creates its output directory, so a bad
    setting costs nothing and leaves no files. (In a multirun each job is validated by the trainer.)"""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        cfg = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
        problems = config_problems(cfg)
        if problems:
            print(f"Error: {len(problems)} invalid setting(s):\n" + "\n".join(f"  - {p}" for p in problems),
                  file=sys.stderr)
            raise SystemExit(2)
