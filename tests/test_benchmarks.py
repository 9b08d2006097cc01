"""The benchmarks' bookkeeping: runs recorded as they end, reports from the records, operation counts."""
import argparse
import json
import os
import sys

import pytest
import torch

from conftest import load_module


def load():
    return load_module("benchmarks/accuracy.py")


FAKE_TRAINING = """
import json, os, sys
out, ap, threshold = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
os.makedirs(os.path.join(out, "inference", "shapes_val"), exist_ok=True)
with open(os.path.join(out, "inference", "shapes_val", "ap_table.json"), "w") as f:
    json.dump({"shapes_val": {"bbox": {c: ap for c in ("AP", "AP50", "AP60", "AP70", "AP80", "AP90")}}}, f)
with open(os.path.join(out, "metrics.json"), "w") as f:
    for it in (19, 39):
        f.write(json.dumps({"iteration": it, "dynamic_rcnn/iou_threshold": threshold, "dynamic_rcnn/beta": 0.2,
                            "roi_head/num_fg_samples": 10.0 + it, "total_loss": 1.0}) + "\\n")
open(os.path.join(out, "model_final.pth"), "w").write("weights")
sys.exit(int(ap < 0))
"""


def fake_runs(accuracy, tmp_path, runs):
    """Run ``runs`` ((dataset, variant, seed, AP, IoU threshold)) through run_all as fake trainings."""
    results, train = str(tmp_path / "results"), str(tmp_path / "runs")
    script = tmp_path / "fake.py"
    script.write_text(FAKE_TRAINING)
    todo = [((d, v, s, 1), [sys.executable, str(script), accuracy.run_dir(train, d, v, s), str(ap), str(t)])
            for d, v, s, ap, t in runs]
    accuracy.run_all(todo, jobs=2, threads=1, results=results, runs=train)
    return results, train


def test_a_finished_run_is_recorded_when_it_ends_and_its_weights_deleted(tmp_path):
    accuracy = load()
    results, train = fake_runs(accuracy, tmp_path, [("shapes", "dynamic", 0, 30.0, 0.6), ("shapes", "dynamic", 1, 40.0, 0.7)])
    with open(accuracy.result_file(results, "shapes", "dynamic", 1)) as f:
        record = json.load(f)
    assert (record["AP"], record["AP90"], record["iou_threshold"], record["beta"]) == (40.0, 40.0, 0.7, 0.2)
    assert record["num_fg"] == 39.0 and record["iterations"] == 40 and record["threads"] == 1
    assert record["curves"]["dynamic_rcnn/iou_threshold"] == [[19, 0.7], [39, 0.7]]
    assert record["wall_seconds"] >= 0 and record["peak_rss_mb"] > 0 and record["machine"]
    assert not os.path.exists(os.path.join(accuracy.run_dir(train, "shapes", "dynamic", 1), "model_final.pth"))
    assert os.path.isfile(os.path.join(accuracy.run_dir(train, "shapes", "dynamic", 1), "metrics.json"))


def test_a_failed_or_cut_off_run_is_not_recorded_and_starts_again_from_scratch(tmp_path):
    accuracy = load()
    with pytest.raises(RuntimeError, match="1 runs failed"):
        fake_runs(accuracy, tmp_path, [("shapes", "dynamic", 0, -1.0, 0.6)])
    results = str(tmp_path / "results")
    assert not os.path.exists(accuracy.result_file(results, "shapes", "dynamic", 0))
    # A run cut off (no result file) left a folder with files of its own: the next start removes them.
    stale = os.path.join(accuracy.run_dir(str(tmp_path / "runs"), "shapes", "dynamic", 0), "stale.txt")
    open(stale, "w").write("half a run")
    fake_runs(accuracy, tmp_path, [("shapes", "dynamic", 0, 30.0, 0.6)])
    assert not os.path.exists(stale) and os.path.isfile(accuracy.result_file(results, "shapes", "dynamic", 0))


def test_recorded_runs_are_skipped_and_the_report_is_made_from_the_files(tmp_path, monkeypatch):
    accuracy = load()
    results, _ = fake_runs(accuracy, tmp_path, [("shapes", "dynamic", 0, 30.0, 0.6), ("shapes", "dynamic", 1, 40.0, 0.7),
                                                ("shapes", "baseline_d2", 0, 28.0, 0.0),
                                                ("shapes", "baseline_d2", 1, 35.0, 0.0)])
    started = []
    monkeypatch.setattr(accuracy, "run_all", lambda todo, *a, **k: started.extend(todo))
    out = tmp_path / "new_folder" / "report.md"  # a report folder that does not exist yet is made
    assert accuracy.main(["--datasets", "shapes", "--variants", "baseline_d2", "dynamic", "--seeds", "0", "1", "2",
                          "--results", results, "--runs", str(tmp_path / "runs"), "--report-file", str(out),
                          "--plot-dir", str(tmp_path / "plots")]) == 0
    assert [key for key, _ in started] == [("shapes", "baseline_d2", 2, 1), ("shapes", "dynamic", 2, 1)]
    text = out.read_text()
    assert "| shapes | dynamic | 30.0 | 40.0 | **35.0** |" in text
    # Paired to baseline_d2 over seeds 0 and 1: +2.0 and +5.0.
    assert "| shapes | dynamic | 2 | +3.5 ± 1.5 |" in text
    assert "| dynamic | 0 | 0.60 / 0.20 | 0.60 / 0.20 |" in text
    assert (tmp_path / "plots" / "paired_differences.png").is_file()
    assert (tmp_path / "plots" / "trajectories_shapes.png").is_file()


def test_versus_prints_one_paired_ap_column_a_pair_worst_data_set_first(tmp_path, capsys):
    accuracy = load()
    results, _ = fake_runs(accuracy, tmp_path, [
        ("shapes", "baseline_d2", 0, 30.0, 0.0), ("shapes", "baseline_d2", 1, 32.0, 0.0),
        ("shapes", "dynamic", 0, 31.0, 0.6), ("shapes", "dynamic", 1, 35.0, 0.6),  # +1, +3: +2.0 ± 1.0
        ("bccd", "baseline_d2", 0, 40.0, 0.0), ("bccd", "dynamic", 0, 39.0, 0.6),  # -1.0, one seed
        ("shapes", "baseline_cascade", 0, 50.0, 0.0), ("shapes", "baseline_cascade", 1, 50.0, 0.0),
        ("shapes", "auto_cascade", 0, 52.0, 0.6), ("shapes", "auto_cascade", 1, 52.0, 0.6)])  # +2, +2: resolved
    assert accuracy.main(["--versus", "dynamic:baseline_d2", "auto_cascade:baseline_cascade", "--datasets", "shapes",
                          "bccd", "--seeds", "0", "1", "--results", results]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    assert lines[0] == "| data set | dynamic:baseline_d2 | auto_cascade:baseline_cascade |"
    assert lines[2:] == ["| bccd | -1.0 (1) | - |", "| shapes | +2.0 ± 1.0 (2) | **+2.0 ± 0.0 (2)** |"]
    # A run recorded on another machine than its partner is not paired, and the table says which.
    path = accuracy.result_file(results, "shapes", "dynamic", 1)
    with open(path) as f:
        record = json.load(f)
    with open(path, "w") as f:
        json.dump(dict(record, machine="CPU: another (x86_64), 2 cores"), f)
    assert accuracy.main(["--versus", "dynamic:baseline_d2", "--datasets", "shapes", "--seeds", "0", "1",
                          "--results", results]) == 0
    out = capsys.readouterr().out
    assert "| shapes | +1.0 (1) |" in out
    assert out.rstrip().endswith("Not paired, the two runs on different machines (run both again on one): "
                                 "shapes dynamic:baseline_d2 seed 1.")
    with pytest.raises(SystemExit):
        accuracy.main(["--versus", "dynamic", "--results", results])
    assert "--versus dynamic: give VARIANT:REFERENCE" in capsys.readouterr().err


def test_the_trajectories_have_every_stage_of_a_cascade_and_stage_0_of_a_single_head(tmp_path):
    accuracy = load()
    curve = [[19, 0.5], [39, 0.6]]
    cascade = {f"stage{k}/dynamic_rcnn/{name}": curve for k in range(3) for name in ("iou_threshold", "beta")}
    cascade.update({"roi_head/num_fg_samples": curve, "stage1/roi_head/num_fg_samples": curve,
                    "stage2/roi_head/num_fg_samples": curve})
    stock_cascade = {"roi_head/num_fg_samples": curve, "stage1/roi_head/num_fg_samples": curve,
                     "stage2/roi_head/num_fg_samples": curve}
    single = {"dynamic_rcnn/iou_threshold": curve, "dynamic_rcnn/beta": curve, "roi_head/num_fg_samples": curve}
    rows = [(("bccd", "dynamic_cascade", s, 1), {"curves": cascade}) for s in (0, 1)]
    rows += [(("bccd", "baseline_cascade", 0, 1), {"curves": stock_cascade}), (("bccd", "dynamic", 0, 1), {"curves": single})]
    stages, grid = accuracy.trajectory_grid(rows, "bccd")
    assert stages == 3
    for k in range(3):
        assert len(grid[("dynamic_rcnn/iou_threshold", k)]["dynamic_cascade"]) == 2
        assert len(grid[("dynamic_rcnn/beta", k)]["dynamic_cascade"]) == 2
        assert set(grid[("roi_head/num_fg_samples", k)]) >= {"dynamic_cascade", "baseline_cascade"}
    assert "dynamic" in grid[("dynamic_rcnn/iou_threshold", 0)] and "dynamic" not in grid[("dynamic_rcnn/iou_threshold", 1)]
    assert "baseline_cascade" not in grid[("dynamic_rcnn/iou_threshold", 0)]
    assert accuracy.plot_trajectories(rows, str(tmp_path)) == [str(tmp_path / "trajectories_bccd.png")]


def test_a_paired_difference_that_rounds_to_zero_is_written_plus_zero():
    accuracy = load()
    cols = {c: 30.0 for c in accuracy.COLUMNS}
    rows = [(("shapes", "baseline_d2", s, 1), dict(cols)) for s in (0, 1)]
    rows += [(("shapes", "dynamic", 0, 1), dict(cols, AP=29.96)), (("shapes", "dynamic", 1, 1), dict(cols, AP=29.98))]
    assert "| shapes | dynamic | 2 | +0.0 ± 0.0 |" in accuracy.paired_table(rows)


def test_every_variant_starts_from_its_config_and_the_reference_is_detectron2s_stock_head():
    accuracy = load()
    assert accuracy.REFERENCE == "baseline_d2" and accuracy.VARIANTS["baseline_d2"] == ("stock", [])
    command = accuracy.run_command("/runs", ("bccd", "dla_l1_nms70", 3, 3), [])
    assert command[command.index("--config-file") + 1].endswith("configs/bccd/dynamic_rcnn_R_18_FPN_bccd.yaml")
    joined = " ".join(command)
    assert "MODEL.RPN.NMS_THRESH 0.7" in joined and "MODEL.DYNAMIC_RCNN.WARMUP_BETA 0.0" in joined
    assert "SOLVER.MAX_ITER 1200" in joined and joined.endswith("OUTPUT_DIR /runs/bccd/dla_l1_nms70_x3/seed3")
    # Every variant's config loads with its overrides: a bad one would fail hours into a matrix.
    from dynamic_rcnn.engine import load_config

    for data in accuracy.CONFIGS:
        for name, (kind, opts) in accuracy.VARIANTS.items():
            if kind in accuracy.CONFIGS[data]:  # the prepared data sets have no authors' baseline config
                load_config(os.path.join(accuracy.ROOT, accuracy.CONFIGS[data][kind]), opts)


def test_overhead_alternates_the_first_head_and_times_both():
    overhead = load_module("benchmarks/overhead.py")
    order = []
    original_step = overhead.Runner.step

    def step(self):
        order.append(self.trainer.model.roi_heads.__class__.__name__)
        return original_step(self)

    overhead.Runner.step = step
    args = argparse.Namespace(threads=0, control=False, preset="tiny", device="cpu", period=1, steps=1, warmup=1, opts=[])
    heads, times, memory, trackers = overhead.timing(args)
    assert heads == ("dynamic", "standard") and [len(times[h]) for h in heads] == [1, 1]
    # A B, then B A: neither head always goes first.
    assert order == ["DynamicROIHeads", "StandardROIHeads", "StandardROIHeads", "DynamicROIHeads"]
    assert len(trackers) == 1 and trackers[0].beta < 1.0  # period 1: the hook updated before step 2


def test_count_ops_counts_what_the_dynamic_head_adds():
    overhead = load_module("benchmarks/overhead.py")
    base = argparse.Namespace(preset="tiny", device="cpu", period=5, warmup=0, opts=[])
    counts, names = overhead.count_ops(base)
    # The statistics cost operations; the standard head makes none of them (topk: K_I's largest IoUs).
    assert counts["standard"] > 1000 and counts["dynamic"] > counts["standard"]
    assert (names["dynamic"] - names["standard"])["aten::topk"] >= 1
    off, _ = overhead.count_ops(argparse.Namespace(**{**vars(base), "opts": [
        "MODEL.DYNAMIC_RCNN.ENABLE_DLA", False, "MODEL.DYNAMIC_RCNN.ENABLE_DSL", False]}))
    # Both parts off records nothing: the statistics are what the dynamic head adds; its one-threshold
    # matcher makes fewer operations than detectron2's (no boolean-mask writes).
    assert off["dynamic"] < counts["dynamic"] and off["dynamic"] < off["standard"], (counts, off)


def test_the_machine_of_a_result_names_the_cpu_model(tmp_path, monkeypatch):
    # Two CPUs of one architecture may give different sums: the result files must tell them apart.
    run_summary = load_module("tools/run_summary.py")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu\n")
    assert "AMD EPYC 9B14" in run_summary.machine_description(str(cpuinfo))
    assert run_summary.cpu_model(str(cpuinfo)) == "AMD EPYC 9B14"
    # No cpuinfo (not Linux): the architecture and the cores as before, no error.
    missing = run_summary.machine_description(str(tmp_path / "absent"))
    assert missing.startswith("CPU: ") and missing.endswith(f"{os.cpu_count()} cores") and "EPYC" not in missing
