"""End to end through ``train_net.py``, as a user runs it."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_OPTS


def run_train_net(*args, timeout=600):
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), *[str(a) for a in args]]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_short_training_moves_threshold_and_writes_scalars(tmp_path):
    out = str(tmp_path)
    proc = run_train_net(
        "--config-file", "configs/shapes/dynamic_rcnn_R_18_FPN_shapes.yaml",
        *TINY_OPTS,
        "SOLVER.MAX_ITER", 30, "SOLVER.BASE_LR", 0.02,
        "MODEL.DYNAMIC_RCNN.UPDATE_PERIOD", 5, "MODEL.DYNAMIC_RCNN.IOU_TOPK", 10,
        "OUTPUT_DIR", out,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(out, "metrics.json")) as f:
        rows = [json.loads(line) for line in f]
    keys = [f"dynamic_rcnn/{k}" for k in ("iou_stat", "error_stat", "iou_threshold", "beta")]
    rows = [r for r in rows if keys[2] in r]
    assert rows and all(k in r for r in rows for k in keys)
    assert rows[-1]["dynamic_rcnn/iou_threshold"] > 0.4
    assert os.path.isfile(os.path.join(out, "model_final.pth"))


def test_bad_config_value_fails_at_start_up(tmp_path):
    proc = run_train_net(
        "--config-file", "configs/shapes/dynamic_rcnn_R_18_FPN_shapes.yaml",
        "MODEL.DYNAMIC_RCNN.WARMUP_IOU", 1.5, "OUTPUT_DIR", str(tmp_path),
    )
    assert proc.returncode != 0
    assert "MODEL.DYNAMIC_RCNN.WARMUP_IOU = 1.5 is invalid" in proc.stderr
    assert not os.path.exists(os.path.join(str(tmp_path), "metrics.json"))
