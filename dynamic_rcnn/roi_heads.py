"""``DynamicROIHeads``: detectron2's ``StandardROIHeads`` trained with Dynamic R-CNN."""
from typing import List

import torch
from detectron2.config import configurable
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Boxes, Instances

from .config import validate_dynamic_rcnn_config
from .statistics import proposal_statistics
from .tracker import DynamicTracker

__all__ = ["DynamicROIHeads"]


@ROI_HEADS_REGISTRY.register()
class DynamicROIHeads(StandardROIHeads):
    """
    ``StandardROIHeads`` whose matcher threshold and SmoothL1 beta come from a
    :class:`DynamicTracker` (``self.tracker``). In training it records the statistics of the
    proposals it matches; :class:`DynamicRCNNHook` turns them into new values every
    ``MODEL.DYNAMIC_RCNN.UPDATE_PERIOD`` iterations. Inference is ``StandardROIHeads``'s.

    The matcher has a single threshold (IoU >= T is foreground, below is background, no ignored
    band, no low-quality matches); ``MODEL.ROI_HEADS.IOU_THRESHOLDS`` and
    ``MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA`` are not used: ``MODEL.DYNAMIC_RCNN.WARMUP_*`` start them.
    """

    @configurable
    def __init__(self, *, tracker: DynamicTracker, **kwargs):
        """
        Args:
            tracker: owner of the threshold and beta in force.
            kwargs: those of ``StandardROIHeads``; ``proposal_matcher`` must be a single-threshold
                ``Matcher`` with labels [0, 1].
        """
        super().__init__(**kwargs)
        self.tracker = tracker
        if len(self.proposal_matcher.thresholds) != 3 or self.proposal_matcher.labels != [0, 1]:
            raise ValueError(
                "DynamicROIHeads needs a single-threshold Matcher with labels [0, 1], got thresholds "
                f"{self.proposal_matcher.thresholds[1:-1]} and labels {self.proposal_matcher.labels}"
            )
        self._apply_tracker_values()

    @classmethod
    def from_config(cls, cfg, input_shape):
        validate_dynamic_rcnn_config(cfg)
        ret = super().from_config(cfg, input_shape)
        d = cfg.MODEL.DYNAMIC_RCNN
        ret["tracker"] = DynamicTracker(
            iou_topk=d.IOU_TOPK,
            error_topk=d.BETA_TOPK,
            update_period=d.UPDATE_PERIOD,
            warmup_iou=d.WARMUP_IOU,
            warmup_beta=d.WARMUP_BETA,
            enable_dla=d.ENABLE_DLA,
            enable_dsl=d.ENABLE_DSL,
        )
        ret["proposal_matcher"] = Matcher([d.WARMUP_IOU], [0, 1], allow_low_quality_matches=False)
        return ret

    def _apply_tracker_values(self):
        # The tracker is the only owner of T and beta; the matcher and the box loss take them
        # from it right before each use, so an update or a loaded checkpoint is never missed.
        self.proposal_matcher.thresholds[1] = self.tracker.iou_threshold
        self.box_predictor.smooth_l1_beta = self.tracker.beta

    @torch.no_grad()
    def label_and_sample_proposals(
        self, proposals: List[Instances], targets: List[Instances]
    ) -> List[Instances]:
        """``StandardROIHeads``'s, with the tracker's values in force and its statistics recorded."""
        self._apply_tracker_values()
        if self.tracker.enabled:
            self._record_statistics(proposals, targets)
        return super().label_and_sample_proposals(proposals, targets)

    def _record_statistics(self, proposals: List[Instances], targets: List[Instances]) -> None:
        gt_boxes = [t.gt_boxes for t in targets]
        boxes = [p.proposal_boxes for p in proposals]
        if self.proposal_append_gt:
            # The same boxes, in the same order, as add_ground_truth_to_proposals gives the matcher.
            boxes = [Boxes.cat([b, g.to(b.device)]) for b, g in zip(boxes, gt_boxes)]
        stats = proposal_statistics(
            boxes,
            gt_boxes,
            self.box_predictor.box2box_transform,
            self.tracker.iou_topk,
            self.tracker.error_topk,
        )
        if stats is not None:
            self.tracker.record(*stats)
