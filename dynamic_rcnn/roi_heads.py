"""``DynamicROIHeads``: detectron2's ``StandardROIHeads`` trained with Dynamic R-CNN."""
from typing import List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Instances

from .config import validate_dynamic_rcnn_config
from .statistics import matched_statistics
from .tracker import DynamicTracker

__all__ = ["DynamicROIHeads", "DynamicMatcher"]


class DynamicMatcher(Matcher):
    """
    A single-threshold ``Matcher`` (labels [0, 1], IoU >= ``thresholds[1]`` is foreground, no
    ignored band, no low-quality matches) that gives the same matches and labels as detectron2's
    in fewer operations, and that keeps what it computed while ``records`` is a list: for each
    call, ``(largest IoU of each proposal, index of its ground truth)``, or None for an empty matrix.
    """

    def __init__(self, threshold: float):
        super().__init__([threshold], [0, 1], allow_low_quality_matches=False)
        self.records: Optional[List[Optional[Tuple[torch.Tensor, torch.Tensor]]]] = None

    def __call__(self, match_quality_matrix: torch.Tensor):
        if match_quality_matrix.numel() == 0:
            if self.records is not None:
                self.records.append(None)
            return super().__call__(match_quality_matrix)
        assert match_quality_matrix.dim() == 2
        assert torch.all(match_quality_matrix >= 0)
        matched_vals, matches = match_quality_matrix.max(dim=0)
        match_labels = (matched_vals >= self.thresholds[1]).to(torch.int8)
        if self.records is not None:
            self.records.append((matched_vals, matches))
        return matches, match_labels


@ROI_HEADS_REGISTRY.register()
class DynamicROIHeads(StandardROIHeads):
    """
    ``StandardROIHeads`` whose matcher threshold and SmoothL1 beta come from a
    :class:`DynamicTracker` (``self.tracker``). In training it records the statistics of the
    proposals it matches; :class:`DynamicRCNNHook` turns them into new values every
    ``MODEL.DYNAMIC_RCNN.UPDATE_PERIOD`` iterations. Inference is ``StandardROIHeads``'s.

    The matcher (:class:`DynamicMatcher`) has a single threshold (IoU >= T is foreground, below
    is background, no ignored band, no low-quality matches); ``MODEL.ROI_HEADS.IOU_THRESHOLDS``
    and ``MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA`` are not used: ``MODEL.DYNAMIC_RCNN.WARMUP_*`` start them.
    The statistics are computed from the IoUs the matcher computed, so recording them costs a
    few batched operations and no second IoU matrix.
    """

    @configurable
    def __init__(self, *, tracker: DynamicTracker, stats_include_gt: bool = True, **kwargs):
        """
        Args:
            tracker: owner of the threshold and beta in force.
            stats_include_gt: whether the appended ground-truth boxes count in the statistics
                (``MODEL.DYNAMIC_RCNN.STATS_INCLUDE_GT``).
            kwargs: those of ``StandardROIHeads``; ``proposal_matcher`` must be a single-threshold
                ``Matcher`` with labels [0, 1] (a plain one is replaced by a :class:`DynamicMatcher`).
        """
        super().__init__(**kwargs)
        self.tracker = tracker
        self.stats_include_gt = stats_include_gt
        matcher = self.proposal_matcher
        if (
            len(matcher.thresholds) != 3
            or matcher.labels != [0, 1]
            or matcher.allow_low_quality_matches
        ):
            raise ValueError(
                "DynamicROIHeads needs a single-threshold Matcher with labels [0, 1] and no "
                f"low-quality matches, got thresholds {matcher.thresholds[1:-1]}, labels "
                f"{matcher.labels}, allow_low_quality_matches={matcher.allow_low_quality_matches}"
            )
        if not isinstance(matcher, DynamicMatcher):
            self.proposal_matcher = DynamicMatcher(matcher.thresholds[1])
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
        ret["proposal_matcher"] = DynamicMatcher(d.WARMUP_IOU)
        ret["stats_include_gt"] = d.STATS_INCLUDE_GT
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
        if not self.tracker.enabled:
            return super().label_and_sample_proposals(proposals, targets)
        records: List[Optional[Tuple[torch.Tensor, torch.Tensor]]] = []
        self.proposal_matcher.records = records
        try:
            sampled = super().label_and_sample_proposals(proposals, targets)
        finally:
            self.proposal_matcher.records = None
        self._record_statistics(proposals, targets, records)
        return sampled

    def _record_statistics(self, proposals, targets, records) -> None:
        if len(records) != len(proposals):
            raise RuntimeError(
                f"DynamicMatcher was called {len(records)} times for {len(proposals)} images: "
                "the statistics need one call per image, as StandardROIHeads makes them."
            )
        # The matcher saw the proposals, then (when appended) the ground-truth boxes.
        with_gt = self.proposal_append_gt and self.stats_include_gt
        max_ious, matched_gt, boxes, gts = [], [], [], []
        for p, t, r in zip(proposals, targets, records):
            n = len(p) if self.proposal_append_gt and not with_gt else None  # first n: the proposals
            if r is None or len(t) == 0 or n == 0:
                continue
            parts = [p.proposal_boxes.tensor] + ([t.gt_boxes.tensor] if with_gt else [])
            boxes.append(torch.cat(parts) if len(parts) > 1 else parts[0])
            max_ious.append(r[0][:n])
            matched_gt.append(r[1][:n])
            gts.append(t.gt_boxes.tensor)
        stats = matched_statistics(
            max_ious,
            matched_gt,
            boxes,
            gts,
            self.box_predictor.box2box_transform,
            self.tracker.iou_topk,
            self.tracker.error_topk,
        )
        if stats is not None:
            # The sampling just before synchronised the device: reading two numbers is cheap here,
            # and the tracker holds plain floats from now on.
            self.tracker.record(*torch.stack(stats).tolist())
