"""mqreid-report on fabricated multirun folders whose statistics are known by construction."""

from __future__ import annotations

import csv
import json
import math
import statistics
import sys
from pathlib import Path

import pytest
from scipy import stats

from mqreid.tools import report as rp

COMMON = ["sweep=memory_temp_clusterer", "train.epochs=8"]

# final / best mAP and Rank-1 per seed (0..4), in %; NaN marks an undefined final mAP
A = {"final_mAP": [10.0, 12.0, 11.0, 15.0, 20.0], "best_mAP": [11.0, 12.0, 13.0, 15.0, 21.0],
     "final_rank1": [20.0, 22.0, 21.0, 25.0, 30.0], "best_rank1": [21.0, 22.0, 23.0, 25.0, 31.0]}
B = {"final_mAP": [13.0, 12.0, 14.0, 19.0, math.nan], "best_mAP": [14.0, 13.0, 14.0, 20.0, 5.0],
     "final_rank1": [24.0, 23.0, 22.0, 28.0, 9.0], "best_rank1": [25.0, 23.0, 24.0, 29.0, 9.0]}


def make_job(job_dir: Path, overrides, results=None, metrics=None, config_seed=0, raw_metrics=None):
    """A Hydra job folder: .hydra/overrides.yaml and config.yaml, plus results.json / metrics.jsonl if given."""
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job_dir / ".hydra" / "config.yaml").write_text(f"seed: {config_seed}\ntrain:\n  epochs: 8\n")
    if results is not None:
        (job_dir / "results.json").write_text(json.dumps(results))  # NaN is written as a bare NaN
    if raw_metrics is not None:
        (job_dir / "metrics.jsonl").write_text(raw_metrics)
    elif metrics is not None:
        (job_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metrics))
    return job_dir


def results_for(values, seed):
    final = {"epoch": 8, "mAP": values["final_mAP"][seed], "rank1": values["final_rank1"][seed], "rank5": 50.0,
             "rank10": 60.0}
    best = {"epoch": 8, "mAP": values["best_mAP"][seed], "rank1": values["best_rank1"][seed], "rank5": 50.0,
            "rank10": 60.0}
    return {"initial": {"mAP": 2.0, "rank1": 1.0, "rank5": 5.0, "rank10": 9.0}, "best": best, "final": final,
            "world_size": 1, "epochs": 8, "seconds": 12.5}


def metrics_for(values, seed):
    return [{"epoch": 0, "mAP": 2.0, "rank1": 1.0},
            {"epoch": 4, "clusters": 30, "outlier_ratio": 0.2, "loss": 3.0, "temperature": 0.05},
            {"epoch": 8, "clusters": 40, "outlier_ratio": 0.1, "loss": 2.0, "temperature": 0.05,
             "mAP": values["final_mAP"][seed], "rank1": values["final_rank1"][seed]}]


@pytest.fixture
def multirun(tmp_path):
    """Hydra's default layout: <dir>/<job num>/; 2 groups x 5 seeds, group B's seed 4 with a NaN final mAP
    (also a bare NaN in its metrics.jsonl), and one more job of group B (seed 5) without results.json."""
    root = tmp_path / "multirun" / "2026-11-24" / "10-00-00"
    num = 0
    for memory, values in (("multi_queue", B), ("centroid", A)):
        for seed in range(5):
            overrides = [f"memory={memory}", f"seed={seed}", *COMMON]
            raw = None
            if math.isnan(values["final_mAP"][seed]):
                raw = ('{"epoch": 0, "mAP": 2.0, "rank1": 1.0}\n'
                       '{"epoch": 8, "clusters": 40, "loss": NaN, "mAP": NaN, "rank1": 9.0}\n')
            make_job(root / str(num), overrides, results_for(values, seed), metrics_for(values, seed), raw_metrics=raw)
            num += 1
    make_job(root / str(num), ["memory=multi_queue", "seed=5", *COMMON],
             metrics=[{"epoch": 0, "mAP": 2.0}, {"epoch": 1, "loss": 3.0}, {"epoch": 2, "loss": 2.9}])
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


def rows_by_label(report):
    return {row.group.label: row for row in report.rows}


def hand_paired(a, b):
    """Mean, SE and 95 % CI of b - a over the indices where both are finite, by the textbook formulas."""
    d = [y - x for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
    n = len(d)
    mean = sum(d) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    se = sd / math.sqrt(n)
    t = stats.t.ppf(0.975, n - 1)
    return mean, se, mean - t * se, mean + t * se, n


def test_groups_counts_means_and_stds(multirun):
    report = rp.build_report([multirun])
    rows = rows_by_label(report)
    assert list(rows) == ["memory=centroid", "memory=multi_queue"]  # shared overrides left out of the labels
    assert report.common == tuple(sorted(COMMON))
    assert report.baseline.label == "memory=centroid"  # the first group in sorted order
    a, b = rows["memory=centroid"], rows["memory=multi_queue"]
    assert a.n == 5 and b.n == 5  # the job without results.json is not counted
    for row, values in ((a, A), (b, B)):
        for stage in ("final", "best"):
            for metric in ("mAP", "rank1"):
                finite = [v for v in values[f"{stage}_{metric}"] if math.isfinite(v)]
                s = row.stats[(stage, metric)]
                assert s.count == len(finite)
                assert s.mean == pytest.approx(sum(finite) / len(finite))
                mean = sum(finite) / len(finite)
                assert s.std == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)))
    # spelled out for two cells
    assert a.stats[("final", "mAP")].mean == pytest.approx(13.6)
    assert a.stats[("final", "mAP")].std == pytest.approx(math.sqrt(65.2 / 4))
    assert b.stats[("final", "mAP")].count == 4  # the NaN is left out
    assert b.stats[("final", "mAP")].mean == pytest.approx(14.5)
    assert b.stats[("final", "mAP")].std == pytest.approx(math.sqrt(29 / 3))


def test_paired_difference_against_hand_computation(multirun):
    rows = rows_by_label(rp.build_report([multirun]))
    d = rows["memory=multi_queue"].diff
    # seeds 0..3 pair (seed 4 is NaN in multi_queue): differences 3, 0, 3, 4
    assert d.n_pairs == 4
    assert d.mean == pytest.approx(2.5)
    assert d.se == pytest.approx(math.sqrt(3) / 2)
    assert stats.t.ppf(0.975, 3) == pytest.approx(3.182446, abs=1e-6)
    assert (d.ci_low, d.ci_high) == pytest.approx((2.5 - 3.182446 * math.sqrt(3) / 2,
                                                   2.5 + 3.182446 * math.sqrt(3) / 2), abs=1e-5)
    mean, se, lo, hi, n = hand_paired(A["final_mAP"], B["final_mAP"])
    assert (d.mean, d.se, d.ci_low, d.ci_high, d.n_pairs) == pytest.approx((mean, se, lo, hi, n))
    base = rows["memory=centroid"].diff
    assert base.n_pairs == 5 and base.mean == 0 and base.se == 0


def test_paired_difference_with_few_pairs():
    one = rp.paired_difference({"0": 5.0, "1": 7.0}, {"0": 4.0, "2": 1.0})
    assert one.n_pairs == 1 and one.mean == 1.0
    assert math.isnan(one.se) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    none = rp.paired_difference({"0": 5.0}, {"1": 4.0})
    assert none.n_pairs == 0 and math.isnan(none.mean)
    nan_pair = rp.paired_difference({"0": math.nan, "1": 3.0, "2": 4.0}, {"0": 1.0, "1": 1.0, "2": 1.0})
    assert nan_pair.n_pairs == 2 and nan_pair.mean == 2.5


def test_metric_option_pairs_another_metric(multirun):
    report = rp.build_report([multirun], metric="rank1")
    d = rows_by_label(report)["memory=multi_queue"].diff
    mean, se, lo, hi, n = hand_paired(A["final_rank1"], B["final_rank1"])
    assert n == 5 and (d.mean, d.se, d.ci_low, d.ci_high, d.n_pairs) == pytest.approx((mean, se, lo, hi, n))
    report5 = rp.build_report([multirun], metric="rank5")
    assert report5.columns == ["mAP", "rank1", "rank5"]
    assert rows_by_label(report5)["memory=multi_queue"].diff.mean == pytest.approx(0.0)


def test_excluded_jobs_listed_and_left_out(multirun):
    report = rp.build_report([multirun])
    assert [j.name for j in report.excluded] == ["10"]
    assert "no results.json" in report.excluded[0].problem
    md = rp.render_markdown(report)
    excluded = md.split("## Excluded jobs")[1]
    assert "`10` (memory=multi_queue seed=5)" in excluded and "reaches epoch 2" in excluded
    assert "`9`" not in excluded
    assert any(n.startswith("`4`: final mAP missing or NaN") for n in report.notes)  # job 4: the NaN seed


def test_main_writes_files(multirun, capsys):
    assert rp.main([str(multirun)]) == 0
    out = capsys.readouterr().out
    assert "| memory=centroid | 5 | 13.6 ± 4.0 |" in out
    assert "| memory=multi_queue | 5 | 14.5 ± 3.1 (n=4) |" in out
    assert "| +2.50 | 0.87 | [-0.26, +5.26] | 4 |" in out
    for name in ("report.md", "report.csv"):
        assert (multirun / name).is_file(), name
    assert not [p for p in multirun.iterdir() if p.name.startswith(".report")]  # no temporary file left
    md = (multirun / "report.md").read_text()
    assert "| setting | n | final mAP | best mAP | final Rank-1 | best Rank-1 | Δ final mAP | SE | 95% CI | pairs |" in md
    assert "## Excluded jobs" in md and "`10`" in md
    rows = {r["group"]: r for r in csv.DictReader((multirun / "report.csv").open())}
    assert list(rows) == ["memory=centroid", "memory=multi_queue"]
    mq = rows["memory=multi_queue"]
    mean, se, lo, hi, n = hand_paired(A["final_mAP"], B["final_mAP"])
    assert int(mq["n"]) == 5 and int(mq["n_pairs"]) == n
    assert [float(mq[k]) for k in ("diff_mean", "diff_se", "ci_low", "ci_high")] == pytest.approx([mean, se, lo, hi])
    assert float(mq["final_mAP_mean"]) == pytest.approx(14.5)
    assert float(mq["best_rank1_std"]) == pytest.approx(statistics.stdev(B["best_rank1"]))
    assert rows["memory=centroid"]["is_baseline"] == "True" and mq["is_baseline"] == "False"


def test_out_dir_and_report_is_not_a_job(multirun, tmp_path):
    out = tmp_path / "elsewhere"
    assert rp.main([str(multirun), "--out-dir", str(out)]) == 0
    assert (out / "report.md").is_file() and not (multirun / "report.md").exists()
    assert rp.main([str(multirun)]) == 0 and rp.main([str(multirun)]) == 0  # rerun over its own output
    assert len(rp.find_jobs(multirun)) == 11


def test_curves_mean_and_band(multirun):
    data = rp.curves(rp.build_report([multirun]))
    epochs, means, stds = data["memory=centroid"]
    assert epochs == [0, 8]
    assert means == pytest.approx([2.0, 13.6]) and stds == pytest.approx([0.0, statistics.stdev(A["final_mAP"])])
    epochs, means, _ = data["memory=multi_queue"]
    assert means[1] == pytest.approx(14.5)  # the NaN of seed 4 is not plotted


def test_baseline_selection(multirun, capsys):
    report = rp.build_report([multirun], baseline="memory=multi_queue")
    rows = rows_by_label(report)
    assert rows["memory=multi_queue"].is_baseline and not rows["memory=centroid"].is_baseline
    mean, se, lo, hi, n = hand_paired(B["final_mAP"], A["final_mAP"])
    d = rows["memory=centroid"].diff
    assert (d.mean, d.se, d.ci_low, d.ci_high, d.n_pairs) == pytest.approx((mean, se, lo, hi, n))
    assert rp.build_report([multirun], baseline="train.epochs=8 memory=centroid").baseline.label == "memory=centroid"

    assert rp.main([str(multirun), "--baseline", "memory=nope"]) == 1
    err = capsys.readouterr().err
    assert "memory=nope" in err and "'memory=centroid'" in err and "'memory=multi_queue'" in err
    assert not (multirun / "report.md").exists()


def test_baseline_ambiguous_and_multi_key(tmp_path):
    num = 0
    for memory, temp in (("a", "x"), ("a", "y"), ("b", "x")):
        for seed in (0, 1):
            make_job(tmp_path / str(num), [f"memory={memory}", f"temp={temp}", f"seed={seed}"],
                     results_for(A, seed))
            num += 1
    with pytest.raises(rp.ReportError, match="matches 2 groups"):
        rp.build_report([tmp_path], baseline="memory=a")
    report = rp.build_report([tmp_path], baseline="memory=a temp=y")
    assert report.baseline.label == "memory=a temp=y"
    assert [r.group.label for r in report.rows] == ["memory=a temp=x", "memory=a temp=y", "memory=b temp=x"]


def test_nested_layouts(tmp_path):
    """Jobs at several depths, e.g. subdir=${hydra.job.override_dirname} and parts of a grid in subfolders."""
    root = tmp_path / "grid"
    make_job(root / "part1" / "0", ["memory=centroid", "seed=0"], results_for(A, 0))
    make_job(root / "part1" / "1", ["memory=centroid", "seed=1"], results_for(A, 1))
    make_job(root / "part2" / "memory=multi_queue,seed=0", ["memory=multi_queue", "seed=0"], results_for(B, 0))
    make_job(root / "part2" / "deeper" / "memory=multi_queue,seed=1", ["seed=1", "memory=multi_queue"],
             results_for(B, 1))
    make_job(root / ".incomplete" / "5", ["memory=multi_queue", "seed=2"])  # hidden folders are not searched
    report = rp.build_report([root])
    rows = rows_by_label(report)
    assert {k: r.n for k, r in rows.items()} == {"memory=centroid": 2, "memory=multi_queue": 2}
    assert not report.excluded
    assert rows["memory=multi_queue"].diff.mean == pytest.approx((3 + 0) / 2)
    names = sorted(j.name for j in rp.find_jobs(root))
    assert names == ["part1/0", "part1/1", "part2/deeper/memory=multi_queue,seed=1", "part2/memory=multi_queue,seed=0"]
    # the same jobs given as two folders (parts run into separate sweep dirs)
    two = rp.build_report([root / "part1", root / "part2"])
    assert {r.group.label: r.n for r in two.rows} == {"memory=centroid": 2, "memory=multi_queue": 2}


def test_single_run_folder_and_seed_from_config(tmp_path):
    run = make_job(tmp_path / "outputs" / "10-00-00", [], results_for(A, 0), config_seed=3)
    report = rp.build_report([run])
    assert [r.group.label for r in report.rows] == ["(all)"]
    assert report.rows[0].group.jobs[0].seed == "3" and report.rows[0].group.jobs[0].name == "10-00-00"


def test_one_group_label_and_seed_grouping(tmp_path):
    for seed in range(3):
        make_job(tmp_path / str(seed), ["memory=centroid", f"seed={seed}", "dataset.seed=1"], results_for(A, seed))
    make_job(tmp_path / "3", ["memory=centroid", "seed=0", "dataset.seed=2"], results_for(A, 3))
    report = rp.build_report([tmp_path])
    # only the key named exactly `seed` is left out of the grouping; dataset.seed is a setting
    assert [(r.group.label, r.n) for r in report.rows] == [("dataset.seed=1", 3), ("dataset.seed=2", 1)]
    assert report.common == ("memory=centroid",)


def test_repeated_seed_is_averaged_for_pairs(tmp_path):
    make_job(tmp_path / "0", ["m=a", "seed=0"], {"final": {"mAP": 10.0}})
    make_job(tmp_path / "1", ["m=a", "seed=1"], {"final": {"mAP": 20.0}})
    make_job(tmp_path / "2", ["m=b", "seed=0"], {"final": {"mAP": 13.0}})
    make_job(tmp_path / "3", ["m=b", "seed=0"], {"final": {"mAP": 15.0}})
    make_job(tmp_path / "4", ["m=b", "seed=1"], {"final": {"mAP": 21.0}})
    report = rp.build_report([tmp_path])
    row = rows_by_label(report)["m=b"]
    assert row.n == 3 and row.diff.n_pairs == 2 and row.diff.mean == pytest.approx((4 + 1) / 2)
    assert any("more than once" in n for n in report.notes)
    assert math.isnan(row.stats[("best", "mAP")].mean)  # no "best" entry: an empty cell, not an error
    assert "| m=b | 3 | 16.3 ± 4.2 | – |" in rp.render_table(report)


def test_read_jsonl_is_tolerant(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 0, "mAP": NaN}\n\n{"epoch": 1, "mAP": nan, "loss": -inf}\n'
                    '{"epoch": 2, "mAP": 3.5, "rank1": null}\n{"epoch": 3, "mA')
    rows, bad = rp.read_jsonl(path)
    assert bad == 1 and [r["epoch"] for r in rows] == [0, 1, 2]
    assert math.isnan(rows[1]["mAP"]) and rows[1]["loss"] == -math.inf and rows[2]["rank1"] is None


def test_png_written(multirun):
    assert rp.main([str(multirun)]) == 0
    assert (multirun / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in multirun.iterdir() if p.name.startswith(".report")]


def test_errors_for_missing_or_empty_folders(tmp_path, capsys):
    assert rp.main([str(tmp_path / "nope")]) == 1
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert rp.main([str(tmp_path / "empty")]) == 1
    assert "no job found" in capsys.readouterr().err
    make_job(tmp_path / "failed" / "0", ["seed=0"])
    assert rp.main([str(tmp_path / "failed")]) == 1
    assert "none of the 1 job(s) has a results.json" in capsys.readouterr().err


def test_module_entry_point(multirun):
    import subprocess

    proc = subprocess.run([sys.executable, "-m", "mqreid.tools.report", str(multirun), "--metric", "rank1"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Δ final Rank-1" in proc.stdout and (multirun / "report.csv").is_file()


def test_effects_of_each_setting_within_and_pooled(tmp_path):
    """A 2 x 2 grid with known values: memory adds 2 (3 with learnable T), temperature adds 1, plus a per-seed
    offset that pairing removes."""
    root = tmp_path / "grid"
    seed_offset = [0.0, 4.0, -2.0]
    jitter = {("centroid", "fixed"): [0.0, 0.1, -0.1], ("centroid", "learnable"): [0.2, 0.0, 0.1],
              ("multi_queue", "fixed"): [0.3, -0.2, 0.0], ("multi_queue", "learnable"): [0.0, 0.4, -0.3]}
    final = {}
    num = 0
    for memory in ("centroid", "multi_queue"):
        for temp in ("fixed", "learnable"):
            for seed in range(3):
                value = 50.0 + seed_offset[seed] + jitter[memory, temp][seed] + (memory == "multi_queue") * 2.0 \
                    + (temp == "learnable") * 1.0 + (memory == "multi_queue" and temp == "learnable") * 1.0
                final[memory, temp, seed] = value
                values = {k: [value] * 3 for k in ("final_mAP", "best_mAP", "final_rank1", "best_rank1")}
                make_job(root / str(num), [f"memory={memory}", f"temp={temp}", f"seed={seed}", *COMMON],
                         results_for(values, seed), metrics_for(values, seed))
                num += 1
    report = rp.build_report([root], baseline="memory=centroid temp=fixed")
    got = {(e.key, e.within): e.diff for e in rp.shown_effects(report)}
    assert set(got) == {("memory", "temp=fixed"), ("memory", "temp=learnable"), ("memory", rp.ALL),
                        ("temp", "memory=centroid"), ("temp", "memory=multi_queue"), ("temp", rp.ALL)}

    memory_within = {t: [final["multi_queue", t, s] - final["centroid", t, s] for s in range(3)]
                     for t in ("fixed", "learnable")}
    temp_within = {m: [final[m, "learnable", s] - final[m, "fixed", s] for s in range(3)]
                   for m in ("centroid", "multi_queue")}
    for (key, within), ds in [(("memory", "temp=fixed"), memory_within["fixed"]),
                              (("memory", "temp=learnable"), memory_within["learnable"]),
                              (("memory", rp.ALL), memory_within["fixed"] + memory_within["learnable"]),
                              (("temp", "memory=centroid"), temp_within["centroid"]),
                              (("temp", rp.ALL), temp_within["centroid"] + temp_within["multi_queue"])]:
        d = got[key, within]
        assert d.n_pairs == len(ds)
        assert d.mean == pytest.approx(statistics.fmean(ds))
        assert d.se == pytest.approx(statistics.stdev(ds) / math.sqrt(len(ds)))
        half = stats.t.ppf(0.975, len(ds) - 1) * d.se
        assert (d.ci_low, d.ci_high) == pytest.approx((d.mean - half, d.mean + half))
    assert got["memory", rp.ALL].mean == pytest.approx(2.5, abs=0.2)  # 2 and 3, averaged
    rp.write_report(report, tmp_path / "out")
    rows = list(csv.DictReader((tmp_path / "out" / "report_effects.csv").open()))
    assert len(rows) == 6 and {r["key"] for r in rows} == {"memory", "temp"}
    assert "## Effect of each setting" in (tmp_path / "out" / "report.md").read_text()


def test_no_effects_table_for_a_one_setting_sweep(multirun, tmp_path):
    report = rp.build_report([multirun])
    assert rp.shown_effects(report) == [] and "Effect of each setting" not in rp.render_markdown(report)
    rp.write_report(report, tmp_path)
    assert not (tmp_path / "report_effects.csv").exists()
