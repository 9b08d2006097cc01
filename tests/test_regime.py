"""The run's one-line warnings of the regimes measured to lose (dynamic_rcnn/engine/regime.py)."""
import torch

from dynamic_rcnn import DynamicTracker
from dynamic_rcnn.engine import Trainer
from dynamic_rcnn.engine.regime import GT_SHARE, regime_warnings

from conftest import logged_warnings, tiny_cfg


def sums(iters=4, images=8, gt=None, k_iou=16, k_error=8, filled=0):
    return [iters, images, k_iou * GT_SHARE if gt is None else gt, k_iou, k_error, filled]


def test_ground_truth_at_half_of_k_i_is_named_with_its_numbers_and_keys():
    t = DynamicTracker(iou_topk=2, beta_topk=10, stats_include_gt=True)
    (kind, line), = regime_warnings([t], [sums(gt=8, k_iou=16)], first=True)
    assert kind == ("ground truth", 0)
    assert "1.0 objects an image are 50% of the K_I = 2 boxes" in line
    assert "Set MODEL.DYNAMIC_RCNN.STATS_INCLUDE_GT False, or MODEL.DYNAMIC_RCNN.IOU_TOPK and " \
           "MODEL.DYNAMIC_RCNN.BETA_TOPK 0 (automatic" in line
    assert "K_E" not in line  # beta's statistic was not filled
    assert "\n" not in line


def test_ground_truth_filling_k_e_in_half_the_iterations_says_beta_cannot_move():
    t = DynamicTracker(iou_topk=75, beta_topk=10, stats_include_gt=True)
    (_, line), = regime_warnings([t], [sums(gt=2, k_iou=600, filled=2)], first=True)
    assert "fill the K_E = 10 boxes an image of the error statistic in 2 of 4 iterations" in line
    assert "K_I" not in line.split(";")[0]  # the IoU statistic is the proposals' (2 of 600)
    assert regime_warnings([t], [sums(gt=2, k_iou=600, filled=1)], first=True) == []


def test_no_warning_below_the_share_automatic_k_ground_truth_left_out_or_after_the_first_update():
    below = sums(gt=7.9, k_iou=16)
    assert regime_warnings([DynamicTracker(iou_topk=2, stats_include_gt=True)], [below], True) == []
    at = sums(filled=4)
    assert regime_warnings([DynamicTracker(iou_topk=0, beta_topk=0, stats_include_gt=True)], [at], True) == []
    assert regime_warnings([DynamicTracker(iou_topk=2, stats_include_gt=False)], [at], True) == []
    assert regime_warnings([DynamicTracker(iou_topk=2, stats_include_gt=True)], [at], False) == []
    # A part switched off is not judged: DLA off and DSL off.
    assert regime_warnings([DynamicTracker(iou_topk=2, enable_dla=False, enable_dsl=False, stats_include_gt=True)],
                           [at], True) == []


def test_a_cascade_stage_is_told_its_list_keys():
    keys = {a: f"MODEL.DYNAMIC_RCNN.CASCADE.{a.upper()} of stage 0 (by default something)"
            for a in ("iou_topk", "beta_topk")}
    stages = [DynamicTracker(iou_topk=22, stats_include_gt=True, keys=keys), DynamicTracker(), DynamicTracker()]
    (_, line), = regime_warnings(stages, [sums(gt=11, k_iou=22)] + [sums(gt=0)] * 2, first=True)
    assert "or MODEL.DYNAMIC_RCNN.CASCADE.IOU_TOPK and MODEL.DYNAMIC_RCNN.CASCADE.BETA_TOPK [0, 0, 0] (automatic" \
        in line


def test_a_cascade_stage_past_the_next_is_named_at_any_update():
    keys = {"iou_topk": "MODEL.DYNAMIC_RCNN.CASCADE.IOU_TOPK[1] (stage 1)"}
    stages = [DynamicTracker(warmup_iou=0.5), DynamicTracker(warmup_iou=0.6, keys=keys), DynamicTracker(warmup_iou=0.7)]
    stages[1].iou_threshold = 0.73
    (kind, line), = regime_warnings(stages, [sums(gt=0)] * 3, first=False)
    assert kind == ("order", 1)
    assert "stage 1's IoU threshold 0.7300 is past stage 2's 0.7000" in line
    assert "A larger MODEL.DYNAMIC_RCNN.CASCADE.IOU_TOPK[1] reads a lower IoU; [0, 0, 0] is automatic" in line
    stages[1].iou_threshold = 0.7  # equal is not past
    assert regime_warnings(stages, [sums(gt=0)] * 3, first=False) == []


def train(tmp_path, *opts):
    cfg = tiny_cfg("OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", 9, "MODEL.DYNAMIC_RCNN.UPDATE_PERIOD", 4,
                   "MODEL.DYNAMIC_RCNN.STATS_INCLUDE_GT", True, *opts)
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    with logged_warnings("detectron2.dynamic_rcnn.regime") as messages:
        trainer.train()
    return trainer, messages


def test_a_run_whose_ground_truth_decides_says_so_once_at_its_first_update(tmp_path):
    trainer, messages = train(tmp_path, "MODEL.DYNAMIC_RCNN.IOU_TOPK", 1, "MODEL.DYNAMIC_RCNN.BETA_TOPK", 1)
    names = [type(h).__name__ for h in trainer._hooks]
    assert names.index("RegimeCheck") == names.index("DynamicRCNNHook") + 1
    assert len(messages) == 1, messages  # two updates (iterations 4 and 8), one line
    assert "of the K_I = 1 boxes" in messages[0] and "in 4 of 4 iterations" in messages[0]


def test_a_run_with_the_automatic_k_says_nothing(tmp_path):
    _, messages = train(tmp_path, "MODEL.DYNAMIC_RCNN.IOU_TOPK", 0, "MODEL.DYNAMIC_RCNN.BETA_TOPK", 0)
    assert messages == []
