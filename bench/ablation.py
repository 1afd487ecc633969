"""Run one of the Hydra sweeps of conf/sweep/ into a folder, complete it over several invocations, report it.

    python bench/ablation.py                                    # sweep=memory_temp_clusterer: 2 x 2 x 2 x 3 seeds
    python bench/ablation.py --set train.epochs=8 eval.every=8  # extra overrides for every job
    python bench/ablation.py --sweep queue_size --set experiment=market1501_dbscan seed=0,1,2
    python bench/ablation.py --dry-run                          # which jobs are done, which would run

Steps:
1. The sweep's jobs are listed in Hydra's order: the ``hydra.sweeper.params`` of conf/sweep/<name>.yaml,
   then ``sweep=<name>`` and the --set overrides, expanded as Hydra's basic sweeper does (a comma list in
   --set is swept as well; a key in both takes the --set value).
2. A job is done when a folder below --dir (default bench/runs/<name>) holds the same overrides and a
   results.json. Such jobs are kept, never rerun.
3. If no job folder stays in --dir (none yet, or only unfinished ones of this grid, which are moved
   aside as said below), the whole sweep runs as one multirun, jobs in <dir>/<job num>/:
       python train.py -m sweep=<name> hydra.sweep.dir=<dir> <--set overrides>
   Otherwise every missing job runs on its own, into the folder a full run gives it (another free number
   if that one is taken):
       python train.py -m <the job's overrides> hydra.sweep.dir=<dir> hydra.sweep.subdir=<job num>
   so running the same command again completes an interrupted or partly failed grid. The folder of a job
   that has no results.json is first moved to <dir>/.incomplete/ (the trainer would append to its
   metrics.jsonl). Jobs run one after another: Hydra's basic launcher has no parallel mode; to spread a
   grid over machines, run subsets of the sweep values into separate folders and report them together
   (mqreid-report DIR1 DIR2 ...).
4. mqreid-report <dir> [--baseline ...] [--metric ...] writes report.md, report.csv and
   report.png into <dir> and prints the table: per setting mean ± std over seeds, and the paired
   difference to the baseline with its standard error and 95 % confidence interval.

Exit status: 2 if the sweep cannot be expanded or another run holds the folder's lock file (two runs on the
same --dir at once are refused); 1 if a training command failed (the report is still written, listing the
unfinished jobs); else the report's (0, or 1 when there is nothing to report).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mqreid.tools.report import METRICS, find_jobs
from mqreid.tools.report import main as report

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
TRAIN = REPO / "train.py"
LOCK = ".ablation.lock"


def is_hydra_override(override: str) -> bool:
    """Overrides of Hydra itself (``hydra.x=``, ``hydra/launcher=``): not part of a job's overrides."""
    return override.lstrip("+~").startswith(("hydra.", "hydra/"))


def sweep_params(sweep: str, overrides: list[str]) -> dict[str, str]:
    """``hydra.sweeper.params`` of the config composed with ``sweep=<sweep>`` and the non-sweep overrides."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"sweep={sweep}", *fixed], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params) or {}
    return {str(k): str(v) for k, v in params.items()}


def expand(overrides: list[str]) -> list[list[str]]:
    """The jobs of a multirun, in Hydra's numbering: the cartesian product of the overrides' values, keys in
    order of first appearance, a later override of a key replacing the earlier one (as the basic sweeper)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices: dict[str, list[str]] = {}
    for o in OverridesParser.create().parse_overrides(overrides):
        key = o.get_key_element()
        if o.is_sweep_override():
            if not o.is_discrete_sweep():
                raise ValueError(f"{o.input_line}: Hydra's basic sweeper takes lists and ranges only")
            choices[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:
            choices[key] = [f"{key}={o.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*choices.values())]


def grid(sweep: str, extra: list[str]) -> list[list[str]]:
    """The task overrides of every job of ``python train.py -m sweep=<sweep> <extra>``, job 0 first."""
    params = sweep_params(sweep, extra)
    task = [o for o in extra if not is_hydra_override(o)]
    return expand([f"{k}={v}" for k, v in params.items()] + [f"sweep={sweep}", *task])


@dataclass
class Plan:
    done: dict[int, Path]            # job num -> a folder of that job with results.json
    incomplete: dict[int, list[Path]]  # job num -> its folders without results.json (moved aside before a run)
    todo: dict[int, str]             # job num -> the subdir to run it in
    foreign: list[Path]              # job folders in the directory that are not part of this grid
    fresh: bool                      # no job folder stays: one multirun for the whole sweep


def plan(jobs: list[list[str]], run_dir: Path) -> Plan:
    """Match the job folders below ``run_dir`` to the grid by their overrides (not by folder name)."""
    existing = find_jobs(run_dir) if run_dir.is_dir() else []
    index = {frozenset(job): i for i, job in enumerate(jobs)}
    done, incomplete, foreign = {}, {}, []
    for job in existing:
        i = index.get(frozenset(job.overrides))
        if i is None:
            foreign.append(job.path)
        elif job.finished:
            done.setdefault(i, job.path)
        else:
            incomplete.setdefault(i, []).append(job.path)
    moved = {path for paths in incomplete.values() for path in paths}
    fresh = not done and not foreign

    def free(sub: str) -> bool:
        return sub not in todo.values() and ((run_dir / sub) in moved or not (run_dir / sub).exists())

    todo: dict[int, str] = {}
    spare = len(jobs)
    for i in range(len(jobs)):
        if i in done:
            continue
        if not free(str(i)):  # Hydra's number for this job is taken: the next free number after the grid's
            while not free(str(spare)):
                spare += 1
        todo[i] = str(i) if free(str(i)) else str(spare)
    return Plan(done, incomplete, todo, foreign, fresh)


def move_aside(path: Path, run_dir: Path) -> Path:
    """Move an unfinished job folder to <run_dir>/.incomplete/<name>-<time> (not searched by the report)."""
    name = path.relative_to(run_dir).as_posix().replace("/", "__")
    dest = run_dir / ".incomplete" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(dest))
    return dest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sweep", default="memory_temp_clusterer", help="a conf/sweep/ file name (default: %(default)s)")
    ap.add_argument("--set", nargs="+", action="extend", default=[], metavar="OVERRIDE",
                    help="extra Hydra overrides for every job (a comma list is swept too)")
    ap.add_argument("--dir", type=Path, default=None, help="the sweep folder (default: bench/runs/<sweep>)")
    ap.add_argument("--baseline", default=None, help="passed to mqreid-report, e.g. \"memory=centroid temp=fixed\"")
    ap.add_argument("--metric", default="mAP", choices=METRICS, help="passed to mqreid-report (default: mAP)")
    ap.add_argument("--dry-run", action="store_true", help="list the jobs (done / to run) and the commands, run nothing")
    args = ap.parse_args(argv)
    if not (CONF / "sweep" / f"{args.sweep}.yaml").is_file():
        names = ", ".join(sorted(p.stem for p in (CONF / "sweep").glob("*.yaml")))
        ap.error(f"--sweep {args.sweep}: no conf/sweep/{args.sweep}.yaml (sweeps: {names})")
    for o in args.set:
        if o.lstrip("+~").startswith(("hydra.sweep.dir", "hydra.sweep.subdir")):
            ap.error(f"--set {o}: the folder is --dir, and this script chooses the job folders")
    run_dir = (args.dir or REPO / "bench" / "runs" / args.sweep).resolve()

    try:
        jobs = grid(args.sweep, args.set)
    except Exception as err:  # a bad override: Hydra's message says which
        print(f"error: cannot expand sweep={args.sweep} {' '.join(args.set)}: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        return show(jobs, plan(jobs, run_dir), run_dir, args)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(run_dir / LOCK, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        print(f"error: {run_dir / LOCK} exists: another bench/ablation.py runs on this folder (delete the file if "
              f"none does)", file=sys.stderr)
        return 2
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    try:
        p = plan(jobs, run_dir)
        summary(jobs, p, run_dir, args)
        failed = run(jobs, p, run_dir, args)
    finally:
        (run_dir / LOCK).unlink(missing_ok=True)
    status = report([str(run_dir), "--metric", args.metric] + (["--baseline", args.baseline] if args.baseline else []))
    if failed:
        print(f"error: {failed} training command(s) failed; run the same command again to rerun the unfinished jobs",
              file=sys.stderr)
        return 1
    return status


def commands(jobs: list[list[str]], p: Plan, run_dir: Path, args: argparse.Namespace) -> list[list[str]]:
    """The train.py command lines that complete the grid: the whole sweep at once into an empty folder, else
    one single-job multirun per missing job."""
    if not p.todo:
        return []
    if p.fresh:
        return [[sys.executable, str(TRAIN), "-m", f"sweep={args.sweep}", f"hydra.sweep.dir={run_dir}", *args.set]]
    hydra_set = [o for o in args.set if is_hydra_override(o)]
    return [[sys.executable, str(TRAIN), "-m", *jobs[i], *hydra_set, f"hydra.sweep.dir={run_dir}",
             f"hydra.sweep.subdir={sub}"] for i, sub in p.todo.items()]


def summary(jobs: list[list[str]], p: Plan, run_dir: Path, args: argparse.Namespace) -> None:
    moved = sum(map(len, p.incomplete.values()))
    print(f"sweep={args.sweep} {' '.join(args.set)}: {len(jobs)} job(s) in {run_dir}: {len(p.done)} done, "
          f"{len(p.todo)} to run" + (f", {moved} unfinished folder(s) to move to .incomplete/" if moved else ""))
    if p.foreign:
        print(f"note: {len(p.foreign)} job folder(s) in {run_dir} are not part of this grid; they stay and the report "
              f"includes them (use another --dir to keep grids apart)")


def show(jobs: list[list[str]], p: Plan, run_dir: Path, args: argparse.Namespace) -> int:
    summary(jobs, p, run_dir, args)
    for i, job in enumerate(jobs):
        if i in p.done:
            state = f"done in {p.done[i].relative_to(run_dir)}/"
        else:
            state = f"to run in {p.todo[i]}/"
            if i in p.incomplete:
                state += " after moving " + ", ".join(f"{q.relative_to(run_dir)}/" for q in p.incomplete[i]) + " aside"
        print(f"  #{i}: {' '.join(job)}: {state}")
    cmds = commands(jobs, p, run_dir, args)
    if cmds:
        print("would run:\n" + "\n".join("  " + " ".join(c[1:]) for c in cmds))
    return 0


def run(jobs: list[list[str]], p: Plan, run_dir: Path, args: argparse.Namespace) -> int:
    """Move unfinished folders aside and run the missing jobs; returns the number of failed commands."""
    for i, paths in sorted(p.incomplete.items()):
        for path in paths:
            print(f"moved the unfinished job #{i} from {path} to {move_aside(path, run_dir)}")
    multirun_yaml = run_dir / "multirun.yaml"
    kept = multirun_yaml.read_bytes() if multirun_yaml.is_file() and not p.fresh else None
    failed = 0
    try:
        cmds = commands(jobs, p, run_dir, args)
        for k, cmd in enumerate(cmds, 1):
            print(f"+ [{k}/{len(cmds)}] " + " ".join(cmd[1:]), flush=True)
            failed += subprocess.run(cmd, cwd=REPO).returncode != 0
    finally:
        if kept is not None:  # every single-job multirun rewrote it: keep the one of the full sweep
            multirun_yaml.write_bytes(kept)
    return failed

if __name__ == "__main__":
    sys.exit(main())
