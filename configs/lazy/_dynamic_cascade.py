"""What turns a stock Cascade LazyConfig into Dynamic Cascade R-CNN: imported by the dynamic_cascade_*.py configs."""
from detectron2.config import LazyCall as L

from dynamic_rcnn import DynamicCascadeROIHeads, DynamicTracker


def make_dynamic(model, proposals_per_image=2000, update_period=100):
    """
    ``model.roi_heads`` becomes ``DynamicCascadeROIHeads`` with one tracker a stage, with the defaults of
    docs/CASCADE.md: floors at the stages' IoUs (the matchers'), beta from 1.0, K_I 7.5 % of the proposals
    at every stage, K_E 10.
    """
    ious = [m.thresholds[0] for m in model.roi_heads.proposal_matchers]
    topk = [round(0.075 * proposals_per_image)] * len(ious)
    model.roi_heads._target_ = DynamicCascadeROIHeads
    model.roi_heads.trackers = [
        L(DynamicTracker)(iou_topk=k, beta_topk=10, update_period=update_period, warmup_iou=iou, warmup_beta=1.0,
                          enable_dla=True, enable_dsl=True, stats_include_gt=True)
        for k, iou in zip(topk, ious)
    ]
    return model
