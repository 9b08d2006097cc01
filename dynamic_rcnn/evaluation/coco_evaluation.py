"""COCO-style evaluation with the paper's columns: AP, AP50, AP60, AP70, AP80, AP90, APs, APm, APl."""
import json
import logging
import math
import os
from typing import Mapping

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from tabulate import tabulate

__all__ = ["HighIoUCOCOEvaluator", "AP_COLUMNS", "format_ap_table", "write_ground_truth"]

logger = logging.getLogger("detectron2." + __name__)

# High-IoU AP is where Dynamic R-CNN is meant to win: AP at each of these IoU thresholds.
HIGH_IOUS = (0.5, 0.6, 0.7, 0.8, 0.9)
AP_COLUMNS = ["AP"] + [f"AP{int(round(t * 100))}" for t in HIGH_IOUS] + ["APs", "APm", "APl"]


def ap_at_iou(coco_eval, iou: float) -> float:
    """AP (0-100) at one IoU threshold, all areas, 100 detections; NaN if nothing to score."""
    thresholds = coco_eval.params.iouThrs
    index = int(np.argmin(np.abs(thresholds - iou)))
    if not math.isclose(thresholds[index], iou, abs_tol=1e-6):
        raise ValueError(f"IoU {iou} is not among COCOeval's thresholds {list(thresholds)}")
    precision = coco_eval.eval["precision"][index, :, :, 0, -1]  # recall x classes
    valid = precision[precision > -1]
    return float(valid.mean() * 100) if valid.size else float("nan")


def _ap_rows(results: Mapping, path=()):
    for key, value in results.items():
        if isinstance(value, Mapping):
            if "AP" in value:
                yield "/".join(path + (str(key),)), value
            else:
                yield from _ap_rows(value, path + (str(key),))


def format_ap_table(results: Mapping) -> str:
    """
    Every ``{column: value}`` mapping with an "AP" key inside ``results`` (e.g. detectron2's
    ``{task: {...}}`` or ``{dataset: {task: {...}}}``), one row each, as a Markdown table with
    the paper's columns (values 0-100, NaN when there was nothing to score).
    """
    rows = [[name] + [values.get(c, float("nan")) for c in AP_COLUMNS] for name, values in _ap_rows(results)]
    return tabulate(rows, headers=["result"] + AP_COLUMNS, tablefmt="pipe", floatfmt=".1f")


def write_ground_truth(dataset_name: str, path: str) -> None:
    """
    Write the records of ``dataset_name``, loaded now, to ``path`` as COCO json (detectron2's
    ``convert_to_coco_json``, never a file it cached: the annotations may have changed since), with
    the annotations marked ``difficult`` (VOC) as crowd regions, which COCOeval ignores: a detection
    on one is neither a true nor a false positive, and missing one costs nothing, as in the VOC
    protocol. The records keep them for training (detectron2's DatasetMapper drops crowd boxes).
    """
    records = DatasetCatalog.get(dataset_name)
    marked = [dict(r, annotations=[dict(a, iscrowd=1) if a.get("difficult") else a for a in r.get("annotations", [])])
              for r in records]
    difficult = sum(bool(a.get("difficult")) for r in records for a in r.get("annotations", []))
    if difficult:
        logger.info("%s: %d difficult objects are ignored regions in the evaluation (VOC protocol)", dataset_name,
                    difficult)
    # detectron2's converter reads a registered dataset: the records, loaded once, under a name of their own.
    scratch = f"{dataset_name} (as evaluated)"
    meta = MetadataCatalog.get(dataset_name).as_dict()
    DatasetCatalog.register(scratch, lambda: marked)
    MetadataCatalog.get(scratch).set(**{k: meta[k] for k in ("thing_classes", "thing_dataset_id_to_contiguous_id")
                                        if k in meta})
    try:
        convert_to_coco_json(scratch, path, allow_cached=False)
    finally:
        DatasetCatalog.remove(scratch)
        MetadataCatalog.remove(scratch)


class HighIoUCOCOEvaluator(COCOEvaluator):
    """
    detectron2's ``COCOEvaluator`` (official COCO API) that also reports AP60, AP70, AP80 and AP90
    for boxes and masks, logs the paper's columns as a table and writes them to
    ``output_dir/ap_table.json`` and ``output_dir/ap_table.md``. Works for any dataset in
    detectron2's catalog: without a COCO json (``json_file`` in its metadata), the records are
    loaded and converted to ``output_dir/<dataset>_coco_format.json`` anew by every evaluator
    (``write_ground_truth``: VOC ``difficult`` objects ignored), so that the annotations scored are
    always those the run loaded.
    """

    def __init__(self, dataset_name, output_dir=None, **kwargs):
        meta = MetadataCatalog.get(dataset_name)
        # detectron2 reuses an existing conversion, and keeps its path in the metadata as `json_file`:
        # an evaluation after a change of the annotations (another --test-json into the same
        # OUTPUT_DIR, a file edited between two evaluations of one process) would score the old ones.
        before = vars(meta).get("json_file")
        converted = os.path.basename(before or "") in ("", f"{dataset_name}_coco_format.json")
        if converted:
            vars(meta).pop("json_file", None)
            if output_dir:  # else detectron2 says that it needs one
                meta.json_file = os.path.join(output_dir, f"{dataset_name}_coco_format.json")
                write_ground_truth(dataset_name, meta.json_file)
        try:
            super().__init__(dataset_name, output_dir=output_dir, **kwargs)
        finally:
            if converted:  # the metadata as it was: the next evaluator converts anew
                vars(meta).pop("json_file", None)
                if before:
                    meta.json_file = before
        self._dataset_name = dataset_name

    def _derive_coco_results(self, coco_eval, iou_type, class_names=None):
        results = super()._derive_coco_results(coco_eval, iou_type, class_names=class_names)
        for iou, column in zip(HIGH_IOUS, AP_COLUMNS[1:]):
            results[column] = ap_at_iou(coco_eval, iou) if coco_eval is not None else float("nan")
        return results

    def evaluate(self, img_ids=None):
        results = super().evaluate(img_ids)
        if not comm.is_main_process() or not results:
            return results
        table = {self._dataset_name: {task: {c: v[c] for c in AP_COLUMNS if c in v} for task, v in results.items()}}
        logger.info("AP on %s:\n%s", self._dataset_name, format_ap_table(table))
        if self._output_dir:
            with open(os.path.join(self._output_dir, "ap_table.json"), "w") as f:
                json.dump(table, f, indent=2)
            with open(os.path.join(self._output_dir, "ap_table.md"), "w") as f:
                f.write(format_ap_table(table) + "\n")
        return results
