"""COCO-style evaluation with the paper's columns: AP, AP50, AP60, AP70, AP80, AP90, APs, APm, APl."""
import json
import logging
import math
import os
from typing import Mapping

import numpy as np
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm
from tabulate import tabulate

__all__ = ["HighIoUCOCOEvaluator", "AP_COLUMNS", "format_ap_table"]

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


class HighIoUCOCOEvaluator(COCOEvaluator):
    """
    detectron2's ``COCOEvaluator`` (official COCO API) that also reports AP60, AP70, AP80 and AP90
    for boxes and masks, logs the paper's columns as a table and writes them to
    ``output_dir/ap_table.json`` and ``output_dir/ap_table.md``. Works for any dataset in
    detectron2's catalog: without a COCO json, the records are converted to one.
    """

    def __init__(self, dataset_name, output_dir=None, **kwargs):
        super().__init__(dataset_name, output_dir=output_dir, **kwargs)
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
