"""The config keys of Dynamic R-CNN (``MODEL.DYNAMIC_RCNN``) and the trackers' arguments a config gives, stage by stage."""
from typing import Dict, List, Tuple

from detectron2.config import CfgNode as CN

from .tracker import RULES, ConfigError

__all__ = ["ConfigError", "add_dynamic_rcnn_config", "check_box_loss", "tracker_args"]


def add_dynamic_rcnn_config(cfg):
    """
    Add ``MODEL.DYNAMIC_RCNN`` to a detectron2 config, in place: by default the automatic rule (K_I and K_E from
    each image's objects and proposals, statistics over the RPN's proposals only); the paper's rule is IOU_TOPK 75,
    BETA_TOPK 10, STATS_INCLUDE_GT True. The Dynamic heads take
    their thresholds and betas from these keys, not from ``MODEL.ROI_HEADS.IOU_THRESHOLDS`` (a cascade: its
    ``MODEL.ROI_BOX_CASCADE_HEAD.IOUS`` are the floors) nor ``MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA``.
    """
    _C = cfg.MODEL.DYNAMIC_RCNN = CN()
    _C.ENABLE_DLA = True  # Dynamic Label Assignment: the IoU threshold follows the proposals
    _C.ENABLE_DSL = True  # Dynamic SmoothL1 Loss: beta follows the regression errors
    # K_I: per image, the K_I-th largest IoU is the image's IoU statistic; K_E: per iteration, the (K_E x images)-th
    # smallest error is the error statistic. 0 (default): automatic, max(3 x the image's objects, 7.5 % (K_E: 1 %)
    # of its RPN proposals): the paper's share of the proposals, at least 3 boxes an object. The paper: 75 and 10.
    _C.IOU_TOPK = 0
    _C.BETA_TOPK = 0
    _C.UPDATE_PERIOD = 100  # C: iterations between two updates
    # The starting IoU threshold, and its floor: detectron2's 0.5 (MODEL.ROI_HEADS.IOU_THRESHOLDS), so the head never
    # labels below the stock one, as the cascade's stages never below Cascade's IoUs. The paper: 0.4.
    _C.WARMUP_IOU = 0.5
    _C.WARMUP_BETA = 1.0  # the starting beta, and its ceiling
    # Whether the ground truth appended to the proposals (MODEL.ROI_HEADS.PROPOSAL_APPEND_GT) counts in the
    # statistics (IoU 1, error 0). False (default): the RPN's boxes only. True, as in the paper: on images with more
    # objects than about half of IOU_TOPK it decides them alone (the threshold climbs to the top, beta never moves).
    _C.STATS_INCLUDE_GT = False
    # DynamicCascadeROIHeads: one value a stage, as MODEL.ROI_BOX_CASCADE_HEAD.IOUS, or [] for each stage's
    # default. UPDATE_PERIOD and STATS_INCLUDE_GT above are shared by the stages.
    _C.CASCADE = CN()
    _C.CASCADE.IOU_TOPK = []  # []: IOU_TOPK
    _C.CASCADE.BETA_TOPK = []  # []: BETA_TOPK
    _C.CASCADE.WARMUP_IOU = []  # []: MODEL.ROI_BOX_CASCADE_HEAD.IOUS, so no stage trains below detectron2's Cascade
    _C.CASCADE.WARMUP_BETA = []  # []: WARMUP_BETA
    _C.CASCADE.ENABLE_DLA = []  # []: ENABLE_DLA
    _C.CASCADE.ENABLE_DSL = []  # []: ENABLE_DSL


def tracker_args(cfg, cascade: bool) -> List[Tuple[Dict, Dict[str, str]]]:
    """
    The :class:`DynamicTracker` arguments of each stage (one for ``DynamicROIHeads``), with the config key that
    gives each (``keys``), so that a value out of range is refused naming it. A cascade takes each stage's value
    from the ``MODEL.DYNAMIC_RCNN.CASCADE`` lists, or the stage's default when a list is empty (see
    :func:`add_dynamic_rcnn_config`). Raises ConfigError for a list that has not one value a stage.
    """
    d = cfg.MODEL.DYNAMIC_RCNN
    single = {arg: d[key] for arg, (key, _, _) in RULES.items()}
    if not cascade:
        return [(single, {})]
    ious = list(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)
    defaults = {"warmup_iou": (ious, "MODEL.ROI_BOX_CASCADE_HEAD.IOUS[{k}]")}
    stages = [(dict(single), {}) for _ in ious]
    for arg in ("iou_topk", "beta_topk", "warmup_iou", "warmup_beta", "enable_dla", "enable_dsl"):
        key = RULES[arg][0]
        values, source = list(d.CASCADE[key]), f"MODEL.DYNAMIC_RCNN.{key}"
        if values and len(values) != len(ious):
            raise ConfigError(f"MODEL.DYNAMIC_RCNN.CASCADE.{key} has {len(values)} values for the {len(ious)} stages of "
                              f"MODEL.ROI_BOX_CASCADE_HEAD.IOUS {tuple(ious)}: give one a stage, or [] for the defaults.")
        if not values:
            values, source = defaults.get(arg, ([d[key]] * len(ious), source))
        for k, (args, keys) in enumerate(stages):
            args[arg] = values[k]
            keys[arg] = (f"MODEL.DYNAMIC_RCNN.CASCADE.{key}[{k}] (stage {k})" if d.CASCADE[key] else
                         f"MODEL.DYNAMIC_RCNN.CASCADE.{key} of stage {k} (by default {source.format(k=k)})")
    return stages


def check_box_loss(enable_dsl: bool, loss_type: str, key: str = "MODEL.DYNAMIC_RCNN.ENABLE_DSL") -> None:
    """DSL moves the SmoothL1 beta: it is not defined for another box-regression loss."""
    if enable_dsl and loss_type != "smooth_l1":
        raise ConfigError(f"{key} = True needs MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = 'smooth_l1' (Dynamic SmoothL1 "
                          f"Loss moves its beta), but it is {loss_type!r}. Set the loss type to 'smooth_l1' (the box "
                          "predictor's `box_reg_loss_type`), or the DSL switch False.")
