"""The accuracy benchmark's bookkeeping: which runs are complete, and the table with means."""
import argparse
import json
import os

from conftest import load_module


def load():
    return load_module("benchmarks/accuracy.py")


def fake_run(path, ap, threshold):
    os.makedirs(os.path.join(path, "inference", "shapes_val"))
    with open(os.path.join(path, "inference", "shapes_val", "ap_table.json"), "w") as f:
        json.dump({"shapes_val": {"bbox": {c: ap for c in ("AP", "AP50", "AP60", "AP70", "AP80", "AP90")}}}, f)
    with open(os.path.join(path, "train_summary.json"), "w") as f:
        json.dump({"wall_seconds": 120.0, "iterations": 10, "machine": "CPU"}, f)
    with open(os.path.join(path, "metrics.json"), "w") as f:
        f.write(json.dumps({"iteration": 9, "dynamic_rcnn/iou_threshold": threshold, "dynamic_rcnn/beta": 0.2}) + "\n")


def test_incomplete_runs_are_not_counted_and_means_are_per_variant(tmp_path):
    accuracy = load()
    out = str(tmp_path)
    fake_run(accuracy.run_dir(out, "shapes", "dynamic", 0), 30.0, 0.6)
    fake_run(accuracy.run_dir(out, "shapes", "dynamic", 1), 40.0, 0.7)
    os.makedirs(accuracy.run_dir(out, "shapes", "baseline_authors", 0))  # started, never finished
    assert accuracy.read_run(accuracy.run_dir(out, "shapes", "baseline_authors", 0)) is None
    run = accuracy.read_run(accuracy.run_dir(out, "shapes", "dynamic", 1))
    assert run["AP90"] == 40.0 and run["iou_threshold"] == 0.7 and run["wall_min"] == 2.0
    assert accuracy.main(["--datasets", "shapes", "--variants", "dynamic", "baseline_authors",
                          "--out", out, "--report-only"]) == 0
    text = open(os.path.join(out, "accuracy.md")).read()
    assert "| shapes | dynamic | 0 | 30.0 |" in text
    assert "| shapes | **dynamic mean** | 2 runs | **35.0** |" in text
    assert "baseline_authors" not in text
    # Then the trajectories of the runs that logged them (one logged iteration each here).
    assert "**shapes**: IoU threshold / beta at iteration" in text
    assert "| dynamic | 0 | 0.60 / 0.20 |" in text and "| dynamic | 1 | 0.70 / 0.20 |" in text


def test_trajectory_table_spreads_its_columns_over_the_run(tmp_path):
    accuracy = load()
    path = accuracy.run_dir(str(tmp_path), "shapes", "dynamic", 0)
    fake_run(path, 30.0, 0.6)
    with open(os.path.join(path, "metrics.json"), "w") as f:
        for it in range(19, 1000, 20):  # 50 logged iterations, T rising by 0.001 each
            f.write(json.dumps({"iteration": it, "dynamic_rcnn/iou_threshold": 0.4 + it / 1000,
                                "dynamic_rcnn/beta": 1.0}) + "\n")
    text = accuracy.trajectory_table([(("shapes", "dynamic", 0), accuracy.read_run(path))], points=3)
    assert "| variant | seed | 20 | 500 | 1000 |" in text  # first, middle and last logged iteration
    assert "| dynamic | 0 | 0.42 / 1.00 | 0.90 / 1.00 | 1.40 / 1.00 |" in text


def test_overhead_alternates_the_first_head_and_times_both():
    overhead = load_module("benchmarks/overhead.py")
    order = []
    original_step = overhead.Runner.step

    def step(self):
        order.append(self.trainer.model.roi_heads.__class__.__name__)
        return original_step(self)

    overhead.Runner.step = step
    args = argparse.Namespace(threads=0, control=False, preset="tiny", device="cpu", period=1, steps=1, warmup=1, opts=[])
    heads, times, memory, tracker = overhead.timing(args)
    assert heads == ("dynamic", "standard") and [len(times[h]) for h in heads] == [1, 1]
    # A B, then B A: neither head always goes first.
    assert order == ["DynamicROIHeads", "StandardROIHeads", "StandardROIHeads", "DynamicROIHeads"]
    assert tracker is not None and tracker.beta < 1.0  # period 1: the hook updated before step 2


def test_count_ops_counts_what_the_dynamic_head_adds():
    overhead = load_module("benchmarks/overhead.py")
    base = argparse.Namespace(preset="tiny", device="cpu", period=5, warmup=0, opts=[])
    counts = overhead.count_ops(base)
    # The statistics cost operations; the standard head makes none of them.
    assert counts["standard"] > 1000 and counts["dynamic"] > counts["standard"]
    guarded = overhead.count_ops(argparse.Namespace(**{**vars(base), "opts": [
        "MODEL.DYNAMIC_RCNN.MIN_POSITIVES_IOU", 0.5, "MODEL.DYNAMIC_RCNN.WARMUP_IOU", 0.6]}))
    assert guarded["dynamic"] > counts["dynamic"]  # the guard works while T > 0.5: its operations show


def test_positives_table_is_the_mean_over_seeds(tmp_path):
    accuracy = load()
    rows = []
    for seed, fg in ((0, 10.0), (1, 20.0)):
        path = accuracy.run_dir(str(tmp_path), "bccd", "baseline_authors", seed)
        fake_run(path, 30.0, 0.6)
        with open(os.path.join(path, "metrics.json"), "w") as f:
            for it in (19, 39):
                f.write(json.dumps({"iteration": it, "roi_head/num_fg_samples": fg + it}) + "\n")
        rows.append((("bccd", "baseline_authors", seed), accuracy.read_run(path)))
    assert rows[0][1]["num_fg"] == 39.0  # the run's mean: (29 + 49) / 2
    text = accuracy.positives_table(rows, points=2)
    assert "| variant | seeds | 20 | 40 | mean over the run |" in text
    assert "| baseline_authors | 2 | 34.0 | 54.0 | 44.0 |" in text


def test_seed_table_has_each_seeds_ap_and_marks_missing_seeds(tmp_path):
    accuracy = load()
    rows = []
    for variant, seed, ap in (("dynamic", 0, 30.0), ("dynamic", 1, 40.0), ("baseline_authors", 1, 20.0)):
        path = accuracy.run_dir(str(tmp_path), "shapes", variant, seed)
        fake_run(path, ap, 0.6)
        rows.append((("shapes", variant, seed), accuracy.read_run(path)))
    text = accuracy.seed_table(rows)
    assert "| dataset | variant | AP seed 0 | AP seed 1 | **AP** |" in text
    assert "| shapes | dynamic | 30.0 | 40.0 | **35.0** | 35.0 | 35.0 | 35.0 | - |" in text
    assert "| shapes | baseline_authors | - | 20.0 | **20.0** |" in text
