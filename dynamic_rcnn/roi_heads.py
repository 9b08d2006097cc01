"""detectron2's ``StandardROIHeads`` and ``CascadeROIHeads`` whose stages take their IoU threshold and SmoothL1 beta
from a :class:`DynamicTracker` each, and record into it the statistics of the boxes they label. One code path:
the single head is the one-stage case."""
import contextlib
from typing import List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.modeling.matcher import Matcher
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads, StandardROIHeads
from detectron2.structures import Boxes, Instances
from torch import nn

from .config import check_box_loss, tracker_args
from .statistics import box_errors, error_statistic, iou_statistic, topk_of_image
from .tracker import REMOVED, DynamicTracker, check_tracker_args

__all__ = ["DynamicMatcher", "DynamicROIHeads", "DynamicCascadeROIHeads"]


class DynamicMatcher(Matcher):
    """detectron2's ``Matcher`` with one threshold (IoU >= ``thresholds[1]`` is foreground, no ignored band, no
    low-quality matches) that, while ``records`` is a list, appends for each call the IoU of every box with the
    ground truth it matched and that ground truth's index, or None for an empty matrix."""

    def __init__(self, threshold: float):
        super().__init__([threshold], [0, 1], allow_low_quality_matches=False)
        self.records: Optional[List[Optional[Tuple[torch.Tensor, torch.Tensor]]]] = None

    @classmethod
    def replacing(cls, matcher: Matcher, where: str) -> "DynamicMatcher":
        """A DynamicMatcher in place of ``matcher``, which must have one threshold (``where`` names whose it is)."""
        if len(matcher.thresholds) != 3 or matcher.labels != [0, 1] or matcher.allow_low_quality_matches:
            raise ValueError(f"{where} needs a Matcher with one threshold, labels [0, 1] and no low-quality matches, "
                             f"got thresholds {matcher.thresholds[1:-1]}, labels {matcher.labels}, "
                             f"allow_low_quality_matches={matcher.allow_low_quality_matches}")
        return cls(matcher.thresholds[1])

    def __call__(self, match_quality_matrix: torch.Tensor):
        if match_quality_matrix.numel() == 0:
            if self.records is not None:
                self.records.append(None)
            return super().__call__(match_quality_matrix)
        # Matcher.__call__'s one-threshold case, less its two boolean-mask writes an image (device syncs): on the
        # tiny preset, 40 fewer operations a step and 8 fewer syncs (BENCHMARKS.md). Labels equal Matcher's (test).
        assert torch.all(match_quality_matrix >= 0)
        matched_vals, matches = match_quality_matrix.max(dim=0)
        if self.records is not None:
            self.records.append((matched_vals, matches))
        return matches, (matched_vals >= self.thresholds[1]).to(torch.int8)


class _DynamicStages:
    """Both heads: a tracker a stage, whose values the stage's matcher and box loss take right before each use, and
    which records the statistics of the boxes the stage labels."""

    def _attach(self, trackers, matchers, predictors) -> List[DynamicMatcher]:
        head, trackers = type(self).__name__, list(trackers)
        if len(trackers) != len(matchers) or not all(isinstance(t, DynamicTracker) for t in trackers):
            raise ValueError(f"{head} needs one DynamicTracker a stage ({len(matchers)}), "
                             f"got {[type(t).__name__ for t in trackers]}")
        if len({t.update_period for t in trackers}) > 1:
            raise ValueError(f"{head}: every stage updates at the same iteration, but the trackers' update_period "
                             f"are {[t.update_period for t in trackers]}: give them one MODEL.DYNAMIC_RCNN.UPDATE_PERIOD")
        for k, (t, predictor) in enumerate(zip(trackers, predictors)):
            check_box_loss(t.enable_dsl, getattr(predictor, "box_reg_loss_type", "smooth_l1"), t.keys["enable_dsl"])
            t.scope = f"stage{k}" if len(trackers) > 1 else ""  # detectron2's names of a cascade's stages
        self.trackers = trackers
        return [DynamicMatcher.replacing(m, f"{head}'s stage {k}") for k, m in enumerate(matchers)]

    def _stages(self):
        """(tracker, matcher, box predictor) of each stage."""
        matchers = getattr(self, "proposal_matchers", None) or [self.proposal_matcher]
        predictors = self.box_predictor if isinstance(self.box_predictor, nn.ModuleList) else [self.box_predictor]
        return list(zip(self.trackers, matchers, predictors))

    def _apply_values(self):  # right before each use: neither an update nor a loaded checkpoint is missed
        for t, matcher, predictor in self._stages():
            matcher.thresholds[1] = t.iou_threshold
            predictor.smooth_l1_beta = t.beta

    @contextlib.contextmanager
    def _recording(self, stage: int, boxes: List[torch.Tensor], targets: List[Instances], keep=None):
        """Around the matching of stage ``stage`` (a matcher call an image), then records the statistics of what it
        labelled. ``boxes``: per image, the boxes whose errors are computed (the matcher saw them first, then, at
        stage 0, the appended ground truth); ``keep``: per image, which of them count (all by default)."""
        t, matcher, predictor = self._stages()[stage]
        records = matcher.records = [] if t.enabled else None
        try:
            yield
        finally:
            matcher.records = None
        if records is None:
            return
        if len(records) != len(boxes):
            raise RuntimeError(f"DynamicMatcher was called {len(records)} times for {len(boxes)} images: the "
                               "statistics need one call an image, as detectron2's heads make them.")
        with_gt = stage == 0 and self.proposal_append_gt and t.stats_include_gt
        ious, sources, matched, appended, k_iou, k_error = [], [], [], [], [], []
        for i, (b, g, r) in enumerate(zip(boxes, targets, records)):
            n = len(b)
            if r is None or len(g) == 0 or (n == 0 and not with_gt):
                continue
            values, indices = r[0][:n], r[1][:n]
            if keep is not None:
                values, indices, b = values[keep[i]], indices[keep[i]], b[keep[i]]
            # Appended ground truth: IoU 1 and error 0, counted rather than computed (a degenerate box would
            # divide by its zero width).
            ious.append(r[0] if with_gt else values)
            sources.append(b)
            matched.append(g.gt_boxes.tensor[indices])
            appended.append(len(g) if with_gt else 0)
            # K_I, K_E of the image: those set, or automatic from its objects and its RPN proposals (the paper's
            # 75 and 10 of 1000); at every stage of a cascade, those of stage 0.
            k_iou.append(topk_of_image(t.iou_topk, len(g), self._proposals[i], 0.075))
            k_error.append(topk_of_image(t.beta_topk, len(g), self._proposals[i], 0.01))
        if not ious:
            return
        t.counts = (len(ious), sum(appended), sum(k_iou), sum(k_error))  # what the statistics read (engine.regime)
        errors = box_errors(torch.cat(sources), torch.cat(matched), predictor.box2box_transform)
        stats = [iou_statistic(ious, k_iou), error_statistic(errors.split([len(s) for s in sources]), k_error, appended)]
        if all(s is not None for s in stats):  # None: every box was left out
            t.record(*torch.stack(stats).tolist())  # the matching has just synchronised the device: cheap

    @torch.no_grad()
    def label_and_sample_proposals(self, proposals: List[Instances], targets: List[Instances]) -> List[Instances]:
        """detectron2's, with every stage's values in force and the statistics of stage 0's boxes recorded."""
        self._apply_values()
        # Which sampled boxes are appended ground truth, for a cascade to leave their descendants out.
        self._lineage = [[]] if self.proposal_append_gt and not self.trackers[0].stats_include_gt else None
        self._proposals = [len(p) for p in proposals]
        with self._recording(0, [p.proposal_boxes.tensor for p in proposals], targets):
            return super().label_and_sample_proposals(proposals, targets)


@ROI_HEADS_REGISTRY.register()
class DynamicROIHeads(_DynamicStages, StandardROIHeads):
    """``StandardROIHeads`` whose matcher threshold and SmoothL1 beta come from ``self.tracker``, updated from the
    statistics of the proposals it labels. Inference and weights are ``StandardROIHeads``'s."""

    # Constants for TorchScript, as detectron2's scripting patch makes them for StandardROIHeads only.
    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

    @configurable
    def __init__(self, *, tracker: DynamicTracker, **kwargs):
        """``tracker``: the settings and the values in force; ``kwargs``: those of ``StandardROIHeads``, its
        ``proposal_matcher`` with one threshold (it becomes a :class:`DynamicMatcher`)."""
        check_tracker_args(**{k: kwargs.pop(k) for k in list(kwargs) if k in REMOVED})  # earlier versions' arguments
        super().__init__(**kwargs)
        self.proposal_matcher = self._attach([tracker], [self.proposal_matcher], [self.box_predictor])[0]
        self.tracker = tracker
        self._apply_values()

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        (args, keys), = tracker_args(cfg, cascade=False)
        ret["tracker"] = DynamicTracker(keys=keys, **args)
        ret["proposal_matcher"] = DynamicMatcher(args["warmup_iou"])
        return ret


@ROI_HEADS_REGISTRY.register()
class DynamicCascadeROIHeads(_DynamicStages, CascadeROIHeads):
    """``CascadeROIHeads`` whose stage k takes its threshold and beta from ``self.trackers[k]``, updated from the
    statistics of the boxes it labels: stage 0 the RPN's proposals, stage k > 0 those stage k - 1 regressed.
    Inference and weights are ``CascadeROIHeads``'s."""

    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

    @configurable
    def __init__(self, *, trackers: List[DynamicTracker], **kwargs):
        """``trackers``: one a stage; ``kwargs``: those of ``CascadeROIHeads``, each matcher with one threshold."""
        super().__init__(**kwargs)
        self.proposal_matchers = self._attach(trackers, self.proposal_matchers, self.box_predictor)
        self.proposal_matcher = self.proposal_matchers[0]  # stage 0 labels the proposals with it
        self._lineage: Optional[List[List[torch.Tensor]]] = None
        self._apply_values()

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        ret["trackers"] = [DynamicTracker(keys=keys, **args) for args, keys in tracker_args(cfg, cascade=True)]
        return ret

    def _sample_proposals(self, matched_idxs, matched_labels, gt_classes):
        sampled, classes = super()._sample_proposals(matched_idxs, matched_labels, gt_classes)
        if self._lineage is not None:  # the matcher saw the proposals, then the appended ground truth
            self._lineage[0].append(sampled >= matched_idxs.numel() - gt_classes.numel())
        return sampled, classes

    def _create_proposals_from_boxes(self, boxes, image_sizes):
        proposals = super()._create_proposals_from_boxes(boxes, image_sizes)
        if self.training and self._lineage is not None:  # detectron2 drops the boxes clipping left empty
            kept = []
            for b, size, from_gt in zip(boxes, image_sizes, self._lineage[-1]):
                clipped = Boxes(b.detach().clone())
                clipped.clip(size)
                kept.append(from_gt[clipped.nonempty()])
            self._lineage.append(kept)
        return proposals

    @torch.no_grad()
    def _match_and_label_boxes(self, proposals, stage, targets):
        keep = None if self._lineage is None else [~from_gt for from_gt in self._lineage[stage]]
        with self._recording(stage, [p.proposal_boxes.tensor for p in proposals], targets, keep):
            return super()._match_and_label_boxes(proposals, stage, targets)
