import pytest
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from dynamic_rcnn import add_dynamic_rcnn_config
from dynamic_rcnn.engine import validate_dynamic_rcnn_config

from conftest import tiny_cfg


def test_defaults_are_the_automatic_rule_and_the_trackers_own_defaults_agree():
    """The paper's switches, C and beta's warm-up; K_I and K_E automatic (0), statistics over the RPN's proposals only,
    the threshold's floor detectron2's 0.5 (the paper's 0.4 trained below the stock head: issue 28)."""
    from dynamic_rcnn import DynamicTracker
    from dynamic_rcnn.config import tracker_args

    cfg = get_cfg()
    add_dynamic_rcnn_config(cfg)
    d = cfg.MODEL.DYNAMIC_RCNN
    assert (d.ENABLE_DLA, d.ENABLE_DSL, d.IOU_TOPK, d.BETA_TOPK, d.UPDATE_PERIOD, d.WARMUP_IOU, d.WARMUP_BETA) == (
        True, True, 0, 0, 100, 0.5, 1.0,
    )
    assert d.STATS_INCLUDE_GT is False
    assert d.WARMUP_IOU == cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0]  # the floor: detectron2's stock threshold
    validate_dynamic_rcnn_config(cfg)
    # A LazyConfig's DynamicTracker() without arguments is the same rule as the yacs defaults.
    (args, _), = tracker_args(cfg, cascade=False)
    t = DynamicTracker()
    assert {a: getattr(t, a) for a in args} == args


@pytest.mark.parametrize("key", ["STATS_INCLUDE_GT", "ENABLE_DLA", "ENABLE_DSL"])
def test_switches_must_be_bools(key):
    cfg = tiny_cfg()
    cfg.defrost()
    cfg.MODEL.DYNAMIC_RCNN[key] = 1  # set from code: yacs checks no types here
    with pytest.raises(ValueError, match=f"{key} = 1 is invalid: it must be True or False"):
        build_model(cfg)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("IOU_TOPK", -1, "IOU_TOPK = -1 is invalid: it must be an integer >= 1, or 0 \\(automatic\\)"),
        ("BETA_TOPK", -3, "BETA_TOPK = -3 is invalid"),
        ("UPDATE_PERIOD", 0, "UPDATE_PERIOD = 0 is invalid"),
        ("WARMUP_IOU", 0.0, r"WARMUP_IOU = 0.0 is invalid: it must lie in the open interval \(0, 1\)"),
        ("WARMUP_IOU", 1.0, "WARMUP_IOU = 1.0 is invalid"),
        ("WARMUP_BETA", 0.0, "WARMUP_BETA = 0 is invalid with DSL on: DSL lowers beta from WARMUP_BETA"),
        ("WARMUP_BETA", -1.0, r"WARMUP_BETA = -1.0 is invalid: it must be a finite number >= 0 \(0 is the L1 loss"),
        # 1e999 and YAML's .inf are float('inf'): beta = inf would make loss_box_reg 0 every iteration.
        ("WARMUP_BETA", float("inf"), "WARMUP_BETA = inf is invalid: it must be a finite number >= 0"),
        ("WARMUP_IOU", float("nan"), "WARMUP_IOU = nan is invalid"),
    ],
)
def test_out_of_range_values_fail_at_model_build(key, value, message):
    cfg = tiny_cfg(f"MODEL.DYNAMIC_RCNN.{key}", value)
    with pytest.raises(ValueError, match=message):
        build_model(cfg)


def test_an_l1_box_loss_is_valid_with_dla_alone():
    """detectron2's stock head trains with SmoothL1 of beta 0, its L1 loss: DLA alone may keep it."""
    cfg = tiny_cfg("MODEL.DYNAMIC_RCNN.ENABLE_DSL", False, "MODEL.DYNAMIC_RCNN.WARMUP_BETA", 0.0)
    validate_dynamic_rcnn_config(cfg)
    head = build_model(cfg).roi_heads
    assert head.tracker.beta == head.box_predictor.smooth_l1_beta == 0.0


def test_dsl_with_another_box_loss_fails():
    cfg = tiny_cfg("MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE", "giou")
    with pytest.raises(ValueError, match="BBOX_REG_LOSS_TYPE = 'smooth_l1'.*'giou'"):
        build_model(cfg)
    # DLA alone does not use beta: any box loss is fine.
    cfg.MODEL.DYNAMIC_RCNN.ENABLE_DSL = False
    validate_dynamic_rcnn_config(cfg)


def test_what_detectron2s_cascade_asserts_is_refused_at_start_up_with_the_key_and_the_fix():
    from conftest import SHAPES_CONFIG
    from dynamic_rcnn.engine import load_config
    from dynamic_rcnn.engine.defaults import check_cascade

    for head in ("CascadeROIHeads", "DynamicCascadeROIHeads"):
        with pytest.raises(ValueError, match="CLS_AGNOSTIC_BBOX_REG = False is invalid with a Cascade head.*Set it True"):
            load_config(SHAPES_CONFIG, ["MODEL.ROI_HEADS.NAME", head])
        cfg = tiny_cfg("MODEL.ROI_HEADS.NAME", head, "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True)
        check_cascade(cfg)  # detectron2's IOUS 0.5, 0.6, 0.7 and IOU_THRESHOLDS [0.5]
        cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS = ((10.0, 10.0, 5.0, 5.0),)
        with pytest.raises(ValueError, match="IOUS has 3 stages and BBOX_REG_WEIGHTS 1"):
            check_cascade(cfg)
        cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS = (0.4,)
        with pytest.raises(ValueError, match=r"IOU_THRESHOLDS \[0.5\] must start with .*IOUS\[0\] = 0.4.*set "
                                             r"MODEL.ROI_HEADS.IOU_THRESHOLDS to \[IOUS\[0\]\]"):
            check_cascade(cfg)


def test_missing_section_says_what_to_call():
    with pytest.raises(KeyError, match="add_dynamic_rcnn_config"):
        validate_dynamic_rcnn_config(get_cfg())


REMOVED = [
    ("STATISTIC", "scaled", "the per-object and scaled statistics lost 1-6 AP"),
    ("REFERENCE_OBJECTS", 7.0, "it served the removed STATISTIC"),
    ("MIN_POSITIVES_IOU", 0.5, "the positives guard lost 2.4 AP on shapes"),
]


@pytest.mark.parametrize("key, value, instead", REMOVED)
def test_a_removed_key_is_refused_with_what_to_use_instead(key, value, instead, tmp_path):
    from dynamic_rcnn.config import ConfigError
    from dynamic_rcnn.engine import load_config

    from conftest import SHAPES_CONFIG

    config = tmp_path / "old.yaml"
    config.write_text(f"_BASE_: {SHAPES_CONFIG}\nMODEL:\n  DYNAMIC_RCNN:\n    {key}: {value}\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(config))
    assert str(e.value).startswith(f"{config}: MODEL.DYNAMIC_RCNN.{key} was removed: {instead}")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=f"^the command line: MODEL.DYNAMIC_RCNN.{key} was removed: {instead}"):
        load_config(SHAPES_CONFIG, [f"MODEL.DYNAMIC_RCNN.{key}", str(value)])
    # Another unknown key: yacs's words, in one line with where it came from.
    with pytest.raises(ConfigError, match="^the command line: Non-existent key: MODEL.DYNAMIC_RCNN.STATISTICS"):
        load_config(SHAPES_CONFIG, ["MODEL.DYNAMIC_RCNN.STATISTICS", "image"])


@pytest.mark.parametrize("arg, key, instead", [("statistic", "STATISTIC", REMOVED[0][2]),
                                               ("reference_objects", "REFERENCE_OBJECTS", REMOVED[1][2])])
def test_a_removed_argument_of_the_tracker_is_refused(arg, key, instead):
    """A LazyConfig of an earlier version sets them on the tracker (and the guard on the head)."""
    from dynamic_rcnn import DynamicTracker

    with pytest.raises(ValueError, match=f"^MODEL.DYNAMIC_RCNN.{key} \\(argument `{arg}`\\) was removed: {instead}"):
        DynamicTracker(**{arg: 1})
    with pytest.raises(TypeError, match="unknown Dynamic R-CNN argument `iou_top_k`"):
        DynamicTracker(iou_top_k=3)


def test_infinite_beta_from_the_command_line_and_yaml_fails(tmp_path):
    from dynamic_rcnn.engine import load_config

    from conftest import SHAPES_CONFIG

    with pytest.raises(ValueError, match="WARMUP_BETA = inf is invalid"):
        load_config(SHAPES_CONFIG, ["MODEL.DYNAMIC_RCNN.WARMUP_BETA", "1e999"])
    with pytest.raises(ValueError, match="WARMUP_BETA = 0 is invalid with DSL on"):
        load_config(SHAPES_CONFIG, ["MODEL.DYNAMIC_RCNN.WARMUP_BETA", "0.0"])
    config = tmp_path / "inf.yaml"
    config.write_text(f"_BASE_: {SHAPES_CONFIG}\nMODEL:\n  DYNAMIC_RCNN:\n    WARMUP_BETA: .inf\n")
    with pytest.raises(ValueError, match="WARMUP_BETA = inf is invalid"):
        load_config(str(config))


@pytest.mark.parametrize("kwargs, message", [
    (dict(iou_topk=-2), r"IOU_TOPK = -2 is invalid: it must be an integer >= 1, or 0 \(automatic\) \(argument `iou_topk`\)"),
    (dict(update_period=0), "UPDATE_PERIOD = 0 is invalid"),
    (dict(warmup_iou=1.5), "WARMUP_IOU = 1.5 is invalid"),
    (dict(warmup_beta=float("inf")), "WARMUP_BETA = inf is invalid"),
    (dict(stats_include_gt="no"), "STATS_INCLUDE_GT = 'no' is invalid"),
])
def test_tracker_checks_its_arguments_however_it_is_built(kwargs, message):
    """A LazyCall or code builds DynamicTracker without a config: the same checks apply."""
    from dynamic_rcnn import DynamicTracker

    with pytest.raises(ValueError, match=message):
        DynamicTracker(**kwargs)


def test_head_checks_its_arguments_however_it_is_built():
    from dynamic_rcnn import DynamicROIHeads

    from conftest import roi_input_shape

    cfg = tiny_cfg()
    args = DynamicROIHeads.from_config(cfg, roi_input_shape(cfg))
    args["box_predictor"].box_reg_loss_type = "giou"
    with pytest.raises(ValueError, match="ENABLE_DSL = True needs MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE"):
        DynamicROIHeads(**args)
    args["box_predictor"].box_reg_loss_type = "smooth_l1"
    with pytest.raises(ValueError, match=r"MIN_POSITIVES_IOU \(argument `min_positives_iou`\) was removed"):
        DynamicROIHeads(**dict(args, min_positives_iou=0.5))
    DynamicROIHeads(**args)
