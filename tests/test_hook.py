import json
import logging
import os
import shutil

import pytest
import torch

from dynamic_rcnn import DynamicRCNNHook, add_dynamic_rcnn_hook
from dynamic_rcnn.engine import Trainer

from conftest import logged_warnings, tiny_cfg

# A low warm-up IoU and a high warm-up beta, so that the first update moves both off them even
# on a model that has trained for a few iterations only; one update every 4 iterations.
OPTS = ["MODEL.DYNAMIC_RCNN.WARMUP_IOU", 0.05, "MODEL.DYNAMIC_RCNN.WARMUP_BETA", 50.0,
        "MODEL.DYNAMIC_RCNN.IOU_TOPK", 10,
        "MODEL.DYNAMIC_RCNN.UPDATE_PERIOD", 4]


def train(output_dir, max_iter, resume=False, *opts):
    cfg = tiny_cfg(*OPTS, "OUTPUT_DIR", output_dir, "SOLVER.MAX_ITER", max_iter, *opts)
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def in_force(trainer, name):
    """{iteration: value} of a scalar the hook wrote."""
    return {it: v for v, it in trainer.storage.history(f"dynamic_rcnn/{name}").values()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("uninterrupted"))
    # A checkpoint after every iteration.
    return out, train(out, 10, False, "SOLVER.CHECKPOINT_PERIOD", 1)


def test_trainer_registers_hook_before_checkpointer(uninterrupted):
    _, trainer = uninterrupted
    names = [type(h).__name__ for h in trainer._hooks]
    assert names.index("DynamicRCNNHook") < names.index("PeriodicCheckpointer")


def test_hook_writes_four_scalars_every_iteration_and_updates_every_period(uninterrupted):
    _, trainer = uninterrupted
    thresholds, betas = in_force(trainer, "iou_threshold"), in_force(trainer, "beta")
    assert sorted(thresholds) == sorted(betas) == list(range(10))
    assert sorted(in_force(trainer, "iou_stat")) == list(range(10))  # shapes always have boxes
    assert sorted(in_force(trainer, "error_stat")) == list(range(10))
    # Warm-up values until the first update, at iteration 4, constant within a period.
    assert [thresholds[i] for i in range(4)] == [0.05] * 4 and [betas[i] for i in range(4)] == [50.0] * 4
    assert thresholds[4] > 0.05 and betas[4] < 50.0
    assert thresholds[4] == thresholds[7] and betas[4] == betas[7]
    # The update is the rule of ALGORITHM.md applied to the statistics of iterations 0-3.
    ious = [in_force(trainer, "iou_stat")[i] for i in range(4)]
    assert thresholds[4] == pytest.approx(max(0.05, sum(ious) / 4))
    errors = sorted(in_force(trainer, "error_stat")[i] for i in range(4))
    assert betas[4] == pytest.approx(min(50.0, (errors[1] + errors[2]) / 2))


def test_metrics_json_has_the_scalars(uninterrupted):
    out, _ = uninterrupted
    with open(os.path.join(out, "metrics.json")) as f:
        rows = [json.loads(line) for line in f]
    keys = set().union(*rows)
    assert {f"dynamic_rcnn/{k}" for k in ("iou_stat", "error_stat", "iou_threshold", "beta")} <= keys


def test_checkpoint_holds_state_and_model_weights_stay_standard(uninterrupted):
    out, _ = uninterrupted
    ckpt = torch.load(os.path.join(out, "model_0000005.pth"), map_location="cpu", weights_only=False)
    (state,) = ckpt["trainer"]["hooks"]["DynamicRCNNHook"]["stages"]
    assert len(state["window"]) == 2  # iterations 4 and 5, after the update that iterations 0-3 made
    assert not any("tracker" in k for k in ckpt["model"])


@pytest.mark.parametrize("checkpoint_iter", [7, 8])
def test_resume_continues_with_the_values_of_the_uninterrupted_run(uninterrupted, tmp_path, checkpoint_iter):
    """
    From the checkpoint after iteration 7 the update at 8 must come from the restored window; the
    one after iteration 8 was written after that update and must not lose it.
    """
    out, full = uninterrupted
    resumed_dir = str(tmp_path / "resumed")
    os.makedirs(resumed_dir)
    name = f"model_{checkpoint_iter:07d}.pth"
    shutil.copy(os.path.join(out, name), resumed_dir)
    with open(os.path.join(resumed_dir, "last_checkpoint"), "w") as f:
        f.write(name)
    resumed = train(resumed_dir, 10, True)
    first = checkpoint_iter + 1
    assert resumed.start_iter == first
    for key in ("iou_threshold", "beta"):
        got, want = in_force(resumed, key)[first], in_force(full, key)[first]
        assert got == pytest.approx(want), key
    assert in_force(resumed, "iou_threshold")[first] != 0.05  # not the warm-up values
    assert in_force(resumed, "beta")[first] != 50.0


def test_hook_in_a_plain_simple_trainer(tmp_path):
    from detectron2.engine import SimpleTrainer
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer

    cfg = tiny_cfg(*OPTS)
    model = build_model(cfg)
    trainer = SimpleTrainer(model, Trainer.build_train_loader(cfg), build_optimizer(cfg, model))
    hook = DynamicRCNNHook()
    trainer.register_hooks([hook])
    trainer.train(0, 5)
    assert hook.trackers == [model.roi_heads.tracker]
    assert model.roi_heads.tracker.iou_threshold > 0.05  # updated at iteration 4
    assert len(trainer.storage.history("dynamic_rcnn/beta").values()) == 5


def test_hook_without_dynamic_head_says_what_to_set():
    from detectron2.engine import SimpleTrainer
    from detectron2.modeling import build_model

    cfg = tiny_cfg("MODEL.ROI_HEADS.NAME", "StandardROIHeads")
    model = build_model(cfg)
    trainer = SimpleTrainer(model, [], torch.optim.SGD(model.parameters(), lr=0.1))
    trainer.register_hooks([DynamicRCNNHook()])
    with pytest.raises(ValueError, match="MODEL.ROI_HEADS.NAME: DynamicROIHeads"):
        trainer.train(0, 1)


def test_add_dynamic_rcnn_hook_puts_it_before_checkpointer_and_writers_of_a_default_trainer(tmp_path):
    """Stock DefaultTrainer: the scalars land in the row of their iteration, the last one included."""
    import logging

    from detectron2.engine import DefaultTrainer

    out = str(tmp_path)
    cfg = tiny_cfg(*OPTS, "OUTPUT_DIR", out, "SOLVER.MAX_ITER", 6)
    trainer = DefaultTrainer(cfg)
    hook = add_dynamic_rcnn_hook(trainer)
    names = [type(h).__name__ for h in trainer._hooks]
    assert names.index("DynamicRCNNHook") < min(names.index("PeriodicCheckpointer"), names.index("PeriodicWriter"))
    assert hook.trainer.iter == trainer.iter  # attached as register_hooks attaches
    trainer.train()
    with open(os.path.join(out, "metrics.json")) as f:
        rows = [json.loads(line) for line in f]
    # Every row that has losses has the values in force at its iteration, the final one (5) too.
    loss_rows = [r for r in rows if "total_loss" in r]
    assert loss_rows[-1]["iteration"] == 5
    assert all("dynamic_rcnn/iou_threshold" in r and "dynamic_rcnn/beta" in r for r in loss_rows)
    assert all("total_loss" in r for r in rows if "dynamic_rcnn/beta" in r)  # no row of their own
    ckpt = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    assert len(ckpt["trainer"]["hooks"]["DynamicRCNNHook"]["stages"][0]["window"]) == 2  # iterations 4 and 5
    with pytest.raises(ValueError, match="has a DynamicRCNNHook already"):
        add_dynamic_rcnn_hook(trainer)


def test_add_dynamic_rcnn_hook_in_a_simple_trainer():
    from detectron2.engine import SimpleTrainer
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer

    cfg = tiny_cfg(*OPTS)
    model = build_model(cfg)
    trainer = SimpleTrainer(model, Trainer.build_train_loader(cfg), build_optimizer(cfg, model))
    add_dynamic_rcnn_hook(trainer)
    trainer.train(0, 5)
    assert model.roi_heads.tracker.iou_threshold > 0.05  # updated at iteration 4


def test_update_period_beyond_the_training_warns_at_start(tmp_path):
    with logged_warnings() as messages:
        train(str(tmp_path), 3, False, "MODEL.DYNAMIC_RCNN.UPDATE_PERIOD", 5)
    assert any("will never update: UPDATE_PERIOD 5 and training from iteration 0 to 3" in m for m in messages)
    with logged_warnings() as messages:
        train(str(tmp_path / "b"), 6, False, "MODEL.DYNAMIC_RCNN.UPDATE_PERIOD", 5)
    assert not any("never update" in m for m in messages)


def test_resume_from_a_checkpoint_without_dynamic_state_says_so(tmp_path):
    out = str(tmp_path)
    train(out, 3, False, "MODEL.ROI_HEADS.NAME", "StandardROIHeads")  # a baseline run
    with logged_warnings() as messages:
        resumed = train(out, 5, True)
    assert resumed.start_iter == 3
    assert any("has no Dynamic R-CNN state (a baseline run, or one without the hook): Dynamic R-CNN starts from "
               "the warm-up values at iteration 3" in m for m in messages), messages


def test_a_non_finite_statistic_changes_nothing(tmp_path, monkeypatch):
    """A NaN IoU statistic at iteration 1 is left out of the window: the update at 4 is the rule on the others."""
    import math

    from dynamic_rcnn import roi_heads

    calls, iou_statistic = [], roi_heads.iou_statistic

    def nan_once(*args):
        calls.append(1)
        value = iou_statistic(*args)
        return value * math.nan if len(calls) == 2 else value

    monkeypatch.setattr(roi_heads, "iou_statistic", nan_once)
    with logged_warnings("detectron2.dynamic_rcnn.hook", logging.INFO) as lines:
        trainer = train(str(tmp_path), 5, False)
    ious = in_force(trainer, "iou_stat")
    assert sorted(ious) == [0, 2, 3, 4] and all(math.isfinite(v) for v in ious.values())
    assert in_force(trainer, "iou_threshold")[4] == pytest.approx(max(0.05, (ious[0] + ious[2] + ious[3]) / 3))
    assert any("update at iteration 4 from 3 statistics (1 non-finite left out)" in line for line in lines), lines


def test_a_checkpoint_of_the_earlier_state_format_resumes_and_says_so(uninterrupted, tmp_path):
    """dynamic_rcnn 0.2 saved a single head's state as one dict, the window of iterations 4-7 before the update at
    8: resumed from it, the update at 8 is made from that window, as the uninterrupted run made it."""
    out, full = uninterrupted
    ckpt = torch.load(os.path.join(out, "model_0000007.pth"), map_location="cpu", weights_only=False)
    hooks = ckpt["trainer"]["hooks"]
    (state,) = hooks["DynamicRCNNHook"]["stages"]
    thresholds, betas = in_force(full, "iou_threshold"), in_force(full, "beta")
    stats = [(in_force(full, "iou_stat")[i], in_force(full, "error_stat")[i]) for i in range(4, 8)]
    hooks["DynamicRCNNHook"] = dict(state, iou_threshold=thresholds[7], beta=betas[7], window=stats)
    resumed_dir = tmp_path / "old"
    os.makedirs(resumed_dir)
    torch.save(ckpt, resumed_dir / "model_0000007.pth")
    (resumed_dir / "last_checkpoint").write_text("model_0000007.pth")
    with logged_warnings("detectron2.dynamic_rcnn.hook", logging.INFO) as lines:
        resumed = train(str(resumed_dir), 10, True)
    assert any("single-head format of dynamic_rcnn 0.2" in line for line in lines)
    for key in ("iou_threshold", "beta"):
        assert in_force(resumed, key)[8] == pytest.approx(in_force(full, key)[8]), key


def test_update_lines_reach_a_log_set_up_for_detectron2_only(tmp_path):
    """default_setup sets up detectron2's logger only; the update lines must not be lost."""
    import subprocess
    import sys

    from conftest import ROOT

    script = f"""
import logging, sys
sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})
from detectron2.utils.logger import setup_logger
from detectron2.engine import SimpleTrainer
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from dynamic_rcnn import Trainer, add_dynamic_rcnn_hook
from conftest import tiny_cfg
setup_logger(name="detectron2")
cfg = tiny_cfg("MODEL.DYNAMIC_RCNN.UPDATE_PERIOD", 2)
model = build_model(cfg)
trainer = SimpleTrainer(model, Trainer.build_train_loader(cfg), build_optimizer(cfg, model))
add_dynamic_rcnn_hook(trainer)
trainer.train(0, 3)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Dynamic R-CNN update at iteration 2 from 2 statistics" in proc.stdout + proc.stderr


def test_console_line_shows_threshold_and_beta(tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="detectron2.utils.events"):
        train(str(tmp_path), 5, False, "MODEL.DYNAMIC_RCNN.UPDATE_PERIOD", 2)
    lines = [r.getMessage() for r in caplog.records if "iter: " in r.getMessage() and "total_loss" in r.getMessage()]
    assert lines and all(" iou_thr: " in line and " beta: " in line for line in lines)


def test_a_model_with_two_dynamic_heads_is_refused():
    from torch import nn

    from dynamic_rcnn import find_trackers

    heads = nn.ModuleList([build_model_head(), build_model_head()])
    with pytest.raises(ValueError, match="The model has 2 Dynamic R-CNN heads; DynamicRCNNHook drives one"):
        find_trackers(heads)


def build_model_head():
    from detectron2.modeling import build_model

    return build_model(tiny_cfg()).roi_heads
