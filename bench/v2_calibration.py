"""The calibration of synthetic benchmark v2 (docs/benchmark-v2.md): data-level statistics only, per candidate.

    python bench/v2_calibration.py stats --candidate v1 --v1          # the v1 reference (dataset=synthetic, _hard)
    python bench/v2_calibration.py stats --candidate c0               # S2-S5 on both v2 sets, dataset seeds 0-2
    python bench/v2_calibration.py stats --candidate c1 --market dataset.nuisances.background_pool=0 \\
        --msmt dataset.nuisances.group_gap=1.5                        # a candidate: overrides of either set
    python bench/v2_calibration.py train --candidate c0 --lanes 2     # S1, S1b: the baseline's training runs
    python bench/v2_calibration.py train --candidate c0 --collect     # only copy the finished runs' records
    python bench/v2_calibration.py report                             # every candidate's table and its bands

A candidate is a name and the Hydra overrides of its Market-like set (``dataset=synthetic_v2``, "D") and of
its MSMT-like set (``dataset=synthetic_v2_hard``, "H"); ``--v1`` measures the v1 sets (``dataset=synthetic``,
``dataset=synthetic_hard``) as the reference the bands compare with. The first command that names a candidate
records its overrides (``candidate.json``); a later command with other overrides for that name is refused.

``stats`` measures, for each set and dataset seed, on the training split and with the encoder the run starts
from (the synthetic warm start; its file's sha1 is recorded), the trainer's extraction: S2 (the same-camera
excess among the 15 nearest images of other identities, raw features), S3 (same- and cross-camera recall@15
of true matches, raw and camera-centred), S4 (the share of the S3 gap that centring closes; undefined when the
raw gap is under 0.02), S5 as amended before any measurement (the chance-corrected balanced accuracy of a
15-nearest-neighbour camera vote among images of other identities, each identity's images centred with the
other identities' camera means; also on raw features, report-only) and S5-linear (the registered linear
probe's chance-corrected camera accuracy after fold-wise centring, folds grouped by identity; report-only).
``train`` runs the baseline (the set's recipe: the presets' method) once per dataset seed with training seed 0
into ``bench/runs/v2/calibration/`` and copies each finished run's records (results.json,
metrics.jsonl, the Hydra config and overrides; no checkpoints) next to the statistics. Records go to
``bench/results/v2/calibration/<candidate>/<D|H>/``; each carries its settings (commit, date, machine, load,
command). ``report`` reads only these records. No camera-aware method and no instance-norm network is trained
here: they are the held-out checks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONF = str(REPO / "conf")
RECORDS = REPO / "bench" / "results" / "v2" / "calibration"
RUNS = REPO / "bench" / "runs" / "v2" / "calibration"
SETS = {"D": "synthetic_v2", "H": "synthetic_v2_hard"}
V1_SETS = {"D": "synthetic", "H": "synthetic_hard"}
SEEDS = (0, 1, 2)
K = 15
MIN_GAP = 0.02  # S4 is undefined below this raw gap


def settings(command: list[str]) -> dict:
    """The settings line of a record: commit (and whether the tree had changes), date, machine (with the CPU's
    model and the vector instructions torch uses: they decide the low bits of a run), load, command."""
    import torch

    from mqreid.engine.trainer import cpu_model

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    try:
        mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")) / 2**20
    except (OSError, StopIteration, ValueError):
        mem = math.nan
    return {"commit": git("rev-parse", "HEAD"), "tree_changed": bool(git("status", "--porcelain", "--", "src", "conf")),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "machine": f"{os.cpu_count()}-core CPU ({platform.machine()}), {mem:.0f} GiB",
            "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "load": [round(x, 2) for x in os.getloadavg()], "command": " ".join(command)}


def show(path: Path) -> str:
    """``path`` relative to the repository when it is inside it."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def write_json(path: Path, value: dict) -> None:
    """Write atomically: a temporary file in the same folder, then renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1) + "\n")
    os.replace(tmp, path)


def candidate_sets(name: str, v1: bool, market: list[str], msmt: list[str]) -> dict[str, list[str]]:
    """Set -> overrides of candidate ``name``; records them on first use and refuses a different definition.
    A recorded candidate named without overrides keeps its recorded ones (``train --candidate c1``)."""
    sets = V1_SETS if v1 else SETS
    definition = {"sets": sets, "overrides": {"D": list(market), "H": list(msmt)}}
    path = RECORDS / name / "candidate.json"
    if path.is_file():
        known = json.loads(path.read_text())
        if not market and not msmt and known["sets"] == sets:
            definition["overrides"] = known["overrides"]
        if {k: known[k] for k in definition} != definition:
            raise SystemExit(f"error: candidate {name!r} is defined in {path} as {known['sets']} with overrides "
                             f"{known['overrides']}; got {sets} with {definition['overrides']}: use another name")
    else:
        write_json(path, {**definition, "defined": settings(sys.argv)})
    return {s: [f"dataset={sets[s]}", *definition["overrides"][s]] for s in sets}


def measure(overrides: list[str], seed: int) -> dict:
    """S2-S5 of one set and dataset seed (see the module docstring)."""
    import torch
    from hydra import compose, initialize_config_dir

    from mqreid.cluster.camera import camera_centering
    from mqreid.data.base import id_arrays
    from mqreid.engine.trainer import Trainer
    from mqreid.engine.warm_start import cache_path
    from mqreid.evaluation.camera_bias import (camera_knn_vote, camera_probe, camera_recall,
                                               wrong_identity_camera_excess)

    with initialize_config_dir(CONF, version_base=None):
        cfg = compose("config", overrides=[*overrides, f"dataset.seed={seed}", "progress=false"])
    with tempfile.TemporaryDirectory() as run_dir:
        trainer = Trainer(cfg, run_dir)
    weights = cache_path(cfg.backbone, cfg.input.height, cfg.input.width, cfg.data_root)
    features = trainer.extract(trainer.dataset.train)
    pids, cameras = id_arrays(trainer.dataset.train)
    centred = camera_centering(features, torch.from_numpy(cameras))
    raw, after = camera_recall(features, pids, cameras, K), camera_recall(centred, pids, cameras, K)
    closure = (raw["gap"] - after["gap"]) / raw["gap"] if raw["gap"] >= MIN_GAP else None
    return {"set": cfg.dataset.name, "dataset_seed": seed, "overrides": overrides, "images": len(pids),
            "identities": len(set(pids.tolist())), "cameras": len(set(cameras.tolist())),
            "warm_start": {"file": weights.name, "sha1": hashlib.sha1(weights.read_bytes()).hexdigest()}
            if weights.is_file() else None,
            "S2_excess": wrong_identity_camera_excess(features, pids, cameras, K),
            "S3_raw": raw, "S3_centred": after, "S4_closure": closure,
            "S5_knn": camera_knn_vote(features, pids, cameras, K, centre=True),
            # reported only, deciding nothing: S5-linear (the registered probe, degenerate after exact centring;
            # docs/benchmark-v2.md, Amendment 1), the vote on raw features, S2 on centred features
            "S5_probe": camera_probe(features, pids, cameras, centre=True),
            "S5_knn_raw": camera_knn_vote(features, pids, cameras, K),
            "S2_excess_centred": wrong_identity_camera_excess(centred, pids, cameras, K)}


def stats(args) -> int:
    for s, overrides in candidate_sets(args.candidate, args.v1, args.market, args.msmt).items():
        for seed in args.seeds:
            path = RECORDS / args.candidate / s / f"stats_seed{seed}.json"
            if path.is_file() and not args.again:
                print(f"{show(path)}: kept (--again to measure it again)")
                continue
            start = time.perf_counter()
            row = measure(overrides, seed)
            row["seconds"] = round(time.perf_counter() - start, 1)
            write_json(path, {**row, "settings": settings(sys.argv)})
            print(f"{show(path)}: S2 {row['S2_excess']:.3f}, S3 gap {row['S3_raw']['gap']:.3f}, "
                  f"S4 {fmt(row['S4_closure'])}, S5 kNN kappa {row['S5_knn']['kappa']:.3f} (S5-linear "
                  f"{row['S5_probe']['kappa']:.3f}) ({row['seconds']:.0f} s)",
                  flush=True)
    return 0


RECORD_FILES = ("results.json", "metrics.jsonl", ".hydra/config.yaml", ".hydra/overrides.yaml")


def queue_run(run_dir: Path, command: list[str]) -> None:
    """Note a job's settings when it is queued (``queued.json`` in its run folder): the commit, date, load and
    command it was started with, which the record keeps."""
    write_json(run_dir / "queued.json", settings(command))


def copy_records(run_dir: Path, record: Path) -> bool:
    """Copy a finished run's records (no checkpoints) to ``record`` with a ``settings.json``: the settings
    noted when it was queued, ``start`` and ``end`` (Unix seconds: its Hydra config written, its results
    written) and the settings when copied. False when the run has not finished."""
    if not (run_dir / "results.json").is_file():
        return False
    for name in RECORD_FILES:
        if (run_dir / name).is_file():
            (record / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run_dir / name, record / name)
    queued = json.loads((run_dir / "queued.json").read_text()) if (run_dir / "queued.json").is_file() else None
    config = run_dir / ".hydra" / "config.yaml"
    write_json(record / "settings.json", {
        "queued": queued, "start": config.stat().st_mtime if config.is_file() else None,
        "end": (run_dir / "results.json").stat().st_mtime, "copied": settings(sys.argv)})
    return True


def union_seconds(spans: list[tuple[float, float]]) -> float:
    """The length of the union of [start, end] spans: the time during which at least one job ran (parallel
    lanes count once, separate batches add up)."""
    total, current = 0.0, None
    for start, end in sorted(spans):
        if current is None or start > current[1]:
            total += (current[1] - current[0]) if current else 0.0
            current = [start, end]
        else:
            current[1] = max(current[1], end)
    return total + ((current[1] - current[0]) if current else 0.0)


def machine_hours(records: Path) -> tuple[float, int, int]:
    """The calibration's machine time so far: the statistics' own seconds (they run one after another) plus
    the union of the training runs' spans; and how many statistics and runs it counts."""
    stats_seconds = [json.loads(p.read_text()).get("seconds") or 0.0 for p in records.glob("*/*/stats_seed*.json")]
    spans = []
    for path in records.glob("*/*/train_seed*/settings.json"):
        saved = json.loads(path.read_text())
        if isinstance(saved.get("start"), (int, float)) and isinstance(saved.get("end"), (int, float)):
            spans.append((saved["start"], saved["end"]))
    return (sum(stats_seconds) + union_seconds(spans)) / 3600, len(stats_seconds), len(spans)


def train(args) -> int:
    from hard_checks import run_all  # bench/: the grid's runner (lanes pinned to one core each)

    commands, runs = [], []
    for s, overrides in candidate_sets(args.candidate, args.v1, args.market, args.msmt).items():
        for seed in args.seeds:
            run_dir = RUNS / args.candidate / s / f"seed{seed}"
            if (run_dir / "results.json").is_file():
                print(f"{show(run_dir)}: finished, kept")
            elif not args.collect:
                commands.append(["nice", "-n", "19", sys.executable, str(REPO / "train.py"), *overrides,
                                 f"dataset.seed={seed}", "seed=0", "progress=false", f"hydra.run.dir={run_dir}"])
                queue_run(run_dir, commands[-1])
            runs.append((run_dir, RECORDS / args.candidate / s / f"train_seed{seed}"))
    status = run_all(commands, args.lanes) if commands else 0
    for run_dir, record in runs:  # the records of finished runs (no checkpoints)
        if copy_records(run_dir, record):
            print(f"{show(record)}: the records of {show(run_dir)}")
        else:
            print(f"{show(run_dir)}: not finished, no record")
    return status


def fmt(x, spec: str = ".3f") -> str:
    return "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def mean(values: list) -> float | None:
    """The mean over dataset seeds; None when a seed has no value (e.g. S4 under the minimum gap) or none ran."""
    return None if not values or any(v is None for v in values) else sum(values) / len(values)


def summary(folder: Path) -> dict | None:
    """Mean statistics of one candidate's set over its recorded dataset seeds."""
    rows = [json.loads(p.read_text()) for p in sorted(folder.glob("stats_seed*.json"))]
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("train_seed*/results.json"))]
    if not rows and not runs:
        return None
    stat_seeds = {int(p.stem.removeprefix("stats_seed")) for p in folder.glob("stats_seed*.json")}
    run_seeds = {int(p.parent.name.removeprefix("train_seed")) for p in folder.glob("train_seed*/results.json")}
    return {"seeds": len(rows), "stats_complete": set(SEEDS) <= stat_seeds, "runs_complete": set(SEEDS) <= run_seeds,
            "S2": mean([r["S2_excess"] for r in rows]),
            "S2c": mean([r.get("S2_excess_centred") for r in rows]),
            "S3": mean([r["S3_raw"]["gap"] for r in rows]), "R_same": mean([r["S3_raw"]["same"] for r in rows]),
            "R_cross": mean([r["S3_raw"]["cross"] for r in rows]), "S4": mean([r["S4_closure"] for r in rows]),
            "S5": mean([r["S5_knn"]["kappa"] for r in rows]), "S5lin": mean([r["S5_probe"]["kappa"] for r in rows]),
            "runs": len(runs),
            "final": mean([r["final"]["mAP"] for r in runs]), "initial": mean([r["initial"]["mAP"] for r in runs])}


STATS = ("S2", "S2c", "S3", "R_same", "R_cross", "S4", "S5", "S5lin")


def complete_only(row: dict | None) -> dict | None:
    """``row`` with the statistics of partial records (fewer than the pre-registered dataset seeds) removed: no
    band is judged on partial records. ``stats_complete``/``runs_complete`` absent count as complete."""
    if row is None:
        return None
    out = dict(row)
    if not row.get("stats_complete", True):
        out.update({key: None for key in STATS})
    if not row.get("runs_complete", True):
        out.update(final=None, initial=None)
    return out


def partial(row: dict | None, runs: bool = True) -> str:
    """'' for complete records, else what is partial, e.g. 'statistics 2 of 3 seeds, runs 0 of 3' (``runs``:
    whether the training runs count; the v1 reference has none)."""
    if row is None:
        return "nothing recorded"
    parts = [f"statistics {row['seeds']} of {len(SEEDS)} seeds" if not row.get("stats_complete", True) else "",
             f"runs {row['runs']} of {len(SEEDS)}" if runs and not row.get("runs_complete", True) else ""]
    return ", ".join(p for p in parts if p)


def bands(d: dict, h: dict, ref: dict | None) -> list[tuple[str, bool | None]]:
    """The bands of docs/benchmark-v2.md: (band, holds); None when a value it needs is missing or comes from
    partial records (fewer than the pre-registered dataset seeds)."""
    def check(*need, rule):
        return None if any(v is None for v in need) else bool(rule())

    d, h = complete_only(d), complete_only(h)
    ref_d = complete_only((ref or {}).get("D")) or {}
    return [
        ("S1 0.30 <= H/D final mAP <= 0.55", check(d["final"], h["final"],
                                                  rule=lambda: 0.30 <= h["final"] / d["final"] <= 0.55)),
        ("S1b D final >= 60 and >= warm start + 25",
         check(d["final"], d["initial"], rule=lambda: d["final"] >= 60 and d["final"] >= d["initial"] + 25)),
        ("S2 0.01 <= e_D < e_D(v1)", check(d["S2"], ref_d.get("S2"), rule=lambda: 0.01 <= d["S2"] < ref_d["S2"])),
        ("S2 e_H >= e_D + 0.05", check(d["S2"], h["S2"], rule=lambda: h["S2"] >= d["S2"] + 0.05)),
        ("S3 0.02 <= g_D < g_D(v1)", check(d["S3"], ref_d.get("S3"), rule=lambda: 0.02 <= d["S3"] < ref_d["S3"])),
        ("S3 g_H >= g_D + 0.10", check(d["S3"], h["S3"], rule=lambda: h["S3"] >= d["S3"] + 0.10)),
        ("S4 c_H <= 0.50 (and < c_D when defined)",
         None if not d.get("stats_complete", True)  # c_D unknown (partial), not undefined
         else False if h.get("stats_complete", True) and h["seeds"] and h["S4"] is None
         else check(h["S4"], rule=lambda: h["S4"] <= 0.50 and (d["S4"] is None or h["S4"] < d["S4"]))),
        ("S5 kNN vote k_H >= k_D + 0.10", check(d["S5"], h["S5"], rule=lambda: h["S5"] >= d["S5"] + 0.10)),
    ]


def report(args) -> int:
    folders = sorted(p for p in RECORDS.glob("*") if (p / "candidate.json").is_file()) if RECORDS.is_dir() else []
    if not folders:
        print(f"no candidate recorded under {show(RECORDS)}")
        return 1
    table = {f.name: {s: summary(f / s) for s in SETS} for f in folders}
    ref = table.get(args.reference)
    print(f"settings: {json.dumps(settings(sys.argv))} (machine shared with other work: the load is as measured; "
          f"each record carries its own settings)\n")
    print("| candidate | set | seeds | S2 excess (centred) | S3 R_same / R_cross / gap | S4 closed | S5 kNN kappa "
          "(S5-linear) | runs | warm start -> final mAP |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, sets in table.items():
        for s, row in sets.items():
            if row is None:
                continue
            seeds = f"{row['seeds']}" + (" (partial)" if not row.get("stats_complete", True) else "")
            runs = f"{row['runs']}" + (" (partial)" if row["runs"] and not row.get("runs_complete", True) else "")
            print(f"| {name} | {s} | {seeds} | {fmt(row['S2'])} ({fmt(row['S2c'])}) | {fmt(row['R_same'])} / "
                  f"{fmt(row['R_cross'])} / {fmt(row['S3'])} | {fmt(row['S4'])} | {fmt(row['S5'])} "
                  f"({fmt(row['S5lin'])}) | {runs} | {fmt(row['initial'], '.1f')} -> {fmt(row['final'], '.1f')} |")
    hours, n_stats, n_runs = machine_hours(RECORDS)
    print(f"\ncalibration machine time so far: {hours:.2f} h ({n_stats} statistics records, {n_runs} timed training "
          "runs; the budget: at most 3 h of the 10)")
    print()
    for name, sets in table.items():
        if name == args.reference or sets["D"] is None or sets["H"] is None:
            continue
        verdicts = bands(sets["D"], sets["H"], ref)
        held = sum(v is True for _, v in verdicts)
        d, h = complete_only(sets["D"]), complete_only(sets["H"])
        ratio = (h["final"] / d["final"]) if h["final"] and d["final"] else None
        gaps = {s: partial(row) for s, row in sets.items() if partial(row)}
        if partial((ref or {}).get("D"), runs=False):
            gaps[f"reference {args.reference} D"] = partial((ref or {}).get("D"), runs=False)
        if gaps:  # no band is judged on partial records
            print(f"{name}: PARTIAL records ({'; '.join(f'{s}: {g}' for s, g in gaps.items())}): the bands that "
                  "need them have no verdict")
        print(f"{name}: {held} of {len(verdicts)} bands hold (S1 ratio {fmt(ratio)})")
        for band, holds in verdicts:
            print(f"  {'yes' if holds else ('no' if holds is False else 'no verdict (partial or not measured)')}: "
                  f"{band}")
    return 0


def main(argv: list[str] | None = None) -> int:
    global RECORDS, RUNS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("stats", "train", "report"))
    ap.add_argument("--candidate", help="the candidate's name (stats, train)")
    ap.add_argument("--v1", action="store_true", help="measure the v1 sets (the bands' reference)")
    ap.add_argument("--market", nargs="*", default=[], metavar="OVERRIDE", help="Hydra overrides of the D set")
    ap.add_argument("--msmt", nargs="*", default=[], metavar="OVERRIDE", help="Hydra overrides of the H set")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS), help="dataset seeds (default: 0 1 2)")
    ap.add_argument("--lanes", type=int, default=1, help="train: jobs at a time, each pinned to one core when > 1")
    ap.add_argument("--again", action="store_true", help="stats: measure again what is recorded")
    ap.add_argument("--collect", action="store_true",
                    help="train: start nothing, only copy the records of the runs that have finished (e.g. while "
                         "another train command is running)")
    ap.add_argument("--reference", default="v1", help="report: the candidate that holds the v1 reference")
    ap.add_argument("--records", type=Path, default=RECORDS, help="where the records go (default: %(default)s)")
    ap.add_argument("--runs", type=Path, default=RUNS, help="train: where the runs go (default: %(default)s)")
    args = ap.parse_args(argv)
    RECORDS, RUNS = args.records.resolve(), args.runs.resolve()
    if args.command != "report" and not args.candidate:
        ap.error(f"{args.command} needs --candidate NAME")
    if args.lanes < 1:
        ap.error("--lanes must be >= 1")
    return {"stats": stats, "train": train, "report": report}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
