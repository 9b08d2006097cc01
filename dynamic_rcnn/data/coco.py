"""
Any COCO-format json file as a detectron2 dataset, read by detectron2's ``load_coco_json``.

detectron2's reader stops at the first broken entry (an annotation without ``bbox`` or
``category_id``, a repeated annotation id, an ``ignore`` flag, ...): the project's own code only
drops and counts those entries first, then hands the rest to detectron2.
"""
import json
import math
import numbers
import os
import tempfile
from typing import Dict, List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .sanitize import DropLog, sanitize_dataset_dicts

__all__ = ["load_coco_instances", "register_coco", "read_coco_json"]

_FIX = (
    'a COCO instances file is {"images": [...], "annotations": [...], '
    '"categories": [{"id": 1, "name": "cell"}, ...]}'
)


def _refuse(json_file: str, what: str) -> ValueError:
    return ValueError(f"{json_file}: {what}; {_FIX}")


def _is_id(value) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _integral(value):
    """An integral float (``1.0``: some tools write every number so) as that int; anything else as it is."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _listed(values) -> str:
    """``1 and 2``, ``1, 2 and 4``."""
    values = [repr(v) for v in values]
    return ", ".join(values[:-1]) + " and " + values[-1]


def _numbers(values) -> bool:
    return all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def read_coco_json(json_file: str) -> Dict:
    """
    The content of ``json_file``, checked to be a COCO instances file: a json object whose
    ``categories`` is a non-empty list of ``{"id", "name"}`` with distinct ids, all ints (an
    integral float such as ``1.0`` counts as that int) or all strings, and distinct names, whose
    ``images`` is a list where no id and no file appears twice, and whose ``annotations``, when
    present, is a list. Raises FileNotFoundError or ValueError that names the file, says what is
    wrong and how it should look; broken entries inside the lists are dropped later, counted.
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
    seen, ids_of = set(), {}
    for i, c in enumerate(categories):
        if isinstance(c, dict) and isinstance(c.get("id"), float) and not c["id"].is_integer():
            raise _refuse(json_file, f"categories[{i}] has the id {c['id']!r}, which is not an integer")
        if not (isinstance(c, dict) and _is_id(_integral(c.get("id"))) and isinstance(c.get("name"), str)):
            raise _refuse(json_file, f'categories[{i}] is {json.dumps(c)[:100]}, not {{"id": <int>, "name": <str>}}')
        if c["id"] in seen:
            raise _refuse(json_file, f"category id {c['id']!r} appears twice in \"categories\"")
        seen.add(_integral(c["id"]))
        ids_of.setdefault(c["name"], []).append(_integral(c["id"]))
    if len({type(i) for i in seen}) > 1:
        raise _refuse(json_file, "the category ids mix numbers and strings: use numbers")
    for name, ids in ids_of.items():
        if len(ids) > 1:
            # Two classes of one name: detectron2 reports the AP of each class by name, one of them is lost.
            raise _refuse(json_file, f"the category name {name!r} is given to the ids {_listed(ids)}: give each "
                                     "category its own name, or their boxes one id")
    if not isinstance(data.get("images"), list):
        raise _refuse(json_file, f'"images" is {json.dumps(data.get("images"))[:100]}, not a list of images')
    names, files = {}, {}
    for img in data["images"]:
        image_id = _integral(img.get("id")) if isinstance(img, dict) else None
        if _is_id(image_id):
            if image_id in names:
                # One of the two would vanish and the boxes of both be trained on the other.
                raise _refuse(json_file, f"the image id {image_id!r} is given to two images, {names[image_id]!r} "
                                         f"and {img.get('file_name')!r}: give each image its own id")
            names[image_id] = img.get("file_name")
            if isinstance(img.get("file_name"), str):
                # Two records of one image, each with part of its boxes: each is scored as missing the
                # other's (a perfect detector gets 83 AP, not 100). Refused, not merged: the two lists may
                # be halves or copies, and the results keep the file's image ids, which its own tools score.
                first = files.setdefault(os.path.normpath(img["file_name"]), image_id)
                if first != image_id:
                    raise _refuse(json_file, f"the image file {img['file_name']!r} is listed under two image ids, "
                                             f"{first!r} and {image_id!r}, its boxes split between them: list each "
                                             "image once, with all its annotations under one id")
    if not isinstance(data.get("annotations", []), list):
        raise _refuse(json_file, '"annotations" is not a list')
    return data


def _valid_segmentation(segm) -> bool:
    """An RLE dict, or polygons of numbers of which at least one has 3 points (what detectron2 keeps)."""
    if isinstance(segm, dict):
        size = segm.get("size")
        return (isinstance(segm.get("counts"), (list, str, bytes)) and isinstance(size, list) and len(size) == 2
                and _numbers(size))
    return isinstance(segm, list) and all(isinstance(p, list) and _numbers(p) for p in segm) and any(
        len(p) % 2 == 0 and len(p) >= 6 for p in segm)


def _integral_ids(entry, keys):
    """``entry`` with its ``keys`` written as integral floats (``1.0``) made ints, and whether any was."""
    if not isinstance(entry, dict):
        return entry, False
    floats = {k: int(entry[k]) for k in keys if isinstance(entry.get(k), float) and entry[k].is_integer()}
    return (dict(entry, **floats), True) if floats else (entry, False)


_FLOAT_IDS = "entries with ids written as integral floats (1.0), read as integers"


def _loadable(data: Dict, dropped: DropLog) -> Dict:
    """
    ``data`` without the entries that would stop detectron2's ``load_coco_json`` (or pycocotools),
    each dropped and counted in ``dropped``; missing ids of annotations are given, ids written as
    integral floats made ints (detectron2 would keep ``1.0`` as the image id of its records and
    results), missing image sizes left to the sanitizer (which reads them from the image file), all
    counted. ``data`` is not changed.
    """
    categories = []
    for i, c in enumerate(data["categories"]):
        c, floats = _integral_ids(c, ("id",))
        if floats:
            dropped.add(_FLOAT_IDS, f"categories[{i}]")
        categories.append(c)
    images = []
    for i, img in enumerate(data["images"]):
        img, floats = _integral_ids(img, ("id",))
        if not (isinstance(img, dict) and _is_id(img.get("id")) and isinstance(img.get("file_name"), str)):
            dropped.add("image entries without id or file_name", f"images[{i}]")
            continue
        if floats:
            dropped.add(_FLOAT_IDS, f"images[{i}]")
        images.append(dict(img, height=img.get("height"), width=img.get("width")))
    names = {img["id"]: os.path.basename(img["file_name"]) for img in images}
    known = {c["id"] for c in categories}
    annotations, ids = [], set()
    for i, anno in enumerate(data.get("annotations", [])):
        anno, floats = _integral_ids(anno, ("id", "image_id", "category_id"))
        image_id = anno.get("image_id") if isinstance(anno, dict) else None
        if not _is_id(image_id) or image_id not in names:
            dropped.add("annotations of no listed image", f"annotations[{i}]")
            continue
        example, bbox, category = names[image_id], anno.get("bbox"), anno.get("category_id")
        if floats:
            dropped.add(_FLOAT_IDS, example)
        if anno.get("ignore", 0):  # detectron2 does not support it (it asserts)
            dropped.add('annotations marked "ignore"', example)
        elif isinstance(category, float) and math.isfinite(category):
            dropped.add(f"boxes of the category id {category!r}, which is not an integer: use the categories' ids",
                        example)
        elif not (_is_id(category) and category in known):
            dropped.add(f"boxes of the unknown category id {category!r}", example)
        elif not (isinstance(bbox, list) and len(bbox) == 4 and _numbers(bbox)):
            dropped.add("boxes without valid coordinates", example)
        elif anno.get("segmentation") and not _valid_segmentation(anno["segmentation"]):
            dropped.add("annotations without a valid segmentation", example)
        elif anno.get("keypoints") and not (isinstance(anno["keypoints"], list) and len(anno["keypoints"]) % 3 == 0
                                            and _numbers(anno["keypoints"])):
            dropped.add("annotations with invalid keypoints", example)
        else:
            annotations.append(anno)
            ids.add(anno.get("id"))
    # detectron2 asserts that annotation ids are unique; a missing or repeated one is given anew.
    next_id, seen, mended = max((i for i in ids if isinstance(i, int)), default=0) + 1, set(), []
    for anno in annotations:
        if not _is_id(anno.get("id")) or anno["id"] in seen:
            dropped.add("annotation ids given anew (missing or repeated)", names[anno["image_id"]])
            anno = dict(anno, id=next_id)
            next_id += 1
        seen.add(anno["id"])
        mended.append(anno)
    return dict(data, categories=categories, images=images, annotations=mended)


def load_coco_instances(json_file: str, image_root: str, name: str) -> List[Dict]:
    """
    The records of detectron2's ``load_coco_json(json_file, image_root, name)`` (category ids
    mapped to ``[0, #categories)`` in the order of their ids, the mapping kept in the dataset's
    metadata), but nothing broken in an entry raises: what would stop detectron2 is dropped and
    counted first (image entries without ``id`` or ``file_name``, annotations of no listed image,
    marked ``ignore``, of an unknown or non-integer ``category_id``, without a valid ``bbox``,
    ``segmentation`` or ``keypoints``; missing or repeated annotation ids are given anew, ids written
    as integral floats made ints), then the records pass through
    ``sanitize_dataset_dicts`` (missing or unreadable images, sizes, boxes outside the image), all
    counted in the dataset's one summary line. A broken file raises as ``read_coco_json``.
    """
    data = read_coco_json(json_file)
    dropped = DropLog()
    loadable = _loadable(data, dropped)
    # 1.0 == 1: what was mended is told by the counts, what was added (a missing size) by the comparison.
    unchanged = not dropped.counts and loadable["images"] == data["images"]
    if unchanged:
        dicts = load_coco_json(json_file, image_root, name)
    else:
        with tempfile.TemporaryDirectory(prefix="dynamic_rcnn_coco_") as folder:
            cleaned = os.path.join(folder, os.path.basename(json_file))
            with open(cleaned, "w") as f:
                json.dump(loadable, f)
            dicts = load_coco_json(cleaned, image_root, name)
    return sanitize_dataset_dicts(dicts, name, len(data["categories"]), dropped=dropped)


def register_coco(name: str, json_file: str, image_root: str) -> None:
    """
    Register ``json_file`` (COCO instances format) with its images under ``image_root`` as
    ``name``, as detectron2's ``register_coco_instances`` does, with the broken entries dropped
    (``load_coco_instances``). The file is read now: one that is not json, has no categories, two
    categories of one name, no ``images`` list, an image id given twice or an image file listed
    twice is refused here (ValueError naming it), not at training.
    Evaluation scores the records as loaded, with the file's own category and image ids.
    """
    categories = read_coco_json(json_file)["categories"]
    categories = sorted((dict(c, id=_integral(c["id"])) for c in categories), key=lambda c: c["id"])
    DatasetCatalog.register(name, lambda: load_coco_instances(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        thing_classes=[c["name"] for c in categories],
        # As load_coco_json sets it: COCOEvaluator writes the file's own ids back into its results.
        thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(categories)},
        # Not `json_file`: COCOEvaluator would then score against the raw file, broken entries
        # included, instead of the records the model was evaluated on.
        source_json=json_file,
        image_root=image_root,
        evaluator_type="coco",
    )
