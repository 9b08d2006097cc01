"""Evaluation: detectron2's ``COCOEvaluator`` with the paper's high-IoU columns (AP60-AP90)."""
from .coco_evaluation import AP_COLUMNS, HighIoUCOCOEvaluator, format_ap_table, write_ground_truth

__all__ = ["AP_COLUMNS", "HighIoUCOCOEvaluator", "format_ap_table", "write_ground_truth"]
