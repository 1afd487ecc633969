"""Summarise a Hydra multirun of ``train.py``: one row per setting, mean ± std over seeds, paired differences.

    mqreid-report multirun/2026-11-24/10-00-00
    mqreid-report <multirun dir> [<more dirs>] [--baseline "memory=centroid temp=fixed"]
                            [--metric mAP] [--out-dir DIR]

Every folder below the given folder(s) that holds ``.hydra/overrides.yaml`` is a job, at any depth, so any
``hydra.sweep.subdir`` scheme works (``${hydra.job.num}``, ``${hydra.job.override_dirname}``, ...) and the
parts of a grid run into several folders can be reported together. Folders whose name starts with a dot
are not searched. A job without ``results.json`` (failed, interrupted or still running) is listed and left
out. The other jobs are grouped by their overrides except ``seed=``; overrides shared by every job are
left out of the group labels. Per group: the number of jobs, mean ± sample standard deviation of the final
and best mAP and Rank-1 (``results.json``), and the difference of the final ``--metric`` to the baseline
group, paired by seed: its mean, standard error and 95 % confidence interval (Student's t with
pairs - 1 degrees of freedom). A value that is missing or NaN is left out of its column and of the pairs.

Writes ``report.md`` (table, excluded jobs, notes), ``report.csv`` (one row per group) and ``report.png``
(the metric against the epoch from ``metrics.jsonl``, mean line and ±std band per group) into the first
folder or ``--out-dir``, each through a temporary file renamed into place.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mqreid.utils.atomic import atomic_path

METRICS = ("mAP", "rank1", "rank5", "rank10")
NAMES = {"mAP": "mAP", "rank1": "Rank-1", "rank5": "Rank-5", "rank10": "Rank-10"}
STAGES = ("final", "best")
SEED_KEY = "seed"
ALL = "(all)"  # the label of a group whose overrides are all shared by every job


class ReportError(Exception):
    """The folder(s) cannot be reported on: no job, no finished job, or an unknown baseline."""


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class Job:
    """One Hydra job folder."""

    path: Path
    name: str                       # as shown in the report: the folder relative to the multirun folder
    overrides: tuple[str, ...]      # .hydra/overrides.yaml, in file order
    seed: str | None                # the value of the ``seed=`` override, else the config's seed
    results: dict[str, Any] | None  # results.json; None when missing or unreadable
    metrics: list[dict[str, Any]] = field(default_factory=list)  # metrics.jsonl rows
    problem: str | None = None      # why the job is left out
    bad_lines: int = 0              # metrics.jsonl lines that are not JSON (e.g. cut off by a crash)

    @property
    def finished(self) -> bool:
        return self.results is not None

    @property
    def settings(self) -> tuple[str, ...]:
        """The overrides except ``seed=``, sorted: what identifies the job's group."""
        return tuple(sorted(o for o in self.overrides if override_key(o) != SEED_KEY))

    def value(self, stage: str, metric: str) -> float:
        """``results[stage][metric]`` as a float; NaN when missing, null or not a number."""
        entry = (self.results or {}).get(stage)
        return _number(entry.get(metric)) if isinstance(entry, dict) else math.nan

    def curve(self, metric: str) -> dict[int, float]:
        """Epoch -> metric for the evaluated epochs of metrics.jsonl (finite values only)."""
        out = {}
        for row in self.metrics:
            epoch, value = row.get("epoch"), _number(row.get(metric))
            if isinstance(epoch, (int, float)) and not isinstance(epoch, bool) and math.isfinite(value):
                out[int(epoch)] = value
        return out

    def last_epoch(self) -> int | None:
        epochs = [r["epoch"] for r in self.metrics if isinstance(r.get("epoch"), int)]
        return max(epochs) if epochs else None


def override_key(override: str) -> str:
    """``+key=value`` / ``++key=value`` / ``key=value`` -> ``key``."""
    return override.split("=", 1)[0].lstrip("+")


def override_value(override: str) -> str:
    return override.split("=", 1)[1] if "=" in override else ""


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan
    return float(value)


_BARE = re.compile(r"(?<![\w\"])(-?)(nan|inf|infinity)(?![\w\"])", re.IGNORECASE)


def read_jsonl(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of a JSON-lines file and the number of lines that could not be read.

    Python's ``json`` already reads ``NaN`` and ``Infinity``; a line that still fails is retried with bare
    ``nan`` / ``inf`` spelled the JSON way, and skipped (counted) if it still fails, e.g. a line cut off
    by a crash.
    """
    rows, bad = [], 0
    for line in Path(path).read_text(errors="replace").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except ValueError:
            fixed = _BARE.sub(lambda m: m.group(1) + ("NaN" if m.group(2).lower() == "nan" else "Infinity"), line)
            try:
                row = json.loads(fixed)
            except ValueError:
                bad += 1
                continue
        if isinstance(row, dict):
            rows.append(row)
        else:
            bad += 1
    return rows, bad


def read_job(path: Path, name: str) -> Job:
    """Read one job folder (``path/.hydra/overrides.yaml``, ``results.json``, ``metrics.jsonl``)."""
    hydra_dir = path / ".hydra"
    problem = None
    try:
        loaded = yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) or []
        overrides = tuple(str(o) for o in loaded) if isinstance(loaded, list) else ()
        if not isinstance(loaded, list):
            problem = ".hydra/overrides.yaml is not a list"
    except (OSError, yaml.YAMLError) as err:
        overrides, problem = (), f".hydra/overrides.yaml unreadable ({err})"
    seeds = [override_value(o) for o in overrides if override_key(o) == SEED_KEY]
    seed = seeds[-1] if seeds else _config_seed(hydra_dir / "config.yaml")

    results = None
    if problem is None and (path / "results.json").is_file():
        try:
            results = json.loads((path / "results.json").read_text())
        except (OSError, ValueError) as err:
            problem = f"results.json unreadable ({err})"
        else:
            if not isinstance(results, dict) or not isinstance(results.get("final"), dict):
                results, problem = None, "results.json has no 'final' entry"
    elif problem is None:
        problem = "no results.json (failed, interrupted or still running)"

    metrics, bad = read_jsonl(path / "metrics.jsonl") if (path / "metrics.jsonl").is_file() else ([], 0)
    return Job(path, name, overrides, seed, results, metrics, problem, bad)


def _config_seed(config: Path) -> str | None:
    try:
        cfg = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError):
        return None
    seed = cfg.get(SEED_KEY) if isinstance(cfg, dict) else None
    return None if seed is None else str(seed)


def _natural(text: str) -> list:
    """Sort key that orders numbers by value: queue_size=2 < queue_size=16, temp=0.05 < temp=0.1."""
    parts = re.split(r"(\d+(?:\.\d+)?)", text)
    return [float(p) if i % 2 else p for i, p in enumerate(parts)]


def find_jobs(*roots: str | Path) -> list[Job]:
    """Every job folder (one holding ``.hydra/overrides.yaml``) at any depth below ``roots``.

    Raises ``FileNotFoundError`` for a root that is not a folder. Folders whose name starts with a dot are
    not searched, nor are the folders inside a job.
    """
    jobs, seen = [], set()
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"{root}: no such folder")
        found = []
        for dirpath, dirnames, _ in os.walk(root):
            here = Path(dirpath)
            if (here / ".hydra" / "overrides.yaml").is_file():
                dirnames[:] = []
                found.append(here)
            else:
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for path in found:
            if path.resolve() in seen:
                continue
            seen.add(path.resolve())
            rel = path.relative_to(root).as_posix()
            if len(roots) > 1:
                name = root.as_posix() if rel == "." else f"{root.as_posix().rstrip('/')}/{rel}"
            else:
                name = root.resolve().name if rel == "." else rel
            jobs.append(read_job(path, name))
    return sorted(jobs, key=lambda j: _natural(j.name))


# ---------------------------------------------------------------------------------------------- statistics
@dataclass
class Stat:
    """Mean and sample standard deviation (ddof 1) of the finite values; NaN where undefined."""

    mean: float
    std: float
    count: int


def mean_std(values: Iterable[float]) -> Stat:
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return Stat(math.nan, math.nan, 0)
    return Stat(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else math.nan, len(vals))


@dataclass
class PairedDiff:
    """Mean of the per-seed differences (group - baseline), its standard error and confidence interval."""

    mean: float
    se: float
    ci_low: float
    ci_high: float
    n_pairs: int


def paired_difference(values: Mapping[str, float], baseline: Mapping[str, float],
                      confidence: float = 0.95) -> PairedDiff:
    """Differences ``values[s] - baseline[s]`` over the seeds ``s`` both hold with finite values.

    mean = d̄, SE = sd(d) / sqrt(n) (sample sd, ddof 1), CI = d̄ ± t_{(1+confidence)/2, n-1} · SE.
    One pair gives the mean only (SE and CI NaN); none gives all NaN.
    """
    diffs = [values[s] - baseline[s] for s in sorted(set(values) & set(baseline), key=_natural)
             if math.isfinite(values[s]) and math.isfinite(baseline[s])]
    n = len(diffs)
    if n == 0:
        return PairedDiff(math.nan, math.nan, math.nan, math.nan, 0)
    mean = statistics.fmean(diffs)
    if n == 1:
        return PairedDiff(mean, math.nan, math.nan, math.nan, 1)
    from scipy import stats

    se = statistics.stdev(diffs) / math.sqrt(n)
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * se
    return PairedDiff(mean, se, mean - half, mean + half, n)


# ---------------------------------------------------------------------------------------------- grouping
@dataclass
class Group:
    settings: tuple[str, ...]  # the sorted overrides except seed= (the grouping key)
    label: str                 # the settings not shared by every job
    jobs: list[Job]

    def per_seed(self, stage: str, metric: str) -> dict[str, float]:
        """Seed -> value (the mean of the finite values when a seed occurs more than once)."""
        by_seed: dict[str, list[float]] = {}
        for job in self.jobs:
            if job.seed is not None:
                by_seed.setdefault(job.seed, []).append(job.value(stage, metric))
        out = {}
        for seed, vals in by_seed.items():
            finite = [v for v in vals if math.isfinite(v)]
            out[seed] = statistics.fmean(finite) if finite else math.nan
        return out


def group_jobs(jobs: Sequence[Job]) -> tuple[list[Group], tuple[str, ...]]:
    """Group jobs by their overrides except ``seed=``; returns the groups in natural order of their labels
    and the overrides (except seed) that every job shares, which the labels leave out."""
    if not jobs:
        return [], ()
    common = set(jobs[0].settings)
    for job in jobs[1:]:
        common &= set(job.settings)
    by_key: dict[tuple[str, ...], list[Job]] = {}
    for job in jobs:
        by_key.setdefault(job.settings, []).append(job)
    groups = [Group(key, " ".join(o for o in key if o not in common) or ALL, members)
              for key, members in by_key.items()]
    groups.sort(key=lambda g: _natural(g.label))
    return groups, tuple(sorted(common))


def select_baseline(groups: Sequence[Group], spec: str | None) -> Group:
    """The group whose overrides include every override of ``spec`` (space separated); without a spec,
    the first group. Raises ``ReportError`` listing the groups when none or several match."""
    if not groups:
        raise ReportError("no group to compare")
    if spec is None or not spec.strip():
        return groups[0]
    wanted = spec.split()
    matches = [g for g in groups if all(w in g.settings for w in wanted) or spec.strip() == g.label]
    valid = "\n".join(f"  {g.label!r}" for g in groups)
    if not matches:
        raise ReportError(f"--baseline {spec!r} matches no group; the groups are:\n{valid}")
    if len(matches) > 1:
        names = "\n".join(f"  {g.label!r}" for g in matches)
        raise ReportError(f"--baseline {spec!r} matches {len(matches)} groups; add overrides to pick one of:\n{names}")
    return matches[0]


@dataclass
class Effect:
    """The paired difference made by changing one override ``key`` from ``base`` to ``value``, all the other
    overrides equal: within one combination of the others (``within``), or over all of them (``within`` =
    ALL, pairs = (combination, seed))."""

    key: str
    base: str
    value: str
    within: str
    diff: PairedDiff


def effects(groups: Sequence[Group], base: Group, metric: str, common: Sequence[str] = ()) -> list[Effect]:
    """For every override key that takes several values across the groups (and is set in all of them),
    each value against the baseline group's value: within each combination of the other overrides that
    both values ran, paired by seed, and pooled over those combinations (a main effect, paired by
    (combination, seed))."""
    settings = [{override_key(o): o for o in g.settings} for g in groups]
    keys = [k for k in settings[0] if all(k in s for s in settings) and len({s[k] for s in settings}) > 1] \
        if settings else []
    base_settings = {override_key(o): o for o in base.settings}
    out = []
    for key in keys:
        by_rest: dict[tuple[str, ...], dict[str, Group]] = {}
        for g, s in zip(groups, settings):
            rest = tuple(sorted(o for k, o in s.items() if k != key))
            by_rest.setdefault(rest, {})[s[key]] = g
        values = sorted({s[key] for s in settings} - {base_settings[key]}, key=_natural)
        for value in values:
            pooled_v, pooled_b = {}, {}
            for rest, members in sorted(by_rest.items(), key=lambda kv: _natural(" ".join(kv[0]))):
                if value not in members or base_settings[key] not in members:
                    continue
                v = members[value].per_seed("final", metric)
                b = members[base_settings[key]].per_seed("final", metric)
                within = " ".join(o for o in rest if o not in common) or ALL
                out.append(Effect(key, override_value(base_settings[key]), override_value(value), within,
                                  paired_difference(v, b)))
                pooled_v.update({f"{within} seed={seed}": x for seed, x in v.items()})
                pooled_b.update({f"{within} seed={seed}": x for seed, x in b.items()})
            if len({e.within for e in out if e.key == key and e.value == override_value(value)}) > 1:
                out.append(Effect(key, override_value(base_settings[key]), override_value(value), ALL,
                                  paired_difference(pooled_v, pooled_b)))
    return out


# ---------------------------------------------------------------------------------------------- the report
@dataclass
class Row:
    group: Group
    stats: dict[tuple[str, str], Stat]  # (stage, metric) -> Stat
    diff: PairedDiff                    # final <metric> against the baseline, paired by seed
    is_baseline: bool

    @property
    def n(self) -> int:
        return len(self.group.jobs)


@dataclass
class Report:
    roots: list[Path]
    metric: str
    rows: list[Row]
    baseline: Group
    common: tuple[str, ...]
    excluded: list[Job]
    notes: list[str]
    effects: list[Effect]

    @property
    def columns(self) -> list[str]:
        """The metrics with mean ± std columns: mAP and Rank-1, plus --metric if it is another."""
        return ["mAP", "rank1"] + ([self.metric] if self.metric not in ("mAP", "rank1") else [])


def build_report(roots: Sequence[str | Path], baseline: str | None = None, metric: str = "mAP") -> Report:
    """Read the jobs below ``roots`` and compute every group's statistics (nothing is written)."""
    if metric not in METRICS:
        raise ReportError(f"--metric {metric!r}: expected one of {', '.join(METRICS)}")
    roots = [Path(r) for r in roots]
    jobs = find_jobs(*roots)
    where = ", ".join(str(r) for r in roots)
    if not jobs:
        raise ReportError(f"{where}: no job found (no .hydra/overrides.yaml below it); expected a multirun folder "
                          f"of `python train.py -m ...`")
    finished = [j for j in jobs if j.finished]
    excluded = [j for j in jobs if not j.finished]
    if not finished:
        raise ReportError(f"{where}: none of the {len(jobs)} job(s) has a results.json (failed, interrupted or "
                          f"still running): " + ", ".join(j.name for j in excluded))
    groups, common = group_jobs(finished)
    base = select_baseline(groups, baseline)
    columns = ["mAP", "rank1"] + ([metric] if metric not in ("mAP", "rank1") else [])
    base_values = base.per_seed("final", metric)
    rows = []
    for group in groups:
        stats = {(stage, m): mean_std(j.value(stage, m) for j in group.jobs) for stage in STAGES for m in columns}
        rows.append(Row(group, stats, paired_difference(group.per_seed("final", metric), base_values),
                        group is base))
    return Report(roots, metric, rows, base, common, excluded, _notes(groups, base, metric, columns),
                  effects(groups, base, metric, common))


def _notes(groups: Sequence[Group], base: Group, metric: str, columns: Sequence[str]) -> list[str]:
    notes = []
    for group in groups:
        for job in group.jobs:
            missing = [f"{stage} {NAMES[m]}" for stage in STAGES for m in columns
                       if not math.isfinite(job.value(stage, m))]
            if missing:
                notes.append(f"`{job.name}`: {', '.join(missing)} missing or NaN in results.json; left out of "
                             f"{'that column' if len(missing) == 1 else 'those columns'}"
                             + (" and of the pairs" if f"final {NAMES[metric]}" in missing else ""))
            if job.bad_lines:
                notes.append(f"`{job.name}`: {job.bad_lines} unreadable line(s) in metrics.jsonl skipped")
            if job.seed is None:
                notes.append(f"`{job.name}`: no seed found; not paired")
        seeds = [j.seed for j in group.jobs if j.seed is not None]
        repeated = sorted({s for s in seeds if seeds.count(s) > 1}, key=_natural)
        if repeated:
            notes.append(f"group {group.label!r} has seed(s) {', '.join(repeated)} more than once; the paired "
                         f"difference uses the mean per seed")
        shared = {j.seed for j in group.jobs} & {j.seed for j in base.jobs} - {None}
        if group is not base and not shared:
            notes.append(f"group {group.label!r} shares no seed with the baseline; no paired difference")
    return notes


# ---------------------------------------------------------------------------------------------- rendering
def _fmt_stat(stat: Stat, n: int) -> str:
    if stat.count == 0:
        return "–"
    text = f"{stat.mean:.1f}" if stat.count == 1 else f"{stat.mean:.1f} ± {stat.std:.1f}"
    return text + (f" (n={stat.count})" if stat.count != n else "")


def _fmt(value: float, spec: str = "") -> str:
    """``value`` formatted with ``spec`` (full precision with the empty spec); empty when undefined."""
    return "" if value is None or not math.isfinite(value) else (format(value, spec) if spec else repr(float(value)))


def render_table(report: Report) -> str:
    m = NAMES[report.metric]
    head = ["setting", "n"] + [f"{stage} {NAMES[c]}" for c in report.columns for stage in STAGES]
    head += [f"Δ final {m}", "SE", "95% CI", "pairs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in report.rows:
        cells = [row.group.label.replace("|", "\\|"), str(row.n)]
        cells += [_fmt_stat(row.stats[(stage, c)], row.n) for c in report.columns for stage in STAGES]
        d = row.diff
        if row.is_baseline:
            cells += ["baseline", "", "", str(d.n_pairs)]
        else:
            ci = f"[{d.ci_low:+.2f}, {d.ci_high:+.2f}]" if math.isfinite(d.ci_low) else ""
            cells += [_fmt(d.mean, "+.2f") or "–", _fmt(d.se, ".2f"), ci, str(d.n_pairs)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def shown_effects(report: Report) -> list[Effect]:
    """The effects worth a table of their own: only when at least two overrides vary (with one, the main
    table's paired differences are the effects already)."""
    return report.effects if len({e.key for e in report.effects}) > 1 else []


def render_effects(report: Report) -> str:
    m = NAMES[report.metric]
    head = ["change", "within", f"Δ final {m}", "SE", "95% CI", "pairs"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in shown_effects(report):
        d = e.diff
        ci = f"[{d.ci_low:+.2f}, {d.ci_high:+.2f}]" if math.isfinite(d.ci_low) else ""
        within = "**all (pooled)**" if e.within == ALL else e.within
        lines.append(f"| {e.key}: {e.base} → {e.value} | {within} | {_fmt(d.mean, '+.2f') or '–'} | "
                     f"{_fmt(d.se, '.2f')} | {ci} | {d.n_pairs} |")
    return "\n".join(lines)


def _short(job: Job, common: Sequence[str]) -> str:
    return " ".join(o for o in job.overrides if o not in common) or ALL


def render_markdown(report: Report) -> str:
    m = NAMES[report.metric]
    finished = sum(r.n for r in report.rows)
    out = [f"# Report: {', '.join(str(r) for r in report.roots)}", "",
           f"{finished} finished job(s) in {len(report.rows)} group(s); values in %, mean ± standard deviation over "
           f"seeds. Baseline: `{report.baseline.label}`."]
    if report.common:
        out.append(f"Shared by every job (left out of the labels): `{' '.join(report.common)}`.")
    out += ["", render_table(report), "",
            f"n: finished jobs of the group (one per seed). final: the last evaluation, best: the best one "
            f"(results.json); ± is the sample standard deviation over seeds, and (n=k) marks a cell with fewer "
            f"values. Δ final {m}: the mean over the seeds both the group and the baseline ran of (group - "
            f"baseline), i.e. a paired difference; SE: the standard deviation of those differences / √pairs; "
            f"95% CI: Δ ± t(0.975, pairs - 1) × SE (Student's t); pairs: the seeds used. SE and CI need at "
            f"least 2 pairs. No correction for comparing several groups is applied.", ""]
    if shown_effects(report):
        explained = (f"Each override that varies, changed from the baseline's value with every other override "
                     f"equal: the paired difference of the final {m} within each combination of the others (pairs: "
                     f"seeds), and pooled over the combinations (pairs: combination and seed; its SE includes how "
                     f"the effect varies between combinations).")
        out += ["## Effect of each setting", "", explained, "", render_effects(report), ""]
    out += ["## Excluded jobs", ""]
    if report.excluded:
        for job in report.excluded:
            last = job.last_epoch()
            where = f"; metrics.jsonl reaches epoch {last}" if last is not None else ""
            out.append(f"- `{job.name}` ({_short(job, report.common)}): {job.problem}{where}")
    else:
        out.append("None: every job has a results.json.")
    if report.notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in report.notes]
    return "\n".join(out) + "\n"


def render_csv(report: Report) -> str:
    fields = ["group", "n"]
    for c in report.columns:
        for stage in STAGES:
            fields += [f"{stage}_{c}_mean", f"{stage}_{c}_std"]
    fields += ["diff_mean", "diff_se", "ci_low", "ci_high", "n_pairs", "is_baseline"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(fields)
    for row in report.rows:
        values: list[Any] = [row.group.label, row.n]
        for c in report.columns:
            for stage in STAGES:
                s = row.stats[(stage, c)]
                values += [_fmt(s.mean), _fmt(s.std)]
        d = row.diff
        values += [_fmt(d.mean), _fmt(d.se), _fmt(d.ci_low), _fmt(d.ci_high), d.n_pairs,
                   row.is_baseline]
        writer.writerow(values)
    return buf.getvalue()


def curves(report: Report) -> dict[str, tuple[list[int], list[float], list[float]]]:
    """Group label -> (epochs, mean, std) of ``report.metric`` over the group's jobs (std 0 with one job)."""
    out = {}
    for row in report.rows:
        per_job = [j.curve(report.metric) for j in row.group.jobs]
        epochs = sorted(set().union(*per_job))
        if not epochs:
            continue
        means, stds = [], []
        for e in epochs:
            s = mean_std(c[e] for c in per_job if e in c)
            means.append(s.mean)
            stds.append(s.std if s.count > 1 else 0.0)
        out[row.group.label] = (epochs, means, stds)
    return out


def plot_curves(report: Report, path: str | Path) -> str | None:
    """Write ``report.metric`` against the epoch to ``path`` (PNG, Agg backend, atomically).

    Returns None when written, else the reason it was not (no evaluated epoch).
    """
    data = curves(report)
    if not data:
        return f"no evaluated epoch in any metrics.jsonl; {Path(path).name} not written"
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, (epochs, means, stds) in data.items():
        line, = ax.plot(epochs, means, marker="o", markersize=3,
                        label=label + (" (baseline)" if label == report.baseline.label else ""))
        ax.fill_between(epochs, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                        color=line.get_color(), alpha=0.2, linewidth=0)
    name = NAMES[report.metric]
    ax.set(xlabel="epoch", ylabel=f"{name} (%)", title=f"{name} per epoch: mean ± std over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return None


def render_effects_csv(report: Report) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["key", "base", "value", "within", "diff_mean", "diff_se", "ci_low", "ci_high", "n_pairs"])
    for e in shown_effects(report):
        d = e.diff
        writer.writerow([e.key, e.base, e.value, e.within, _fmt(d.mean), _fmt(d.se), _fmt(d.ci_low), _fmt(d.ci_high),
                         d.n_pairs])
    return buf.getvalue()


def write_report(report: Report, out_dir: str | Path) -> tuple[list[Path], list[str]]:
    """Write report.md, report.csv and report.png into ``out_dir``; returns the files written and warnings."""
    out_dir = Path(out_dir)
    written, warnings = [], []
    texts = [("report.md", render_markdown(report)), ("report.csv", render_csv(report))]
    if shown_effects(report):
        texts.append(("report_effects.csv", render_effects_csv(report)))
    for name, text in texts:
        with atomic_path(out_dir / name) as tmp:
            tmp.write_text(text)
        written.append(out_dir / name)
    reason = plot_curves(report, out_dir / "report.png")
    if reason is None:
        written.append(out_dir / "report.png")
    else:
        warnings.append(reason)
    return written, warnings


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="mqreid-report", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dirs", nargs="+", type=Path, metavar="DIR",
                    help="multirun folder(s) of `python train.py -m ...` (searched recursively for jobs)")
    ap.add_argument("--baseline", default=None,
                    help='the group to compare against, by override(s), e.g. "memory=centroid temp=fixed" '
                         "(default: the first group in sorted order)")
    ap.add_argument("--metric", default="mAP", choices=METRICS,
                    help="metric of the paired difference and of the plot (default: mAP)")
    ap.add_argument("--out-dir", type=Path, default=None, help="where to write the report (default: the first DIR)")
    args = ap.parse_args(argv)
    try:
        report = build_report(args.dirs, baseline=args.baseline, metric=args.metric)
    except (ReportError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(render_markdown(report), end="")
    written, warnings = write_report(report, args.out_dir or args.dirs[0])
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"\nwrote {', '.join(str(p) for p in written)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
