"""The held-out checks of synthetic benchmark v2 (docs/benchmark-v2.md): their tables, reprinted from records.

    python bench/v2_checks.py report                                  # from bench/results/v2/checks
    python bench/v2_checks.py report --records bench/runs/v2/checks   # from a grid's run folders
    python bench/hard_checks.py report --v2                           # the same, with the calibration table
    python bench/v2_checks.py eps-star                                # R2's eps*, label-free (after the freeze)
    python bench/v2_checks.py plan                                    # the grid's jobs in order, nothing run
    python bench/v2_checks.py run --freeze COMMIT --lanes 2           # the grid (after the freeze)

Records: one job folder per set, arm and dataset seed, ``<records>/<D|H>/<arm>/<anything>/`` holding
``.hydra/overrides.yaml`` (with ``dataset.seed=N``), ``results.json`` and ``metrics.jsonl``, and optionally
``settings.json`` (the job's settings: commit, date, machine, load, command, or these under ``queued`` as
``bench/v2_calibration.py``'s ``copy_records`` writes them, and ``start`` and ``end`` in Unix seconds). The arms are those of the pre-registration: ``baseline``, ``HC1``, ``HC2``, ``placebo``, ``R1`` and
``R2`` (InfoMap; its DBSCAN arm at eps* is ``R2-dbscan``, or the baseline where that folder is absent: eps*
equal to the recipe's eps). Nothing is trained here.

The analysis is the pre-registered one: per check and set the paired differences arm - baseline over the
dataset seeds (10-15), their mean, SE, paired t (n - 1 degrees of freedom) with its 95 % interval, and an exact
sign-flip test over all 2^n assignments (scipy's ``permutation_test``); the interaction I = Δ_H - Δ_D with a
Welch interval; Holm over HC1 and HC2, each check's p the largest of its three one-sided p-values; the
agreement and wrong-way rules; the placebo's and R1's equivalence (paired 90 % interval within ±2 mAP); the
stopping rule. A check, the placebo or the stopping rule gets a verdict only from complete records (every
dataset seed of every cell it needs); otherwise the report says PARTIAL and gives none.

How this script reads the wrong-way rule (written with it, before any grid job): a check's wrong-way p is
the smaller of (a) the larger of the paired-t and sign-flip one-sided p for Δ_H < 0 and (b) the Welch
one-sided p for I < 0 when Δ_D > 0 (else 1); Holm runs over HC1 and HC2 on these p as on the agreement p.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mqreid.tools.report import Job, find_jobs, mean_std, override_key, override_value

REPO = Path(__file__).resolve().parents[1]
RECORDS = REPO / "bench" / "results" / "v2" / "checks"
SEEDS = (10, 11, 12, 13, 14, 15)
SETS = {"D": "Market-like (synthetic_v2)", "H": "MSMT-like (synthetic_v2_hard)"}
ALPHA = 0.05
MARGIN = 2.0  # mAP: the equivalence margin of the placebo and R1
# check -> (arm, the arm it is compared with, what it is, the published gains Market-1501 / MSMT17)
CHECKS = {
    "HC1": ("HC1", "baseline", "camera-aware proxies (camera=proxies)",
            "PPLR +2.9 / +10.8; ICE +2.8 / +9.1"),
    "HC2": ("HC2", "baseline", "instance-norm small CNN, its own warm start",
            "IBN-ResNet-50 in Cluster Contrast +1.5 / +7.8"),
    "placebo": ("placebo", "baseline", "centring with permuted camera ids", "none: null expected"),
    "R1": ("R1", "baseline", "centroid memory against multi-queue (report-only)", "82.6 vs 82.8 / 35.5 vs 34.7"),
    "R2": ("R2", "R2-dbscan", "InfoMap against DBSCAN at eps* (report-only)", "82.5 vs 82.8 / 35.0 vs 34.7"),
}
HELD_OUT = ("HC1", "HC2")
EPS_GRID = tuple(round(0.30 + 0.02 * i, 2) for i in range(26))  # R2's eps* rule: 0.30, 0.32, ..., 0.80
HELD_OUT_CELLS = ("baseline", "HC1", "HC2", "placebo")
RUNS = REPO / "bench" / "runs" / "v2" / "checks"
# arm -> its overrides against the baseline (the set's recipe); "{seed}" is the cell's dataset seed. HC2 is the
# instance-norm small CNN (backbone=small_cnn_ibn); the recipe's backbone.pretrained=synthetic gives it its own
# warm start, trained on the small CNN's source domain with its pretraining recipe (``warm-start`` trains it
# once, before the cells that need it; an arm left None is refused by ``run``).
ARMS: dict[str, list[str] | None] = {
    "baseline": [],
    "HC1": ["camera=proxies"],
    "HC2": ["backbone=small_cnn_ibn"],
    "placebo": ["train.camera_centering=true", "train.camera_permutation_seed={seed}"],
    "R1": ["memory=centroid"],
    "R2": ["clusterer=infomap"],
}
ORDER = ("baseline", "HC1", "HC2", "placebo", "R1", "R2", "R2-dbscan")  # held-out cells first, then R1, R2


# ---------------------------------------------------------------------------------------------- statistics
@dataclass
class Paired:
    """Paired differences arm - baseline over the dataset seeds both hold (NaN where undefined)."""

    seeds: list[int]
    d: list[float]
    mean: float
    sd: float
    se: float
    ci95: tuple[float, float]
    ci90: tuple[float, float]
    p_t_greater: float
    p_t_less: float
    p_flip_greater: float
    p_flip_less: float

    @property
    def n(self) -> int:
        return len(self.d)


def paired(arm: dict[int, float], base: dict[int, float]) -> Paired:
    """Mean, SE = sd / sqrt(n), paired-t intervals and one-sided p, and the exact sign-flip p (the statistic
    is the mean; every one of the 2^n sign assignments counted, the observed one included)."""
    from scipy import stats

    seeds = sorted(s for s in set(arm) & set(base) if math.isfinite(arm[s]) and math.isfinite(base[s]))
    d = np.array([arm[s] - base[s] for s in seeds], dtype=np.float64)
    nan2 = (math.nan, math.nan)
    if len(d) < 2:
        return Paired(seeds, d.tolist(), float(d.mean()) if len(d) else math.nan, math.nan, math.nan, nan2, nan2,
                      math.nan, math.nan, math.nan, math.nan)
    sd = float(d.std(ddof=1))
    if sd == 0:  # no spread: t is undefined (scipy warns); the intervals collapse to the mean
        ci95 = ci90 = (float(d[0]), float(d[0]))
        p_t = (math.nan, math.nan)
    else:
        t_test = stats.ttest_1samp(d, 0.0)
        ci95, ci90 = (tuple(map(float, t_test.confidence_interval(c))) for c in (0.95, 0.90))
        p_t = tuple(float(stats.ttest_1samp(d, 0.0, alternative=a).pvalue) for a in ("greater", "less"))
    p_flip = tuple(float(stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf,
                                                alternative=a).pvalue) for a in ("greater", "less"))
    return Paired(seeds, d.tolist(), float(d.mean()), sd, sd / math.sqrt(len(d)), ci95, ci90, *p_t, *p_flip)


@dataclass
class Interaction:
    """I = Δ_H - Δ_D with Welch's interval (Welch-Satterthwaite degrees of freedom) and one-sided p."""

    mean: float
    se: float
    df: float
    ci95: tuple[float, float]
    p_greater: float
    p_less: float


def interaction(hard: Paired, default: Paired) -> Interaction:
    from scipy import stats

    nan2 = (math.nan, math.nan)
    if hard.n < 2 or default.n < 2 or hard.sd + default.sd == 0:
        return Interaction(hard.mean - default.mean, math.nan, math.nan, nan2, math.nan, math.nan)
    two = stats.ttest_ind(hard.d, default.d, equal_var=False)
    p = [float(stats.ttest_ind(hard.d, default.d, equal_var=False, alternative=a).pvalue) for a in ("greater", "less")]
    se = math.sqrt(hard.sd ** 2 / hard.n + default.sd ** 2 / default.n)
    return Interaction(hard.mean - default.mean, se, float(two.df), tuple(map(float, two.confidence_interval(0.95))),
                       *p)


def holm(p: dict[str, float], alpha: float = ALPHA) -> dict[str, float | None]:
    """Holm's step-down levels: check -> the level its p is compared with, None when it is not tested (a
    smaller p failed before it). A NaN p counts as 1."""
    clean = {k: (v if math.isfinite(v) else 1.0) for k, v in p.items()}
    levels: dict[str, float | None] = {}
    testing = True
    for i, name in enumerate(sorted(clean, key=lambda k: (clean[k], k))):
        levels[name] = alpha / (len(clean) - i) if testing else None
        testing = testing and clean[name] < levels[name]
    return levels


def _below(p: float, level: float | None) -> bool:
    return level is not None and math.isfinite(p) and p < level


def agreement_p(hard: Paired, inter: Interaction) -> float:
    """The intersection-union p of a check: the largest of its three one-sided p-values (NaN counts as 1)."""
    return max((x if math.isfinite(x) else 1.0) for x in (hard.p_t_greater, hard.p_flip_greater, inter.p_greater))


def wrong_way_p(hard: Paired, default: Paired, inter: Interaction) -> float:
    """This script's reading of the wrong-way rule (see the module docstring)."""
    one = lambda x: x if math.isfinite(x) else 1.0  # noqa: E731
    drop = max(one(hard.p_t_less), one(hard.p_flip_less))
    reversed_gain = one(inter.p_less) if default.mean > 0 else 1.0
    return min(drop, reversed_gain)


def agreement(hard: Paired, default: Paired, inter: Interaction, level: float | None) -> dict[str, bool]:
    """The three conditions of a check's agreement with real data, each on its own."""
    return {"Δ_H > 0 resolved": hard.mean > 0 and _below(hard.p_t_greater, level) and
            _below(hard.p_flip_greater, level),
            "interaction > 0": _below(inter.p_greater, level),
            "relative scale": hard.mean >= 2 * default.mean and default.ci95[1] >= 0}


def wrong_way(hard: Paired, default: Paired, inter: Interaction, level: float | None) -> bool:
    drop = _below(hard.p_t_less, level) and _below(hard.p_flip_less, level)
    return drop or (_below(inter.p_less, level) and default.mean > 0)


def equivalent(d: Paired, margin: float = MARGIN) -> bool:
    """The paired 90 % interval lies within ±margin (two one-sided tests at 5 %)."""
    lo, hi = d.ci90
    return math.isfinite(lo) and math.isfinite(hi) and -margin < lo and hi < margin


# ---------------------------------------------------------------------------------------------- R2's eps*
def most_clusters_eps(sweep: list[dict]) -> float:
    """The eps of a sweep (rows with ``eps`` and ``num_clusters``) that gives the most clusters; ties: the
    smallest eps."""
    if not sweep:
        raise ValueError("most_clusters_eps: an empty sweep")
    return min(sweep, key=lambda row: (-row["num_clusters"], row["eps"]))["eps"]


def eps_star(chosen: list[float]) -> float:
    """The median of the per-seed choices, rounded down to EPS_GRID."""
    import statistics

    if not chosen:
        raise ValueError("eps_star: no per-seed choice")
    median = statistics.median(chosen)
    return max(e for e in EPS_GRID if e <= median + 1e-9)


def measure_eps(set_name: str, seeds: list[int], records: Path, overrides: list[str] = ()) -> dict:
    """R2's label-free eps on the warm start's raw training features of ``set_name`` (D or H) for each dataset
    seed: the recipe's Jaccard graph and DBSCAN over EPS_GRID (no label enters); written to
    ``records/eps_star_<set>.json``. ``overrides``: more Hydra overrides (e.g. ``debug=fast`` to try it)."""
    from hydra import compose, initialize_config_dir

    from mqreid.engine.trainer import Trainer
    from v2_calibration import CONF, settings, write_json
    from v2_calibration import SETS as DATASETS

    rows = []
    for seed in seeds:
        with initialize_config_dir(CONF, version_base=None):
            cfg = compose("config", overrides=[f"dataset={DATASETS[set_name]}", *overrides, f"dataset.seed={seed}",
                                               "progress=false"])
        with tempfile.TemporaryDirectory() as run_dir:
            trainer = Trainer(cfg, run_dir)
        features = trainer.extract(trainer.dataset.train)
        sweep = trainer.clusterer.sweep_eps(features, EPS_GRID)
        rows.append({"dataset_seed": seed, "eps": most_clusters_eps(sweep),
                     "clusters": {f"{r['eps']:.2f}": r["num_clusters"] for r in sweep}})
        print(f"{set_name} dataset seed {seed}: the most clusters at eps {rows[-1]['eps']:.2f}", flush=True)
    record = {"set": DATASETS[set_name], "overrides": list(overrides), "recipe_eps": float(cfg.clusterer.eps), "per_seed": rows,
              "eps_star": eps_star([r["eps"] for r in rows]), "settings": settings(sys.argv)}
    write_json(records / f"eps_star_{set_name}.json", record)
    return record


# ---------------------------------------------------------------------------------------------- the grid
def arm_overrides(arm: str, seed: int, records: Path) -> list[str] | None:
    """The overrides of ``arm`` in the cell of dataset seed ``seed``; None when the arm is not defined (HC2
    before its network exists; R2-dbscan without an eps* record, or with eps* equal to the recipe's eps)."""
    if arm == "R2-dbscan":
        found = {}
        for set_name in SETS:
            path = records / f"eps_star_{set_name}.json"
            if path.is_file():
                found[set_name] = json.loads(path.read_text())
        return found or None
    overrides = ARMS[arm]
    return None if overrides is None else [o.format(seed=seed) for o in overrides]


def plan(records: Path, runs: Path, sets=tuple(SETS), seeds=SEEDS, train_script: Path | None = None):
    """(cell, run folder, command or None with why not) for every cell, in the pre-registered order: the
    held-out cells first (the baselines, HC2, HC1, the placebo), then R1, then R2."""
    from v2_calibration import SETS as DATASETS

    script = train_script or REPO / "train.py"
    cells = []
    for arm in ORDER:
        for set_name in sets:
            for seed in seeds:
                run_dir = runs / set_name / arm / f"dseed{seed}"
                overrides = arm_overrides(arm, seed, records)
                if arm == "R2-dbscan":
                    saved = (overrides or {}).get(set_name)
                    if saved is None:
                        cells.append(((set_name, arm, seed), run_dir, None, "no eps* record (eps-star)"))
                        continue
                    if math.isclose(saved["eps_star"], saved["recipe_eps"]):
                        cells.append(((set_name, arm, seed), run_dir, None, "eps* is the recipe's: the baseline"))
                        continue
                    overrides = [f"clusterer.eps={saved['eps_star']:.2f}"]
                if overrides is None:
                    cells.append(((set_name, arm, seed), run_dir, None, f"{arm}'s overrides are not defined yet"))
                    continue
                command = ["nice", "-n", "19", sys.executable, str(script), f"dataset={DATASETS[set_name]}",
                           *overrides, f"dataset.seed={seed}", "seed=0", "progress=false", f"hydra.run.dir={run_dir}"]
                cells.append(((set_name, arm, seed), run_dir, command, ""))
    return cells


WARM_START_RECORD = "HC2_warm_start.json"


def _hc2_config(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from v2_calibration import SETS as DATASETS

    with initialize_config_dir(str(REPO / "conf"), version_base=None):
        return compose("config", overrides=[f"dataset={DATASETS['D']}", *ARMS["HC2"], *overrides])


def _hc2_cache_file(cfg) -> Path:
    from mqreid.engine.warm_start import cache_path

    return cache_path(cfg.backbone, cfg.input.height, cfg.input.width, cfg.data_root)


def hc2_warm_start_cached(overrides: list[str] = ()) -> bool:
    """Whether HC2's warm start is in this machine's cache (a fresh machine has the record, not the file)."""
    return _hc2_cache_file(_hc2_config(list(overrides))).is_file()


def warm_start(records: Path, overrides: list[str]) -> dict:
    """Train (or find cached) HC2's warm start, the instance-norm small CNN's, exactly as its cells resolve
    ``backbone.pretrained=synthetic``; record the file, its sha1 and the seconds it took. When a record exists
    (its cells ran elsewhere before), it is kept, and the file built here must have its sha1: the grid's HC2
    cells then start from the same weights on every machine."""
    import hashlib

    from mqreid.engine.warm_start import synthetic_weights
    from v2_calibration import settings, write_json

    cfg = _hc2_config(overrides)
    cached = _hc2_cache_file(cfg).is_file()
    start = time.perf_counter()
    path = synthetic_weights(cfg.backbone, cfg.input.height, cfg.input.width, cfg.data_root, progress=False)
    record = {"arch": cfg.backbone.arch, "input": [cfg.input.height, cfg.input.width], "file": path.name,
              "sha1": hashlib.sha1(path.read_bytes()).hexdigest(), "trained_now": not cached,
              "seconds": round(time.perf_counter() - start, 1), "settings": settings(sys.argv)}
    target = records / WARM_START_RECORD
    if target.is_file():
        kept = json.loads(target.read_text())
        if (kept["file"], kept["sha1"]) != (record["file"], record["sha1"]):
            raise SystemExit(f"error: HC2's warm start {path} has sha1 {record['sha1']}, but {target} records "
                             f"{kept['file']} with sha1 {kept['sha1']}: the HC2 cells would not start from the "
                             "recorded weights; find out why before running them")
        print(f"HC2's warm start {path.name}: sha1 {record['sha1']}, equal to {target} (kept)")
        return kept
    write_json(target, record)
    return record


def run(args) -> int:
    """The grid: the cells of ``plan`` not finished yet, ``--lanes`` at a time, each record copied (with its
    settings) to ``<records>/<set>/<arm>/dseed<N>/`` as soon as its job ends; refused unless HEAD is the freeze
    commit or a descendant of it. When HC2's cells are to run and its warm start is not recorded or not in
    this machine's cache, the warm start is the first job of the queue (it is deterministic, checked against
    its record, and used by nothing before HC2's cells, which come after the baselines and HC1)."""
    import subprocess

    from hard_checks import run_all
    from v2_calibration import queue_run

    def git(*a: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True)

    if git("merge-base", "--is-ancestor", args.freeze, "HEAD").returncode != 0:
        raise SystemExit(f"error: --freeze {args.freeze}: expected the freeze commit, HEAD or an ancestor of it "
                         "(the grid runs only after the generator is frozen)")
    cells = plan(args.records, args.runs, args.sets, args.seeds, args.train_script)
    commands, where = [], {}
    for (set_name, arm, seed), run_dir, command, why in cells:
        if command is None:
            print(f"{set_name}/{arm}/dseed{seed}: not run ({why})")
        elif (args.records / set_name / arm / f"dseed{seed}" / "results.json").is_file():
            print(f"{set_name}/{arm}/dseed{seed}: recorded, kept")  # e.g. in a fresh checkout of the records
        elif (run_dir / "results.json").is_file():
            print(f"{set_name}/{arm}/dseed{seed}: finished, kept")
            collect(run_dir, args.records / set_name / arm / f"dseed{seed}")
        else:
            commands.append(command)
            where[id(command)] = (run_dir, args.records / set_name / arm / f"dseed{seed}")
            queue_run(run_dir, command)
    if args.train_script is None and any("backbone=small_cnn_ibn" in c for c in commands) and not (
            (args.records / WARM_START_RECORD).is_file() and hc2_warm_start_cached()):
        commands.insert(0, ["nice", "-n", "19", sys.executable, str(Path(__file__).resolve()), "warm-start",
                            "--records", str(args.records)])

    def done(command: list[str], returncode: int) -> None:
        if id(command) in where:
            collect(*where[id(command)])

    return run_all(commands, args.lanes, on_done=done) if commands else 0


def collect(run_dir: Path, record: Path) -> None:
    """Copy a finished job's records (no checkpoints) with its settings, unless they are already there."""
    from v2_calibration import copy_records

    if (record / "results.json").is_file():
        return
    if copy_records(run_dir, record):
        print(f"{record.relative_to(record.parents[2])}: recorded", flush=True)


# ---------------------------------------------------------------------------------------------- records
def dataset_seed(job: Job) -> int | None:
    """The job's ``dataset.seed`` (its last override, else the Hydra config's)."""
    seeds = [override_value(o) for o in job.overrides if override_key(o) == "dataset.seed"]
    if not seeds:
        import yaml

        try:
            cfg = yaml.safe_load((job.path / ".hydra" / "config.yaml").read_text())
            seeds = [str(cfg["dataset"]["seed"])]
        except (OSError, KeyError, TypeError, yaml.YAMLError):
            return None
    try:
        return int(seeds[-1])
    except ValueError:
        return None


def load(records: Path) -> dict[tuple[str, str], list[Job]]:
    """(set, arm) -> the finished jobs under ``records/<set>/<arm>/``."""
    cells = {}
    for set_name in SETS:
        folder = records / set_name
        for arm_dir in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
            cells[set_name, arm_dir.name] = [j for j in find_jobs(arm_dir) if j.finished]
    return cells


def per_seed(jobs: list[Job]) -> dict[int, float]:
    out = {}
    for job in jobs:
        seed = dataset_seed(job)
        if seed is not None:
            if seed in out:
                raise SystemExit(f"error: two records of dataset seed {seed} in {job.path.parent}: keep one")
            out[seed] = job.value("final", "mAP")
    return out


def complete(values: dict[int, float]) -> bool:
    return all(s in values and math.isfinite(values[s]) for s in SEEDS)


def job_settings(job: Job) -> dict:
    path = job.path / "settings.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def machine_hours(jobs: list[Job]) -> tuple[float, int]:
    """Hours during which at least one job ran (the union of the jobs' [start, end] from their settings.json,
    so separate batches add up and parallel lanes count once), and how many jobs had no times."""
    from v2_calibration import union_seconds

    spans = [(s["start"], s["end"]) for s in map(job_settings, jobs)
             if isinstance(s.get("start"), (int, float)) and isinstance(s.get("end"), (int, float))]
    return union_seconds(spans) / 3600, len(jobs) - len(spans)


def job_commit(job: Job) -> str:
    """The commit a job ran at: its settings' (``queued`` ones where the runner noted them)."""
    saved = job_settings(job)
    return str(saved.get("commit") or (saved.get("queued") or {}).get("commit") or "?")[:7]


# ---------------------------------------------------------------------------------------------- the report
def fmt(x: float, spec: str = "+.2f") -> str:
    return "–" if x is None or not math.isfinite(x) else format(x, spec)


def interval(ci: tuple[float, float]) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def report(records: Path = RECORDS) -> int:
    from v2_calibration import settings  # bench/: the settings line of the calibration's records

    if not records.is_dir():
        print(f"no records under {records}")
        return 1
    cells = load(records)
    values = {key: per_seed(jobs) for key, jobs in cells.items()}
    print(f"settings: {json.dumps(settings(sys.argv))} (machine shared with other work: the load is as measured)")
    print(f"records: {records}; dataset seeds {SEEDS[0]}-{SEEDS[-1]}, training seed 0\n")
    print("| set | arm | dataset seeds | final mAP (mean ± sd) | record commits |")
    print("|---|---|---|---|---|")
    order = ["baseline", "HC1", "HC2", "placebo", "R1", "R2-dbscan", "R2"]
    rank = lambda key: (key[0], order.index(key[1]) if key[1] in order else len(order), key[1])  # noqa: E731
    for (set_name, arm), jobs in sorted(cells.items(), key=rank):
        stat = mean_std(values[set_name, arm].values())
        commits = sorted({job_commit(j) for j in jobs})
        tag = "" if complete(values[set_name, arm]) else " (PARTIAL)"
        print(f"| {set_name} | {arm} | {stat.count} of {len(SEEDS)}{tag} | {fmt(stat.mean, '.1f')} ± "
              f"{fmt(stat.std, '.1f')} | {', '.join(commits)} |")

    def cell(set_name: str, arm: str) -> dict[int, float]:
        if arm == "R2-dbscan" and (set_name, arm) not in values:
            arm = "baseline"  # eps* equal to the recipe's eps: the baseline is R2's DBSCAN arm
        return values.get((set_name, arm), {})

    results = {}
    for name, (arm, base, _, _) in CHECKS.items():
        d = {s: paired(cell(s, arm), cell(s, base)) for s in SETS}
        full = all(complete(cell(s, arm)) and complete(cell(s, base)) for s in SETS)
        results[name] = (d, interaction(d["H"], d["D"]), full)
    levels = holm({c: agreement_p(results[c][0]["H"], results[c][1]) for c in HELD_OUT})
    wrong_levels = holm({c: wrong_way_p(results[c][0]["H"], results[c][0]["D"], results[c][1]) for c in HELD_OUT})

    print("\n| check | set | pairs | Δ mAP | SE | 95 % interval | p t (> 0 / < 0) | p sign-flip (> 0 / < 0) | "
          "published |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (d, inter, _) in results.items():
        what, published = CHECKS[name][2], CHECKS[name][3]
        for s in ("D", "H"):
            x = d[s]
            print(f"| {name} {what} | {s} | {x.n} | {fmt(x.mean)} | {fmt(x.se, '.2f')} | {interval(x.ci95)} | "
                  f"{fmt(x.p_t_greater, '.3f')} / {fmt(x.p_t_less, '.3f')} | {fmt(x.p_flip_greater, '.3f')} / "
                  f"{fmt(x.p_flip_less, '.3f')} | {published} |")
        print(f"| {name} interaction Δ_H - Δ_D | Welch, df {fmt(inter.df, '.1f')} | | {fmt(inter.mean)} | "
              f"{fmt(inter.se, '.2f')} | {interval(inter.ci95)} | {fmt(inter.p_greater, '.3f')} / "
              f"{fmt(inter.p_less, '.3f')} | | |")

    print("\n| held-out check | p (largest one-sided) | Holm level | Δ_H > 0 resolved | interaction > 0 | "
          "relative scale | wrong way | verdict |")
    print("|---|---|---|---|---|---|---|---|")
    verdicts = {}
    for name in HELD_OUT:
        d, inter, full = results[name]
        conditions = agreement(d["H"], d["D"], inter, levels[name])
        wrong = wrong_way(d["H"], d["D"], inter, wrong_levels[name])
        if not full:
            verdict = "PARTIAL records: no verdict"
        elif all(conditions.values()):
            verdict = "agrees"
        elif wrong:
            verdict = "resolves the wrong way"
        else:
            verdict = "does not agree"
        verdicts[name] = verdict
        level = "not tested" if levels[name] is None else f"{levels[name]:.3f}"
        flags = " | ".join("yes" if ok else "no" for ok in conditions.values())
        print(f"| {name} | {fmt(agreement_p(d['H'], inter), '.3f')} | {level} | {flags} | "
              f"{'yes' if wrong else 'no'} | {verdict} |")

    print("\n| equivalence (paired 90 % interval within ±2 mAP) | D | H | reading |")
    print("|---|---|---|---|")
    for name in ("placebo", "R1"):
        d, _, full = results[name]
        both = all(equivalent(d[s]) for s in SETS)
        if not full:
            reading = "PARTIAL records: no reading"
        elif name == "placebo":
            reading = "null on both sets" if both else "not shown null"
        else:
            reading = "level, as real data" if both else "not shown"
        verdicts[name] = reading
        print(f"| {name} | {interval(d['D'].ci90)} | {interval(d['H'].ci90)} | {reading} |")

    held_out_full = all(complete(values.get((s, arm), {})) for s in SETS for arm in HELD_OUT_CELLS)
    print()
    if not held_out_full:
        missing = [f"{s}/{arm}" for s in SETS for arm in HELD_OUT_CELLS if not complete(values.get((s, arm), {}))]
        print(f"predictiveness: no verdict: the held-out cells are not complete ({', '.join(missing)})")
    elif any(verdicts[c] == "resolves the wrong way" for c in HELD_OUT):
        print("predictiveness: v2 is NOT PREDICTIVE for camera and style ideas (a held-out check resolves the "
              "wrong way); the work stops here")
    elif all(verdicts[c] == "agrees" for c in HELD_OUT) and verdicts["placebo"] == "null on both sets":
        print("predictiveness: v2 is predictive for camera and style ideas (HC1 and HC2 agree, the placebo is null)")
    else:
        failed = [f"{c}: {verdicts[c]}" for c in (*HELD_OUT, "placebo")
                  if verdicts[c] not in ("agrees", "null on both sets")]
        print(f"predictiveness: v2 is not shown to be predictive ({'; '.join(failed)})")
    jobs = [j for js in cells.values() for j in js]
    hours, untimed = machine_hours(jobs)
    print(f"grid machine time: {hours:.2f} h (hours with at least one job running) from {len(jobs) - untimed} timed "
          f"jobs{f'; {untimed} jobs without times not counted' if untimed else ''}; the budget: 10 h for the "
          "calibration and the grid together")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("report", "eps-star", "plan", "run", "warm-start", "collect"))
    ap.add_argument("--records", type=Path, default=RECORDS, help="the grid's records (default: %(default)s)")
    ap.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS), help="eps-star: the sets")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="eps-star: dataset seeds (10-15)")
    ap.add_argument("--overrides", nargs="*", default=[], help="eps-star, warm-start: more Hydra overrides (e.g. debug=fast)")
    ap.add_argument("--runs", type=Path, default=RUNS, help="plan, run: where the jobs run (default: %(default)s)")
    ap.add_argument("--lanes", type=int, default=2, help="run: jobs at a time, each pinned to one core when > 1")
    ap.add_argument("--freeze", help="run: the freeze commit (the grid runs at it or at a later commit)")
    ap.add_argument("--train-script", type=Path, help=argparse.SUPPRESS)  # tests: a stand-in for train.py
    args = ap.parse_args(argv)
    args.records, args.runs = args.records.resolve(), args.runs.resolve()
    if args.command == "plan":
        for (set_name, arm, seed), _, command, why in plan(args.records, args.runs, args.sets, args.seeds):
            print(f"{set_name}/{arm}/dseed{seed}: " + (" ".join(command[3:]) if command else f"not run ({why})"))
        return 0
    if args.command == "run":
        if not args.freeze:
            ap.error("run needs --freeze COMMIT (the generator's freeze commit)")
        if args.lanes < 1:
            ap.error("--lanes must be >= 1")
        return run(args)
    if args.command == "warm-start":
        record = warm_start(args.records, args.overrides)
        print(f"HC2's warm start: {record['file']} (sha1 {record['sha1']}), "
              f"{'trained' if record['trained_now'] else 'cached'}, {record['seconds']:.0f} s")
        return 0
    if args.command == "collect":  # copy the records of finished jobs (e.g. while a grid is running)
        for (set_name, arm, seed), run_dir, command, _ in plan(args.records, args.runs, args.sets, args.seeds):
            if command is not None:
                collect(run_dir, args.records / set_name / arm / f"dseed{seed}")
        return 0
    if args.command == "eps-star":
        for set_name in args.sets:
            record = measure_eps(set_name, args.seeds, args.records.resolve(), args.overrides)
            arm = ("the baseline is R2's DBSCAN arm" if math.isclose(record["eps_star"], record["recipe_eps"])
                   else f"R2's DBSCAN arm: clusterer=dbscan clusterer.eps={record['eps_star']:.2f} (folder R2-dbscan)")
            print(f"{set_name}: eps* = {record['eps_star']:.2f} (the recipe's {record['recipe_eps']:.2f}): {arm}")
        return 0
    return report(args.records.resolve())


if __name__ == "__main__":
    sys.exit(main())
