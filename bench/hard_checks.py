"""The known-effect checks of docs/benchmark-hard.md on both synthetic sets: run the grid, print the table.

    python bench/hard_checks.py tlr-scan                 # C3: T's travel for each temp.tlr (hard set, seed 0)
    python bench/hard_checks.py run                      # the grid: every setting x both sets x seeds 0-4
    python bench/hard_checks.py run --lanes 2            # two jobs at a time, each pinned to one core
    python bench/hard_checks.py run --only hard/baseline hard/H1
    python bench/hard_checks.py report                   # the checks table from the jobs that finished
    python bench/hard_checks.py report --runs bench/results/checks   # from the records kept in the repository
    python bench/hard_checks.py report --v2              # benchmark v2: the calibration and checks tables

The grid is one factor at a time against a shared baseline (the synthetic recipe: DBSCAN, multi-queue, fixed
T = 0.05, camera centring on). Each setting of each set is one ``bench/ablation.py --sweep checks`` into
``bench/runs/checks/<set>/<setting>/`` (seeds 0-4), so finished jobs are kept and the same command completes
an interrupted grid. The thread count changes a run's figures (docs/benchmarks.md), so every job of a grid
must run with the same one: ``--lanes 1`` gives each job the machine's cores, ``--lanes N`` pins each of N
concurrent jobs to one core (one torch thread each); do not mix the two in one grid.

The report pairs each setting with the baseline by seed (``mqreid.tools.report.paired_difference``) on each
set and states whether the direction agrees with the published one (docs/benchmark-hard.md); the job's wall
time is the time from its Hydra config to its results.json.
"""

from __future__ import annotations

import argparse
import math
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

from mqreid.tools.report import Job, find_jobs, mean_std, paired_difference

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "bench" / "runs" / "checks"
SETS = {"default": "dataset=synthetic", "hard": "dataset=synthetic_hard"}
# C3's choice: the smallest of TLR_LADDER at which T ends at least TRAVEL from T0 on the hard set; where none
# does, the one that ends farthest. Measured (docs/benchmark-hard.md): none does; 1.0 ends farthest (+0.0068).
TLR = 1.0
TLR_LADDER = (0.01, 0.1, 0.3, 1.0)
TRAVEL = 0.008
T0 = 0.05
# setting -> (overrides, what it checks, the published direction, rule: "held-out" or "report-only")
SETTINGS = {
    "baseline": ([], "", "", ""),
    "H1": (["train.camera_centering=false"], "camera centring on vs off",
           "helps, more on the harder set (PPLR camera labels +2.9 / +10.8)", "held-out"),
    "H2": (["temp=learnable", f"temp.tlr={TLR}"], "learnable vs fixed T",
           "learnable helps on MSMT17 (+8.2), T falls there", "held-out"),
    "R1": (["memory=centroid"], "multi-queue vs centroid memory",
           "no resolved gap (Market 82.8 vs 82.1-82.6)", "report-only"),
    "R2": (["clusterer=infomap"], "InfoMap vs DBSCAN", "no gap for this method (82.5 vs 82.8, 35.0 vs 34.7)",
           "report-only"),
}
# H1 compares "on" (the baseline) against "off" (the setting): its effect is baseline - setting.
SIGN = {"H1": -1, "H2": 1, "R1": -1, "R2": 1}


def cells(only: list[str] | None) -> list[tuple[str, str]]:
    """(set, setting) in the order they run: the baselines, then each check on the hard set and the default."""
    order = [(s, name) for name in SETTINGS for s in ("hard", "default")]
    if only:
        unknown = sorted(set(only) - {f"{s}/{n}" for s, n in order})
        if unknown:
            raise SystemExit(f"error: --only {' '.join(unknown)}: expected SET/SETTING with SET in "
                             f"{', '.join(SETS)} and SETTING in {', '.join(SETTINGS)}")
        order = [c for c in order if f"{c[0]}/{c[1]}" in only]
    return order


def ablation(run_dir: Path, overrides: list[str]) -> list[str]:
    return [sys.executable, str(REPO / "bench" / "ablation.py"), "--sweep", "checks", "--dir", str(run_dir),
            "--set", *overrides, "progress=false"]


def run_all(commands: list[list[str]], lanes: int, on_done=None) -> int:
    """Run the commands, ``lanes`` at a time; with more than one lane each lane is pinned to one core.
    ``on_done(command, returncode)``, when given, is called as each command ends (from its lane's thread)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if lanes > 1 and len(cores) < lanes:
        raise SystemExit(f"error: --lanes {lanes}: only {len(cores) or 'an unknown number of'} core(s) to pin to")
    todo: queue.Queue[list[str]] = queue.Queue()
    for cmd in commands:
        todo.put(cmd)
    failed = []

    def lane(k: int) -> None:
        pin = (lambda: os.sched_setaffinity(0, {cores[k]})) if lanes > 1 else None
        while True:
            try:
                cmd = todo.get_nowait()
            except queue.Empty:
                return
            print(f"+ [lane {k}] {' '.join(cmd[1:])}", flush=True)
            returncode = subprocess.run(cmd, cwd=REPO, preexec_fn=pin).returncode
            if returncode != 0:
                failed.append(cmd)
            if on_done is not None:
                on_done(cmd, returncode)

    threads = [threading.Thread(target=lane, args=(k,)) for k in range(lanes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for cmd in failed:
        print(f"error: failed: {' '.join(cmd[1:])} (run the same command again to complete it)", file=sys.stderr)
    return 1 if failed else 0


def final_temperature(job: Job) -> float:
    rows = [r for r in job.metrics if isinstance(r.get("temperature"), (int, float))]
    return float(rows[-1]["temperature"]) if rows else math.nan


def job_times(job: Job) -> tuple[float, float] | None:
    """(start, end) of a job in seconds: the mtimes of its Hydra config and of its results.json."""
    start, end = job.path / ".hydra" / "config.yaml", job.path / "results.json"
    return (start.stat().st_mtime, end.stat().st_mtime) if start.is_file() and end.is_file() else None


def wall_minutes(job: Job) -> float:
    times = job_times(job)
    return (times[1] - times[0]) / 60 if times else math.nan


def span_hours(jobs: list[Job]) -> float:
    """Hours from the first job's start to the last job's end."""
    times = [job_times(j) for j in jobs]
    if not times or None in times:
        return math.nan
    return (max(end for _, end in times) - min(start for start, _ in times)) / 3600


def jobs_of(set_name: str, setting: str) -> list[Job]:
    folder = RUNS / set_name / setting
    return [j for j in find_jobs(folder) if j.finished] if folder.is_dir() else []


def per_seed(jobs: list[Job], stage: str = "final", metric: str = "mAP") -> dict[str, float]:
    return {j.seed: j.value(stage, metric) for j in jobs if j.seed is not None}


def fmt(x: float, spec: str = "+.2f") -> str:
    return "–" if not math.isfinite(x) else format(x, spec)


def report() -> int:
    cell = {(set_name, setting): jobs_of(set_name, setting) for set_name in SETS for setting in SETTINGS}
    t_end = {key: mean_std(final_temperature(j) for j in jobs).mean for key, jobs in cell.items()}
    print("| set | setting | n | final mAP (mean ± std) | final T (mean) | wall min/job (mean) |")
    print("|---|---|---|---|---|---|")
    for (set_name, setting), jobs in cell.items():
        s = mean_std(per_seed(jobs).values())
        w = mean_std(wall_minutes(j) for j in jobs)
        print(f"| {set_name} | {setting} | {s.count} | {fmt(s.mean, '.1f')} ± {fmt(s.std, '.1f')} | "
              f"{fmt(t_end[set_name, setting], '.4f')} | {fmt(w.mean, '.1f')} |")
    print()
    print("| check | set | pairs | Δ mAP (the first setting minus the second) | SE | 95% CI | published direction "
          "| agrees |")
    print("|---|---|---|---|---|---|---|---|")
    for setting, (_, what, published, rule) in SETTINGS.items():
        if setting == "baseline":
            continue
        deltas = {}
        for set_name in ("default", "hard"):
            base, other = per_seed(cell[set_name, "baseline"]), per_seed(cell[set_name, setting])
            deltas[set_name] = paired_difference(other, base) if SIGN[setting] > 0 else paired_difference(base, other)
        for set_name, d in deltas.items():
            verdict = agreement(setting, set_name, deltas, t_end[set_name, setting])
            print(f"| {setting} {what} ({rule}) | {set_name} | {d.n_pairs} | {fmt(d.mean)} | {fmt(d.se, '.2f')} | "
                  f"[{fmt(d.ci_low)}, {fmt(d.ci_high)}] | {published} | {verdict} |")
    everything = [j for jobs in cell.values() for j in jobs]
    total = sum(w for w in map(wall_minutes, everything) if math.isfinite(w))
    print(f"\n{len(everything)} finished jobs; their wall time adds up to {total:.0f} min ({total / 60:.1f} h) of job "
          f"time; {fmt(span_hours(everything), '.1f')} h from the first job's start to the last one's end")
    return 0


def agreement(setting: str, set_name: str, deltas: dict, t_end: float = math.nan) -> str:
    """Whether the point estimate has the published direction, by the rules of docs/benchmark-hard.md
    ("resolved" when the CI excludes zero too). ``t_end``: the setting's mean final T on ``set_name``."""
    d, easy = deltas[set_name], deltas["default"]
    if d.n_pairs == 0:
        return "not run"
    resolved = math.isfinite(d.ci_low) and (d.ci_low > 0 or d.ci_high < 0)
    tag = ", resolved" if resolved else ", unresolved"
    if setting not in ("H1", "H2"):
        return f"report-only{tag}"
    if set_name == "default":
        return f"{'yes' if d.mean > 0 else 'no'} (Δ > 0){tag}"
    if setting == "H1":
        ok, rule = d.mean > 0 and easy.n_pairs > 0 and d.mean > easy.mean, "Δ > 0 and larger than on the default set"
    else:
        ok, rule = d.mean > 0 and t_end < T0, "Δ > 0 and T ends below 0.05"
    return f"{'yes' if ok else 'no'} ({rule}){tag}"


def tlr_scan(lanes: int) -> int:
    """C3: one job per temp.tlr on the hard set (seed 0), ``lanes`` values at a time from the smallest, until
    one moves T at least TRAVEL from T0; then T's final distance from T0 for each value that ran."""
    dirs = {tlr: RUNS / "c3" / f"tlr_{tlr:g}" for tlr in TLR_LADDER}

    def final_t(tlr: float) -> float:
        jobs = [j for j in find_jobs(dirs[tlr]) if j.finished] if dirs[tlr].is_dir() else []
        return final_temperature(jobs[0]) if jobs else math.nan

    def far(t: float) -> bool:
        return math.isfinite(t) and abs(t - T0) >= TRAVEL

    status, ran, chosen = 0, [], None
    for k in range(0, len(TLR_LADDER), lanes):
        batch = TLR_LADDER[k:k + lanes]
        status |= run_all([ablation(dirs[tlr], [SETS["hard"], "temp=learnable", f"temp.tlr={tlr:g}", "seed=0"])
                           for tlr in batch], lanes)
        ran += batch
        chosen = next((tlr for tlr in ran if far(final_t(tlr))), None)
        if chosen is not None:
            break
    print("| temp.tlr | final T | distance from 0.05 | travels >= 0.008 |\n|---|---|---|---|")
    for tlr in ran:
        t = final_t(tlr)
        print(f"| {tlr:g} | {fmt(t, '.4f')} | {fmt(abs(t - T0), '.4f')} | {'yes' if far(t) else 'no'} |")
    if chosen is None and ran:
        distance = {tlr: abs(final_t(tlr) - T0) for tlr in ran}
        chosen = max(ran, key=lambda tlr: distance[tlr] if math.isfinite(distance[tlr]) else -1.0)
        print(f"\nno temp.tlr moves T {TRAVEL} from {T0}: the one that moves it farthest is {chosen:g}")
    print(f"\nchosen temp.tlr: {chosen:g} (the grid's H2 uses TLR = {TLR:g}, set in this script)")
    return status


def main(argv: list[str] | None = None) -> int:
    global RUNS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("run", "report", "tlr-scan"))
    ap.add_argument("--lanes", type=int, default=1, help="jobs at a time, each pinned to one core when > 1")
    ap.add_argument("--only", nargs="+", metavar="SET/SETTING", help="run these cells only, e.g. hard/H1")
    ap.add_argument("--runs", type=Path, default=RUNS,
                    help="the grid's folder (default: bench/runs/checks; bench/results/checks holds the records of "
                         "the jobs behind docs/benchmark-hard.md: results, metrics and Hydra configs)")
    ap.add_argument("--v2", action="store_true",
                    help="report: benchmark v2's tables (docs/benchmark-v2.md) from bench/results/v2: the calibration "
                         "(bench/v2_calibration.py report) and the held-out checks (bench/v2_checks.py report)")
    args = ap.parse_args(argv)
    RUNS = args.runs.resolve()
    if args.v2:
        if args.command != "report":
            ap.error("--v2 goes with report")
        import v2_calibration  # bench/
        import v2_checks

        status = v2_calibration.main(["report"])
        print()
        return max(status, v2_checks.report(v2_checks.RECORDS))
    if args.lanes < 1:
        ap.error("--lanes must be >= 1")
    if args.command == "report":
        return report()
    if args.command == "tlr-scan":
        return tlr_scan(args.lanes)
    status = run_all([ablation(RUNS / s / name, [SETS[s], *SETTINGS[name][0]]) for s, name in cells(args.only)],
                     args.lanes)
    report()
    return status


if __name__ == "__main__":
    sys.exit(main())
