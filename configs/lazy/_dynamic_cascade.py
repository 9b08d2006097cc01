"""What turns a stock Cascade LazyConfig into Dynamic Cascade R-CNN: imported by the dynamic_cascade_*.py configs."""
from detectron2.config import LazyCall as L

from dynamic_rcnn import DynamicCascadeROIHeads, DynamicTracker


def make_dynamic(model, update_period=100):
    """
    ``model.roi_heads`` becomes ``DynamicCascadeROIHeads`` with one tracker a stage, with the package's
    defaults: floors at the stages' IoUs (the matchers'), beta from 1.0, the automatic K_I and K_E (0) and
    statistics over the RPN's proposals at every stage.
    """
    ious = [m.thresholds[0] for m in model.roi_heads.proposal_matchers]
    model.roi_heads._target_ = DynamicCascadeROIHeads
    model.roi_heads.trackers = [
        L(DynamicTracker)(iou_topk=0, beta_topk=0, update_period=update_period, warmup_iou=iou, warmup_beta=1.0,
                          enable_dla=True, enable_dsl=True, stats_include_gt=False)
        for iou in ious
    ]
    return model
