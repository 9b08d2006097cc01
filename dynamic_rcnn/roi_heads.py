"""``DynamicROIHeads``: detectron2's ``StandardROIHeads`` trained with Dynamic R-CNN."""
from typing import List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Instances

from .config import CONFIG_KEYS, check_box_loss, check_dynamic_rcnn_args, validate_dynamic_rcnn_config
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

    def __init__(self, threshold: float, min_positives_iou: float = 0.0, positives_quota: int = 0):
        """
        Args:
            threshold: the IoU threshold T.
            min_positives_iou, positives_quota: the positives guard (``MODEL.DYNAMIC_RCNN.MIN_POSITIVES_IOU``;
                0 is off): while T is above ``min_positives_iou``, each matrix's threshold is lowered, where
                needed, to the IoU of its k-th best proposal, with k the number of proposals at IoU >=
                ``min_positives_iou`` capped at ``positives_quota`` (the sampler's positives per image), so
                that the image keeps at least as many positives as that fixed threshold would give it.
        """
        super().__init__([threshold], [0, 1], allow_low_quality_matches=False)
        self.min_positives_iou = float(min_positives_iou)
        self.positives_quota = int(positives_quota)
        self.records: Optional[List[Optional[Tuple[torch.Tensor, torch.Tensor]]]] = None

    def _threshold(self, matched_vals: torch.Tensor):
        threshold = self.thresholds[1]
        guard = self.min_positives_iou
        if guard <= 0 or threshold <= guard or self.positives_quota < 1:
            return threshold
        # All on the device, no sync: the k-th best IoU, k = min(#IoU >= guard, quota), clamped to
        # [guard, T]. With no IoU >= guard, the k = 1st best is below the guard: the clamp gives the
        # guard, which labels nothing, as T would.
        best = torch.topk(matched_vals, min(self.positives_quota, matched_vals.numel())).values
        k = (matched_vals >= guard).sum().clamp(min=1, max=best.numel())
        return best[k - 1].clamp(min=guard, max=threshold)

    def __call__(self, match_quality_matrix: torch.Tensor):
        if match_quality_matrix.numel() == 0:
            if self.records is not None:
                self.records.append(None)
            return super().__call__(match_quality_matrix)
        assert match_quality_matrix.dim() == 2
        assert torch.all(match_quality_matrix >= 0)
        matched_vals, matches = match_quality_matrix.max(dim=0)
        match_labels = (matched_vals >= self._threshold(matched_vals)).to(torch.int8)
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

    # Constants for TorchScript, as detectron2's scripting patch makes them for StandardROIHeads
    # only: scripting then compiles only the branches the model has (no mask_pooler without masks).
    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

    @configurable
    def __init__(self, *, tracker: DynamicTracker, min_positives_iou: float = 0.0, **kwargs):
        """
        Args:
            tracker: owner of the Dynamic R-CNN settings and of the threshold and beta in force.
            min_positives_iou: the positives guard of :class:`DynamicMatcher`
                (``MODEL.DYNAMIC_RCNN.MIN_POSITIVES_IOU``; 0: off).
            kwargs: those of ``StandardROIHeads``; ``proposal_matcher`` must be a single-threshold
                ``Matcher`` with labels [0, 1] (it is replaced by a :class:`DynamicMatcher`), and the
                box predictor's loss must be SmoothL1 when DSL is on.
        """
        check_dynamic_rcnn_args(min_positives_iou=min_positives_iou)
        super().__init__(**kwargs)
        if not isinstance(tracker, DynamicTracker):
            raise TypeError(f"DynamicROIHeads needs a DynamicTracker as `tracker`, got {type(tracker).__name__}")
        check_box_loss(tracker.enable_dsl, getattr(self.box_predictor, "box_reg_loss_type", "smooth_l1"))
        self.tracker = tracker
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
        self.proposal_matcher = DynamicMatcher(
            matcher.thresholds[1],
            min_positives_iou,
            int(self.batch_size_per_image * self.positive_fraction),  # as detectron2's sampler counts
        )
        self._apply_tracker_values()

    @classmethod
    def from_config(cls, cfg, input_shape):
        validate_dynamic_rcnn_config(cfg)
        ret = super().from_config(cfg, input_shape)
        d = cfg.MODEL.DYNAMIC_RCNN
        ret["tracker"] = DynamicTracker(
            **{arg: d[key] for arg, key in CONFIG_KEYS.items() if arg != "min_positives_iou"}
        )
        ret["proposal_matcher"] = DynamicMatcher(d.WARMUP_IOU)
        ret["min_positives_iou"] = d.MIN_POSITIVES_IOU
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
        tracker = self.tracker
        with_gt = self.proposal_append_gt and tracker.stats_include_gt
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
            tracker.iou_topk,
            tracker.error_topk,
            tracker.statistic,
            tracker.reference_objects,
        )
        if stats is not None:
            # The sampling just before synchronised the device: reading two numbers is cheap here,
            # and the tracker holds plain floats from now on.
            tracker.record(*torch.stack(stats).tolist())
