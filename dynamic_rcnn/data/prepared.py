"""
The data sets that ``tools/prepare_datasets.py`` makes from public repositories (kangaroo, pear640,
cells): ``<root>/<name>/{train,test}.json`` (COCO instances) with their images in
``<root>/<name>/images``, registered as ``<name>_train`` / ``<name>_test`` with :func:`register_coco`.
"""

import logging
import os
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog

from .coco import read_coco_json, register_coco

__all__ = ["PREPARED", "PREPARED_SPLITS", "prepared_root", "register_prepared"]

logger = logging.getLogger("detectron2." + __name__)

# name: its classes, in the order of their category ids (1, 2, ...) as tools/prepare_datasets.py writes them.
PREPARED: Dict[str, List[str]] = {
    "kangaroo": ["kangaroo"],
    "pear640": ["pear"],
    "cells": ["Living Cell", "Dead Cell"],
}
PREPARED_SPLITS = ("train", "test")


def prepared_root() -> str:
    """
    Where the prepared data sets are: ``$DYNAMIC_RCNN_DATASETS`` when set, else
    ``$DETECTRON2_DATASETS``, else ``datasets`` (relative to the current folder), as for BCCD.
    """
    return os.environ.get("DYNAMIC_RCNN_DATASETS") or os.environ.get("DETECTRON2_DATASETS") or "datasets"


def register_prepared(root: Optional[str] = None) -> List[str]:
    """
    Register ``<name>_train`` and ``<name>_test`` of every data set of :data:`PREPARED` whose json
    file exists under ``root`` (``prepared_root()`` when None), skipping names already registered.
    Returns the names registered now. ``register_coco`` reads each json here: a broken one, or one
    whose classes are not the data set's, is not registered, with a warning that names the file
    (so that importing the package never fails on a data folder).
    """
    root = prepared_root() if root is None else root
    registered, done = set(DatasetCatalog.list()), []
    for name, classes in PREPARED.items():
        for split in PREPARED_SPLITS:
            dataset = f"{name}_{split}"
            json_file = os.path.join(root, name, f"{split}.json")
            if dataset in registered or not os.path.isfile(json_file):
                continue
            try:
                found = [
                    c["name"] for c in sorted(read_coco_json(json_file)["categories"], key=lambda c: c["id"])
                ]
                if found != classes:
                    raise ValueError(
                        f"its classes are {found}, not {name}'s {classes}: prepare it again with "
                        "tools/prepare_datasets.py"
                    )
                register_coco(dataset, json_file, os.path.join(root, name, "images"))
            except (OSError, ValueError) as e:
                message = str(e) if json_file in str(e) else f"{json_file}: {e}"
                logger.warning("%s not registered: %s", dataset, message)
                continue
            done.append(dataset)
    return done
