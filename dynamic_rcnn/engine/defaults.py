"""The config a project script runs with, checked at start-up: its keys, its device, its cascade, its batch."""
import difflib
import inspect
import logging
import os

import torch
from detectron2.config import CfgNode, LazyConfig, get_cfg

from ..config import ConfigError, add_dynamic_rcnn_config, check_box_loss, tracker_args
from ..tracker import REMOVED, DynamicTracker

__all__ = ["apply_lazy_overrides", "check_amp", "check_batch_size", "check_cascade", "check_override_pairs",
           "device_or_cpu", "load_config", "merge_checked", "validate_dynamic_rcnn_config"]

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


def _has_key(cfg, key: str) -> bool:
    for part in key.split("."):
        if not isinstance(cfg, CfgNode) or part not in cfg:
            return False
        cfg = cfg[part]
    return True


def check_override_pairs(cfg, opts, source: str = "the command line") -> None:
    """``opts`` are KEY VALUE pairs: an odd list (yacs asserts, naming no item) is refused in one line naming the
    first key without its value, or the first item that stands where a key belongs and is none."""
    opts = [str(o) for o in opts]
    if len(opts) % 2 == 0:
        return
    for i in range(0, len(opts), 2):
        if not _has_key(cfg, opts[i]):
            what = (f"{opts[i]} stands where a KEY belongs, and is no config key (a value without its key, or a "
                    "misspelled key?)")
            break
        if i + 1 == len(opts) or _has_key(cfg, opts[i + 1]):
            what = f"{opts[i]} has no value"
            break
    raise ConfigError(f"{source}: {what}: the overrides after the options are KEY VALUE pairs ({len(opts)} items "
                      "given)")


_ABSENT = object()


def _select(cfg, key: str):
    from omegaconf import OmegaConf

    try:
        return OmegaConf.select(cfg, key, default=_ABSENT, throw_on_missing=False)
    except Exception:  # there, but its interpolation does not resolve (yet)
        return None


def _arguments(target) -> list:
    """The named arguments of ``target`` (a LazyCall's callable or its import path); for a class whose ``__init__``
    takes ``**kwargs``, those of its bases too, which it passes them to."""
    if isinstance(target, str):
        from detectron2.utils.registry import locate

        try:
            target = locate(target)
        except Exception:
            return []
    names = []
    for f in [vars(c).get("__init__") for c in target.__mro__[:-1]] if isinstance(target, type) else [target]:
        try:
            params = inspect.signature(f).parameters.values() if f else ()
        except (TypeError, ValueError):
            continue
        names += [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"]
        if f and not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def _check_lazy_key(cfg, key: str, override: str) -> None:
    from omegaconf import OmegaConf

    if _select(cfg, key) is not _ABSENT:
        return
    parts = key.split(".")
    i = len(parts) - 1
    while i > 0 and _select(cfg, ".".join(parts[:i])) is _ABSENT:
        i -= 1
    parent, name = ".".join(parts[:i]), parts[i]
    node = _select(cfg, parent) if parent else cfg
    if not OmegaConf.is_config(node):
        raise ConfigError(f"override {override}: {parent} is a value ({node!r}), not a config with keys")
    is_dict = OmegaConf.is_dict(node)
    arguments = _arguments(node.get("_target_")) if is_dict and "_target_" in node else []
    if i == len(parts) - 1 and name in arguments:
        return  # an argument of the callable that the config leaves at its default
    keys = [str(k) for k in (node.keys() if is_dict else range(len(node)))]
    close = difflib.get_close_matches(name, keys + arguments, 1)
    raise ConfigError(f"override {override}: {parent or 'the config'} has no key {name}"
                      f"{f' (did you mean {close[0]}?)' if close else ''}: a misspelled key? To add a new one, write "
                      f"+{override}")


def apply_lazy_overrides(cfg, overrides):
    """
    detectron2's ``LazyConfig.apply_overrides(cfg, overrides)``, each override checked first: ``key=value`` (detectron2
    fails in hydra's parser with a traceback), of a key the config has or an argument of the callable it configures
    (detectron2 adds a misspelled key silently; ``+key=value`` adds one). A problem is a ConfigError naming the
    override. Returns ``cfg``.
    """
    for override in overrides:
        key, eq, _ = override.partition("=")
        if not eq:
            raise ConfigError(f"override {override} is not key=value: write it as {override}=VALUE")
        if not key.startswith("+"):
            _check_lazy_key(cfg, key, override)
        try:
            LazyConfig.apply_overrides(cfg, [override])
        except Exception as e:
            said = [t for t in str(e).splitlines() if t.strip() and not t.startswith(("Error parsing", "See "))]
            raise ConfigError(f"override {override} cannot be read: {'; '.join(said) or type(e).__name__} (detectron2 "
                              "reads key=value with hydra's override grammar)") from None
    return cfg


def check_batch_size(total, processes: int, key: str) -> None:
    """The batch of ``key`` shared by ``processes``: detectron2 asserts it divides, naming no key."""
    if isinstance(total, int) and processes > 1 and total % processes:
        raise ConfigError(f"{key} = {total} is not divisible by the {processes} processes (--num-gpus x "
                          f"--num-machines): each process takes an equal share of the batch. Set {key} to a multiple "
                          f"of {processes} (e.g. {max(processes, round(total / processes) * processes)})")


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
    pairs and keys (one line naming a misspelled or removed key, or a key without its value), the Dynamic R-CNN
    values (as the heads' constructors check them) and, for a Cascade head, what detectron2 asserts. Not frozen.
    """
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"--config-file {config_file} does not exist")
    cfg = get_cfg()
    add_dynamic_rcnn_config(cfg)
    merge_checked(cfg.merge_from_file, config_file, config_file)
    check_override_pairs(cfg, opts)
    merge_checked(cfg.merge_from_list, "the command line", list(opts))
    cfg.MODEL.DEVICE = device_or_cpu(cfg.MODEL.DEVICE, "MODEL.DEVICE")
    validate_dynamic_rcnn_config(cfg)
    if "Cascade" in cfg.MODEL.ROI_HEADS.NAME:
        check_cascade(cfg)
    return cfg
