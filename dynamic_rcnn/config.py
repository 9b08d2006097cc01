"""Config keys of Dynamic R-CNN, and the start-up check of their values."""
import logging
import math
import os
from typing import Dict, List

import torch
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

__all__ = [
    "ConfigError",
    "add_dynamic_rcnn_config",
    "validate_dynamic_rcnn_config",
    "check_dynamic_rcnn_args",
    "check_box_loss",
    "cascade_tracker_args",
    "load_config",
    "merge_checked",
]

logger = logging.getLogger(__name__)


def add_dynamic_rcnn_config(cfg):
    """
    Add ``MODEL.DYNAMIC_RCNN`` (defaults from the paper) to a detectron2 config, in place.

    ``DynamicROIHeads`` takes its IoU threshold and SmoothL1 beta from these keys: it does not
    read ``MODEL.ROI_HEADS.IOU_THRESHOLDS`` nor ``MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA``.
    """
    _C = cfg
    _C.MODEL.DYNAMIC_RCNN = CN()
    # Dynamic Label Assignment: the ROI head's IoU threshold follows the proposals.
    _C.MODEL.DYNAMIC_RCNN.ENABLE_DLA = True
    # Dynamic SmoothL1 Loss: the box loss's beta follows the regression errors.
    _C.MODEL.DYNAMIC_RCNN.ENABLE_DSL = True
    # K_I: per image, the K_I-th largest proposal IoU is the image's IoU statistic.
    _C.MODEL.DYNAMIC_RCNN.IOU_TOPK = 75
    # K_E: per iteration, the (K_E x images)-th smallest regression error is the error statistic.
    _C.MODEL.DYNAMIC_RCNN.BETA_TOPK = 10
    # C: iterations between two updates of the threshold and beta.
    _C.MODEL.DYNAMIC_RCNN.UPDATE_PERIOD = 100
    # Starting IoU threshold, and its floor for the whole training.
    _C.MODEL.DYNAMIC_RCNN.WARMUP_IOU = 0.4
    # Starting beta, and its ceiling for the whole training.
    _C.MODEL.DYNAMIC_RCNN.WARMUP_BETA = 1.0
    # Whether the ground-truth boxes appended to the proposals (MODEL.ROI_HEADS.PROPOSAL_APPEND_GT)
    # count in the statistics, as in the paper (IoU 1, error 0 each). On images with more objects
    # than about half of IOU_TOPK they decide the statistics alone: the threshold climbs to the top
    # and beta never moves. False measures the RPN's proposals only.
    _C.MODEL.DYNAMIC_RCNN.STATS_INCLUDE_GT = True

    # DynamicCascadeROIHeads (docs/CASCADE.md): one value a stage, as MODEL.ROI_BOX_CASCADE_HEAD.IOUS has
    # one a stage, or [] for every stage's default. UPDATE_PERIOD and STATS_INCLUDE_GT above are shared.
    _C.MODEL.DYNAMIC_RCNN.CASCADE = CN()
    # K_I; []: stage 0's at every stage, 7.5 % (the paper's 75 of 1000) of MODEL.RPN.POST_NMS_TOPK_TRAIN:
    # the boxes it reads are positives, all sampled, and the later stages label what they regressed into
    # (7.5 % of the sampled boxes read far better boxes, and lost 9 AP on shapes: BENCHMARKS.md).
    _C.MODEL.DYNAMIC_RCNN.CASCADE.IOU_TOPK = []
    # K_E; []: BETA_TOPK at every stage.
    _C.MODEL.DYNAMIC_RCNN.CASCADE.BETA_TOPK = []
    # Floors of the thresholds; []: the stages' fixed IoUs (MODEL.ROI_BOX_CASCADE_HEAD.IOUS), so that at
    # the start Dynamic Cascade is the Cascade it extends, and no stage trains below it.
    _C.MODEL.DYNAMIC_RCNN.CASCADE.WARMUP_IOU = []
    # Ceilings of beta; []: WARMUP_BETA at every stage.
    _C.MODEL.DYNAMIC_RCNN.CASCADE.WARMUP_BETA = []
    # Each stage's switches; []: ENABLE_DLA / ENABLE_DSL at every stage.
    _C.MODEL.DYNAMIC_RCNN.CASCADE.ENABLE_DLA = []
    _C.MODEL.DYNAMIC_RCNN.CASCADE.ENABLE_DSL = []


class ConfigError(ValueError):
    """A Dynamic R-CNN setting that is out of range, removed, or a combination that is not defined;
    the message names the config key (and the constructor argument) and what is allowed."""


def _is_count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_bool(v) -> bool:
    return isinstance(v, bool)


# Constructor argument -> (config key under MODEL.DYNAMIC_RCNN, test, what is allowed). The one
# place that says what a valid value is: DynamicTracker checks its arguments with it (so every way
# of building it is covered: YAML, LazyCall, code), validate_dynamic_rcnn_config a whole config.
_RULES = {
    "enable_dla": ("ENABLE_DLA", _is_bool, "it must be True or False"),
    "enable_dsl": ("ENABLE_DSL", _is_bool, "it must be True or False"),
    "iou_topk": ("IOU_TOPK", _is_count, "it must be an integer >= 1"),
    "error_topk": ("BETA_TOPK", _is_count, "it must be an integer >= 1"),
    "update_period": ("UPDATE_PERIOD", _is_count, "it must be an integer >= 1"),
    "warmup_iou": ("WARMUP_IOU", lambda v: _is_number(v) and 0.0 < v < 1.0, "it must lie in the open interval (0, 1)"),
    "warmup_beta": ("WARMUP_BETA", lambda v: _is_number(v) and v >= 0.0,
                    "it must be a finite number >= 0 (0 is the L1 loss, with ENABLE_DSL False only)"),
    "stats_include_gt": ("STATS_INCLUDE_GT", _is_bool, "it must be True or False"),
}
CONFIG_KEYS = {arg: rule[0] for arg, rule in _RULES.items()}

# Keys of earlier versions, removed because they lost on every data set measured (BENCHMARKS.md):
# argument -> (config key, what to do instead).
_REMOVED = {
    "statistic": ("STATISTIC", "the per-object and scaled statistics lost 1-6 AP to the paper's rule, which is "
                  "now the only one: delete the key (size IOU_TOPK to about 7.5 % of "
                  "MODEL.RPN.POST_NMS_TOPK_TRAIN, and set STATS_INCLUDE_GT False for images with many objects)"),
    "reference_objects": ("REFERENCE_OBJECTS", "it served the removed STATISTIC 'scaled' / 'object': delete it"),
    "min_positives_iou": ("MIN_POSITIVES_IOU", "the positives guard lost 2.4 AP on shapes: delete the key (a "
                          "threshold that never goes below a value is WARMUP_IOU)"),
}


def check_dynamic_rcnn_args(where=None, **values) -> None:
    """
    Check Dynamic R-CNN settings given as constructor arguments (``iou_topk=75, ...``, the names of
    :class:`DynamicTracker`). An argument of an earlier version that was removed is refused with
    what to use instead. ``where`` names the config key of an argument in the messages when it is
    not ``MODEL.DYNAMIC_RCNN.KEY`` (a cascade stage's).

    Raises:
        ConfigError (a ValueError): naming the config key, the argument and the allowed values.
        TypeError: an argument that never existed.
    """
    where = where or {}
    for arg, value in values.items():
        if arg in _REMOVED:
            key, instead = _REMOVED[arg]
            raise ConfigError(f"MODEL.DYNAMIC_RCNN.{key} (argument `{arg}`) was removed: {instead}.")
        if arg not in _RULES:
            raise TypeError(f"unknown Dynamic R-CNN argument `{arg}`; the arguments are {', '.join(_RULES)}")
        key, ok, allowed = _RULES[arg]
        if not ok(value):
            raise ConfigError(f"{where.get(arg, 'MODEL.DYNAMIC_RCNN.' + key)} = {value!r} is invalid: {allowed} "
                              f"(argument `{arg}`).")
    if values.get("enable_dsl") and values.get("warmup_beta") == 0:
        raise ConfigError(
            f"{where.get('warmup_beta', 'MODEL.DYNAMIC_RCNN.WARMUP_BETA')} = 0 is invalid with DSL on: DSL lowers "
            "beta from WARMUP_BETA, its ceiling, and 0 (the L1 loss) leaves it nothing to move. Set WARMUP_BETA > 0, "
            "or switch DSL off (ENABLE_DSL False) to train DLA alone with an L1 box loss (argument `warmup_beta`)."
        )


def check_box_loss(enable_dsl: bool, loss_type: str) -> None:
    """DSL moves the SmoothL1 beta: it is not defined for another box-regression loss."""
    if enable_dsl and loss_type != "smooth_l1":
        raise ConfigError(
            f"MODEL.DYNAMIC_RCNN.ENABLE_DSL = True needs MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE = "
            f"'smooth_l1' (Dynamic SmoothL1 Loss moves its beta), but it is {loss_type!r}. Set the loss "
            "type to 'smooth_l1' (box_predictor's `box_reg_loss_type`), or ENABLE_DSL: False."
        )


_CASCADE_KEYS = {"iou_topk": "IOU_TOPK", "error_topk": "BETA_TOPK", "warmup_iou": "WARMUP_IOU",
                 "warmup_beta": "WARMUP_BETA", "enable_dla": "ENABLE_DLA", "enable_dsl": "ENABLE_DSL"}


def _share(boxes: int) -> int:
    return max(1, int(round(0.075 * boxes)))


def cascade_tracker_args(cfg) -> List[Dict]:
    """
    The ``DynamicTracker`` arguments of each stage of ``DynamicCascadeROIHeads``: each stage's value of
    the ``MODEL.DYNAMIC_RCNN.CASCADE`` lists, or the stage's default when a list is empty (see
    ``add_dynamic_rcnn_config``), with ``UPDATE_PERIOD`` and ``STATS_INCLUDE_GT`` shared.

    Raises:
        ConfigError: a list whose length is not the number of stages, or a value out of range; the
        message names the key, the stage and, for a default, the key it comes from.
    """
    d, ious = cfg.MODEL.DYNAMIC_RCNN, list(cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS)
    n = len(ious)
    defaults = {
        "iou_topk": [_share(cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN)] * n,
        "error_topk": [d.BETA_TOPK] * n, "warmup_iou": ious, "warmup_beta": [d.WARMUP_BETA] * n,
        "enable_dla": [d.ENABLE_DLA] * n, "enable_dsl": [d.ENABLE_DSL] * n,
    }
    origin = {
        "iou_topk": ["7.5 % of MODEL.RPN.POST_NMS_TOPK_TRAIN"] * n,
        "warmup_iou": [f"MODEL.ROI_BOX_CASCADE_HEAD.IOUS[{k}]" for k in range(n)],
    }
    stages = [{"update_period": d.UPDATE_PERIOD, "stats_include_gt": d.STATS_INCLUDE_GT} for _ in range(n)]
    where = [{} for _ in range(n)]
    for arg, key in _CASCADE_KEYS.items():
        values = list(d.CASCADE[key])
        if values and len(values) != n:
            raise ConfigError(
                f"MODEL.DYNAMIC_RCNN.CASCADE.{key} has {len(values)} values for the {n} stages of "
                f"MODEL.ROI_BOX_CASCADE_HEAD.IOUS {tuple(ious)}: give one a stage, or [] for the defaults."
            )
        for k in range(n):
            stages[k][arg] = values[k] if values else defaults[arg][k]
            if values:
                where[k][arg] = f"MODEL.DYNAMIC_RCNN.CASCADE.{key}[{k}] (stage {k})"
            else:
                source = origin.get(arg, [f"MODEL.DYNAMIC_RCNN.{key}"] * n)[k]
                where[k][arg] = f"MODEL.DYNAMIC_RCNN.CASCADE.{key} of stage {k} (by default {source})"
    for k in range(n):
        check_dynamic_rcnn_args(where=where[k], **stages[k])
    return stages


def check_cascade(cfg) -> None:
    """What detectron2's ``CascadeROIHeads`` asserts without a message, checked with the key and the fix."""
    ious, weights = cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS, cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS
    if not cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
        raise ConfigError(
            "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False is invalid with a Cascade head: detectron2's "
            "CascadeROIHeads regresses class-agnostic boxes only. Set it True."
        )
    if len(ious) != len(weights):
        raise ConfigError(
            f"MODEL.ROI_BOX_CASCADE_HEAD.IOUS has {len(ious)} stages and BBOX_REG_WEIGHTS {len(weights)}: give "
            "one box-regression weight tuple a stage."
        )
    if not len(ious) or ious[0] != cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0]:
        raise ConfigError(
            f"MODEL.ROI_HEADS.IOU_THRESHOLDS {list(cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS)} must start with the first "
            f"stage's IoU, MODEL.ROI_BOX_CASCADE_HEAD.IOUS[0] = {ious[0] if len(ious) else None} (detectron2's "
            "CascadeROIHeads asserts it): set MODEL.ROI_HEADS.IOU_THRESHOLDS to [IOUS[0]]."
        )


def warn_unmovable(cfg) -> None:
    """
    Warn (at model build, when the log exists) about settings that are valid but leave a value unable to
    move: a K_I or K_E not below the boxes a stage labels an image (the statistic is then the smallest
    IoU, usually 0, or the largest error of the batch), or ``STATS_INCLUDE_GT`` with no appended
    ground truth to include.
    """
    d, head = cfg.MODEL.DYNAMIC_RCNN, cfg.MODEL.ROI_HEADS.NAME
    if head == "DynamicCascadeROIHeads":
        stages = cascade_tracker_args(cfg)
        boxes = [cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN] + [cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE] * (len(stages) - 1)
        names = [(f"MODEL.DYNAMIC_RCNN.CASCADE.IOU_TOPK of stage {k}", f"MODEL.DYNAMIC_RCNN.CASCADE.BETA_TOPK of stage {k}")
                 for k in range(len(stages))]
    else:
        stages = [{"iou_topk": d.IOU_TOPK, "error_topk": d.BETA_TOPK, "enable_dla": d.ENABLE_DLA, "enable_dsl": d.ENABLE_DSL}]
        boxes, names = [cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN], [("MODEL.DYNAMIC_RCNN.IOU_TOPK", "MODEL.DYNAMIC_RCNN.BETA_TOPK")]
    where = ["MODEL.RPN.POST_NMS_TOPK_TRAIN"] + ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE"] * (len(stages) - 1)
    for args, n, (iou_key, error_key), source in zip(stages, boxes, names, where):
        if args["enable_dla"] and args["iou_topk"] >= n:
            logger.warning("%s = %d is not below the %d boxes an image (%s): the IoU statistic is then an image's "
                           "smallest IoU, usually 0, and the threshold stays at its floor. Lower it (7.5 %% of the "
                           "boxes is the paper's share).", iou_key, args["iou_topk"], n, source)
        if args["enable_dsl"] and args["error_topk"] >= n:
            logger.warning("%s = %d is not below the %d boxes an image (%s): the error statistic is then the largest "
                           "error of the batch, and beta cannot fall. Lower it (the paper's is 10 of 1000).",
                           error_key, args["error_topk"], n, source)
    if d.STATS_INCLUDE_GT and not cfg.MODEL.ROI_HEADS.PROPOSAL_APPEND_GT and (d.ENABLE_DLA or d.ENABLE_DSL):
        logger.warning("MODEL.DYNAMIC_RCNN.STATS_INCLUDE_GT True has no ground truth to include: "
                       "MODEL.ROI_HEADS.PROPOSAL_APPEND_GT is False, so the statistics are over the RPN's proposals "
                       "only, as with STATS_INCLUDE_GT False. Set it False to say so.")


def validate_dynamic_rcnn_config(cfg):
    """
    Check the Dynamic R-CNN keys of a config, so that a bad value fails at start-up with a
    message that names the key and the allowed range, not thousands of iterations later; for a
    Cascade head (stock or dynamic) also what detectron2's ``CascadeROIHeads`` asserts.

    Raises:
        KeyError: the config has no ``MODEL.DYNAMIC_RCNN`` (``add_dynamic_rcnn_config`` not called).
        ConfigError: a value is out of range, or the combination is not defined.
    """
    if "DYNAMIC_RCNN" not in cfg.MODEL:
        raise KeyError(
            "The config has no MODEL.DYNAMIC_RCNN: call dynamic_rcnn.add_dynamic_rcnn_config(cfg) "
            "before cfg.merge_from_file(...)."
        )
    d = cfg.MODEL.DYNAMIC_RCNN
    check_dynamic_rcnn_args(**{arg: d[key] for arg, key in CONFIG_KEYS.items()})
    head = cfg.MODEL.ROI_HEADS.NAME
    if head in ("CascadeROIHeads", "DynamicCascadeROIHeads"):
        check_cascade(cfg)
    if head == "DynamicROIHeads":
        check_box_loss(d.ENABLE_DSL, cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE)
    if head == "DynamicCascadeROIHeads":
        for stage in cascade_tracker_args(cfg):
            check_box_loss(stage["enable_dsl"], cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE)


def merge_checked(merge, source: str, *args) -> None:
    """``merge(*args)``; a key the config does not have (yacs raises KeyError from a file, AssertionError
    from a list) is refused in one line naming it and where it came from, a removed one with what to do."""
    try:
        merge(*args)
    except (KeyError, AssertionError) as e:
        text = e.args[0] if e.args else str(e)
        if "Non-existent" not in str(text):
            raise
        for key, instead in _REMOVED.values():
            if str(text).endswith(f" MODEL.DYNAMIC_RCNN.{key}"):
                raise ConfigError(f"{source}: MODEL.DYNAMIC_RCNN.{key} was removed: {instead}.") from None
        raise ConfigError(f"{source}: {text} (a misspelled key, or one of another detectron2 project?)") from None


def load_config(config_file: str, opts=()):
    """
    The config a project script runs with: detectron2's defaults, ``MODEL.DYNAMIC_RCNN``, the file,
    then ``opts`` (``KEY VALUE`` pairs). ``MODEL.DEVICE`` falls back to ``cpu`` (with a warning)
    when it names CUDA and no GPU is visible. The Dynamic R-CNN keys are checked. Not frozen.
    """
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"--config-file {config_file} does not exist")
    cfg = get_cfg()
    add_dynamic_rcnn_config(cfg)
    merge_checked(cfg.merge_from_file, config_file, config_file)
    merge_checked(cfg.merge_from_list, "the command line", list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but no GPU is visible: using the CPU.", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    validate_dynamic_rcnn_config(cfg)
    return cfg
