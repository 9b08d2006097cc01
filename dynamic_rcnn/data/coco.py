"""Any COCO-format json file as a detectron2 dataset, with broken annotations mended or dropped."""
import json
from typing import Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .sanitize import sanitize_dataset_dicts

__all__ = ["load_coco_instances", "register_coco"]


def _categories(json_file: str) -> List[Dict]:
    with open(json_file) as f:
        return sorted(json.load(f).get("categories", []), key=lambda c: c["id"])


def load_coco_instances(json_file: str, image_root: str, name: str) -> List[Dict]:
    """
    detectron2's ``load_coco_json``, except that an annotation whose ``category_id`` is not among
    the file's categories is dropped and counted (detectron2 raises), as are the other broken
    annotations ``sanitize_dataset_dicts`` knows.
    """
    categories = _categories(json_file)
    id_map = {c["id"]: i for i, c in enumerate(categories)}
    # Without a dataset name, load_coco_json keeps the file's own category ids: mapped here.
    dicts = load_coco_json(json_file, image_root)
    for record in dicts:
        for anno in record.get("annotations", []):
            anno["category_id"] = id_map.get(anno["category_id"], -1)
    return sanitize_dataset_dicts(dicts, name, len(categories))


def register_coco(name: str, json_file: str, image_root: str) -> None:
    """Register ``json_file`` (COCO instances format) with its images under ``image_root`` as ``name``."""
    DatasetCatalog.register(name, lambda: load_coco_instances(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        thing_classes=[c["name"] for c in _categories(json_file)],
        # Not `json_file`: COCOEvaluator would then score against the raw file, broken
        # annotations and original ids included, instead of the mended records.
        source_json=json_file,
        image_root=image_root,
        evaluator_type="coco",
    )
