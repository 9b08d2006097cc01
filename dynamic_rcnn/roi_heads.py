"""``DynamicROIHeads``: detectron2's ``StandardROIHeads`` trained with Dynamic R-CNN."""
from typing import List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

from .config import (
    CONFIG_KEYS,
    check_box_loss,
    check_dynamic_rcnn_args,
    validate_dynamic_rcnn_config,
    warn_unmovable,
)
from .statistics import box_errors, error_statistic, iou_statistic
from .tracker import DynamicTracker, scalar_name

__all__ = ["DynamicROIHeads", "DynamicMatcher", "record_proposal_statistics", "record_statistics"]


class DynamicMatcher(Matcher):
    """
    A single-threshold ``Matcher`` (IoU >= ``thresholds[1]`` is foreground, no ignored band, no
    low-quality matches) that keeps what it computes while ``records`` is a list: for each call,
    ``(largest IoU of each box, index of its ground truth)``, or None for an empty matrix.
    Its ``__call__`` is ``Matcher.__call__``'s single-threshold case without the per-interval masked
    assignments (device syncs): the same matches and labels.
    """

    def __init__(self, threshold: float):
        super().__init__([threshold], [0, 1], allow_low_quality_matches=False)
        self.records: Optional[List[Optional[Tuple[torch.Tensor, torch.Tensor]]]] = None

    @classmethod
    def replacing(cls, matcher: Matcher, where: str) -> "DynamicMatcher":
        """A DynamicMatcher at the threshold of ``matcher``, which must be single-threshold (``where`` says whose)."""
        if len(matcher.thresholds) != 3 or matcher.labels != [0, 1] or matcher.allow_low_quality_matches:
            raise ValueError(
                f"{where} needs a single-threshold Matcher with labels [0, 1] and no low-quality matches, got "
                f"thresholds {matcher.thresholds[1:-1]}, labels {matcher.labels}, "
                f"allow_low_quality_matches={matcher.allow_low_quality_matches}"
            )
        return cls(matcher.thresholds[1])

    def __call__(self, match_quality_matrix: torch.Tensor):
        if match_quality_matrix.numel() == 0:
            if self.records is not None:
                self.records.append(None)
            return super().__call__(match_quality_matrix)
        assert match_quality_matrix.dim() == 2
        assert torch.all(match_quality_matrix >= 0)
        matched_vals, matches = match_quality_matrix.max(dim=0)
        if self.records is not None:
            self.records.append((matched_vals, matches))
        return matches, (matched_vals >= self.thresholds[1]).to(torch.int8)


@ROI_HEADS_REGISTRY.register()
class DynamicROIHeads(StandardROIHeads):
    """
    ``StandardROIHeads`` whose matcher threshold and SmoothL1 beta come from a
    :class:`DynamicTracker` (``self.tracker``). In training it records the statistics of the
    proposals it matches; :class:`DynamicRCNNHook` turns them into new values every
    ``MODEL.DYNAMIC_RCNN.UPDATE_PERIOD`` iterations. Inference is ``StandardROIHeads``'s.

    ``MODEL.ROI_HEADS.IOU_THRESHOLDS`` and ``MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA`` are not used:
    ``MODEL.DYNAMIC_RCNN.WARMUP_*`` start the threshold and beta. The statistics come from the
    IoUs the matcher computed: no second IoU matrix.
    """

    # Constants for TorchScript, as detectron2's scripting patch makes them for StandardROIHeads
    # only: scripting then compiles only the branches the model has (no mask_pooler without masks).
    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]
    __jit_unused_properties__ = ["trackers"]  # training only

    @configurable
    def __init__(self, *, tracker: DynamicTracker, **kwargs):
        """
        Args:
            tracker: owner of the Dynamic R-CNN settings and of the threshold and beta in force.
            kwargs: those of ``StandardROIHeads``; ``proposal_matcher`` must be a single-threshold
                ``Matcher`` with labels [0, 1] (it is replaced by a :class:`DynamicMatcher`), and the
                box predictor's loss must be SmoothL1 when DSL is on.
        """
        if "min_positives_iou" in kwargs:  # an argument of earlier versions: say what to do instead
            check_dynamic_rcnn_args(min_positives_iou=kwargs.pop("min_positives_iou"))
        super().__init__(**kwargs)
        if not isinstance(tracker, DynamicTracker):
            raise TypeError(f"DynamicROIHeads needs a DynamicTracker as `tracker`, got {type(tracker).__name__}")
        check_box_loss(tracker.enable_dsl, getattr(self.box_predictor, "box_reg_loss_type", "smooth_l1"))
        self.tracker = tracker
        self.proposal_matcher = DynamicMatcher.replacing(self.proposal_matcher, "DynamicROIHeads")
        self._apply_tracker_values()

    @classmethod
    def from_config(cls, cfg, input_shape):
        validate_dynamic_rcnn_config(cfg)
        warn_unmovable(cfg)
        ret = super().from_config(cfg, input_shape)
        d = cfg.MODEL.DYNAMIC_RCNN
        ret["tracker"] = DynamicTracker(**{arg: d[key] for arg, key in CONFIG_KEYS.items()})
        ret["proposal_matcher"] = DynamicMatcher(d.WARMUP_IOU)
        return ret

    @property
    def trackers(self) -> List[DynamicTracker]:
        """[the tracker]: the head's trackers in stage order, as ``DynamicCascadeROIHeads`` has one a stage."""
        return [self.tracker]

    def _apply_tracker_values(self):
        # The tracker is the only owner of T and beta; the matcher and the box loss take them
        # from it right before each use, so an update or a loaded checkpoint is never missed.
        self.proposal_matcher.thresholds[1] = self.tracker.iou_threshold
        self.box_predictor.smooth_l1_beta = self.tracker.beta

    @torch.no_grad()
    def label_and_sample_proposals(self, proposals: List[Instances], targets: List[Instances]) -> List[Instances]:
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
        record_proposal_statistics(self.tracker, proposals, targets, records, self.proposal_append_gt,
                                   self.box_predictor.box2box_transform)


def record_proposal_statistics(tracker, proposals, targets, records, proposal_append_gt, box2box_transform) -> None:
    """
    :func:`record_statistics` of the RPN's proposals as ``StandardROIHeads.label_and_sample_proposals``
    matched them, one ``records`` entry of :class:`DynamicMatcher` an image: the proposals, then the
    ground-truth boxes when they are appended, which count when ``tracker.stats_include_gt``.
    """
    if len(records) != len(proposals):
        raise RuntimeError(
            f"DynamicMatcher was called {len(records)} times for {len(proposals)} images: "
            "the statistics need one call per image, as StandardROIHeads makes them."
        )
    with_gt = proposal_append_gt and tracker.stats_include_gt
    ious, sources, matched, appended = [], [], [], []
    for p, t, r in zip(proposals, targets, records):
        if r is None or len(t) == 0 or (len(p) == 0 and not with_gt):
            continue
        n = len(p)
        ious.append(r[0] if with_gt else r[0][:n])
        sources.append(p.proposal_boxes.tensor)
        matched.append(t.gt_boxes.tensor[r[1][:n]])
        appended.append(len(t) if with_gt else 0)
    record_statistics(tracker, ious, sources, matched, appended, box2box_transform)


def record_statistics(tracker: DynamicTracker, ious, sources, matched, appended, box2box_transform) -> None:
    """
    Record one iteration's statistics into ``tracker``, per image that has ground truth and boxes:

    - ``ious``: the largest IoU of every counted box with a ground-truth box (the matcher's values);
    - ``sources``, ``matched``: the counted boxes whose errors are computed (Nx4) and the ground-truth
      box each matched best; they are the first N of ``ious``;
    - ``appended``: how many appended ground-truth boxes follow them in ``ious``. They count error 0
      (their target is themselves): counted, not computed, so that a degenerate box a custom mapper
      let through cannot divide by its zero width. Boxes of the RPN or of a cascade stage are never empty.

    Also writes ``dynamic_rcnn/proposal_fg`` (under the tracker's scope): the counted boxes an image at or
    above the threshold in force, appended ground truth left out, which the hook watches.
    """
    if not ious:
        return
    errors = box_errors(torch.cat(sources), torch.cat(matched), box2box_transform).split([len(b) for b in sources])
    # Appended boxes overlap themselves (IoU 1): every one is at or above the threshold.
    fg = ((torch.cat(list(ious)) >= tracker.iou_threshold).sum() - sum(appended)) / len(ious)
    stats = torch.stack([iou_statistic(ious, tracker.iou_topk),
                         error_statistic(errors, tracker.error_topk, appended), fg.float()])
    # The matching just before synchronised the device: reading three numbers is cheap here.
    iou_stat, error_stat, fg = stats.tolist()
    tracker.record(iou_stat, error_stat)
    get_event_storage().put_scalar(scalar_name(tracker, "proposal_fg"), fg, smoothing_hint=False)
