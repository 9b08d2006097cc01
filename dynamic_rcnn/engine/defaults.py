"""The config a project script runs with, checked at start-up: its keys, its device, its cascade."""
import logging
import os

import torch
from detectron2.config import get_cfg

from ..config import ConfigError, add_dynamic_rcnn_config, check_box_loss, tracker_args
from ..tracker import REMOVED, DynamicTracker

__all__ = ["check_amp", "check_cascade", "device_or_cpu", "load_config", "merge_checked", "validate_dynamic_rcnn_config"]

logger = logging.getLogger("detectron2." + __name__)


def merge_checked(merge, source: str, *args) -> None:
    """``merge(*args)``; a key the config does not have (yacs raises KeyError from a file, AssertionError
    from a list) is refused in one line naming it and where it came from, a removed one with what to do."""
    try:
        merge(*args)
    except (KeyError, AssertionError) as e:
        text = str(e.args[0] if e.args else e)
        if "Non-existent" not in text:
            raise
        for key, what in REMOVED.values():
            if text.endswith(f" MODEL.DYNAMIC_RCNN.{key}"):
                raise ConfigError(f"{source}: MODEL.DYNAMIC_RCNN.{key} {what}.") from None
        raise ConfigError(f"{source}: {text} (a misspelled key, or one of another detectron2 project?)") from None


def device_or_cpu(device: str, key: str, source: str = "") -> str:
    """``device``, or ``cpu`` (with a warning naming ``key`` and its ``source``) when it names CUDA and no GPU is
    visible."""
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        logger.warning("%s=%s%s but no GPU is visible: using the CPU.", key, device, source)
        return "cpu"
    return device


def check_amp(enabled: bool, device: str, key: str) -> None:
    """detectron2's AMPTrainer trains on a GPU only: on the CPU it would assert at the first step."""
    if enabled and not str(device).startswith("cuda"):
        unseen = "" if torch.cuda.is_available() else " (no GPU is visible)"
        raise ConfigError(f"{key} is True, but the model is on {device}{unseen}: detectron2's AMPTrainer (mixed "
                          f"precision) trains on a GPU only. Set {key} False to train on the CPU")


def check_cascade(cfg) -> None:
    """What detectron2's ``CascadeROIHeads`` asserts without a message, checked with the key and the fix."""
    ious, weights = cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS, cfg.MODEL.ROI_BOX_CASCADE_HEAD.BBOX_REG_WEIGHTS
    if not cfg.MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG:
        raise ConfigError("MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG = False is invalid with a Cascade head: "
                          "detectron2's CascadeROIHeads regresses class-agnostic boxes only. Set it True.")
    if len(ious) != len(weights):
        raise ConfigError(f"MODEL.ROI_BOX_CASCADE_HEAD.IOUS has {len(ious)} stages and BBOX_REG_WEIGHTS "
                          f"{len(weights)}: give one box-regression weight tuple a stage.")
    if not len(ious) or ious[0] != cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS[0]:
        raise ConfigError(
            f"MODEL.ROI_HEADS.IOU_THRESHOLDS {list(cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS)} must start with the first "
            f"stage's IoU, MODEL.ROI_BOX_CASCADE_HEAD.IOUS[0] = {ious[0] if len(ious) else None} (detectron2's "
            "CascadeROIHeads asserts it): set MODEL.ROI_HEADS.IOU_THRESHOLDS to [IOUS[0]].")


def validate_dynamic_rcnn_config(cfg) -> None:
    """
    Check the Dynamic R-CNN values of a whole config at start-up, as the heads' constructors check them: the
    trackers are built and the box loss checked, each stage's values named by their key. Raises KeyError when the
    config lacks ``MODEL.DYNAMIC_RCNN``, ConfigError (a ValueError) for a bad value.
    """
    if "DYNAMIC_RCNN" not in cfg.MODEL:
        raise KeyError("The config has no MODEL.DYNAMIC_RCNN: call dynamic_rcnn.add_dynamic_rcnn_config(cfg) before "
                       "cfg.merge_from_file(...).")
    for args, keys in tracker_args(cfg, cfg.MODEL.ROI_HEADS.NAME == "DynamicCascadeROIHeads"):
        tracker = DynamicTracker(keys=keys, **args)
        if cfg.MODEL.ROI_HEADS.NAME.startswith("Dynamic"):
            check_box_loss(tracker.enable_dsl, cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE, tracker.keys["enable_dsl"])


def load_config(config_file: str, opts=()):
    """
    The config a project script runs with: detectron2's defaults, ``MODEL.DYNAMIC_RCNN``, the file, then ``opts``
    (``KEY VALUE`` pairs), with ``MODEL.DEVICE`` on the CPU (and a warning) when no GPU is visible. Checked: the
    keys (one line naming a misspelled or removed one), the Dynamic R-CNN values (as the heads' constructors
    check them) and, for a Cascade head, what detectron2 asserts. Not frozen.
    """
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"--config-file {config_file} does not exist")
    cfg = get_cfg()
    add_dynamic_rcnn_config(cfg)
    merge_checked(cfg.merge_from_file, config_file, config_file)
    merge_checked(cfg.merge_from_list, "the command line", list(opts))
    cfg.MODEL.DEVICE = device_or_cpu(cfg.MODEL.DEVICE, "MODEL.DEVICE")
    validate_dynamic_rcnn_config(cfg)
    if "Cascade" in cfg.MODEL.ROI_HEADS.NAME:
        check_cascade(cfg)
    return cfg
