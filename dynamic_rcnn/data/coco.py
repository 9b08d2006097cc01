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


def _numbers(values) -> bool:
    return all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def read_coco_json(json_file: str) -> Dict:
    """
    The content of ``json_file``, checked to be a COCO instances file: a json object whose
    ``categories`` is a non-empty list of ``{"id", "name"}`` with distinct ids, all ints or all
    strings, whose ``images`` is a list where no id appears twice, and whose ``annotations``, when
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
    seen = set()
    for i, c in enumerate(categories):
        if not (isinstance(c, dict) and _is_id(c.get("id")) and isinstance(c.get("name"), str)):
            raise _refuse(json_file, f'categories[{i}] is {json.dumps(c)[:100]}, not {{"id": <int>, "name": <str>}}')
        if c["id"] in seen:
            raise _refuse(json_file, f"category id {c['id']!r} appears twice in \"categories\"")
        seen.add(c["id"])
    if len({type(i) for i in seen}) > 1:
        raise _refuse(json_file, "the category ids mix numbers and strings: use numbers")
    if not isinstance(data.get("images"), list):
        raise _refuse(json_file, f'"images" is {json.dumps(data.get("images"))[:100]}, not a list of images')
    names = {}
    for img in data["images"]:
        if isinstance(img, dict) and _is_id(img.get("id")):
            if img["id"] in names:
                # One of the two would vanish and the boxes of both be trained on the other.
                raise _refuse(json_file, f"the image id {img['id']!r} is given to two images, "
                                         f"{names[img['id']]!r} and {img.get('file_name')!r}: give each image its own id")
            names[img["id"]] = img.get("file_name")
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


def _loadable(data: Dict, dropped: DropLog) -> Dict:
    """
    ``data`` without the entries that would stop detectron2's ``load_coco_json`` (or pycocotools),
    each dropped and counted in ``dropped``; missing ids of annotations are given, missing image
    sizes left to the sanitizer (which reads them from the image file). ``data`` is not changed.
    """
    images = []
    for i, img in enumerate(data["images"]):
        if not (isinstance(img, dict) and _is_id(img.get("id")) and isinstance(img.get("file_name"), str)):
            dropped.add("image entries without id or file_name", f"images[{i}]")
            continue
        images.append(dict(img, height=img.get("height"), width=img.get("width")))
    names = {img["id"]: os.path.basename(img["file_name"]) for img in images}
    categories = {c["id"] for c in data["categories"]}
    annotations, ids = [], set()
    for i, anno in enumerate(data.get("annotations", [])):
        image_id = anno.get("image_id") if isinstance(anno, dict) else None
        if not _is_id(image_id) or image_id not in names:
            dropped.add("annotations of no listed image", f"annotations[{i}]")
            continue
        example, bbox = names[image_id], anno.get("bbox")
        if anno.get("ignore", 0):  # detectron2 does not support it (it asserts)
            dropped.add('annotations marked "ignore"', example)
        elif not (_is_id(anno.get("category_id")) and anno["category_id"] in categories):
            dropped.add(f"boxes of the unknown category id {anno.get('category_id')!r}", example)
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
    return dict(data, images=images, annotations=mended)


def load_coco_instances(json_file: str, image_root: str, name: str) -> List[Dict]:
    """
    The records of detectron2's ``load_coco_json(json_file, image_root, name)`` (category ids
    mapped to ``[0, #categories)`` in the order of their ids, the mapping kept in the dataset's
    metadata), but nothing broken in an entry raises: what would stop detectron2 is dropped and
    counted first (image entries without ``id`` or ``file_name``, annotations of no listed image,
    marked ``ignore``, of an unknown ``category_id``, without a valid ``bbox``, ``segmentation`` or
    ``keypoints``; missing or repeated annotation ids are given anew), then the records pass through
    ``sanitize_dataset_dicts`` (missing or unreadable images, sizes, boxes outside the image), all
    counted in the dataset's one summary line. A broken file raises as ``read_coco_json``.
    """
    data = read_coco_json(json_file)
    dropped = DropLog()
    loadable = _loadable(data, dropped)
    unchanged = loadable["images"] == data["images"] and loadable["annotations"] == data.get("annotations", [])
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
    (``load_coco_instances``). The file is read now: one that is not json, has no categories, no
    ``images`` list or an image id given twice is refused here (ValueError naming it), not at training.
    Evaluation scores the records as loaded, with the file's own category and image ids.
    """
    categories = sorted(read_coco_json(json_file)["categories"], key=lambda c: c["id"])
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
