#!/usr/bin/env python
"""
Deterministic train/test splits of three public detection data sets, from local clones of their
repositories, as COCO instances files that ``dynamic_rcnn.data.prepared.register_prepared`` registers:

    git clone https://github.com/experiencor/kangaroo /tmp/src/kangaroo
    git clone https://github.com/ai-agriculture-circuits-and-systems/Pear640 /tmp/src/pear640
    git clone https://github.com/maxKudi/Cell-Dataset /tmp/src/cells
    python tools/prepare_datasets.py --out $DYNAMIC_RCNN_DATASETS \\
        kangaroo=/tmp/src/kangaroo pear640=/tmp/src/pear640 cells=/tmp/src/cells

Each data set becomes ``<out>/<name>/{train,test}.json`` (COCO: images with id / file_name / height /
width, annotations with id / image_id / category_id / bbox xywh / area / iscrowd 0, categories from
id 1), ``<out>/<name>/images/`` and ``<out>/<name>/prepared.json`` (source repository and commit, the
split rule, per split: images, objects, objects an image, median box size; what was mended or dropped).
The same input gives byte-identical output: names sorted, splits by sha1 of names, no timestamps. A
data set's folder is written to a temporary folder beside it, then renamed over the old one (replaced
whole). One summary line a data set; bad input stops with one ``error: ...`` line (exit status 2).

The data sets (what the sources hold, as checked at the commits named in ``SPECS``):

* ``kangaroo`` (experiencor/kangaroo): ``images/*.jpg`` + ``annots/*.xml`` (PASCAL VOC, class
  ``kangaroo``), 164 web photos, 1-8 kangaroos each. 75 / 25 by image. Two files are the same picture
  (``00007.jpg``, ``00033.jpg``): the second is dropped. ``00101`` / ``00118`` are two frames of one
  scene: kept on one side of the split (near-duplicate group). ``00090.jpg`` is cut short by 20 bytes
  (PIL refuses it, so would detectron2's loader): re-encoded as ``00090.png``.
* ``pear640`` (ai-agriculture-circuits-and-systems/Pear640): ``data/images/*.jpg`` (712 crops of 640
  px) + ``data/data.json`` (COCO, class ``pear``), ~11.7 pears a crop. The crops come from 59 photos
  (``DSC_<n>_...``): 75 / 25 of the photos, so that no photo has crops on both sides. Boxes cut by the
  crop border to (almost) nothing (under ``MIN_BOX_SIDE`` px wide or high; 51 of zero size) are dropped.
* ``cells`` (maxKudi/Cell-Dataset): ``Original Dataset/*.png`` + an XML beside each (``Living Cell``,
  ``Dead Cell``), 2,500 microscopy images of ~220 px, names with spaces and parentheses
  (``ncell (99).png``, written as ``ncell_99.png``). Many images are copies of others (the same frame
  under two names, flipped, turned 180 degrees or with other brightness; 70 pairs pixel-identical, with
  boxes drawn twice, differently): near-duplicate groups (thumbnail correlation, below) give one image
  each, and a subset of the distinct images is taken by sha1 of the file name (800 test, 600 train). 41
  images are 16-bit (read as they are, detectron2 would see them white): written as 8-bit. Every image
  is written as an 8-bit RGB PNG.

Everywhere: image files that decode fully as 8-bit grey or RGB are copied byte for byte; others
(truncated, 16-bit, palette, alpha, EXIF-turned) are re-encoded as 8-bit RGB PNG (the pixels as
stored, which the boxes were drawn on). VOC boxes are 1-based (as detectron2's VOC loader reads them:
1 taken off xmin / ymin). Boxes are clipped to the image; boxes of an unknown class, without
numbers, repeated, or under MIN_BOX_SIDE px after clipping are dropped, all counted.

Near-duplicates: each image's grey thumbnail (the inner 80 %, 48 x 48, high-passed: the illumination
taken off) is correlated with every other's under the 8 flips and quarter turns; pairs above the data
set's ``near_duplicate`` threshold are joined into groups (transitively). On the cells, copies reach
0.95-1.0 and other frames of one counting-chamber field 0.8-0.9 (its grid lines; some may be frames of
one video): 0.8 groups those too, leaving ~1,770 distinct images. Kangaroo photos of other scenes stay
under 0.25, two frames of one scene reach 0.76, so 0.6; pear crops of different photos under 0.2.
"""

import argparse
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict

import cv2
import numpy as np
from PIL import Image, ImageFile

MIN_BOX_SIDE = 2.0  # px: narrower or lower boxes (after clipping) are dropped
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
_THUMB = 48  # thumbnail side for the near-duplicate search
_TRANSFORMS = 8  # identity, 3 quarter turns, and the same after a left-right flip

SPECS = {
    "kangaroo": {
        "repository": "experiencor/kangaroo",
        "commit": "882bbbd",  # the commit these rules were made on: another is recorded and noted
        "license": "not stated in the repository",
        "layout": "images/*.jpg and annots/*.xml (PASCAL VOC)",
        "classes": ["kangaroo"],
        "near_duplicate": 0.6,
        "split": {"test_fraction": 0.25, "unit": "image", "key": "the source path, e.g. images/00001.jpg"},
    },
    "pear640": {
        "repository": "ai-agriculture-circuits-and-systems/Pear640",
        "commit": "77af95b",
        "license": "CC BY 4.0",
        "layout": "data/images/*.jpg and data/data.json (COCO)",
        "classes": ["pear"],
        "near_duplicate": 0.6,
        "split": {
            "test_fraction": 0.25,
            "unit": "photo",
            "key": "the DSC_<n> prefix of the file name, e.g. DSC_1352",
        },
    },
    "cells": {
        "repository": "maxKudi/Cell-Dataset",
        "commit": "f02ae84",
        "license": "MIT",
        "layout": "'Original Dataset'/*.png with an XML (PASCAL VOC) beside each",
        "classes": ["Living Cell", "Dead Cell"],
        "near_duplicate": 0.8,
        "split": {
            "test": 800,
            "train": 600,
            "unit": "image",
            "key": "the source path, e.g. Original Dataset/b (3).png",
        },
        "all_as_png": True,  # one format for all: the sources mix grey, RGB, palette, RGBA and 16-bit PNGs
    },
}


class PrepareError(Exception):
    """Bad input: the message is the one line the command prints."""


class Notes:
    """What was mended or dropped, by kind, with the first few examples of each kind."""

    def __init__(self):
        self.counts = Counter()
        self.examples = defaultdict(list)

    def add(self, kind, example, n=1):
        self.counts[kind] += n
        if len(self.examples[kind]) < 3:
            self.examples[kind].append(example)

    def as_dict(self):
        return {k: {"count": self.counts[k], "examples": self.examples[k]} for k in sorted(self.counts)}

    def line(self):
        return "; ".join(
            f"{self.counts[k]} {k} (e.g. {', '.join(self.examples[k])})" for k in sorted(self.counts)
        )


class Entry:
    """One source image: where it is, its boxes (class name, x0, y0, x1, y1; 0-based, continuous)."""

    def __init__(self, rel, path, boxes, size=None, photo=None):
        self.rel = rel  # path relative to the source folder (recorded)
        self.path = path
        self.boxes = boxes
        self.size = size  # (width, height) the annotation states, or None
        self.photo = photo  # the split unit's key when it is not the image


# ----------------------------------------------------------------------------------------------
# reading the sources


def _require(path, what, name, src, dir_=True):
    ok = os.path.isdir(path) if dir_ else os.path.isfile(path)
    if not ok:
        spec = SPECS[name]
        raise PrepareError(
            f"{name}={src}: {path} is not {'a folder' if dir_ else 'a file'} ({what}): not a clone of "
            f"{spec['repository']}, which has {spec['layout']}"
        )


def _files(folder, extensions):
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(extensions) and not f.startswith("."))


def _number(text):
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _read_voc(xml_path, rel, notes):
    """([(class, x0, y0, x1, y1) or (class, None...)], (width, height) or None), or None when unreadable."""
    try:
        root = ET.parse(xml_path).getroot()
    except (OSError, ET.ParseError):
        notes.add("unreadable annotation files (their images dropped)", rel)
        return None
    width, height = _number(root.findtext("size/width")), _number(root.findtext("size/height"))
    boxes = []
    for obj in root.findall("object"):
        cls = (obj.findtext("name") or "").strip()
        xmin, ymin, xmax, ymax = (
            _number(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")
        )
        if None in (xmin, ymin, xmax, ymax):
            boxes.append((cls, None, None, None, None))
            continue
        # VOC pixel indexes are 1-based and inclusive: [xmin - 1, xmax] in continuous coordinates.
        boxes.append((cls, xmin - 1.0, ymin - 1.0, xmax, ymax))
    size = (width, height) if width and height else None
    return boxes, size


def _voc_pairs(image_dir, xml_dir, src, notes):
    entries = []
    images = _files(image_dir, IMAGE_EXTENSIONS)
    xmls = {os.path.splitext(f)[0]: f for f in _files(xml_dir, (".xml",))}
    stems = set()
    for f in images:
        stem = os.path.splitext(f)[0]
        rel = os.path.relpath(os.path.join(image_dir, f), src)
        if stem in stems:
            notes.add("images of a name already seen with another extension (dropped)", rel)
            continue
        stems.add(stem)
        if stem not in xmls:
            notes.add("images without an annotation file (dropped)", rel)
            continue
        read = _read_voc(
            os.path.join(xml_dir, xmls[stem]), os.path.relpath(os.path.join(xml_dir, xmls[stem]), src), notes
        )
        if read is not None:
            entries.append(Entry(rel, os.path.join(image_dir, f), read[0], read[1]))
    for stem in sorted(set(xmls) - stems):
        notes.add(
            "annotation files without an image (ignored)",
            os.path.relpath(os.path.join(xml_dir, xmls[stem]), src),
        )
    return entries


def read_kangaroo(src, notes):
    images, annots = os.path.join(src, "images"), os.path.join(src, "annots")
    _require(images, "the images", "kangaroo", src)
    _require(annots, "the VOC annotations", "kangaroo", src)
    entries = _voc_pairs(images, annots, src, notes)
    if not entries:
        raise PrepareError(f"kangaroo={src}: no image in {images} has an XML of the same name in {annots}")
    return entries


def read_cells(src, notes):
    folder = os.path.join(src, "Original Dataset")
    _require(folder, "the images with their VOC annotations", "cells", src)
    entries = _voc_pairs(folder, folder, src, notes)
    if not entries:
        raise PrepareError(f"cells={src}: no image in {folder} has an XML of the same name beside it")
    return entries


_PHOTO = re.compile(r"^(DSC_\d+)_")


def read_pear640(src, notes):
    folder, json_file = os.path.join(src, "data", "images"), os.path.join(src, "data", "data.json")
    _require(folder, "the images", "pear640", src)
    _require(json_file, "the COCO annotations", "pear640", src, dir_=False)
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
        images, annotations, categories = data["images"], data.get("annotations", []), data["categories"]
        category_names = {c["id"]: c["name"] for c in categories}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PrepareError(
            f"pear640={src}: {json_file} is not a COCO instances file ({type(e).__name__}: {e})"
        ) from None
    # Its one category is "pear" (the per-image json files beside the crops call it "pear640").
    category_names = {i: ("pear" if n in ("pear", "pear640") else n) for i, n in category_names.items()}
    boxes = defaultdict(list)
    ids = {img.get("id") for img in images if isinstance(img, dict)}
    for i, a in enumerate(annotations):
        if not isinstance(a, dict) or a.get("image_id") not in ids:
            notes.add("annotations of no listed image (dropped)", f"annotations[{i}]")
            continue
        bbox = a.get("bbox")
        cls = category_names.get(a.get("category_id"), f"category id {a.get('category_id')!r}")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) is not None for v in bbox)):
            boxes[a["image_id"]].append((cls, None, None, None, None))
            continue
        x, y, w, h = (float(v) for v in bbox)
        boxes[a["image_id"]].append((cls, x, y, x + w, y + h))
    on_disk = set(_files(folder, IMAGE_EXTENSIONS))
    entries, listed = [], set()
    for img in sorted((i for i in images if isinstance(i, dict)), key=lambda i: str(i.get("file_name"))):
        name = os.path.basename(str(img.get("file_name")))
        rel = os.path.join("data", "images", name)
        if name in listed:
            notes.add("images listed twice in data.json (the second dropped)", rel)
            continue
        listed.add(name)
        if name not in on_disk:
            notes.add("images of data.json that are not in data/images (dropped)", rel)
            continue
        match = _PHOTO.match(name)
        if not match:
            notes.add("crops without a DSC_<n>_ photo prefix (each its own photo)", rel)
        photo = match.group(1) if match else os.path.splitext(name)[0]
        size = (_number(img.get("width")), _number(img.get("height")))
        entries.append(
            Entry(rel, os.path.join(folder, name), boxes[img.get("id")], size if all(size) else None, photo)
        )
    for name in sorted(on_disk - listed):
        notes.add(
            "images in data/images that data.json does not list (ignored)",
            os.path.join("data", "images", name),
        )
    if not entries:
        raise PrepareError(f"pear640={src}: {json_file} lists no image of {folder}")
    return entries


READERS = {"kangaroo": read_kangaroo, "pear640": read_pear640, "cells": read_cells}


# ----------------------------------------------------------------------------------------------
# images


def _decode(path):
    """(PIL image, truncated) with its pixels loaded, or (None, False) when it cannot be decoded."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image, False
    except Exception:
        pass
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return image, True
    except Exception:
        return None, False
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _to_8bit(image):
    """The image as 8-bit "L" or "RGB" (16-bit and 32-bit integers scaled down, float [0, 1] scaled up)."""
    if image.mode in ("L", "RGB"):
        return image
    if image.mode.startswith("I") or image.mode == "F":
        a = np.asarray(image).astype(np.float64)
        if image.mode == "F" and a.max(initial=0) <= 1.0:
            a = a * 255.0
        elif image.mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a / 256.0 if a.max(initial=0) <= 65535 else a * (255.0 / a.max())
        return Image.fromarray(np.clip(np.floor(a), 0, 255).astype(np.uint8), "L")
    return image.convert("RGB")


def load_image(entry, notes):
    """
    (8-bit L or RGB image, how it must be written: None to copy the file, else the reason to
    re-encode it), or (None, None) when it does not decode.
    """
    image, truncated = _decode(entry.path)
    if image is None:
        notes.add("images that do not decode (dropped)", entry.rel)
        return None, None
    reasons = []
    if truncated:
        reasons.append("truncated")
    if image.mode not in ("L", "RGB"):
        reasons.append("16-bit" if image.mode.startswith("I;16") else f"mode {image.mode}")
    try:
        orientation = image.getexif().get(274)
    except Exception:
        orientation = None
    # detectron2 would turn the pixels by this tag; the boxes are of the pixels as stored.
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        reasons.append("EXIF orientation")
    if image.format not in ("JPEG", "PNG"):
        reasons.append(f"{image.format} file")
    reason = ", ".join(reasons) or None
    if reason:
        notes.add(f"images re-encoded as PNG ({reason})", entry.rel)
    return _to_8bit(image), reason


def _thumbnail(gray):
    h, w = gray.shape
    inner = gray[h // 10 : h - h // 10, w // 10 : w - w // 10].astype(np.float32)
    t = cv2.resize(inner, (_THUMB, _THUMB), interpolation=cv2.INTER_AREA)
    t = t - cv2.GaussianBlur(t, (0, 0), 3)
    t = t - t.mean()
    norm = float(np.linalg.norm(t))
    return t / norm if norm > 1e-3 else np.zeros_like(t)  # a flat image matches nothing


def near_duplicate_groups(thumbs, threshold):
    """Groups (lists of indexes, each sorted) of images whose thumbnails correlate above ``threshold``."""
    n = len(thumbs)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if n > 1:
        base = np.stack([t.ravel() for t in thumbs]).astype(np.float32)
        best = np.full((n, n), -1.0, np.float32)
        for k in range(_TRANSFORMS):
            moved = np.stack([np.rot90(np.fliplr(t) if k >= 4 else t, k % 4).ravel() for t in thumbs])
            np.maximum(best, base @ moved.T.astype(np.float32), out=best)
        np.fill_diagonal(best, -1.0)
        # Rounded: the last bits of a matrix product may differ between BLAS builds and thread counts.
        close = np.round(np.maximum(best, best.T), 4) > threshold
        for i, j in zip(*np.nonzero(np.triu(close))):
            a, b = find(int(i)), find(int(j))
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups = defaultdict(list)
    for i in range(n):
        groups[find(i)].append(i)
    return sorted(groups.values())


# ----------------------------------------------------------------------------------------------
# boxes


def clean_boxes(entry, width, height, classes, notes):
    """[(category id, x, y, w, h)] of the entry: clipped, the broken ones dropped and counted."""
    index = {c: i + 1 for i, c in enumerate(classes)}
    kept, seen = [], set()
    if entry.size and (round(entry.size[0]), round(entry.size[1])) != (width, height):
        notes.add("annotations stating another image size than the file's (the file's used)", entry.rel)
    for cls, x0, y0, x1, y1 in entry.boxes:
        if cls not in index:
            notes.add(
                f"boxes of the unknown class {cls!r} (dropped)" if cls else "boxes without a class (dropped)",
                entry.rel,
            )
            continue
        if x0 is None:
            notes.add("boxes without valid coordinates (dropped)", entry.rel)
            continue
        c = [
            min(max(x0, 0.0), width),
            min(max(y0, 0.0), height),
            min(max(x1, 0.0), width),
            min(max(y1, 0.0), height),
        ]
        w, h = c[2] - c[0], c[3] - c[1]
        if w < MIN_BOX_SIDE or h < MIN_BOX_SIDE:
            notes.add(
                f"boxes under {MIN_BOX_SIDE:g} px wide or high, zero-size ones included (dropped)", entry.rel
            )
            continue
        if max(abs(a - b) for a, b in zip(c, (x0, y0, x1, y1))) > 0.01:  # not float noise at the border
            notes.add("boxes clipped to the image", entry.rel)
        box = (index[cls],) + tuple(round(v, 2) for v in (c[0], c[1], w, h))
        if box in seen:
            notes.add("boxes repeated in an image (the repeats dropped)", entry.rel)
            continue
        seen.add(box)
        kept.append(box)
    return kept


# ----------------------------------------------------------------------------------------------
# the split


def _sha1(name, key):
    return hashlib.sha1(f"{name}/{key}".encode("utf-8")).hexdigest()


def out_name(rel, extension):
    """The file name written: the source's base name, characters other than [A-Za-z0-9._-] runs as '_'."""
    stem = os.path.splitext(os.path.basename(rel))[0]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("_") + extension


def split(name, items, groups):
    """
    ``{"train": [item indexes], "test": [...]}`` and the rule in words. ``items[i]["unit"]`` is the
    split unit's key (the image, or the photo); ``groups`` the near-duplicate groups.
    """
    spec = SPECS[name]["split"]
    # Units (photos or images) joined with the near-duplicate groups: a group stays on one side.
    parent = {}

    def find(k):
        while parent.setdefault(k, k) != k:
            k = parent[k]
        return k

    for group in groups:
        keys = sorted({items[i]["unit"] for i in group})
        for k in keys[1:]:
            a, b = find(keys[0]), find(k)
            if a != b:
                parent[max(a, b)] = min(a, b)
    members = defaultdict(list)
    for i, item in enumerate(items):
        members[find(item["unit"])].append(i)
    order = sorted(members, key=lambda k: _sha1(name, k))
    result = {"train": [], "test": []}
    if "test_fraction" in spec:
        units_per_block = {k: len({items[i]["unit"] for i in members[k]}) for k in order}
        total = sum(units_per_block.values())
        target = round(spec["test_fraction"] * total)
        taken = 0
        for k in order:
            side = "test" if taken < target else "train"
            if side == "test":
                taken += units_per_block[k]
            result[side] += members[k]
        unit, threshold = spec["unit"], SPECS[name]["near_duplicate"]
        rule = (
            f"by {unit}: the {unit}s ordered by sha1('{name}/' + key), key: {spec['key']}; the first "
            f"{spec['test_fraction']:.0%} of them ({target} of {total}) to test, the rest to train. "
            f"Near-duplicate images (thumbnail correlation > {threshold}, flips and quarter turns included) "
            f"keep their {unit}s together, placed by the first key"
        )
    else:
        # One image a near-duplicate group (the one whose name hashes first), then the first
        # `test` of them to test, the next `train` to train, by sha1 of the file name.
        firsts = sorted(
            (min(members[k], key=lambda i: _sha1(name, items[i]["unit"])) for k in order),
            key=lambda i: _sha1(name, items[i]["unit"]),
        )
        n_test, n_train = spec["test"], spec["train"]
        if len(firsts) < n_test + n_train:  # fewer distinct images than asked for: shared in the same ratio
            n_test = round(len(firsts) * n_test / (n_test + n_train))
            n_train = len(firsts) - n_test
        result["test"] = firsts[:n_test]
        result["train"] = firsts[n_test : n_test + n_train]
        rule = (
            f"a subset of distinct images: one image of each near-duplicate group (thumbnail correlation > "
            f"{SPECS[name]['near_duplicate']}, flips and quarter turns included), the one of the lowest "
            f"sha1('{name}/' + key), key: {spec['key']}; these ordered by that hash, the "
            f"first {n_test} to test, the next {n_train} to train ({len(firsts)} distinct images of "
            f"{len(items)}; with fewer than {spec['test'] + spec['train']}, all of them, shared "
            f"{spec['test']}:{spec['train']})"
        )
    for side in result:
        result[side].sort(key=lambda i: items[i]["file_name"])
    return result, rule


# ----------------------------------------------------------------------------------------------
# writing


def _git_commit(src):
    """HEAD of the git clone ``src``; None when ``src`` is not the top of a git work tree."""
    try:
        top = subprocess.run(
            ["git", "-C", src, "rev-parse", "--show-toplevel"], capture_output=True, text=True, timeout=30
        )
        if top.returncode or os.path.realpath(top.stdout.strip()) != os.path.realpath(src):
            return None
        head = subprocess.run(
            ["git", "-C", src, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30
        )
        return head.stdout.strip() if head.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _git_changed(src, paths):
    try:
        status = subprocess.run(
            ["git", "-C", src, "status", "--porcelain", "--", *paths],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return (
            len([line for line in status.stdout.splitlines() if line.strip()])
            if status.returncode == 0
            else None
        )
    except (OSError, subprocess.SubprocessError):
        return None


_USED_PATHS = {
    "kangaroo": ["images", "annots"],
    "pear640": ["data/images", "data/data.json"],
    "cells": ["Original Dataset"],
}


def _statistics(records, classes):
    boxes = [a for r in records for a in r["annotations"]]
    sides = sorted(math.sqrt(a[3] * a[4]) for a in boxes)
    stats = {
        "images": len(records),
        "objects": len(boxes),
        "objects_per_image": round(len(boxes) / len(records), 2) if records else 0.0,
        "images_without_objects": sum(1 for r in records if not r["annotations"]),
        "objects_by_class": {c: sum(1 for a in boxes if a[0] == i + 1) for i, c in enumerate(classes)},
        "median_box_size_px": round(float(np.median(sides)), 1) if sides else None,
        "box_size_px_5_95_percent": (
            [round(float(np.percentile(sides, p)), 1) for p in (5, 95)] if sides else None
        ),
        "median_box_wh_px": (
            [round(float(np.median([a[k] for a in boxes])), 1) for k in (3, 4)] if boxes else None
        ),
        "median_image_wh_px": (
            [int(np.median([r[k] for r in records])) for k in ("width", "height")] if records else None
        ),
    }
    return stats


def _coco(name, records, classes, commit):
    spec = SPECS[name]
    images, annotations = [], []
    for image_id, r in enumerate(records, 1):
        images.append(
            {
                "id": image_id,
                "file_name": r["file_name"],
                "height": r["height"],
                "width": r["width"],
                "source_file": r["rel"],
            }
        )
        for c, x, y, w, h in r["annotations"]:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": c,
                    "bbox": [x, y, w, h],
                    "area": round(w * h, 2),
                    "iscrowd": 0,
                }
            )
    return {
        "info": {
            "description": f"{name}, prepared by tools/prepare_datasets.py",
            "source": spec["repository"],
            "commit": commit,
        },
        "licenses": [{"id": 1, "name": spec["license"]}],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i + 1, "name": c} for i, c in enumerate(classes)],
    }


def _dump(obj, path, indent=None):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, ensure_ascii=False, separators=(",", ": ") if indent else (",", ":"))
        f.write("\n")


def prepare(name, src, out):
    """Prepare data set ``name`` from the clone ``src`` into ``out/name``; returns its summary line."""
    spec, notes = SPECS[name], Notes()
    if not os.path.isdir(src):
        raise PrepareError(f"{name}={src}: no such folder (clone {spec['repository']} there)")
    src = os.path.abspath(src)
    entries = READERS[name](src, notes)
    # Images: decoded once here for sizes, duplicates and thumbnails; written again later.
    kept, thumbs, pixels_seen = [], [], {}
    for entry in entries:
        image, reason = load_image(entry, notes)
        if image is None:
            continue
        digest = hashlib.sha1(image.mode.encode() + repr(image.size).encode() + image.tobytes()).hexdigest()
        if digest in pixels_seen:
            notes.add(
                "pixel-identical copies of an earlier image (dropped)", f"{entry.rel} = {pixels_seen[digest]}"
            )
            continue
        pixels_seen[digest] = entry.rel
        width, height = image.size
        extension = os.path.splitext(entry.rel)[1].lower() if reason is None else ".png"
        if spec.get("all_as_png"):
            extension, reason = ".png", reason or "all as PNG"
        boxes = clean_boxes(entry, width, height, spec["classes"], notes)
        kept.append(
            {
                "rel": entry.rel,
                "path": entry.path,
                "file_name": out_name(entry.rel, extension),
                "width": width,
                "height": height,
                "reencode": reason,
                "annotations": boxes,
                "unit": entry.photo or entry.rel,
            }
        )
        thumbs.append(_thumbnail(np.asarray(image.convert("L"))))
        image.close()
    if not kept:
        raise PrepareError(f"{name}={src}: no image of the source could be read ({notes.line()})")
    names = Counter(k["file_name"] for k in kept)
    clash = sorted(n for n, c in names.items() if c > 1)
    if clash:
        sources = [k["rel"] for k in kept if k["file_name"] == clash[0]]
        raise PrepareError(f"{name}={src}: {', '.join(sources)} would all be written as {clash[0]}")
    groups = near_duplicate_groups(thumbs, spec["near_duplicate"])
    dup_groups = [sorted(kept[i]["rel"] for i in g) for g in groups if len(g) > 1]
    sides, rule = split(name, kept, groups)
    if "test_fraction" not in spec["split"]:  # one image a near-duplicate group: count those left out
        chosen = set(sides["train"]) | set(sides["test"])
        for group in groups:
            for i in group:
                if i not in chosen and any(j in chosen for j in group):
                    notes.add("near-duplicates of a chosen image (left out)", kept[i]["rel"])

    commit = _git_commit(src)
    records = {side: [kept[i] for i in idx] for side, idx in sides.items()}
    info = {
        "name": name,
        "source": {
            "repository": spec["repository"],
            "commit": commit,
            "commit_rules_made_on": spec["commit"],
            "changed_files_in_used_paths": _git_changed(src, _USED_PATHS[name]) if commit else None,
            "license": spec["license"],
        },
        "classes": spec["classes"],
        "split_rule": rule,
        "images": (
            (
                "every image re-encoded as an 8-bit RGB PNG"
                if spec.get("all_as_png")
                else "files that decode fully as 8-bit grey or RGB JPEG / PNG copied byte for byte, others "
                "re-encoded as 8-bit RGB PNG"
            )
            + " (16-bit scaled down by 256); names: the source's base name, runs of characters other than "
            "[A-Za-z0-9._-] as '_' (e.g. 'ncell (99).png' -> 'ncell_99.png')"
        ),
        "boxes": (
            "VOC boxes are 1-based ([xmin - 1, xmax]); boxes clipped to the image; dropped: unknown class, "
            f"no valid numbers, repeats, under {MIN_BOX_SIDE:g} px wide or high after clipping"
        ),
        "splits": {side: _statistics(records[side], spec["classes"]) for side in ("train", "test")},
        "source_images": len(entries),
        "mended_or_dropped": notes.as_dict(),
        "near_duplicate_groups": dup_groups,
    }
    if SPECS[name]["split"]["unit"] == "photo":
        for side in ("train", "test"):
            info["splits"][side]["photos"] = len({r["unit"] for r in records[side]})

    os.makedirs(out, exist_ok=True)
    final = os.path.join(out, name)
    if os.path.exists(final) and not os.path.isdir(final):
        raise PrepareError(f"{final} is a file, not a folder: remove it or give another --out")
    tmp = tempfile.mkdtemp(prefix=f".{name}.new.", dir=out)
    try:
        os.chmod(tmp, 0o755)
        os.makedirs(os.path.join(tmp, "images"))
        for side in ("train", "test"):
            for r in records[side]:
                target = os.path.join(tmp, "images", r["file_name"])
                if r["reencode"] is None:
                    shutil.copyfile(r["path"], target)
                else:
                    image, _ = _decode(r["path"])
                    _to_8bit(image).convert("RGB").save(target, format="PNG", compress_level=6)
            _dump(_coco(name, records[side], spec["classes"], commit), os.path.join(tmp, f"{side}.json"))
        _dump(info, os.path.join(tmp, "prepared.json"), indent=2)
        old = None
        if os.path.isdir(final):
            old = tempfile.mkdtemp(prefix=f".{name}.old.", dir=out)
            os.rename(final, os.path.join(old, name))
        os.rename(tmp, final)
        tmp = None
        if old:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    s = info["splits"]
    line = (
        f"{name}: {s['train']['images'] + s['test']['images']} images (train {s['train']['images']}, test "
        f"{s['test']['images']}), {s['train']['objects'] + s['test']['objects']} objects -> {final}"
    )
    return line + (f"; mended or dropped: {notes.line()}" if notes.counts else "; nothing mended or dropped")


def parse_pairs(pairs):
    result = {}
    for pair in pairs:
        name, sep, src = pair.partition("=")
        if not sep or not name or not src:
            raise PrepareError(f"{pair!r}: give NAME=FOLDER, e.g. kangaroo=/tmp/src/kangaroo")
        if name not in SPECS:
            raise PrepareError(f"{pair!r}: unknown data set {name!r}; known: {', '.join(SPECS)}")
        if name in result:
            raise PrepareError(f"{pair!r}: {name} is given twice")
        result[name] = src
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", required=True, help="the folder the data sets go to (e.g. $DYNAMIC_RCNN_DATASETS)"
    )
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="NAME=FOLDER",
        help=f"a clone of each data set; NAME: {', '.join(SPECS)}",
    )
    args = parser.parse_args(argv)
    try:
        sources = parse_pairs(args.sources)
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise PrepareError(f"--out {args.out} is a file, not a folder")
        for name, src in sources.items():
            print(prepare(name, src, args.out), flush=True)
    except PrepareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
