"""Any COCO-format json file as a detectron2 dataset, with broken annotations mended or dropped."""
import json
import numbers
import os
from typing import Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from .sanitize import DropLog, sanitize_dataset_dicts

__all__ = ["load_coco_instances", "register_coco", "read_coco_json"]

_FIX = (
    'a COCO instances file is {"images": [...], "annotations": [...], '
    '"categories": [{"id": 1, "name": "cell"}, ...]}'
)


def _refuse(json_file: str, what: str) -> ValueError:
    return ValueError(f"{json_file}: {what}; {_FIX}")


def _id_key(value):
    # COCO ids are ints; some files use strings. Sorting them apart keeps a mixed file from raising.
    return (isinstance(value, str), value)


def read_coco_json(json_file: str) -> Dict:
    """
    The content of ``json_file``, checked to be a COCO instances file: a json object whose
    ``categories`` is a non-empty list of ``{"id", "name"}`` with distinct int or str ids, whose
    ``images`` is a list and whose ``annotations``, when present, is a list. Raises
    FileNotFoundError or ValueError that names the file, says what is wrong and how it should look;
    broken entries inside the lists are not checked here (``load_coco_instances`` drops them).
    """
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"{json_file} does not exist (the COCO json file of the dataset)")
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _refuse(json_file, f"not a json file ({e})") from None
    if not isinstance(data, dict):
        raise _refuse(json_file, f"the json holds a {type(data).__name__}, not an object")
    categories = data.get("categories")
    if not isinstance(categories, list) or not categories:
        # Without categories every box is of an unknown class and the model has no class to learn.
        raise _refuse(json_file, f'"categories" is {json.dumps(categories)}: list the classes of the boxes')
    seen = set()
    for i, c in enumerate(categories):
        if not (isinstance(c, dict) and isinstance(c.get("id"), (int, str)) and not isinstance(c.get("id"), bool)
                and isinstance(c.get("name"), str)):
            raise _refuse(json_file, f'categories[{i}] is {json.dumps(c)[:100]}, not {{"id": <int>, "name": <str>}}')
        if c["id"] in seen:
            raise _refuse(json_file, f"category id {c['id']!r} appears twice in \"categories\"")
        seen.add(c["id"])
    if not isinstance(data.get("images"), list):
        raise _refuse(json_file, f'"images" is {json.dumps(data.get("images"))[:100]}, not a list of images')
    if not isinstance(data.get("annotations", []), list):
        raise _refuse(json_file, '"annotations" is not a list')
    return data


def _categories(data: Dict) -> List[Dict]:
    return sorted(data["categories"], key=lambda c: _id_key(c["id"]))


def _segmentation(segm):
    """
    detectron2's reading of a ``segmentation`` (``load_coco_json``): an RLE dict (uncompressed
    counts compressed), or the polygons of 3 points or more. None when nothing valid is left.
    """
    if isinstance(segm, dict):
        try:
            if isinstance(segm["counts"], list):
                from pycocotools import mask as mask_util

                segm = mask_util.frPyObjects(segm, *segm["size"])
            elif not isinstance(segm["counts"], (str, bytes)) or len(segm["size"]) != 2:
                return None
        except (KeyError, TypeError, ValueError, IndexError):
            return None
        return segm
    if not isinstance(segm, list):
        return None
    # detectron2 drops polygons of fewer than 3 points; polygons that are not lists of numbers
    # would crash later in PolygonMasks, so they go the same way.
    return [
        poly for poly in segm
        if isinstance(poly, list) and len(poly) % 2 == 0 and len(poly) >= 6
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in poly)
    ] or None


def load_coco_instances(json_file: str, image_root: str, name: str) -> List[Dict]:
    """
    The records of detectron2's ``load_coco_json`` (images sorted by id, ``bbox`` XYWH_ABS turned
    into XYXY_ABS, polygons of fewer than 3 points and instances left without any dropped, RLE
    passed on, keypoints moved to pixel centres), category ids mapped to ``[0, #categories)`` in
    the order of their ids, but nothing broken in an entry raises. Dropped and counted in the
    dataset's summary line: image entries without ``id`` or ``file_name``, annotations of no
    listed image, or marked ``ignore``, or without a valid ``segmentation`` or ``keypoints`` (when
    they have some), and all that ``sanitize_dataset_dicts`` drops (a missing, null, short or non-numeric
    ``bbox``, an unknown ``category_id``, a missing or unreadable image...). A missing image
    ``height``/``width`` is read from the image file. A broken file raises as ``read_coco_json``.
    """
    data = read_coco_json(json_file)
    id_map = {c["id"]: i for i, c in enumerate(_categories(data))}
    dropped = DropLog()
    images = {}
    for i, img in enumerate(data["images"]):
        if not (isinstance(img, dict) and isinstance(img.get("id"), (int, str))
                and isinstance(img.get("file_name"), str)):
            dropped.add("image entries without id or file_name", f"images[{i}]")
            continue
        images[img["id"]] = img  # as pycocotools: a repeated id keeps the last entry
    annotations = {image_id: [] for image_id in images}
    for i, anno in enumerate(data.get("annotations", [])):
        image_id = anno.get("image_id") if isinstance(anno, dict) else None
        if not isinstance(image_id, (int, str)) or image_id not in annotations:
            dropped.add("annotations of no listed image", f"annotations[{i}]")
            continue
        annotations[image_id].append(anno)
    dicts = []
    for image_id in sorted(images, key=_id_key):
        img = images[image_id]
        record = {
            "file_name": os.path.join(image_root, img["file_name"]),
            # None when missing: the sanitizer reads the size from the image file.
            "height": img.get("height"),
            "width": img.get("width"),
            "image_id": image_id,
        }
        example = os.path.basename(img["file_name"])
        objs = []
        for anno in annotations[image_id]:
            if anno.get("ignore", 0):  # detectron2 does not support it (asserts)
                dropped.add('annotations marked "ignore"', example)
                continue
            obj = {key: anno[key] for key in ("iscrowd", "bbox", "keypoints", "category_id") if key in anno}
            if anno.get("segmentation"):
                segm = _segmentation(anno["segmentation"])
                if segm is None:
                    dropped.add("annotations without a valid segmentation", example)
                    continue
                obj["segmentation"] = segm
            keypoints = anno.get("keypoints")
            if keypoints:
                if not (isinstance(keypoints, list) and len(keypoints) % 3 == 0 and all(
                        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in keypoints)):
                    dropped.add("annotations with invalid keypoints", example)
                    continue
                # As detectron2: integer pixel indexes to the pixel centres (every third is a visibility).
                obj["keypoints"] = [v + 0.5 if k % 3 != 2 else v for k, v in enumerate(keypoints)]
            obj["bbox_mode"] = BoxMode.XYWH_ABS
            category = obj.get("category_id")
            obj["category_id"] = id_map.get(category, -1) if isinstance(category, (int, str)) else -1
            objs.append(obj)
        record["annotations"] = objs
        dicts.append(record)
    return sanitize_dataset_dicts(dicts, name, len(id_map), dropped=dropped)


def register_coco(name: str, json_file: str, image_root: str) -> None:
    """
    Register ``json_file`` (COCO instances format) with its images under ``image_root`` as
    ``name``. The file is read now: one that is not json, has no categories or no ``images``
    list is refused here (ValueError naming it, see ``read_coco_json``), not at training.
    """
    categories = _categories(read_coco_json(json_file))
    DatasetCatalog.register(name, lambda: load_coco_instances(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        thing_classes=[c["name"] for c in categories],
        # Not `json_file`: COCOEvaluator would then score against the raw file, broken
        # annotations and original ids included, instead of the mended records.
        source_json=json_file,
        image_root=image_root,
        evaluator_type="coco",
    )
