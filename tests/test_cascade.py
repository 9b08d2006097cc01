"""DynamicCascadeROIHeads: every stage's statistics, values, losses, state and messages."""
import json
import logging
import os
import re
import shutil

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import CascadeROIHeads, build_roi_heads
from detectron2.structures import Boxes
from detectron2.utils.events import EventStorage

from dynamic_rcnn import DynamicCascadeROIHeads, Trainer

from conftest import logged_warnings, proposals, recorded, roi_features, roi_input_shape, targets, tiny_cfg

SIZE = (64, 64)
GT = [[8.0, 8, 40, 40]]
# IoU with GT: 0.75, 0.5625, 0.375, 0. Regression targets to GT (centre 24, 24): dx = 0 for the first
# three, dy = w * (24 - 20) / 24, w * 7 / 18, w * 10 / 12; the last one dx = dy = w * (24 - 52) / 16,
# with w = 10, 20, 30 the stages' x / y weights: (|dx| + |dy|) / 2 of stage 0 = 0.8333, 1.9444, 4.1667, 17.5.
PROPS = [[8.0, 8, 40, 32], [8, 8, 40, 26], [8, 8, 40, 20], [44, 44, 60, 60]]
ERRORS0 = [10 * 4 / 24 / 2, 10 * 7 / 18 / 2, 10 * 10 / 12 / 2, 10 * 28 / 16]


def cascade_cfg(*opts):
    # Every proposal sampled, so that labels and losses do not depend on the sampler's draw.
    return tiny_cfg(
        "MODEL.ROI_HEADS.NAME", "DynamicCascadeROIHeads",
        "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True,
        "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 512,
        "MODEL.ROI_HEADS.POSITIVE_FRACTION", 1.0,
        "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", False,
        *opts,
    )


def build_head(cfg):
    head = build_roi_heads(cfg, roi_input_shape(cfg))
    head.train()
    return head


def committed(head):
    return [recorded(t) for t in head.trackers]


def test_registered_with_one_tracker_a_stage_and_the_defaults_of_cascade_md():
    cfg = cascade_cfg()
    head = build_head(cfg)
    assert isinstance(head, CascadeROIHeads) and isinstance(head, DynamicCascadeROIHeads)
    # Floors at Cascade's IoUs, ceilings WARMUP_BETA, K_I, K_E, C and the ground truth switch the single head's.
    d = cfg.MODEL.DYNAMIC_RCNN
    assert [t.warmup_iou for t in head.trackers] == [0.5, 0.6, 0.7]
    assert [t.warmup_beta for t in head.trackers] == [1.0, 1.0, 1.0]
    assert [(t.iou_topk, t.beta_topk, t.stats_include_gt) for t in head.trackers] == [
        (d.IOU_TOPK, d.BETA_TOPK, d.STATS_INCLUDE_GT)] * 3
    assert [t.scope for t in head.trackers] == ["stage0", "stage1", "stage2"]
    assert head.proposal_matcher is head.proposal_matchers[0]
    assert [m.thresholds[1] for m in head.proposal_matchers] == [0.5, 0.6, 0.7]
    assert [p.smooth_l1_beta for p in head.box_predictor] == [1.0, 1.0, 1.0]


def test_each_stage_records_the_statistics_of_its_own_boxes_with_its_own_box_weights():
    head = build_head(cascade_cfg("MODEL.DYNAMIC_RCNN.CASCADE.IOU_TOPK", [2, 3, 1],
                                  "MODEL.DYNAMIC_RCNN.CASCADE.BETA_TOPK", [1, 2, 1]))
    with EventStorage():
        head.label_and_sample_proposals([proposals(SIZE, PROPS)], [targets(SIZE, GT)])
        for stage in (1, 2):
            head._match_and_label_boxes([proposals(SIZE, PROPS)], stage, [targets(SIZE, GT)])
    got = committed(head)
    # Stage 0: 2nd best IoU, smallest error; stage 1: 3rd best IoU, 2nd smallest error at twice the
    # weights; stage 2: best IoU, smallest error at three times the weights.
    assert got[0] == pytest.approx((0.5625, ERRORS0[0]))
    assert got[1] == pytest.approx((0.375, 2 * ERRORS0[1]))
    assert got[2] == pytest.approx((0.75, 3 * ERRORS0[0]))


@pytest.mark.parametrize("include_gt", [False, True])
def test_the_descendants_of_appended_ground_truth_count_as_stats_include_gt_says(include_gt):
    head = build_head(cascade_cfg("MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", True,
                                  "MODEL.DYNAMIC_RCNN.STATS_INCLUDE_GT", include_gt,
                                  "MODEL.DYNAMIC_RCNN.CASCADE.IOU_TOPK", [1, 3, 1],
                                  "MODEL.DYNAMIC_RCNN.CASCADE.BETA_TOPK", [1, 2, 1]))
    with EventStorage():
        sampled = head.label_and_sample_proposals([proposals(SIZE, PROPS)], [targets(SIZE, GT)])[0]
        # Stage 1's boxes as if stage 0 regressed nothing, the IoU-0 box moved out of the image: clipping
        # leaves it empty and detectron2 drops it, the flags of the others must follow.
        boxes = sampled.proposal_boxes.tensor.clone()
        boxes[(boxes == torch.tensor(PROPS[3])).all(dim=1)] = torch.tensor([70.0, 70, 80, 80])
        stage1 = head._create_proposals_from_boxes([boxes], [SIZE])
        assert len(stage1[0]) == 4  # the 3 proposals and the ground truth's own box
        head._match_and_label_boxes(stage1, 1, [targets(SIZE, GT)])
    stage0, stage1_stats, _ = committed(head)
    if include_gt:
        # The appended box counts IoU 1 and error 0 at stage 0; its descendant (the same box) at stage 1.
        assert stage0 == pytest.approx((1.0, 0.0))
        assert stage1_stats == pytest.approx((0.5625, 2 * ERRORS0[0]))
    else:
        assert stage0 == pytest.approx((0.75, ERRORS0[0]))
        assert stage1_stats == pytest.approx((0.375, 2 * ERRORS0[1]))


def losses(head, seed=0):
    torch.manual_seed(seed)
    feats = roi_features(cascade_cfg(), SIZE, batch=1)
    with EventStorage():
        _, out = head(None, feats, [proposals(SIZE, PROPS)], [targets(SIZE, GT)])
    return out


def test_both_parts_off_is_detectron2s_cascade_at_the_floors_and_ceilings():
    off = ["MODEL.DYNAMIC_RCNN.ENABLE_DLA", False, "MODEL.DYNAMIC_RCNN.ENABLE_DSL", False,
           "MODEL.DYNAMIC_RCNN.WARMUP_BETA", 0.5]
    torch.manual_seed(0)
    ours = build_head(cascade_cfg(*off))
    torch.manual_seed(0)
    stock = build_head(cascade_cfg(*off, "MODEL.ROI_HEADS.NAME", "CascadeROIHeads", "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", 0.5))
    assert type(stock) is CascadeROIHeads
    got, want = losses(ours), losses(stock)
    assert set(got) == set(want) and {f"loss_box_reg_stage{k}" for k in range(3)} <= set(got)
    for key in want:
        assert torch.allclose(got[key], want[key]), key
    assert all(recorded(t) is None for t in ours.trackers)  # nothing recorded


def set_window(t, iou_stats, error_stats):
    """The tracker updated from exactly these statistics (what earlier forwards recorded is dropped)."""
    t.load_state_dict({"iou_threshold": t.iou_threshold, "beta": t.beta, "window": list(zip(iou_stats, error_stats))})
    t.update()


@pytest.mark.parametrize("dla, dsl", [(True, True), (True, False), (False, True)])
def test_each_stage_takes_its_own_values_after_an_update_and_each_part_moves_alone(dla, dsl):
    head = build_head(cascade_cfg("MODEL.DYNAMIC_RCNN.ENABLE_DLA", dla, "MODEL.DYNAMIC_RCNN.ENABLE_DSL", dsl))
    for k, t in enumerate(head.trackers):
        set_window(t, [0.72 + 0.05 * k], [0.5 - 0.1 * k])
    losses(head)  # a training forward puts the values in force
    thresholds = [m.thresholds[1] for m in head.proposal_matchers]
    betas = [p.smooth_l1_beta for p in head.box_predictor]
    assert thresholds == pytest.approx([0.72, 0.77, 0.82] if dla else [0.5, 0.6, 0.7])
    assert betas == pytest.approx([0.5, 0.4, 0.3] if dsl else [1.0, 1.0, 1.0])


def test_a_stage_can_be_left_fixed():
    head = build_head(cascade_cfg("MODEL.DYNAMIC_RCNN.CASCADE.ENABLE_DLA", [True, False, True],
                                  "MODEL.DYNAMIC_RCNN.CASCADE.ENABLE_DSL", [True, False, False]))
    for t in head.trackers:
        set_window(t, [0.9], [0.2])
    assert [t.iou_threshold for t in head.trackers] == pytest.approx([0.9, 0.6, 0.9])
    assert [t.beta for t in head.trackers] == pytest.approx([0.2, 1.0, 1.0])


def test_refusals_name_the_key_and_the_stage():
    from dynamic_rcnn.config import ConfigError
    from dynamic_rcnn.engine import validate_dynamic_rcnn_config

    cases = [
        (["MODEL.DYNAMIC_RCNN.CASCADE.IOU_TOPK", [10, 10]],
         r"CASCADE.IOU_TOPK has 2 values for the 3 stages of MODEL.ROI_BOX_CASCADE_HEAD.IOUS \(0.5, 0.6, 0.7\)"),
        (["MODEL.DYNAMIC_RCNN.CASCADE.IOU_TOPK", [10, -1, 10]],
         r"MODEL.DYNAMIC_RCNN.CASCADE.IOU_TOPK\[1\] \(stage 1\) = -1 is invalid: it must be an integer >= 1, or 0 \(automatic\)"),
        (["MODEL.ROI_BOX_CASCADE_HEAD.IOUS", [0.5, 0.6, 1.0]],
         r"CASCADE.WARMUP_IOU of stage 2 \(by default MODEL.ROI_BOX_CASCADE_HEAD.IOUS\[2\]\) = 1.0 is invalid"),
        (["MODEL.DYNAMIC_RCNN.CASCADE.WARMUP_BETA", [1.0, 0.0, 1.0]],
         r"CASCADE.WARMUP_BETA\[1\] \(stage 1\) = 0 is invalid with DSL on"),
        (["MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "giou"], r"CASCADE.ENABLE_DSL of stage 0 \(by default "
         r"MODEL.DYNAMIC_RCNN.ENABLE_DSL\) = True needs MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = 'smooth_l1'"),
    ]
    for opts, message in cases:
        cfg = cascade_cfg(*opts)
        with pytest.raises(ConfigError, match=message):  # at start-up
            validate_dynamic_rcnn_config(cfg)
        with pytest.raises(ConfigError, match=message):  # where the head is built, the same words
            build_head(cfg)
    # L1 with DLA alone, at one stage or all: valid.
    validate_dynamic_rcnn_config(cascade_cfg("MODEL.DYNAMIC_RCNN.ENABLE_DSL", False, "MODEL.DYNAMIC_RCNN.WARMUP_BETA", 0.0))


# ------------------------------------------------------------------ training, state, logging

OPTS = ["MODEL.ROI_HEADS.NAME", "DynamicCascadeROIHeads", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True,
        "MODEL.DYNAMIC_RCNN.CASCADE.WARMUP_IOU", [0.05, 0.06, 0.07], "MODEL.DYNAMIC_RCNN.WARMUP_BETA", 50.0,
        "MODEL.DYNAMIC_RCNN.UPDATE_PERIOD", 4]


def train(output_dir, max_iter, resume=False, *opts):
    cfg = tiny_cfg(*OPTS, "OUTPUT_DIR", output_dir, "SOLVER.MAX_ITER", max_iter, *opts)
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def in_force(trainer, stage, name):
    return {it: v for v, it in trainer.storage.history(f"stage{stage}/dynamic_rcnn/{name}").values()}


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cascade"))
    lines, loggers = _Lines(), [logging.getLogger(n) for n in ("detectron2.dynamic_rcnn", "detectron2.utils.events")]
    for logger in loggers:
        logger.addHandler(lines)
        logger.setLevel(logging.INFO)
    try:
        trainer = train(out, 10, False, "SOLVER.CHECKPOINT_PERIOD", 1)
    finally:
        for logger in loggers:
            logger.removeHandler(lines)
    trainer.log_lines = lines.lines
    return out, trainer


def test_every_stage_is_written_under_its_stage_name_and_updated_at_the_same_iteration(uninterrupted):
    out, trainer = uninterrupted
    for k in range(3):
        thresholds, betas = in_force(trainer, k, "iou_threshold"), in_force(trainer, k, "beta")
        assert sorted(thresholds) == list(range(10)) and sorted(in_force(trainer, k, "iou_stat")) == list(range(10))
        assert thresholds[3] == [0.05, 0.06, 0.07][k] and betas[3] == 50.0
        ious = [in_force(trainer, k, "iou_stat")[i] for i in range(4)]
        assert thresholds[4] == pytest.approx(max([0.05, 0.06, 0.07][k], sum(ious) / 4))
        assert betas[4] < 50.0
    log = trainer.log_lines
    for k in range(3):
        assert any(line.startswith(f"Dynamic R-CNN stage{k} update at iteration 4 from 4 statistics") for line in log)
    console = [line for line in log if "total_loss" in line]
    assert console and all(re.search(r"iou_thr: [\d.]+/[\d.]+/[\d.]+  beta: [\d.]+/[\d.]+/[\d.]+$", line)
                           for line in console), console
    ckpt = torch.load(os.path.join(out, "model_0000005.pth"), map_location="cpu", weights_only=False)
    stages = ckpt["trainer"]["hooks"]["DynamicRCNNHook"]["stages"]
    assert [len(s["window"]) for s in stages] == [2, 2, 2]


@pytest.mark.parametrize("checkpoint_iter", [7, 8])
def test_resume_continues_every_stage_as_the_uninterrupted_run(uninterrupted, tmp_path, checkpoint_iter):
    out, full = uninterrupted
    resumed_dir = str(tmp_path / "resumed")
    os.makedirs(resumed_dir)
    name = f"model_{checkpoint_iter:07d}.pth"
    shutil.copy(os.path.join(out, name), resumed_dir)
    with open(os.path.join(resumed_dir, "last_checkpoint"), "w") as f:
        f.write(name)
    resumed = train(resumed_dir, 10, True)
    first = checkpoint_iter + 1
    for k in range(3):
        for key in ("iou_threshold", "beta"):
            assert in_force(resumed, k, key)[first] == pytest.approx(in_force(full, k, key)[first]), (k, key)
        assert in_force(resumed, k, "beta")[first] != 50.0


@pytest.mark.parametrize("first, then, said", [
    ("DynamicROIHeads", "DynamicCascadeROIHeads", "of a single head, but this model has a cascade of 3 stages"),
    ("DynamicCascadeROIHeads", "DynamicROIHeads", "of a cascade of 3 stages, but this model has a single head"),
])
def test_another_number_of_stages_on_resume_is_said(tmp_path, first, then, said):
    from dynamic_rcnn.engine.checkpoint import CheckpointError

    out = str(tmp_path)
    train(out, 2, False, "MODEL.ROI_HEADS.NAME", first)
    with pytest.raises(CheckpointError, match=f"model_final.pth: .*holds the Dynamic R-CNN state {said}"):
        train(out, 4, True, "MODEL.ROI_HEADS.NAME", then)


def test_one_gather_an_update_period_for_every_stage(monkeypatch):
    from types import SimpleNamespace

    from detectron2.engine import SimpleTrainer
    from detectron2.solver import build_optimizer

    from dynamic_rcnn import add_dynamic_rcnn_hook, hook, tracker

    cfg = tiny_cfg(*OPTS)
    model = build_model(cfg)
    trainer = SimpleTrainer(model, Trainer.build_train_loader(cfg), build_optimizer(cfg, model))
    add_dynamic_rcnn_hook(trainer)
    gathers = []
    # As if a second process had recorded the same statistics (the trackers' view of the processes only).
    fake = SimpleNamespace(get_world_size=lambda: 2, all_gather=lambda data: gathers.append(data) or [data, data])
    monkeypatch.setattr(tracker, "comm", fake)
    monkeypatch.setattr(hook, "comm", fake)
    with logged_warnings("detectron2.dynamic_rcnn.hook", logging.INFO) as lines:
        trainer.train(0, 9)
    # One at start-up (when the main process checkpoints: here never), then one an update (after iterations 3 and
    # 7) for all three stages; the windows are both "processes'" 4 iterations.
    assert gathers[0] is None and len(gathers) == 3 and all(len(g) == 3 for g in gathers[1:])
    assert sum(f"stage{k} update at iteration 4 from 8 statistics" in line for line in lines for k in range(3)) == 3



def test_dynamic_cascade_mask_rcnn_trains(tmp_path):
    trainer = train(str(tmp_path), 3, False, "MODEL.MASK_ON", True)
    assert "loss_mask" in trainer.storage.histories()


def test_the_heads_refuse_trackers_that_do_not_fit_their_stages():
    from dynamic_rcnn import DynamicTracker

    cfg = cascade_cfg()
    args = DynamicCascadeROIHeads.from_config(cfg, roi_input_shape(cfg))
    with pytest.raises(ValueError, match=r"needs one DynamicTracker a stage \(3\), got \['DynamicTracker', 'DynamicTracker'\]"):
        DynamicCascadeROIHeads(**dict(args, trackers=args["trackers"][:2]))
    periods = [DynamicTracker(update_period=p) for p in (20, 20, 40)]
    with pytest.raises(ValueError, match=r"every stage updates at the same iteration, .* \[20, 20, 40\]"):
        DynamicCascadeROIHeads(**dict(args, trackers=periods))
    from dynamic_rcnn import DynamicROIHeads

    single = tiny_cfg()
    with pytest.raises(ValueError, match=r"needs one DynamicTracker a stage \(1\), got \['dict'\]"):
        DynamicROIHeads(**dict(DynamicROIHeads.from_config(single, roi_input_shape(single)), tracker={}))


def test_statistics_need_one_matcher_call_an_image():
    """A head that matched the boxes of two images in one call would mix their statistics: refused."""
    head = build_head(cascade_cfg())
    with pytest.raises(RuntimeError, match="DynamicMatcher was called 1 times for 2 images"):
        with EventStorage(), head._recording(0, [torch.zeros(1, 4), torch.zeros(1, 4)], [targets(SIZE, GT)] * 2):
            head.proposal_matcher(torch.rand(1, 1))
