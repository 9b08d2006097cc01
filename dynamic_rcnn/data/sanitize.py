"""Checks every annotation of a dataset once, at load time: what is broken is mended or dropped, and said."""
import logging
import math
import os
from collections import Counter
from typing import Dict, List

from detectron2.structures import BoxMode

__all__ = ["sanitize_dataset_dicts"]

logger = logging.getLogger(__name__)


def sanitize_dataset_dicts(dicts: List[Dict], name: str, num_classes: int, check_files: bool = True) -> List[Dict]:
    """
    Mend or drop broken records of a detectron2 dataset, and log one line that says how many of
    each kind there were. Nothing raises:

    - an image file that does not exist: the image is dropped;
    - a box partly outside the image: clipped to it;
    - a box of zero area (after clipping; wholly outside the image included): dropped;
    - a box with a missing or non-numeric coordinate: dropped;
    - a ``category_id`` outside ``[0, num_classes)`` (e.g. an unknown class name): dropped.

    Boxes are turned into ``XYXY_ABS``. Returns the mended records (new dicts; the input is not changed).
    """
    counts: Counter = Counter()
    out = []
    for record in dicts:
        if check_files and not os.path.isfile(record["file_name"]):
            counts["missing image files"] += 1
            continue
        h, w = record.get("height"), record.get("width")
        annos = []
        for anno in record.get("annotations", []):
            if not 0 <= anno.get("category_id", -1) < num_classes:
                counts["boxes of unknown classes"] += 1
                continue
            x0, y0, x1, y1 = BoxMode.convert(list(anno["bbox"]), anno["bbox_mode"], BoxMode.XYXY_ABS)
            if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
                counts["boxes without valid coordinates"] += 1
                continue
            if h is not None and w is not None:
                clipped = [min(max(x0, 0.0), w), min(max(y0, 0.0), h), min(max(x1, 0.0), w), min(max(y1, 0.0), h)]
                if clipped != [x0, y0, x1, y1] and clipped[2] > clipped[0] and clipped[3] > clipped[1]:
                    counts["boxes clipped to the image"] += 1
                x0, y0, x1, y1 = clipped
            if x1 <= x0 or y1 <= y0:
                counts["zero-area boxes"] += 1
                continue
            annos.append(dict(anno, bbox=[x0, y0, x1, y1], bbox_mode=BoxMode.XYXY_ABS))
        out.append(dict(record, annotations=annos))
    n_boxes = sum(len(r["annotations"]) for r in out)
    found = ", ".join(f"{n} {what}" for what, n in sorted(counts.items()))
    logger.info(
        "%s: %d images, %d boxes%s", name, len(out), n_boxes,
        f"; mended or dropped: {found}" if found else "; no broken annotation",
    )
    return out
