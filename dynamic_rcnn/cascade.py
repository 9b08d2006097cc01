"""``DynamicCascadeROIHeads``: detectron2's ``CascadeROIHeads`` with Dynamic R-CNN in every stage."""
import contextlib
from typing import List, Optional

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads
from detectron2.structures import Boxes, Instances

from .config import cascade_tracker_args, check_box_loss, validate_dynamic_rcnn_config, warn_unmovable
from .roi_heads import DynamicMatcher, record_proposal_statistics, record_statistics
from .tracker import DynamicTracker

__all__ = ["DynamicCascadeROIHeads"]


@contextlib.contextmanager
def _recording(matcher: DynamicMatcher):
    records = []
    matcher.records = records
    try:
        yield records
    finally:
        matcher.records = None


@ROI_HEADS_REGISTRY.register()
class DynamicCascadeROIHeads(CascadeROIHeads):
    """
    ``CascadeROIHeads`` whose stage k takes its IoU threshold and SmoothL1 beta from its own
    :class:`DynamicTracker` (``self.trackers[k]``), updated from the statistics of the boxes that stage
    labels (docs/CASCADE.md): stage 0 the RPN's proposals as ``DynamicROIHeads``, stage k > 0 the boxes
    stage k - 1 regressed. Every stage's matcher has the single threshold T_k; inference is
    ``CascadeROIHeads``'s. :class:`DynamicRCNNHook` drives all the trackers together.
    """

    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

    @configurable
    def __init__(self, *, trackers: List[DynamicTracker], **kwargs):
        """
        Args:
            trackers: one a stage, in stage order: the settings and the values in force.
            kwargs: those of ``CascadeROIHeads``; every ``proposal_matchers`` entry must be a single-threshold
                ``Matcher`` (it is replaced by a :class:`DynamicMatcher`), and the box predictors' loss SmoothL1
                for a stage whose DSL is on.
        """
        super().__init__(**kwargs)
        trackers = list(trackers)
        if len(trackers) != self.num_cascade_stages or not all(isinstance(t, DynamicTracker) for t in trackers):
            raise ValueError(f"DynamicCascadeROIHeads needs one DynamicTracker a stage ({self.num_cascade_stages}), "
                             f"got {[type(t).__name__ for t in trackers]}")
        for k, t in enumerate(trackers):
            check_box_loss(t.enable_dsl, getattr(self.box_predictor[k], "box_reg_loss_type", "smooth_l1"))
            t.scope = f"stage{k}"  # where the hook writes its scalars, as detectron2 names its stages
        self.trackers = trackers
        self.proposal_matchers = [DynamicMatcher.replacing(m, f"DynamicCascadeROIHeads' stage {k}")
                                  for k, m in enumerate(self.proposal_matchers)]
        self.proposal_matcher = self.proposal_matchers[0]  # stage 0 labels the proposals with it
        self._lineage: Optional[List[List[torch.Tensor]]] = None
        self._apply_tracker_values()

    @classmethod
    def from_config(cls, cfg, input_shape):
        validate_dynamic_rcnn_config(cfg)
        warn_unmovable(cfg)
        ret = super().from_config(cfg, input_shape)
        ret["trackers"] = [DynamicTracker(**args) for args in cascade_tracker_args(cfg)]
        return ret

    def _apply_tracker_values(self):
        # The trackers own T_k and beta_k; matchers and losses take them right before each use.
        for matcher, predictor, t in zip(self.proposal_matchers, self.box_predictor, self.trackers):
            matcher.thresholds[1] = t.iou_threshold
            predictor.smooth_l1_beta = t.beta

    def _excludes_gt(self) -> bool:
        return self.proposal_append_gt and not self.trackers[0].stats_include_gt

    @torch.no_grad()
    def label_and_sample_proposals(self, proposals: List[Instances], targets: List[Instances]) -> List[Instances]:
        """``CascadeROIHeads``'s, every stage's values in force, stage 0's statistics recorded."""
        self._apply_tracker_values()
        t = self.trackers[0]
        # Which sampled boxes are appended ground truth, for the stages after 0 to leave their
        # descendants out of the statistics (STATS_INCLUDE_GT False).
        self._lineage = [[]] if self._excludes_gt() else None
        if not t.enabled:
            return super().label_and_sample_proposals(proposals, targets)
        with _recording(self.proposal_matcher) as records:
            sampled = super().label_and_sample_proposals(proposals, targets)
        record_proposal_statistics(t, proposals, targets, records, self.proposal_append_gt,
                                   self.box_predictor[0].box2box_transform)
        return sampled

    def _sample_proposals(self, matched_idxs, matched_labels, gt_classes):
        num_gt = gt_classes.numel()
        sampled_idxs, sampled_classes = super()._sample_proposals(matched_idxs, matched_labels, gt_classes)
        if self._lineage is not None:
            # The matcher saw the proposals, then the appended ground truth: indexes past them are its boxes.
            self._lineage[0].append(sampled_idxs >= matched_idxs.numel() - num_gt)
        return sampled_idxs, sampled_classes

    def _create_proposals_from_boxes(self, boxes, image_sizes):
        proposals = super()._create_proposals_from_boxes(boxes, image_sizes)
        if self.training and self._lineage is not None:
            # detectron2 drops the boxes that clipping left empty: the flags follow the boxes kept.
            kept = []
            for b, size, from_gt in zip(boxes, image_sizes, self._lineage[-1]):
                clipped = Boxes(b.detach().clone())
                clipped.clip(size)
                kept.append(from_gt[clipped.nonempty()])
            self._lineage.append(kept)
        return proposals

    @torch.no_grad()
    def _match_and_label_boxes(self, proposals, stage, targets):
        t = self.trackers[stage]
        if not t.enabled:
            return super()._match_and_label_boxes(proposals, stage, targets)
        with _recording(self.proposal_matchers[stage]) as records:
            proposals = super()._match_and_label_boxes(proposals, stage, targets)
        ious, sources, matched = [], [], []
        for i, (p, g, r) in enumerate(zip(proposals, targets, records)):
            if r is None or len(g) == 0:
                continue
            values, indices, boxes = r[0], r[1], p.proposal_boxes.tensor
            if self._lineage is not None:  # leave out the descendants of appended ground truth
                keep = ~self._lineage[stage][i]
                values, indices, boxes = values[keep], indices[keep], boxes[keep]
            ious.append(values)
            sources.append(boxes)
            matched.append(g.gt_boxes.tensor[indices])
        record_statistics(t, ious, sources, matched, [0] * len(ious), self.box_predictor[stage].box2box_transform)
        return proposals
