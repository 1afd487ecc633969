"""bench/hard_checks.py: the grid's cells compose, C3's choice of temp.tlr, and the checks table's paired
differences, signs and verdicts (on job folders written here, so no training runs)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, compose_config

spec = importlib.util.spec_from_file_location("hard_checks", REPO / "bench" / "hard_checks.py")
hc = importlib.util.module_from_spec(spec)
sys.modules.setdefault("hard_checks", hc)
spec.loader.exec_module(hc)
spec = importlib.util.spec_from_file_location("ablation", REPO / "bench" / "ablation.py")
ablation = importlib.util.module_from_spec(spec)
sys.modules.setdefault("ablation", ablation)
spec.loader.exec_module(ablation)


def write_job(folder, overrides, final_map, temperature=0.05):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (folder / ".hydra" / "config.yaml").write_text("seed: 0\n")
    rows = [{"epoch": e, "mAP": final_map, "temperature": temperature} for e in (1, 2)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = {"epoch": 2, "mAP": final_map, "rank1": final_map}
    (folder / "results.json").write_text(json.dumps({"final": res, "best": res}))


def test_every_cell_composes_into_five_seeded_jobs():
    for set_name, setting in hc.cells(None):
        jobs = ablation.grid("checks", [hc.SETS[set_name], *hc.SETTINGS[setting][0]])
        assert [j[0] for j in jobs] == [f"seed={s}" for s in range(5)]
        assert {hc.SETS[set_name], *hc.SETTINGS[setting][0]} <= {o.replace("False", "false") for o in jobs[0]}
        cfg = compose_config(jobs[0])  # every override names an option of the config
        assert cfg.dataset.name == hc.SETS[set_name].split("=")[1] and cfg.seed == 0
    assert hc.cells(["hard/H1", "default/baseline"]) == [("default", "baseline"), ("hard", "H1")]
    with pytest.raises(SystemExit, match="--only hard/H9: expected SET/SETTING"):
        hc.cells(["hard/H9"])


def test_report_pairs_by_seed_with_each_check_signed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hc, "RUNS", tmp_path)
    # per set: the baseline's seeds, then how much each setting adds to them (H1: centring off)
    gains = {"default": {"H1": -1.0, "H2": 0.5, "R1": 0.0, "R2": -2.0},
             "hard": {"H1": -4.0, "H2": -3.0, "R1": 1.0, "R2": 2.0}}
    for set_name, by_setting in gains.items():
        for seed in range(3):
            write_job(tmp_path / set_name / "baseline" / str(seed), [f"seed={seed}"], 20.0 + seed)
            for setting, gain in by_setting.items():
                noise = 0.1 * seed  # differences 0, 0.1, 0.2 around the gain: SE > 0
                write_job(tmp_path / set_name / setting / str(seed), [f"seed={seed}", setting], 20.0 + seed + gain
                          + noise, temperature=0.04 if setting == "H2" else 0.05)
    assert hc.report() == 0
    d_default = hc.paired_difference({"0": 1.0, "1": 2.0, "2": 3.0}, {"0": 0.0, "1": 0.0, "2": 0.0})
    d_hard = hc.paired_difference({"0": 3.0, "1": 4.0, "2": 6.0}, {"0": 0.0, "1": 0.0, "2": 0.0})
    out = capsys.readouterr().out
    lines = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in out.splitlines() if line.startswith("| ")}
    h1_hard = lines[("H1 camera centring on vs off (held-out)", "hard")]
    assert "| 3 | +3.90 |" in h1_hard  # on minus off = -(−4 + 0.1)
    assert "yes (Δ > 0 and larger than on the default set), resolved" in h1_hard
    assert "yes (Δ > 0), resolved" in lines[("H1 camera centring on vs off (held-out)", "default")]
    assert "| -2.90 |" in lines[("H2 learnable vs fixed T (held-out)", "hard")]
    assert "no (Δ > 0 and T ends below 0.05)" in lines[("H2 learnable vs fixed T (held-out)", "hard")]
    assert hc.agreement("H2", "hard", {"default": d_default, "hard": d_hard}, t_end=0.045).startswith("yes")
    assert hc.agreement("H2", "hard", {"default": d_default, "hard": d_hard}, t_end=0.055).startswith("no")
    assert "| -1.10 |" in lines[("R1 multi-queue vs centroid memory (report-only)", "hard")]  # multi-queue − centroid
    assert "report-only" in lines[("R2 InfoMap vs DBSCAN (report-only)", "default")]
    assert "0.0400" in lines[("hard", "H2")] and "| 3 | 21.0 ± 1.0 |" in lines[("hard", "baseline")]
    assert "30 finished jobs" in out


def test_tlr_scan_stops_at_the_smallest_value_that_moves_t(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(hc, "RUNS", tmp_path)
    finals = {0.01: 0.0505, 0.1: 0.041, 0.3: 0.03, 1.0: 0.02}
    ran = []

    def fake_run_all(commands, lanes):
        for cmd in commands:
            folder = Path(cmd[cmd.index("--dir") + 1])
            tlr = float(next(o for o in cmd if o.startswith("temp.tlr=")).split("=")[1])
            ran.append(tlr)
            write_job(folder / "0", cmd[cmd.index("--set") + 1:], 10.0, temperature=finals[tlr])
        return 0

    monkeypatch.setattr(hc, "run_all", fake_run_all)
    assert hc.tlr_scan(lanes=1) == 0
    out = capsys.readouterr().out
    assert ran == [0.01, 0.1]  # 0.1 travels 0.009 >= 0.008: the larger values are not run
    assert "| 0.01 | 0.0505 | 0.0005 | no |" in out and "| 0.1 | 0.0410 | 0.0090 | yes |" in out
    assert "chosen temp.tlr: 0.1" in out
