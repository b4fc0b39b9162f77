"""mmssl-seed-sweep: per-seed runs, their reports gathered, mean and spread."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mmssl.cli.seed_sweep import SweepError, collect, collect_sweep_dir, collect_sweep_dirs
from mmssl.eval.seed_stats import format_paired_table, format_table, paired_differences, summarise, t_quantile_975

REPO = Path(__file__).resolve().parents[1]


def _report(run_dir: Path, modality: str, top1: float, composition: float) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    report = {"modality": modality, "top1": top1, "composition_top1": composition}
    (run_dir / f"zero_shot_{modality}.json").write_text(json.dumps(report))


def test_summary_gives_mean_and_sample_sd_per_modality(tmp_path):
    dirs = {0: tmp_path / "seed_0", 1: tmp_path / "seed_1", 2: tmp_path / "seed_2"}
    for (seed, run_dir), comp in zip(dirs.items(), (0.7, 0.4, 0.55)):
        _report(run_dir, "audio", 0.9, comp)
        _report(run_dir, "graph", 0.8 + seed / 100, 0.86)
    results = collect(dirs)
    summary = summarise(results)
    assert results["audio"][1] == {"top1": 0.9, "composition_top1": 0.4}
    assert summary["audio"]["composition_top1"]["mean"] == pytest.approx(0.55)
    assert summary["audio"]["composition_top1"]["sd"] == pytest.approx(0.15)
    assert summary["audio"]["composition_top1"]["min"] == 0.4 and summary["audio"]["top1"]["sd"] == 0.0
    assert summary["graph"]["top1"]["mean"] == pytest.approx(0.81)
    table = format_table(results, summary)
    assert "seed 2" in table and "0.550" in table and "0.150" in table


def test_a_seed_without_a_report_is_named(tmp_path):
    _report(tmp_path / "seed_0", "image", 0.9, 0.7)
    (tmp_path / "seed_3").mkdir()
    with pytest.raises(SweepError, match=r"seed 3: no zero-shot report \(zero_shot_image.json\)"):
        collect({0: tmp_path / "seed_0", 3: tmp_path / "seed_3"}, modality="image")


def test_paired_differences_give_mean_t_interval_and_wins(tmp_path):
    ours = {"audio": {0: {"composition_top1": 0.70}, 1: {"composition_top1": 0.50}, 2: {"composition_top1": 0.60},
                      3: {"composition_top1": 0.90}}}
    theirs = {"audio": {0: {"composition_top1": 0.60}, 1: {"composition_top1": 0.50}, 2: {"composition_top1": 0.80}},
              "graph": {0: {"composition_top1": 0.80}}}
    paired = paired_differences(ours, theirs)
    assert list(paired) == ["audio"]  # graph is not in this sweep; seed 3 not in the baseline
    p = paired["audio"]["composition_top1"]
    assert p["seeds"] == [0, 1, 2] and p["differences"] == pytest.approx([0.1, 0.0, -0.2])
    assert p["mean"] == pytest.approx(-0.1 / 3)
    sd = (((0.1 + 0.1 / 3) ** 2 + (0.1 / 3) ** 2 + (-0.2 + 0.1 / 3) ** 2) / 2) ** 0.5
    assert p["sd"] == pytest.approx(sd)
    half = 4.303 * sd / 3**0.5
    assert p["ci95"] == pytest.approx([-0.1 / 3 - half, -0.1 / 3 + half])
    assert (p["wins"], p["ties"], p["losses"], p["n"]) == (1, 1, 1, 3)
    table = format_paired_table(paired)
    assert "+0.100" in table and "-0.200" in table and "1/1/1" in table and "seed 3" not in table


def test_one_paired_seed_has_no_interval():
    p = paired_differences({"image": {4: {"top1": 0.9}}}, {"image": {4: {"top1": 0.8}}})["image"]["top1"]
    assert p["mean"] == pytest.approx(0.1) and p["sd"] is None and p["ci95"] is None
    assert "-" in format_paired_table({"image": {"top1": p}}).splitlines()[1].split()


def test_t_quantiles_match_the_table_and_approach_the_normal():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(9) == 2.262
    assert t_quantile_975(31) == pytest.approx(2.0395, abs=2e-4)
    assert t_quantile_975(120) == pytest.approx(1.9799, abs=2e-4)
    assert t_quantile_975(10**6) == pytest.approx(1.95996, abs=1e-4)
    with pytest.raises(ValueError, match="at least 1"):
        t_quantile_975(0)


def test_a_baseline_directory_is_read_by_its_seed_dirs(tmp_path):
    _report(tmp_path / "seed_2", "graph", 0.9, 0.8)
    _report(tmp_path / "seed_10", "graph", 0.8, 0.7)
    (tmp_path / "notes").mkdir()
    assert sorted(collect_sweep_dir(tmp_path)["graph"]) == [2, 10]
    with pytest.raises(SweepError, match=r"baseline .*notes: no seed_<n> run directories"):
        collect_sweep_dir(tmp_path / "notes")


def test_baselines_from_several_sweeps_merge_and_must_not_overlap(tmp_path):
    _report(tmp_path / "image" / "seed_0", "image", 0.9, 0.7)
    _report(tmp_path / "audio" / "seed_0", "audio", 0.8, 0.5)
    _report(tmp_path / "audio" / "seed_1", "audio", 0.8, 0.4)
    merged = collect_sweep_dirs([tmp_path / "image", tmp_path / "audio"])
    assert merged == {"image": {0: {"top1": 0.9, "composition_top1": 0.7}},
                      "audio": {0: {"top1": 0.8, "composition_top1": 0.5}, 1: {"top1": 0.8, "composition_top1": 0.4}}}
    _report(tmp_path / "audio_again" / "seed_1", "audio", 0.7, 0.3)
    with pytest.raises(SweepError, match=r"baselines .*audio and .*audio_again both report audio seed 1"):
        collect_sweep_dirs([tmp_path / "audio", tmp_path / "audio_again"])


def _sweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/seed_sweep.py", *args], capture_output=True, text=True, cwd=REPO)


def test_bad_arguments_are_refused():
    proc = _sweep("configs/tiny.yaml", "--seeds", "0", "0", "--output-dir", "unused")
    assert proc.returncode == 2 and "repeated seed" in proc.stderr
    proc = _sweep("configs/tiny.yaml", "--seeds", "0", "--output-dir", "unused", "seed=3")
    assert proc.returncode == 2 and "sets seed=<n> itself" in proc.stderr


def test_a_bad_override_fails_before_any_seed_runs(tmp_path):
    proc = _sweep("configs/tiny.yaml", "--seeds", "0", "1", "--output-dir", str(tmp_path / "sweep"), "train.stepz=2")
    assert proc.returncode == 2 and "mmssl-seed-sweep: error: " in proc.stderr and "stepz" in proc.stderr
    assert not (tmp_path / "sweep").exists()
    proc = _sweep("configs/tiny.yaml", "--seeds", "0", "--output-dir", str(tmp_path / "sweep"),
                  "--baseline", str(tmp_path / "missing"))
    assert proc.returncode == 2 and "missing is not a directory" in proc.stderr
    assert not (tmp_path / "sweep").exists()


@pytest.mark.slow
def test_sweep_trains_each_seed_and_writes_the_table(tmp_path):
    out = tmp_path / "sweep"
    proc = _sweep("configs/tiny.yaml", "--seeds", "0", "1", "--jobs", "2", "--modality", "image",
                  "--output-dir", str(out), "train.steps=2", "train.progress=false")
    assert proc.returncode == 0, proc.stderr
    record = json.loads((out / "seed_sweep.json").read_text())
    assert sorted(record["results"]["image"]) == ["0", "1"]
    assert record["summary"]["image"]["composition_top1"]["n"] == 2
    for seed in (0, 1):
        summary = json.loads((out / f"seed_{seed}" / "train_summary.json").read_text())
        assert summary["steps"] == 2
        assert f"seed={seed}" in (out / f"seed_{seed}" / "sweep.log").read_text()
    assert (out / "seed_sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "composition_top1" in proc.stdout

    # A finished sweep run again only re-evaluates: the checkpoints stay those of step 2.
    # Against a baseline sweep, each seed is paired with the baseline's same seed.
    baseline = tmp_path / "baseline"
    _report(baseline / "seed_0", "image", 0.5, 0.25)
    _report(baseline / "seed_1", "image", 0.4, 0.125)
    proc = _sweep("configs/tiny.yaml", "--seeds", "0", "1", "--modality", "image", "--output-dir", str(out),
                  "--baseline", str(baseline), "train.steps=2")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (out / "seed_0" / "checkpoints").iterdir()) == ["step_00000002"]
    rerun = json.loads((out / "seed_sweep.json").read_text())
    assert rerun["results"] == record["results"]
    assert rerun["baseline"]["dirs"] == [str(baseline)]
    paired = rerun["baseline"]["paired"]["image"]["composition_top1"]
    ours = [rerun["results"]["image"][s]["composition_top1"] for s in ("0", "1")]
    assert paired["differences"] == pytest.approx([ours[0] - 0.25, ours[1] - 0.125])
    assert paired["n"] == 2 and len(paired["ci95"]) == 2
    assert "paired with" in proc.stdout and "95% CI" in proc.stdout

    # A baseline that shares no seed fails the sweep, but its own record is still written.
    (out / "seed_sweep.json").unlink()
    _report(tmp_path / "other" / "seed_7", "image", 0.5, 0.25)
    proc = _sweep("configs/tiny.yaml", "--seeds", "0", "--modality", "image", "--output-dir", str(out),
                  "--baseline", str(tmp_path / "other"), "train.steps=2")
    assert proc.returncode == 1 and "shares no modality and seed" in proc.stderr
    alone = json.loads((out / "seed_sweep.json").read_text())
    assert alone["results"] == {"image": {"0": record["results"]["image"]["0"]}} and "baseline" not in alone
