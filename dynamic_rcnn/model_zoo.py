"""
Released Dynamic R-CNN models, the way ``detectron2.model_zoo`` serves detectron2's::

    from dynamic_rcnn import model_zoo
    cfg_file = model_zoo.get_config_file("shapes/dynamic_rcnn_R_18_FPN_shapes")
    model = model_zoo.get("shapes/dynamic_rcnn_R_18_FPN_shapes", trained=True)

A released checkpoint is ``NAME_<first 8 hex of its sha256>.pth`` (written by
``tools/publish_model.py``), found in the release folder (``$DYNAMIC_RCNN_RELEASES``, default
``releases/`` of the project) or fetched from ``$DYNAMIC_RCNN_RELEASE_URL``. A file whose sha256
does not start with the 8 hex digits of its name is refused.
"""
import hashlib
import json
import os
import re
from typing import Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model
from detectron2.utils.file_io import PathManager

from .config import add_dynamic_rcnn_config, load_config

__all__ = ["get_config_file", "get_config", "get_checkpoint_file", "get", "sha256_of", "ChecksumError"]

_PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_NAME = re.compile(r"^(?P<name>.+)_(?P<hash>[0-9a-f]{8})\.pth$")


class ChecksumError(RuntimeError):
    """A checkpoint's content does not match the hash in its name."""


def _short(name: str) -> str:
    """``shapes/dynamic_rcnn_R_18_FPN_shapes.yaml`` -> ``dynamic_rcnn_R_18_FPN_shapes``."""
    return os.path.splitext(os.path.basename(name))[0]


def get_config_file(name: str) -> str:
    """
    The path of a config of this project: ``name`` relative to ``configs/``, with or without
    ``.yaml`` (``"dynamic_rcnn_R_50_FPN_1x"``, ``"shapes/dynamic_rcnn_R_18_FPN_shapes"``).
    """
    rel = name if name.endswith(".yaml") else name + ".yaml"
    path = os.path.join(_PROJECT_ROOT, "configs", rel)
    if not os.path.isfile(path):
        available = sorted(
            os.path.relpath(os.path.join(d, f), os.path.join(_PROJECT_ROOT, "configs"))[:-5]
            for d, _, files in os.walk(os.path.join(_PROJECT_ROOT, "configs"))
            for f in files
            if f.endswith(".yaml") and not f.startswith("Base-")
        )
        raise FileNotFoundError(f"No config {rel} in {os.path.dirname(path)}; available: {', '.join(available)}")
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
    return os.environ.get("DYNAMIC_RCNN_RELEASES", os.path.join(_PROJECT_ROOT, "releases"))


def get_checkpoint_file(name: str, release_folder: Optional[str] = None) -> str:
    """
    The verified local file of the released checkpoint ``name`` (config name or path): from the
    release folder, else downloaded from ``$DYNAMIC_RCNN_RELEASE_URL/<file>`` when that is set,
    where ``<file>`` is listed in the folder's ``NAME.metrics.json``.
    """
    short = _short(name)
    folder = release_folder or release_dir()
    candidates = sorted(
        f for f in (os.listdir(folder) if os.path.isdir(folder) else [])
        if (m := _NAME.match(f)) and m.group("name") == short
    )
    metrics = os.path.join(folder, f"{short}.metrics.json")
    listed = None
    if os.path.isfile(metrics):
        with open(metrics) as f:
            listed = json.load(f).get("checkpoint")
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
    raise FileNotFoundError(
        f"No released checkpoint {short}_<hash>.pth in {folder}. Publish one with "
        f"`python tools/publish_model.py OUTPUT_DIR --name {short}`, or set DYNAMIC_RCNN_RELEASES / "
        "DYNAMIC_RCNN_RELEASE_URL."
    )


def _verified(path: str) -> str:
    verify_checkpoint(path)
    return path


def get_config(name: str, trained: bool = False) -> CfgNode:
    """
    The config of ``name``: with ``trained=True`` the one embedded in the released checkpoint (the
    exact config it was trained with), with ``MODEL.WEIGHTS`` pointing at it; else the config file.
    """
    if not trained:
        return load_config(get_config_file(name))
    path = get_checkpoint_file(name)
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if "cfg" not in checkpoint:
        raise ValueError(f"{path} embeds no config: it was not written by tools/publish_model.py")
    cfg = get_cfg()
    add_dynamic_rcnn_config(cfg)
    cfg.merge_from_other_cfg(CfgNode.load_cfg(checkpoint["cfg"]))
    cfg.MODEL.WEIGHTS = path
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    return cfg


def get(name: str, trained: bool = False, device: Optional[str] = None) -> torch.nn.Module:
    """
    A model built from ``name``'s config, in eval mode; with ``trained=True`` its released weights
    (hash verified) are loaded. ``device`` overrides ``MODEL.DEVICE``.
    """
    cfg = get_config(name, trained=trained)
    if device is not None:
        cfg.MODEL.DEVICE = device
    model = build_model(cfg)
    if trained:
        DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    return model
