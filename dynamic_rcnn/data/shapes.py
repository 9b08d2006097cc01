"""
``shapes``: a synthetic detection and instance-segmentation dataset, generated deterministically
from a seed, for trying Dynamic R-CNN without any download.

Filled circles (ellipses), squares (rectangles) and triangles of varied size, colour, aspect
and rotation on textured backgrounds, with exact boxes and polygon masks. A fifth of the images
are crowded (12 to 24 objects) and a good part of the objects are small (8 to 20 pixels), so that
precise localisation is actually hard. Images are written once to a cache folder
(``$DYNAMIC_RCNN_CACHE``, default ``~/.cache/dynamic_rcnn``) so that every detectron2 tool that
reads ``file_name`` works on them.
"""
import json
import math
import os
import shutil
import tempfile
from typing import Dict, List, Tuple

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

__all__ = ["SHAPES_CLASSES", "generate_shapes_image", "load_shapes", "register_shapes", "shapes_cache_dir"]

SHAPES_CLASSES = ["circle", "square", "triangle"]
_FORMAT_VERSION = 3  # bump when the generator changes: cached images are then made anew


def shapes_cache_dir() -> str:
    return os.environ.get("DYNAMIC_RCNN_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "dynamic_rcnn"))


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.uniform(40, 215, size=3)
    # Low-frequency blotches, a gradient, fine noise and a few lines: a texture the detector
    # must learn to ignore, not a flat colour that makes every edge an object edge.
    blotches = cv2.resize(rng.normal(0, 25, size=(4, 4, 3)), (w, h), interpolation=cv2.INTER_CUBIC)
    ramp = np.linspace(-1, 1, w)[None, :, None] * rng.uniform(-20, 20, size=3)
    img = base + blotches + ramp + rng.normal(0, 6, size=(h, w, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(2, 7))):
        p1 = tuple(int(v) for v in rng.integers(0, [w, h]))
        p2 = tuple(int(v) for v in rng.integers(0, [w, h]))
        colour = tuple(float(c) for c in np.clip(base + rng.normal(0, 30, 3), 0, 255))
        cv2.line(img, p1, p2, colour, int(rng.integers(1, 3)), cv2.LINE_AA)
    return img


def _polygon(rng: np.random.Generator, cls: int, cx: float, cy: float, size: float) -> np.ndarray:
    angle = rng.uniform(0, 360)
    if cls == 0:  # ellipse of aspect 0.7 to 1.4
        aspect = rng.uniform(0.7, 1.4)
        axes = (max(2, int(round(size / 2))), max(2, int(round(size * aspect / 2))))
        return cv2.ellipse2Poly((int(round(cx)), int(round(cy))), axes, int(angle), 0, 360, 12).astype(np.float64)
    if cls == 1:  # rectangle of aspect 0.6 to 1.6
        aspect = rng.uniform(0.6, 1.6)
        half = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]]) * [size / 2, size * aspect / 2]
    else:  # triangle, a little irregular
        t = np.deg2rad([90, 210, 330]) + rng.uniform(-0.25, 0.25, size=3)
        half = np.stack([np.cos(t), np.sin(t)], axis=1) * size / 2 * rng.uniform(0.8, 1.2, size=(3, 1))
    a = np.deg2rad(angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return half @ rot.T + [cx, cy]


def _overlap(a, b) -> float:
    """Intersection over the smaller box's area: a shape mostly hidden by another is unfair to ask for."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def generate_shapes_image(seed: int, index: int, image_size: Tuple[int, int]) -> Tuple[np.ndarray, List[Dict]]:
    """
    One image (H x W x 3, BGR uint8) and its annotations (detectron2 dicts, XYXY_ABS boxes,
    polygon masks), a pure function of (seed, index, image_size).
    """
    h, w = image_size
    rng = np.random.default_rng([seed, index])
    img = _background(rng, h, w)
    r = rng.uniform()
    n = int(rng.integers(12, 25)) if r < 0.2 else int(rng.integers(4, 11)) if r < 0.6 else int(rng.integers(1, 5))
    annos: List[Dict] = []
    for _ in range(n * 10):  # attempts: a shape overlapping another too much is drawn anew
        if len(annos) == n:
            break
        cls = int(rng.integers(0, 3))
        size = float(np.exp(rng.uniform(np.log(8), np.log(min(h, w) * 0.3))))
        # Mostly inside the image: a shape cut in half by the border is a different shape.
        margin = 0.3 * size
        cx, cy = rng.uniform(margin, max(margin + 1, w - margin)), rng.uniform(margin, max(margin + 1, h - margin))
        poly = _polygon(rng, cls, cx, cy, size)
        poly[:, 0] = np.clip(poly[:, 0], 0, w)
        poly[:, 1] = np.clip(poly[:, 1], 0, h)
        box = [float(poly[:, 0].min()), float(poly[:, 1].min()), float(poly[:, 0].max()), float(poly[:, 1].max())]
        if box[2] - box[0] < 4 or box[3] - box[1] < 4:
            continue
        if any(_overlap(box, a["bbox"]) > 0.35 for a in annos):
            continue
        # A colour far enough from the background under the shape to be seen.
        x0, y0, x1, y1 = (int(v) for v in box)
        under = img[y0 : max(y1, y0 + 1), x0 : max(x1, x0 + 1)].reshape(-1, 3).mean(axis=0)
        colour = rng.uniform(0, 255, size=3)
        for _ in range(10):
            if np.abs(colour - under).sum() > 150:
                break
            colour = rng.uniform(0, 255, size=3)
        cv2.fillPoly(img, [np.round(poly).astype(np.int32)], tuple(float(c) for c in colour), cv2.LINE_AA)
        annos.append(
            {
                "bbox": box,
                "bbox_mode": BoxMode.XYXY_ABS,
                "category_id": cls,
                "segmentation": [poly.reshape(-1).tolist()],
                "iscrowd": 0,
            }
        )
    return img, annos


def load_shapes(num_images: int, seed: int, image_size: Tuple[int, int] = (256, 256), root: str = None) -> List[Dict]:
    """
    The dataset as detectron2 dicts; generates and caches the images on first use (safe when
    several processes do it at once: each writes a private folder, the first rename wins).
    """
    root = root or shapes_cache_dir()
    name = f"shapes_v{_FORMAT_VERSION}_seed{seed}_n{num_images}_{image_size[0]}x{image_size[1]}"
    folder = os.path.join(root, name)
    index_file = os.path.join(folder, "annotations.json")
    if not os.path.isfile(index_file):
        os.makedirs(root, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=name + ".tmp", dir=root)
        records = []
        for i in range(num_images):
            img, annos = generate_shapes_image(seed, i, image_size)
            file_name = f"{i:06d}.png"
            cv2.imwrite(os.path.join(tmp, file_name), img)
            records.append({"file_name": file_name, "image_id": i, "annotations": annos})
        with open(os.path.join(tmp, "annotations.json"), "w") as f:
            json.dump(records, f)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process made it first
            shutil.rmtree(tmp, ignore_errors=True)
    with open(index_file) as f:
        records = json.load(f)
    h, w = image_size
    for r in records:
        r["file_name"] = os.path.join(folder, r["file_name"])
        r["height"], r["width"] = h, w
    return records


def register_shapes(name: str, num_images: int, seed: int, image_size: Tuple[int, int] = (256, 256)) -> None:
    """Register a ``shapes`` split in detectron2's ``DatasetCatalog`` and ``MetadataCatalog``."""
    DatasetCatalog.register(name, lambda: load_shapes(num_images, seed, image_size))
    MetadataCatalog.get(name).set(
        thing_classes=list(SHAPES_CLASSES),
        thing_colors=[(220, 20, 60), (0, 130, 255), (0, 170, 60)],
        evaluator_type="coco",
        image_size=tuple(image_size),
    )
