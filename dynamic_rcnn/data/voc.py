"""Any PASCAL VOC layout folder as a detectron2 dataset, and BCCD from it."""
import logging
import os
import xml.etree.ElementTree as ET
from typing import Dict, List, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from .sanitize import DropLog, sanitize_dataset_dicts

__all__ = ["load_voc_instances", "register_voc", "BCCD_CLASSES"]

logger = logging.getLogger("detectron2." + __name__)

BCCD_CLASSES = ["RBC", "WBC", "Platelets"]
# Extensions looked for under JPEGImages/<id> when <id>.jpg is not there (any case).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _text(node, path, default=None):
    found = node.find(path)
    return found.text.strip() if found is not None and found.text else default


def _number(text) -> float:
    """``text`` as a float; NaN when it is missing or not a number (the sanitizer drops such boxes)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return float("nan")


def _size(text):
    """A ``<size>`` field as an int; None when missing, non-numeric or 0 (the size is then read from the image)."""
    try:
        return int(float(text)) or None
    except (TypeError, ValueError, OverflowError):  # None, "abc", "nan", "inf"
        return None


def _check_classes(class_names: Sequence[str], name: str) -> None:
    """Raise ValueError, naming the dataset ``name`` and the positions, when a class is listed twice."""
    for cls in class_names:
        at = [i for i, c in enumerate(class_names) if c == cls]
        if len(at) > 1:
            # The boxes of that name would all get one of the class ids: the other is never learned nor scored.
            raise ValueError(
                f"{name}: the class list {list(class_names)} has {cls!r} at positions {', '.join(map(str, at[:-1]))} "
                f"and {at[-1]}: every box of {cls!r} would be given one of them, the other never learned nor scored; "
                "list each class once")


def _image_of(folder: str, image_id: str, listing: Dict[str, str]) -> str:
    """
    ``folder/<image_id>.jpg``, as detectron2's VOC loader reads it; when that does not exist, the
    ``folder/<image_id>.<ext>`` of ``listing`` (lower-cased name -> name) with an image extension of
    any case (``IMG_0004.JPG``, ``v004.png``), the first of ``IMAGE_EXTENSIONS``; else the ``.jpg``
    path (the sanitizer counts it missing).
    """
    jpg = os.path.join(folder, f"{image_id}.jpg")
    if os.path.isfile(jpg):
        return jpg
    for ext in IMAGE_EXTENSIONS:
        name = listing.get(f"{image_id}{ext}".lower())
        if name is not None and os.path.splitext(name)[0] == image_id:
            return os.path.join(folder, name)
    return jpg


def load_voc_instances(root: str, split, class_names: Sequence[str], name: str = None) -> List[Dict]:
    """
    Read ``root/ImageSets/Main/{split}.txt``, ``root/Annotations/*.xml`` and ``root/JPEGImages``.
    ``split`` may be a sequence of splits, read one after the other (e.g. ``("val", "test")``).
    The image of an id is ``JPEGImages/<id>.jpg``, else ``JPEGImages/<id>.<ext>`` of an image
    extension (:func:`_image_of`), as in detectron2's VOC loader; an XML ``<filename>`` naming
    another image (another stem; case and extension do not count) is not followed, but counted.

    An id listed twice (in a split file, or in two of ``split``) is loaded once, and counted. A
    ``<difficult>1</difficult>`` object is kept for training, as in detectron2, with ``"difficult": 1``
    in its annotation (0 for the others): ``HighIoUCOCOEvaluator`` scores it as an ignored region.

    Boxes use VOC's 1-based pixel indexes (as detectron2's own VOC loader, 1 is taken off the
    minimum corner of boxes that have an extent). Broken annotations are mended or dropped by
    ``sanitize_dataset_dicts``, with a one-line summary: a box with a missing or non-numeric
    coordinate is dropped, a missing or non-numeric ``<size>`` is read from the image file. A
    missing or unreadable XML file drops its image and is counted in the same line (its parse
    error is logged as a warning). Raises FileNotFoundError, naming it, when a split file is missing,
    and ValueError when ``class_names`` lists a class twice.
    """
    name = name or f"{root}:{split}"
    _check_classes(class_names, name)
    ids, dropped = {}, DropLog()
    for one in [split] if isinstance(split, str) else list(split):
        split_file = os.path.join(root, "ImageSets", "Main", f"{one}.txt")
        if not os.path.isfile(split_file):
            raise FileNotFoundError(f"{split_file} does not exist: is {root} a PASCAL VOC layout folder?")
        with open(split_file) as f:
            for image_id in (line.split()[0] for line in f if line.strip()):
                if image_id in ids:  # twice the weight in training, two records of one image in evaluation
                    dropped.add("split ids listed more than once, loaded once", f"{image_id} in {one}.txt")
                ids.setdefault(image_id, one)
    index = {c: i for i, c in enumerate(class_names)}
    images = os.path.join(root, "JPEGImages")
    listing = {n.lower(): n for n in (os.listdir(images) if os.path.isdir(images) else [])}
    dicts = []
    for image_id in ids:
        xml_file = os.path.join(root, "Annotations", f"{image_id}.xml")
        try:
            tree = ET.parse(xml_file).getroot()
        except FileNotFoundError:
            dropped.add("missing annotation files", os.path.basename(xml_file))
            continue
        except (OSError, ET.ParseError) as e:
            # The parse error says where in the file: worth its own line.
            logger.warning("%s: skipping %s: %s", name, xml_file, e)
            dropped.add("unreadable annotation files", os.path.basename(xml_file))
            continue
        file_name = _image_of(images, image_id, listing)
        # The id decides, not <filename>: following it, two XML files naming one image would train
        # on that image twice, each time with other boxes.
        named = os.path.basename(_text(tree, "filename") or "")
        if named and os.path.splitext(named)[0].lower() != image_id.lower():
            dropped.add("XML <filename> of another image than the split id's, the id's image used",
                        f"{image_id}.xml names {named}")
        record = {
            "file_name": file_name,
            "image_id": image_id,
            "height": _size(_text(tree, "size/height")),
            "width": _size(_text(tree, "size/width")),
            "annotations": [],
        }
        for obj in tree.findall("object"):
            cls = _text(obj, "name")
            if cls not in index:  # named here: the sanitizer only sees a category id
                kind = f"boxes of the unknown class {cls!r}" if cls else "boxes without a class <name>"
                dropped.add(kind, os.path.basename(file_name))
                continue
            box = [_number(_text(obj, f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
            # A box whose corners coincide as written (BCCD has two) has zero area, whatever
            # the pixel convention: it is left so for the sanitizer to drop and count.
            if box[2] > box[0] and box[3] > box[1]:
                box[0] -= 1.0
                box[1] -= 1.0
            record["annotations"].append(
                {
                    "bbox": box,
                    "bbox_mode": BoxMode.XYXY_ABS,
                    "category_id": index[cls],
                    "iscrowd": 0,
                    # Not iscrowd: detectron2's DatasetMapper drops crowd boxes from training.
                    "difficult": int(_number(_text(obj, "difficult")) == 1),
                }
            )
        dicts.append(record)
    return sanitize_dataset_dicts(dicts, name, len(class_names), dropped=dropped)


def voc_class_names(root: str, split: str) -> List[str]:
    """The class names (``<object><name>``) of the XML files of ``root``'s split ``split``, sorted; ValueError naming
    the split file when it is missing or names no XML with an object."""
    listed = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(listed):
        raise ValueError(f"{root} has no split file {listed}: a VOC folder holds ImageSets/Main/<split>.txt, "
                         "Annotations/ and JPEGImages/")
    names = set()
    with open(listed) as f:
        for image_id in filter(None, (line.strip() for line in f)):
            try:
                tree = ET.parse(os.path.join(root, "Annotations", f"{image_id}.xml")).getroot()
            except (OSError, ET.ParseError):
                continue  # the loading counts it
            names.update(n for n in (_text(obj, "name") for obj in tree.findall("object")) if n)
    if not names:
        raise ValueError(f"{listed}: no XML of its ids in {os.path.join(root, 'Annotations')} names an object")
    return sorted(names)


def register_voc(name: str, root: str, split, class_names: Sequence[str]) -> None:
    """
    Register a VOC layout folder's split (or sequence of splits) as ``name``, evaluated with COCO-style
    AP (``difficult`` objects as ignored regions). Raises ValueError when a class is listed twice.
    """
    class_names = list(class_names)
    _check_classes(class_names, name)
    DatasetCatalog.register(name, lambda: load_voc_instances(root, split, class_names, name))
    MetadataCatalog.get(name).set(thing_classes=class_names, dirname=root, split=split, evaluator_type="coco")
