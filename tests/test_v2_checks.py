"""bench/v2_checks.py: the pre-registered analysis of the v2 held-out checks (docs/benchmark-v2.md), against
explicit formulas and on fabricated records (nothing is rendered or trained here)."""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import sys

import numpy as np
import pytest
from scipy import stats

from conftest import REPO

spec = importlib.util.spec_from_file_location("v2_checks", REPO / "bench" / "v2_checks.py")
checks = importlib.util.module_from_spec(spec)
sys.modules["v2_checks"] = checks  # dataclasses look their module up
spec.loader.exec_module(checks)


def test_paired_matches_explicit_formulas():
    base = {s: 50.0 + s for s in checks.SEEDS}
    d = [1.0, -0.5, 2.0, 0.3, 1.2, -0.1]
    arm = {s: base[s] + x for s, x in zip(checks.SEEDS, d)}
    arm[99] = 1.0  # a seed without a baseline is not paired
    x = checks.paired(arm, base)
    n, mean, sd = 6, np.mean(d), np.std(d, ddof=1)
    se = sd / math.sqrt(n)
    assert x.n == n and x.mean == pytest.approx(mean) and x.se == pytest.approx(se)
    half = stats.t.ppf(0.975, n - 1) * se
    assert x.ci95 == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert x.ci90[1] == pytest.approx(mean + stats.t.ppf(0.95, n - 1) * se)
    assert x.p_t_greater == pytest.approx(stats.t.sf(mean / se, n - 1))
    assert x.p_t_less == pytest.approx(stats.t.cdf(mean / se, n - 1))
    flips = [np.mean(np.array(d) * np.array(s)) for s in itertools.product((1, -1), repeat=n)]
    assert x.p_flip_greater == pytest.approx(np.mean([f >= mean - 1e-12 for f in flips]))
    assert x.p_flip_less == pytest.approx(np.mean([f <= mean + 1e-12 for f in flips]))
    always_up = checks.paired({s: base[s] + 1 + 0.1 * s for s in checks.SEEDS}, base)
    assert always_up.p_flip_greater == pytest.approx(1 / 64)  # the smallest p six pairs can give


def test_interaction_is_welch():
    hard = checks.paired({s: v for s, v in enumerate([8, 10, 9, 12, 7, 11])}, {s: 0.0 for s in range(6)})
    easy = checks.paired({s: v for s, v in enumerate([1, 2, 0, 3, 1, 2])}, {s: 0.0 for s in range(6)})
    inter = checks.interaction(hard, easy)
    va, vb = np.var([8, 10, 9, 12, 7, 11], ddof=1) / 6, np.var([1, 2, 0, 3, 1, 2], ddof=1) / 6
    df = (va + vb) ** 2 / (va ** 2 / 5 + vb ** 2 / 5)
    se = math.sqrt(va + vb)
    assert inter.mean == pytest.approx(8.0) and inter.se == pytest.approx(se) and inter.df == pytest.approx(df)
    assert inter.ci95[0] == pytest.approx(8.0 - stats.t.ppf(0.975, df) * se)
    assert inter.p_greater == pytest.approx(stats.t.sf(8.0 / se, df))


def test_holm_steps_down():
    assert checks.holm({"HC1": 0.01, "HC2": 0.04}) == {"HC1": 0.025, "HC2": 0.05}
    assert checks.holm({"HC1": 0.03, "HC2": 0.04}) == {"HC1": 0.025, "HC2": None}  # the larger is not tested
    assert checks.holm({"HC1": math.nan, "HC2": 0.001}) == {"HC2": 0.025, "HC1": 0.05}


def job(root, set_name, arm, seed, mam, start=None):
    folder = root / set_name / arm / f"dseed{seed}"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(f"- dataset.seed={seed}\n- seed=0\n")
    (folder / "results.json").write_text(json.dumps({"initial": {"mAP": 10.0}, "final": {"mAP": mam}}))
    if start is not None:
        (folder / "settings.json").write_text(json.dumps({"commit": "abcdef0123", "start": start,
                                                          "end": start + 1800}))


def fabricated_grid(root, hc2_gain_hard):
    rng = np.random.default_rng(0)
    for k, seed in enumerate(checks.SEEDS):
        base = {"D": 60 + rng.normal(), "H": 25 + rng.normal()}
        gains = {"HC1": {"D": 1.5, "H": 9.0}, "HC2": {"D": 1.0, "H": hc2_gain_hard},
                 "placebo": {"D": 0.0, "H": 0.0}, "R1": {"D": 0.2, "H": -0.3}, "R2": {"D": 0.5, "H": 1.0}}
        for s in ("D", "H"):
            job(root, s, "baseline", seed, base[s], start=3600 * k)
            for arm, gain in gains.items():
                job(root, s, arm, seed, base[s] + gain[s] + 0.3 * rng.normal(), start=3600 * k + 600)
    return root


def test_report_from_fabricated_records(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    root = fabricated_grid(tmp_path / "grid", hc2_gain_hard=-3.0)
    assert checks.main(["report", "--records", str(root)]) == 0
    out = capsys.readouterr().out
    assert "| D | baseline | 6 of 6 |" in out and "abcdef0" in out
    assert "| HC1 | " in out and "agrees |" in out.split("\n| HC1 | ")[1].splitlines()[0]
    assert "resolves the wrong way |" in out.split("\n| HC2 | ")[1].splitlines()[0]
    assert "| placebo |" in out and "null on both sets" in out and "level, as real data" in out
    assert "v2 is NOT PREDICTIVE" in out
    # 6 x (the baseline's half hour, then the arms' from 10 min in to 40 min): 40 min of each hour
    assert "grid machine time: 4.00 h" in out


def test_report_gives_no_verdict_on_partial_records(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    root = fabricated_grid(tmp_path / "grid", hc2_gain_hard=8.0)
    for path in (root / "H" / "HC2" / "dseed15").iterdir():
        if path.is_file():
            path.unlink()
    assert checks.main(["report", "--records", str(root)]) == 0
    out = capsys.readouterr().out
    assert "| H | HC2 | 5 of 6 (PARTIAL) |" in out
    assert "PARTIAL records: no verdict" in out.split("\n| HC2 | ")[1].splitlines()[0]
    assert "predictiveness: no verdict: the held-out cells are not complete (H/HC2)" in out
    assert "v2 is predictive" not in out and "NOT PREDICTIVE" not in out


def test_hard_checks_reprints_both_v2_tables(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import hard_checks
    import v2_calibration
    import v2_checks

    calibration = tmp_path / "calibration"
    for seed in (0, 1, 2):
        v2_calibration.write_json(calibration / "v1" / "D" / f"stats_seed{seed}.json", {
            "S2_excess": 0.3, "S2_excess_centred": 0.1, "S3_raw": {"same": 0.9, "cross": 0.6, "gap": 0.3},
            "S4_closure": 0.6, "S5_knn": {"kappa": 0.2}, "S5_probe": {"kappa": 0.0}})
    (calibration / "v1" / "candidate.json").write_text("{}")
    monkeypatch.setattr(v2_calibration, "RECORDS", calibration)
    monkeypatch.setattr(v2_checks, "RECORDS", fabricated_grid(tmp_path / "checks", hc2_gain_hard=8.0))
    assert hard_checks.main(["report", "--v2"]) == 0
    out = capsys.readouterr().out
    assert "| v1 | D | 3 | 0.300 (0.100) | 0.900 / 0.600 / 0.300 | 0.600 | 0.200 (0.000) | 0 |" in out
    assert "| H | HC2 | 6 of 6 |" in out and "predictiveness: " in out


def test_eps_star_rule():
    sweep = [{"eps": 0.30, "num_clusters": 5}, {"eps": 0.32, "num_clusters": 9}, {"eps": 0.34, "num_clusters": 9},
             {"eps": 0.36, "num_clusters": 7}]
    assert checks.most_clusters_eps(sweep) == 0.32  # ties: the smallest
    assert checks.eps_star([0.40, 0.44, 0.46, 0.50, 0.52, 0.60]) == 0.48  # median 0.48
    assert checks.eps_star([0.40, 0.44, 0.46, 0.48, 0.52, 0.60]) == 0.46  # median 0.47, rounded down
    assert checks.EPS_GRID[0] == 0.30 and checks.EPS_GRID[-1] == 0.80 and len(checks.EPS_GRID) == 26
    with pytest.raises(ValueError, match="most_clusters_eps: an empty sweep"):
        checks.most_clusters_eps([])


def test_eps_star_on_a_jaccard_sweep_of_fabricated_features():
    """The rule on the recipe's Jaccard graph: well-separated identities give their count at the chosen eps."""
    from mqreid.cluster import DBSCANClusterer

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(12, 16))
    x = np.repeat(centres, 8, axis=0) + 0.05 * rng.normal(size=(96, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    sweep = DBSCANClusterer(eps=0.6, min_samples=4, k1=10, k2=3).sweep_eps(x.astype(np.float32), checks.EPS_GRID)
    chosen = checks.most_clusters_eps(sweep)
    assert next(r["num_clusters"] for r in sweep if r["eps"] == chosen) == 12
    assert all(r["num_clusters"] <= 12 for r in sweep)


def test_machine_time_is_the_union_of_the_spans():
    from importlib import import_module

    sys.path.insert(0, str(REPO / "bench"))
    try:
        union = import_module("v2_calibration").union_seconds
    finally:
        sys.path.remove(str(REPO / "bench"))
    assert union([]) == 0.0
    assert union([(0, 10), (5, 20), (30, 40)]) == 30.0  # two lanes overlapping, then a later batch
    assert union([(30, 40), (0, 10), (10, 12)]) == 22.0


FAKE_TRAIN = '''
import json, sys
from pathlib import Path
args = sys.argv[1:]
run_dir = Path(next(a.split("=", 1)[1] for a in args if a.startswith("hydra.run.dir=")))
(run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
(run_dir / ".hydra" / "config.yaml").write_text("seed: 0\\n")
(run_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {a}\\n" for a in args if "hydra.run" not in a))
seed = int(next(a.split("=")[1] for a in args if a.startswith("dataset.seed=")))
gain = 1.0 if "camera=proxies" in args else 0.0
(run_dir / "last.pt").write_bytes(b"weights")
(run_dir / "results.json").write_text(json.dumps({"initial": {"mAP": 10.0}, "final": {"mAP": 50.0 + seed + gain}}))
'''


def test_plan_orders_the_cells_and_names_what_is_not_defined(tmp_path):
    cells = checks.plan(tmp_path / "records", tmp_path / "runs", seeds=(10,))
    names = [f"{s}/{arm}" for (s, arm, _), _, _, _ in cells]
    assert names[:6] == ["D/baseline", "H/baseline", "D/HC1", "H/HC1", "D/HC2", "H/HC2"]
    why = {f"{s}/{arm}": w for (s, arm, _), _, command, w in cells if command is None}
    assert "D/HC2" not in why and why["H/R2-dbscan"] == "no eps* record (eps-star)"
    hc2 = next(c for (s, arm, _), _, c, _ in cells if (s, arm) == ("D", "HC2"))
    assert "backbone=small_cnn_ibn" in hc2 and "dataset=synthetic_v2" in hc2
    placebo = next(c for (s, arm, _), _, c, _ in cells if (s, arm) == ("H", "placebo"))
    assert "train.camera_permutation_seed=10" in placebo and "dataset=synthetic_v2_hard" in placebo
    (tmp_path / "records").mkdir()
    (tmp_path / "records" / "eps_star_D.json").write_text(json.dumps({"eps_star": 0.48, "recipe_eps": 0.6}))
    (tmp_path / "records" / "eps_star_H.json").write_text(json.dumps({"eps_star": 0.6, "recipe_eps": 0.6}))
    cells = {f"{s}/{arm}": (c, w) for (s, arm, _), _, c, w in checks.plan(tmp_path / "records", tmp_path / "runs",
                                                                           seeds=(10,))}
    assert "clusterer.eps=0.48" in cells["D/R2-dbscan"][0] and cells["H/R2-dbscan"] == (
        None, "eps* is the recipe's: the baseline")


def test_run_records_each_cell_and_refuses_without_a_freeze(tmp_path, capsys, monkeypatch):
    """The grid's runner with a stand-in for train.py (nothing is trained): records with settings, no
    checkpoint, finished cells kept; refused at a commit that is not the freeze or after it."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    records, runs = tmp_path / "records", tmp_path / "runs"
    common = ["--records", str(records), "--runs", str(runs), "--sets", "D", "--seeds", "10", "11",
              "--lanes", "1", "--train-script", str(fake)]
    with pytest.raises(SystemExit, match="--freeze 0000000: expected the freeze commit, HEAD or an ancestor"):
        checks.main(["run", "--freeze", "0000000", *common])
    assert checks.main(["run", "--freeze", "HEAD", *common]) == 0
    record = records / "D" / "HC1" / "dseed11"
    assert (record / "results.json").is_file() and not (record / "last.pt").exists()
    saved = json.loads((record / "settings.json").read_text())
    assert "camera=proxies" in saved["queued"]["command"] and saved["end"] >= saved["start"]
    assert "backbone=small_cnn_ibn" in json.loads((records / "D" / "HC2" / "dseed10" / "settings.json").read_text(
        ))["queued"]["command"]
    capsys.readouterr()
    assert checks.main(["run", "--freeze", "HEAD", *common]) == 0
    assert "D/baseline/dseed10: recorded, kept" in capsys.readouterr().out
    import shutil

    shutil.rmtree(runs)  # a fresh checkout holds the records but not the run folders: nothing runs again
    assert checks.main(["run", "--freeze", "HEAD", *common]) == 0
    assert not runs.exists() and "D/HC1/dseed11: recorded, kept" in capsys.readouterr().out
    checks.main(["report", "--records", str(records)])
    out = capsys.readouterr().out
    assert "| D | HC1 | 2 of 6 (PARTIAL) |" in out and "predictiveness: no verdict" in out


def test_an_arm_left_undefined_is_not_run(tmp_path, monkeypatch):
    monkeypatch.setitem(checks.ARMS, "HC2", None)
    cells = checks.plan(tmp_path / "records", tmp_path / "runs", seeds=(10,))
    why = {f"{s}/{arm}": w for (s, arm, _), _, command, w in cells if command is None}
    assert why["D/HC2"] == "HC2's overrides are not defined yet"


def test_each_job_is_recorded_as_it_ends_not_when_the_grid_ends(tmp_path, monkeypatch):
    """A grid cut off part way (the machine taken back) keeps the records of every job that had finished."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import hard_checks

    fake = tmp_path / "fake_train.py"
    fake.write_text(FAKE_TRAIN)
    records, runs = tmp_path / "records", tmp_path / "runs"
    seen = []

    def one_then_stop(commands, lanes, on_done=None):
        import subprocess

        subprocess.run(commands[0], check=True)
        on_done(commands[0], 0)
        seen.append(sorted(p.parent.name for p in records.rglob("results.json")))
        raise KeyboardInterrupt  # the rest never runs

    monkeypatch.setattr(hard_checks, "run_all", one_then_stop)
    with pytest.raises(KeyboardInterrupt):
        checks.main(["run", "--freeze", "HEAD", "--records", str(records), "--runs", str(runs), "--sets", "D",
                     "--seeds", "10", "--lanes", "1", "--train-script", str(fake)])
    assert seen == [["dseed10"]] and (records / "D" / "baseline" / "dseed10" / "results.json").is_file()


def test_hc2_warm_start_is_recorded_with_its_digest(tmp_path, monkeypatch):
    """``warm-start`` resolves HC2's warm start as its cells do (a tiny source domain here: the instance-norm
    network is not trained on the real one in tests) and records the file and its sha1."""
    import hashlib

    from mqreid.engine import warm_start

    monkeypatch.setattr(warm_start, "SOURCE", warm_start.SourceDomain(num_ids=4, num_cameras=2, steps=2,
                                                                       extra={"images_per_id": (4, 5)}))
    records = tmp_path / "records"
    assert checks.main(["warm-start", "--records", str(records), "--overrides", f"data_root={tmp_path}"]) == 0
    record = json.loads((records / checks.WARM_START_RECORD).read_text())
    path = tmp_path / "pretrained" / record["file"]
    assert record["arch"] == "small_cnn_ibn" and record["trained_now"] and record["file"].startswith(
        "synthetic_small_cnn_ibn_64x32_")
    assert record["sha1"] == hashlib.sha1(path.read_bytes()).hexdigest()
    assert checks.hc2_warm_start_cached([f"data_root={tmp_path}"])
    # Again (a fresh machine: the record is there, the file is not): rebuilt, checked against the record, kept.
    path.unlink()
    assert not checks.hc2_warm_start_cached([f"data_root={tmp_path}"])
    assert checks.main(["warm-start", "--records", str(records), "--overrides", f"data_root={tmp_path}"]) == 0
    assert json.loads((records / checks.WARM_START_RECORD).read_text()) == record
    assert hashlib.sha1(path.read_bytes()).hexdigest() == record["sha1"]
    # A record of other weights stops the grid before any HC2 cell starts from them.
    (records / checks.WARM_START_RECORD).write_text(json.dumps({**record, "sha1": "0" * 40}))
    with pytest.raises(SystemExit, match="would not start from the recorded weights"):
        checks.main(["warm-start", "--records", str(records), "--overrides", f"data_root={tmp_path}"])
