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
    "matched_statistics",
    "box_errors",
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
    max_ious = [v for v in max_ious if v.numel() > 0]
    if not max_ious:
        return None
    if all(v.numel() >= topk for v in max_ious):
        # One top-k for the whole batch: IoUs are >= 0, so the -1 padding is never among
        # the K_I largest of an image that has at least K_I values.
        padded = torch.nn.utils.rnn.pad_sequence(max_ious, batch_first=True, padding_value=-1.0)
        return torch.topk(padded, topk, dim=1).values[:, -1].mean()
    per_image = [torch.topk(v, min(topk, v.numel())).values[-1] for v in max_ious]
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


def box_errors(sources: torch.Tensor, targets: torch.Tensor, box2box_transform: Box2BoxTransform) -> torch.Tensor:
    """
    ``(|dx| + |dy|) / 2`` of the regression targets from ``sources`` to ``targets`` (Nx4 each),
    with dx, dy computed exactly as ``box2box_transform.get_deltas`` computes them, minus its
    validity check (a device sync) and the unused dw, dh.
    """
    src_widths = sources[:, 2] - sources[:, 0]
    src_heights = sources[:, 3] - sources[:, 1]
    src_ctr_x = sources[:, 0] + 0.5 * src_widths
    src_ctr_y = sources[:, 1] + 0.5 * src_heights
    target_ctr_x = targets[:, 0] + 0.5 * (targets[:, 2] - targets[:, 0])
    target_ctr_y = targets[:, 1] + 0.5 * (targets[:, 3] - targets[:, 1])
    wx, wy = box2box_transform.weights[:2]
    dx = wx * (target_ctr_x - src_ctr_x) / src_widths
    dy = wy * (target_ctr_y - src_ctr_y) / src_heights
    return (dx.abs() + dy.abs()) / 2


def matched_statistics(
    max_ious: Sequence[torch.Tensor],
    matched_gt: Sequence[torch.Tensor],
    proposal_boxes: Sequence[torch.Tensor],
    gt_boxes: Sequence[torch.Tensor],
    box2box_transform: Box2BoxTransform,
    iou_topk: int,
    error_topk: int,
) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """
    The two statistics of one iteration from what the matcher computed, per image that has
    ground truth and proposals (the other images are left out of every argument).

    Args:
        max_ious, matched_gt: per image, for every proposal, its largest IoU with a
            ground-truth box and the index of that box (``match_quality_matrix.max(dim=0)``).
        proposal_boxes, gt_boxes: per image, the Nx4 proposals as matched and the Mx4 ground truth.

    Returns:
        (iou statistic, error statistic) as 0-dim tensors, or None when no image is given.
    """
    if len(max_ious) == 0:
        return None
    sources = torch.cat(list(proposal_boxes))
    targets = torch.cat([gt[idx] for gt, idx in zip(gt_boxes, matched_gt)])
    errors = box_errors(sources, targets, box2box_transform).split([len(p) for p in proposal_boxes])
    return iou_statistic(max_ious, iou_topk), error_statistic(errors, error_topk)


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
    kept = [(p, g) for p, g in zip(proposal_boxes, gt_boxes) if len(p) > 0 and len(g) > 0]
    best = [pairwise_iou(g, p).max(dim=0) for p, g in kept]
    return matched_statistics(
        [b.values for b in best],
        [b.indices for b in best],
        [p.tensor for p, _ in kept],
        [g.tensor for _, g in kept],
        box2box_transform,
        iou_topk,
        error_topk,
    )


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
