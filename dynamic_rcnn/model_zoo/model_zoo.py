"""
Released Dynamic R-CNN models, the way ``detectron2.model_zoo`` serves detectron2's::

    from dynamic_rcnn import model_zoo
    cfg_file = model_zoo.get_config_file("shapes/dynamic_rcnn_R_18_FPN_shapes")
    model = model_zoo.get("shapes/dynamic_rcnn_R_18_FPN_shapes", trained=True)
    lazy = model_zoo.get_config("lazy/dynamic_rcnn_R_50_FPN_1x.py")  # a LazyConfig

The configs and the release metadata (``NAME.metrics.json``) are looked up inside the package
(``dynamic_rcnn/configs``, ``dynamic_rcnn/releases``: a ``pip install .`` copies them there, as
detectron2's setup.py does for its model zoo), else in the source checkout's top-level
``configs/`` and ``releases/`` (an editable install, or running from the checkout).

A released checkpoint is ``NAME_<first 8 hex of its sha256>.pth`` (written by
``tools/publish_model.py``), found in the release folder (``$DYNAMIC_RCNN_RELEASES``, default the
release metadata folder above) or fetched from ``$DYNAMIC_RCNN_RELEASE_URL``. A file whose sha256
does not start with the 8 hex digits of its name is refused. ``get_thing_classes`` gives the class
names a release was trained on (kept in its checkpoint and ``NAME.metrics.json``).
"""
import hashlib
import json
import logging
import os
import re
from typing import List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, LazyConfig, get_cfg, instantiate
from detectron2.utils.file_io import PathManager

from .. import data  # noqa: F401  (registers the built-in datasets the zoo's configs train and test on)
from ..config import add_dynamic_rcnn_config
from ..engine.defaults import device_or_cpu, load_config, merge_checked
from ..modeling import build_model

__all__ = ["get_config_file", "get_config", "get_checkpoint_file", "get", "get_thing_classes", "sha256_of",
           "ChecksumError", "released_checkpoints"]

logger = logging.getLogger("detectron2." + __name__)

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PROJECT_ROOT = os.path.dirname(_PACKAGE_DIR)
_NAME = re.compile(r"^(?P<name>.+)_(?P<hash>[0-9a-f]{8})\.pth$")


def _data_dir(kind: str) -> str:
    """
    The folder of ``kind`` ("configs" or "releases"): the copy inside the installed package when
    there is one, else the source checkout's top-level folder (the single source; setup.py copies
    it into the package only when building a wheel, never into the checkout).
    """
    installed = os.path.join(_PACKAGE_DIR, kind)
    return installed if os.path.isdir(installed) else os.path.join(_PROJECT_ROOT, kind)


def configs_dir() -> str:
    """The folder the configs are read from (see the module docstring)."""
    return _data_dir("configs")


class ChecksumError(RuntimeError):
    """A checkpoint's content does not match the hash in its name."""


def _short(name: str) -> str:
    """``shapes/dynamic_rcnn_R_18_FPN_shapes.yaml`` -> ``dynamic_rcnn_R_18_FPN_shapes``."""
    return os.path.splitext(os.path.basename(name))[0]


def get_config_file(name: str) -> str:
    """
    The path of a config of this project: ``name`` relative to the configs folder, a YAML config
    with or without ``.yaml`` (``"dynamic_rcnn_R_50_FPN_1x"``, ``"shapes/dynamic_rcnn_R_18_FPN_shapes"``)
    or a LazyConfig with its ``.py`` (``"lazy/dynamic_rcnn_R_50_FPN_1x.py"``), as in detectron2.

    Raises:
        FileNotFoundError: no such config; the message lists the available ones.
    """
    rel = name if name.endswith((".yaml", ".py")) else name + ".yaml"
    root = configs_dir()
    path = os.path.join(root, rel)
    if not os.path.isfile(path):
        if not os.path.isdir(root):
            raise FileNotFoundError(
                f"No configs folder: neither {os.path.join(_PACKAGE_DIR, 'configs')} (an installed package) "
                f"nor {root} (a source checkout) exists. Reinstall dynamic_rcnn with `pip install .` from "
                "its source checkout, whose setup.py copies configs/ into the package."
            )
        available = sorted(
            os.path.relpath(os.path.join(d, f), root)[: -len(".yaml")] if f.endswith(".yaml")
            else os.path.relpath(os.path.join(d, f), root)  # a LazyConfig keeps its .py
            for d, _, files in os.walk(root)
            for f in files
            if (f.endswith(".yaml") and not f.startswith("Base-"))
            or (f.endswith(".py") and not f.startswith("_"))
        )
        raise FileNotFoundError(f"No config {rel} in {root}; available: {', '.join(available)}")
    return path


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checkpoint(path: str) -> str:
    """Check that the file's sha256 starts with the 8 hex digits of its name; returns the sha256."""
    match = _NAME.match(os.path.basename(path))
    if match is None:
        raise ChecksumError(f"{path}: a released checkpoint is named NAME_<8 hex of its sha256>.pth")
    digest = sha256_of(path)
    if not digest.startswith(match.group("hash")):
        raise ChecksumError(
            f"{path}: sha256 {digest[:8]}... does not match the {match.group('hash')} of its name: the file "
            "is damaged or not the released one. Delete it and fetch or publish it again."
        )
    return digest


def release_dir() -> str:
    """The folder released checkpoints are looked up in: ``$DYNAMIC_RCNN_RELEASES``, else the
    project's release metadata folder (see the module docstring)."""
    return os.environ.get("DYNAMIC_RCNN_RELEASES", _data_dir("releases"))


def released_names(folder: Optional[str] = None) -> List[str]:
    """The names this project released (a ``NAME.metrics.json`` in its release metadata folder),
    plus those described in ``folder`` when given."""
    names = set()
    for d in {_data_dir("releases"), folder or _data_dir("releases")}:
        if os.path.isdir(d):
            names.update(f[: -len(".metrics.json")] for f in os.listdir(d) if f.endswith(".metrics.json"))
    return sorted(names)


def released_checkpoints(short: str, folder: str) -> List[str]:
    """The checkpoints of the release ``short`` in ``folder`` (``short_<8 hex>.pth``), sorted."""
    names = os.listdir(folder) if os.path.isdir(folder) else []
    return sorted(f for f in names if (m := _NAME.match(f)) and m.group("name") == short)


def _listed_checkpoint(short: str, folder: str) -> Optional[dict]:
    """The metrics of release ``short``: those beside the checkpoints in ``folder``, else the
    project's own (so that a folder of checkpoints alone, or $DYNAMIC_RCNN_RELEASE_URL, works)."""
    for d in (folder, _data_dir("releases")):
        metrics = os.path.join(d, f"{short}.metrics.json")
        if os.path.isfile(metrics):
            with open(metrics) as f:
                return json.load(f)
    return None


def get_checkpoint_file(name: str, release_folder: Optional[str] = None) -> str:
    """
    The verified local file of the released checkpoint ``name`` (config name or path): from the
    release folder, else downloaded from ``$DYNAMIC_RCNN_RELEASE_URL/<file>`` when that is set,
    where ``<file>`` is listed in ``NAME.metrics.json`` (the folder's, else the project's).

    Raises:
        FileNotFoundError: no such file; the message says whether this project released ``name``
            at all (and which names it released) and how to get or make the file.
        ChecksumError: the file's sha256 does not match its name.
    """
    short = _short(name)
    folder = release_folder or release_dir()
    candidates = released_checkpoints(short, folder)
    metrics = _listed_checkpoint(short, folder)
    listed = metrics.get("checkpoint") if metrics else None
    if listed in candidates:
        return _verified(os.path.join(folder, listed))  # the file its metrics describe
    if len(candidates) == 1:
        return _verified(os.path.join(folder, candidates[0]))
    if len(candidates) > 1:
        raise FileNotFoundError(
            f"{folder} holds {len(candidates)} releases of {short} ({', '.join(candidates)}) and no "
            f"{short}.metrics.json naming one of them: keep one, or publish again."
        )
    base_url = os.environ.get("DYNAMIC_RCNN_RELEASE_URL")
    if base_url and listed:
        return _verified(PathManager.get_local_path(f"{base_url.rstrip('/')}/{listed}"))
    if listed:
        raise FileNotFoundError(
            f"{short} was released as {listed}, which is not in {folder}. Set DYNAMIC_RCNN_RELEASES to the "
            "folder that holds it (or put it in that one), set DYNAMIC_RCNN_RELEASE_URL to where it is "
            "served, or re-make it with `make releases` in the source checkout (MODEL_ZOO.md)."
        )
    released = released_names(folder)
    raise FileNotFoundError(
        f"This project released no checkpoint named {short} (it was not trained here); released: "
        f"{', '.join(released) or 'none'} (MODEL_ZOO.md). For a model you trained yourself: "
        f"`python tools/publish_model.py OUTPUT_DIR --name {short} --out FOLDER`, then set "
        f"DYNAMIC_RCNN_RELEASES=FOLDER (now: {folder})."
    )


def _verified(path: str) -> str:
    verify_checkpoint(path)
    return path


def _cpu_if_no_gpu(cfg, source: str):
    """A CUDA device of the config (``MODEL.DEVICE``, a LazyConfig's ``train.device``) becomes ``cpu``, with a
    warning, when no GPU is visible: a config from the zoo loads on any machine."""
    if isinstance(cfg, CfgNode):
        cfg.MODEL.DEVICE = device_or_cpu(cfg.MODEL.DEVICE, "MODEL.DEVICE", f" in {source}")
    elif "train" in cfg and "device" in cfg.train:
        cfg.train.device = device_or_cpu(cfg.train.device, "train.device", f" in {source}")
    return cfg


def get_config(name: str, trained: bool = False):
    """
    The config of ``name``, as ``detectron2.model_zoo.get_config``:

    - a YAML config (a ``CfgNode``, not frozen): with ``trained=True`` the one embedded in the
      released checkpoint (the exact config it was trained with), with ``MODEL.WEIGHTS`` pointing
      at the verified file; else the config file, its ``MODEL.WEIGHTS`` left as it is (an ImageNet
      backbone, or none);
    - a LazyConfig (``name`` ends in ``.py``; an omegaconf ``DictConfig``): the file, with
      ``train.init_checkpoint`` set to the released checkpoint when ``trained=True``.

    Either way a CUDA device falls back to ``cpu``, with a warning, when no GPU is visible.

    Raises:
        FileNotFoundError: no such config, or ``trained=True`` and no such release (the message
            says which names this project released).
    """
    if name.endswith(".py"):
        cfg_file = get_config_file(name)
        cfg = LazyConfig.load(cfg_file)
        if trained:
            cfg.train.init_checkpoint = get_checkpoint_file(name)
        return _cpu_if_no_gpu(cfg, cfg_file)
    if not trained:
        return load_config(get_config_file(name))  # falls back to the CPU with a warning itself
    # A release needs no config file: it embeds its config (a model of your own has none here).
    path = get_checkpoint_file(name)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if "cfg" not in checkpoint:
        raise ValueError(f"{path} embeds no config: it was not written by tools/publish_model.py")
    cfg = get_cfg()
    add_dynamic_rcnn_config(cfg)
    merge_checked(cfg.merge_from_other_cfg, f"the config embedded in {path}", CfgNode.load_cfg(checkpoint["cfg"]))
    cfg.MODEL.WEIGHTS = path
    return _cpu_if_no_gpu(cfg, f"the config embedded in {path}")


def get_thing_classes(name: str) -> Optional[List[str]]:
    """
    The class names the release ``name`` was trained on, in the order of the model's class indices (what
    ``MetadataCatalog``'s ``thing_classes`` holds for drawing): those its checkpoint keeps (hash checked). None for a
    release published before they were kept: the datasets of its config (``DATASETS.TRAIN``) name them.
    """
    path = get_checkpoint_file(name)
    classes = torch.load(path, map_location="cpu", mmap=True, weights_only=False).get("thing_classes")
    return list(classes) if classes else None


def get(name: str, trained: bool = False, device: Optional[str] = None) -> torch.nn.Module:
    """
    A model built from ``get_config(name, trained)`` with its weights loaded, as
    ``detectron2.model_zoo.get`` does, so that code written for detectron2's zoo behaves the same:

    - ``trained=True``: the released weights (hash verified);
    - ``trained=False``: the config's ``MODEL.WEIGHTS`` (a LazyConfig: ``train.init_checkpoint``):
      the COCO configs' ImageNet backbone, downloaded by detectron2 on first use; the shapes
      configs train from scratch: none;
    - the model is in **training mode**, as detectron2's: call ``model.eval()`` before inference
      (``inference_on_dataset`` and ``Trainer.evaluate`` switch it themselves; ``DefaultPredictor``
      takes ``get_config(name, trained)`` and builds its own, in eval mode).

    ``device`` overrides the config's device; without it a CUDA device falls back to ``cpu`` (with
    a warning) when no GPU is visible.
    """
    cfg = get_config(name, trained=trained)
    if isinstance(cfg, CfgNode):
        if device is not None:
            cfg.MODEL.DEVICE = device
        model = build_model(cfg)
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)  # "" loads nothing, as in detectron2
        return model
    model = instantiate(cfg.model)
    if device is None and "train" in cfg:
        device = cfg.train.get("device")
    if device is not None:
        model = model.to(device)
    if "train" in cfg and cfg.train.get("init_checkpoint"):
        DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
    return model
