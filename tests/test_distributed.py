"""Several processes for real: detectron2's ``launch`` with 2 CPU processes (gloo)."""
import json
import os

import pytest

from conftest import tiny_cfg

OPTS = ["MODEL.DYNAMIC_RCNN.WARMUP_IOU", 0.05, "MODEL.DYNAMIC_RCNN.WARMUP_BETA", 50.0,
        "MODEL.DYNAMIC_RCNN.IOU_TOPK", 10, "MODEL.DYNAMIC_RCNN.UPDATE_PERIOD", 3,
        "SOLVER.IMS_PER_BATCH", 4, "SOLVER.MAX_ITER", 5]


def _worker(out_dir):
    import torch
    from detectron2.utils import comm

    from dynamic_rcnn import Trainer
    from dynamic_rcnn.hook import find_tracker

    torch.set_num_threads(1)
    trainer = Trainer(tiny_cfg(*OPTS, "OUTPUT_DIR", out_dir))
    tracker = find_tracker(trainer.model)
    local, windows = [], []
    record, update = tracker.record, tracker.update

    def spy_record(iou, err):
        local.append([float(iou), float(err)])
        record(iou, err)

    def spy_update():
        windows.append([list(v) for v in tracker.window])
        return update()

    tracker.record, tracker.update = spy_record, spy_update
    trainer.train()
    history = {k: [v for v, _ in trainer.storage.history(f"dynamic_rcnn/{k}").values()] for k in ("iou_threshold", "beta")}
    with open(os.path.join(out_dir, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump({"local": local, "windows": windows, "history": history}, f)


@pytest.mark.slow
def test_two_processes_gather_windows_and_apply_the_same_values(tmp_path):
    from detectron2.engine import launch

    out = str(tmp_path)
    launch(_worker, 2, dist_url="auto", args=(out,))
    r0, r1 = (json.load(open(os.path.join(out, f"rank{r}.json"))) for r in (0, 1))
    # Every process recorded its own statistics ...
    assert len(r0["local"]) == len(r1["local"]) == 5
    assert r0["local"] != r1["local"]
    # ... and the update at iteration 3 saw both processes' statistics of iterations 0-2.
    assert len(r0["windows"]) == 1 and r0["windows"] == r1["windows"]
    expected = [s for it in range(3) for s in (r0["local"][it], r1["local"][it])]
    flat = [x for pair in r0["windows"][0] for x in pair]
    assert flat == pytest.approx([x for pair in expected for x in pair], rel=1e-6)
    # The same threshold and beta in force in both processes at every iteration, moved at 3.
    assert r0["history"] == r1["history"]
    thresholds = r0["history"]["iou_threshold"]
    mean_iou = sum(s[0] for s in expected) / len(expected)
    assert thresholds[:3] == [0.05] * 3 and thresholds[3] == pytest.approx(max(0.05, mean_iou))
