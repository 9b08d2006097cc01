"""The accuracy benchmark's bookkeeping: which runs are complete, and the table with means."""
import importlib.util
import json
import os

from conftest import ROOT


def load():
    spec = importlib.util.spec_from_file_location("accuracy", os.path.join(ROOT, "benchmarks", "accuracy.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
