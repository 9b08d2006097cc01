"""
The math of Dynamic R-CNN as pure functions on tensors and floats (see ALGORITHM.md):
the two per-iteration statistics, and the rule that turns a window of them into a new IoU
threshold and a new SmoothL1 beta.
"""
import statistics as _stats
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, pairwise_iou

__all__ = [
    "iou_statistic",
    "error_statistic",
    "proposal_statistics",
    "updated_iou_threshold",
    "updated_beta",
    "BETA_COLLAPSE_GUARD",
]

# A median error below this keeps the previous beta: a beta collapsing to zero makes the
# SmoothL1 loss an L1 loss with an infinite quadratic part (MMDetection's fix).
BETA_COLLAPSE_GUARD = 1e-6


def iou_statistic(max_ious: Sequence[torch.Tensor], topk: int) -> Optional[torch.Tensor]:
    """
    Args:
        max_ious: one 1-D tensor per image that has ground truth: for every proposal of the
            image, its largest IoU with any ground-truth box. Empty tensors are skipped.
        topk: K_I >= 1.

    Returns:
        0-dim tensor: the mean over images of each image's K_I-th largest value (its smallest
        value when it has fewer than K_I proposals); None when no image has a value.
    """
    per_image = [
        torch.topk(v, min(topk, v.numel())).values[-1] for v in max_ious if v.numel() > 0
    ]
    if not per_image:
        return None
    return torch.stack(per_image).mean()


def error_statistic(errors: Sequence[torch.Tensor], topk: int) -> Optional[torch.Tensor]:
    """
    Args:
        errors: one 1-D tensor per image that has ground truth: for every proposal, the error
            ``(|dx| + |dy|) / 2`` of its regression target to its best-matching ground truth.
        topk: K_E >= 1.

    Returns:
        0-dim tensor: the k-th smallest error of the whole batch, with
        ``k = min(K_E x number of images with values, number of values)``; None when empty.
    """
    errors = [e for e in errors if e.numel() > 0]
    if not errors:
        return None
    values = torch.cat(errors)
    k = min(topk * len(errors), values.numel())
    return torch.kthvalue(values, k).values


def proposal_statistics(
    proposal_boxes: Sequence[Boxes],
    gt_boxes: Sequence[Boxes],
    box2box_transform: Box2BoxTransform,
    iou_topk: int,
    error_topk: int,
) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """
    The two statistics of one iteration, from the boxes the ROI head matches.

    Args:
        proposal_boxes: per image, the proposals exactly as the ROI head matches them (with the
            ground-truth boxes appended when the head appends them).
        gt_boxes: per image, the ground-truth boxes. Images without any contribute nothing.
        box2box_transform: the ROI head's box transform (weights 10, 10, 5, 5 by default).

    Returns:
        (iou statistic, error statistic) as 0-dim tensors, or None when no image of the batch
        has both ground truth and proposals.
    """
    max_ious: List[torch.Tensor] = []
    sources: List[torch.Tensor] = []
    matched: List[torch.Tensor] = []
    for proposals, gt in zip(proposal_boxes, gt_boxes):
        if len(gt) == 0 or len(proposals) == 0:
            continue
        best_iou, best_gt = pairwise_iou(gt, proposals).max(dim=0)
        max_ious.append(best_iou)
        sources.append(proposals.tensor)
        matched.append(gt.tensor[best_gt])
    if not max_ious:
        return None
    # One call for the whole batch: get_deltas checks its boxes with a device sync.
    deltas = box2box_transform.get_deltas(torch.cat(sources), torch.cat(matched))
    error = (deltas[:, 0].abs() + deltas[:, 1].abs()) / 2
    errors = error.split([len(s) for s in sources])
    return iou_statistic(max_ious, iou_topk), error_statistic(errors, error_topk)


def updated_iou_threshold(iou_stats: Sequence[float], current: float, warmup_iou: float) -> float:
    """
    ``max(warmup_iou, mean(iou_stats))``; ``current`` when the window recorded nothing.
    """
    if len(iou_stats) == 0:
        return current
    return max(warmup_iou, _stats.fmean(iou_stats))


def updated_beta(error_stats: Sequence[float], current: float, warmup_beta: float) -> float:
    """
    ``min(warmup_beta, median(error_stats))`` (the median of an even count is the mean of the two
    middle values); ``current`` when the window recorded nothing or the median is below
    ``BETA_COLLAPSE_GUARD``.
    """
    if len(error_stats) == 0:
        return current
    median = _stats.median(error_stats)
    if median < BETA_COLLAPSE_GUARD:
        return current
    return min(warmup_beta, median)
