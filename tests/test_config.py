import pytest
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from dynamic_rcnn import add_dynamic_rcnn_config, validate_dynamic_rcnn_config

from conftest import tiny_cfg


def test_defaults_are_the_papers():
    cfg = get_cfg()
    add_dynamic_rcnn_config(cfg)
    d = cfg.MODEL.DYNAMIC_RCNN
    assert (d.ENABLE_DLA, d.ENABLE_DSL, d.IOU_TOPK, d.BETA_TOPK, d.UPDATE_PERIOD, d.WARMUP_IOU, d.WARMUP_BETA) == (
        True, True, 75, 10, 100, 0.4, 1.0,
    )
    assert d.STATS_INCLUDE_GT is True  # the appended ground truth counts, as in the paper
    validate_dynamic_rcnn_config(cfg)


def test_stats_include_gt_must_be_a_bool():
    cfg = tiny_cfg()
    cfg.defrost()
    cfg.MODEL.DYNAMIC_RCNN.STATS_INCLUDE_GT = 1  # set from code: yacs checks no types here
    with pytest.raises(ValueError, match="STATS_INCLUDE_GT = 1 is invalid: it must be True or False"):
        build_model(cfg)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("IOU_TOPK", 0, "IOU_TOPK = 0 is invalid: it must be an integer >= 1"),
        ("BETA_TOPK", -3, "BETA_TOPK = -3 is invalid"),
        ("UPDATE_PERIOD", 0, "UPDATE_PERIOD = 0 is invalid"),
        ("WARMUP_IOU", 0.0, r"WARMUP_IOU = 0.0 is invalid: it must lie in the open interval \(0, 1\)"),
        ("WARMUP_IOU", 1.0, "WARMUP_IOU = 1.0 is invalid"),
        ("WARMUP_BETA", 0.0, "WARMUP_BETA = 0.0 is invalid: it must be > 0"),
        ("WARMUP_BETA", -1.0, "WARMUP_BETA = -1.0 is invalid"),
        ("STATISTIC", "median", "STATISTIC = 'median' is invalid: it must be one of 'image', 'scaled', 'object'"),
        ("REFERENCE_OBJECTS", 0.0, "REFERENCE_OBJECTS = 0.0 is invalid: it must be a number > 0"),
        ("MIN_POSITIVES_IOU", 1.0, r"MIN_POSITIVES_IOU = 1.0 is invalid: it must lie in \[0, 1\)"),
        ("MIN_POSITIVES_IOU", -0.1, "MIN_POSITIVES_IOU = -0.1 is invalid"),
    ],
)
def test_out_of_range_values_fail_at_model_build(key, value, message):
    cfg = tiny_cfg(f"MODEL.DYNAMIC_RCNN.{key}", value)
    with pytest.raises(ValueError, match=message):
        build_model(cfg)


def test_dsl_with_another_box_loss_fails():
    cfg = tiny_cfg("MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "giou")
    with pytest.raises(ValueError, match="BBOX_REG_LOSS_TYPE = 'smooth_l1'.*'giou'"):
        build_model(cfg)
    # DLA alone does not use beta: any box loss is fine.
    cfg.MODEL.DYNAMIC_RCNN.ENABLE_DSL = False
    validate_dynamic_rcnn_config(cfg)


def test_cascade_roi_heads_fails():
    cfg = tiny_cfg("MODEL.ROI_HEADS.NAME", "CascadeROIHeads")
    with pytest.raises(ValueError, match="CascadeROIHeads"):
        validate_dynamic_rcnn_config(cfg)
    cfg.MODEL.DYNAMIC_RCNN.ENABLE_DLA = cfg.MODEL.DYNAMIC_RCNN.ENABLE_DSL = False
    validate_dynamic_rcnn_config(cfg)


def test_missing_section_says_what_to_call():
    with pytest.raises(KeyError, match="add_dynamic_rcnn_config"):
        validate_dynamic_rcnn_config(get_cfg())


def test_object_statistic_needs_the_rpn_proposals_only():
    cfg = tiny_cfg("MODEL.DYNAMIC_RCNN.STATISTIC", "object")
    with pytest.raises(ValueError, match="STATS_INCLUDE_GT = True is invalid: STATISTIC 'object'.*set MODEL.DYNAMIC_RCNN.STATS_INCLUDE_GT False"):
        validate_dynamic_rcnn_config(cfg)
    cfg.MODEL.DYNAMIC_RCNN.STATS_INCLUDE_GT = False
    validate_dynamic_rcnn_config(cfg)
