"""Checks every annotation of a dataset once, at load time: what is broken is mended or dropped, and said."""
import logging
import math
import numbers
import os
import re
from collections import Counter
from typing import Dict, List, Optional, Tuple

from detectron2.structures import BoxMode
from PIL import Image

__all__ = ["sanitize_dataset_dicts", "image_file_size", "DropLog", "loaded_summary"]

logger = logging.getLogger("detectron2." + __name__)

_EXIF_ORIENTATION = 274  # the tag detectron2's read_image honours
_EXAMPLES = 3  # example files named per kind in the summary line
# The last summary line of each dataset loaded in this process: an error that comes later (no box
# to train on) repeats it, so that its one line says what the loading dropped.
_SUMMARIES: Dict[str, str] = {}


def _image_header(path: str) -> Optional[Tuple[int, int, str]]:
    """
    ``(height, width, PIL mode)`` of ``path`` as ``read_image`` returns it (see :func:`image_file_size`).
    Raises PIL's DecompressionBombError for an image above its pixel limit, which is no broken file.
    """
    try:
        with Image.open(path) as image:
            width, height = image.size
            # Only EXIF that is already in the header: PNG's getexif() would otherwise decode the
            # whole image to look for a chunk after the pixels, which would make the check costly.
            if "exif" in image.info or hasattr(image, "tag_v2"):
                try:
                    if image.getexif().get(_EXIF_ORIENTATION) in (5, 6, 7, 8):  # a quarter turn
                        width, height = height, width
                except Exception:  # detectron2 ignores unreadable EXIF as well
                    pass
            return height, width, image.mode
    except Image.DecompressionBombError:
        raise
    except Exception:  # PIL raises OSError, SyntaxError, ValueError...
        return None


def image_file_size(path: str) -> Optional[Tuple[int, int]]:
    """
    ``(height, width)`` of the image file ``path`` as detectron2's ``read_image`` will return it
    (EXIF orientation applied), read from the file's header without decoding the pixels; None when
    PIL cannot open it (not an image, an unknown format, a broken header, a missing file, above PIL's
    pixel limit).
    """
    try:
        header = _image_header(path)
    except Image.DecompressionBombError:
        return None
    return header[:2] if header else None


def _above_pil_limit(example: str, error: Exception) -> Tuple[str, str]:
    """The summary kind and example of an image PIL refuses as a possible decompression bomb."""
    pixels = re.search(r"\((\d+) pixels\)", str(error))  # "Image size (N pixels) exceeds limit of M pixels..."
    # PIL refuses above twice MAX_IMAGE_PIXELS (it warns above once), here and in detectron2's read_image.
    return (f"images above PIL's limit of {2 * Image.MAX_IMAGE_PIXELS} pixels (2 x PIL.Image.MAX_IMAGE_PIXELS), "
            "which it refuses to open: raise PIL.Image.MAX_IMAGE_PIXELS in your launcher (None: no limit) or "
            "shrink the images", f"{example}: {pixels.group(1)} pixels" if pixels else example)


def _deep(mode: str) -> bool:
    # PIL's 16-bit (I;16, I;16B, I;16L, I;16N), 32-bit integer (I) and float (F) modes:
    # read_image's convert("RGB") clips them to 0-255: a 16-bit image comes out white, one of
    # floats in [0, 1] black.
    return mode in ("I", "F") or mode.startswith("I;")


class DropLog:
    """
    Counts of what was mended or dropped, by kind, with the first few files of each kind: the
    material of the one summary line a dataset logs. Loaders use it for what they drop before
    ``sanitize_dataset_dicts`` sees a record (an unreadable XML file, a COCO entry without an id).
    """

    def __init__(self):
        self.counts: Counter = Counter()
        self.examples: Dict[str, List[str]] = {}
        self._more: Dict[str, bool] = {}

    def add(self, kind: str, example: str, n: int = 1) -> None:
        """Count ``n`` things of ``kind`` found in ``example`` (a file name, or where in a file)."""
        self.counts[kind] += n
        examples = self.examples.setdefault(kind, [])
        if example not in examples:
            if len(examples) < _EXAMPLES:
                examples.append(example)
            else:
                self._more[kind] = True

    def summary(self) -> str:
        """``"2 zero-area boxes (a.jpg, b.jpg), 1 missing image files (c.jpg)"``, kinds sorted; "" when empty."""
        parts = []
        for kind, n in sorted(self.counts.items()):
            names = ", ".join(self.examples[kind] + (["..."] if self._more.get(kind) else []))
            parts.append(f"{n} {kind} ({names})")
        return ", ".join(parts)


def _is_size(value) -> bool:
    # detectron2 compares the record's size with the decoded image's: 48 and 48.0 both match.
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0 and float(value).is_integer()


def _box(anno: Dict) -> Optional[List[float]]:
    """The annotation's box as XYXY_ABS, or None when it has no 4 finite numbers or no known mode."""
    bbox, mode = anno.get("bbox"), anno.get("bbox_mode")
    if bbox is None or isinstance(bbox, (str, bytes, dict)):
        return None
    try:
        bbox = list(bbox)  # a list, a tuple or a numpy array
    except TypeError:  # a number
        return None
    if len(bbox) != 4:
        return None
    if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in bbox):
        return None
    try:
        mode = BoxMode(mode)
    except (ValueError, TypeError):
        return None
    if mode not in (BoxMode.XYXY_ABS, BoxMode.XYWH_ABS):  # relative and rotated boxes: not ours to read
        return None
    return list(BoxMode.convert(bbox, mode, BoxMode.XYXY_ABS))


def sanitize_dataset_dicts(
    dicts: List[Dict],
    name: str,
    num_classes: int,
    check_files: bool = True,
    dropped: Optional[DropLog] = None,
) -> List[Dict]:
    """
    Mend or drop broken records of a detectron2 dataset, and log one line that says how many of
    each kind there were, naming up to 3 files of each kind. Nothing raises:

    - an image file that does not exist: the image is dropped;
    - a file that PIL cannot open (not an image, a broken header; detectron2 reads images with
      PIL, so training would die on it): the image is dropped. Only the header is read;
    - an image above PIL's pixel limit (``2 * PIL.Image.MAX_IMAGE_PIXELS``, its guard against
      decompression bombs): the image is dropped, the limit and how to raise it said;
    - an image of 16-bit, 32-bit or float pixels (detectron2 would read it clipped to 8 bits,
      e.g. white): the image is dropped;
    - a missing or invalid ``height``/``width``: read from the image file's header; one that
      differs from the file's (EXIF orientation applied, as detectron2 reads it): the file's is
      used, the boxes kept as given;
    - a box partly outside the image: clipped to it;
    - a box of zero area (after clipping; wholly outside the image included): dropped;
    - a box with a missing, non-numeric or non-finite coordinate (or not 4 of them): dropped;
    - a ``category_id`` outside ``[0, num_classes)`` (e.g. an unknown class name): dropped.

    ``check_files=False`` skips the file checks (and so cannot mend a missing size). ``dropped``
    holds what the loader already dropped: it is counted in the same line. Boxes are turned into
    ``XYXY_ABS``. Returns the mended records (new dicts; the input is not changed).
    """
    log = dropped if dropped is not None else DropLog()
    out = []
    for record in dicts:
        file_name = record.get("file_name", "")
        example = os.path.basename(file_name)
        h, w = record.get("height"), record.get("width")
        if check_files:
            if not os.path.isfile(file_name):
                log.add("missing image files", example)
                continue
            try:
                header = _image_header(file_name)
            except Image.DecompressionBombError as e:
                log.add(*_above_pil_limit(example, e))
                continue
            if header is None:
                log.add("unreadable image files", example)
                continue
            if _deep(header[2]):
                log.add("images of 16-bit, 32-bit or float pixels, which detectron2 reads clipped to 8 bits: "
                        "convert them to 8-bit", f"{example} in mode {header[2]}")
                continue
            # detectron2's mapper compares the size with the image it reads and raises on a
            # mismatch; the boxes are then clipped in the frame of that image, not the stored one.
            if not (_is_size(h) and _is_size(w)):
                log.add("image sizes read from the image file", example)
            elif (h, w) != header[:2]:
                log.add("image sizes (width x height) that disagreed with the file, the file's used",
                        f"{example}: {w:g}x{h:g} given, {header[1]}x{header[0]} in the file")
            if (h, w) != header[:2]:
                h, w = header[:2]
                record = dict(record, height=h, width=w)
        if not (_is_size(h) and _is_size(w)):
            h = w = None
        annos = []
        for anno in record.get("annotations", []):
            category = anno.get("category_id", -1)
            if not (isinstance(category, int) and not isinstance(category, bool) and 0 <= category < num_classes):
                log.add("boxes of unknown classes", example)
                continue
            box = _box(anno)
            if box is None:
                log.add("boxes without valid coordinates", example)
                continue
            x0, y0, x1, y1 = box
            if h is not None and w is not None:
                clipped = [min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h)]
                if clipped != [x0, y0, x1, y1] and clipped[2] > clipped[0] and clipped[3] > clipped[1]:
                    log.add("boxes clipped to the image", example)
                x0, y0, x1, y1 = clipped
            if x1 <= x0 or y1 <= y0:
                log.add("zero-area boxes", example)
                continue
            annos.append(dict(anno, bbox=[x0, y0, x1, y1], bbox_mode=BoxMode.XYXY_ABS))
        out.append(dict(record, annotations=annos))
    n_boxes = sum(len(r["annotations"]) for r in out)
    found = log.summary()
    _SUMMARIES[name] = f"{name}: {len(out)} images, {n_boxes} boxes" + (
        f"; mended or dropped: {found}" if found else "; no broken annotation")
    logger.info("%s", _SUMMARIES[name])
    return out


def loaded_summary(name: str) -> Optional[str]:
    """The summary line ``sanitize_dataset_dicts`` logged for the dataset ``name`` in this process, or None."""
    return _SUMMARIES.get(name)
