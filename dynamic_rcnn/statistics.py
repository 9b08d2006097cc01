"""
The math of Dynamic R-CNN as pure functions on tensors and floats (see ALGORITHM.md):
the two per-iteration statistics, and the rule that turns a window of them into a new IoU
threshold and a new SmoothL1 beta.
"""
import statistics as _stats
from typing import Optional, Sequence, Tuple, Union

import torch
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes, pairwise_iou

__all__ = [
    "STATISTICS",
    "iou_statistic",
    "error_statistic",
    "object_statistics",
    "scaled_topk",
    "per_object_topk",
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

# MODEL.DYNAMIC_RCNN.STATISTIC: how the per-iteration statistics count (see ALGORITHM.md and
# docs/STATISTICS.md): "image" is the paper's rule.
STATISTICS = ("image", "scaled", "object")


def iou_statistic(max_ious: Sequence[torch.Tensor], topk: Union[int, Sequence[int]]) -> Optional[torch.Tensor]:
    """
    Args:
        max_ious: one 1-D tensor per image that has ground truth: for every proposal of the
            image, its largest IoU with any ground-truth box. Empty tensors are skipped.
        topk: K_I >= 1, or one K_I per image of ``max_ious`` (``STATISTIC: scaled``).

    Returns:
        0-dim tensor: the mean over images of each image's K_I-th largest value (its smallest
        value when it has fewer than K_I proposals); None when no image has a value.
    """
    ks = [topk] * len(max_ious) if isinstance(topk, int) else list(topk)
    kept = [(v, min(k, v.numel())) for v, k in zip(max_ious, ks) if v.numel() > 0]
    if not kept:
        return None
    # One top-k for the whole batch: IoUs are >= 0, so the -1 padding is never among the k
    # largest of an image that has k values. The per-image picks index with Python ints: no
    # host-to-device copy, hence no device sync.
    padded = torch.nn.utils.rnn.pad_sequence([v for v, _ in kept], batch_first=True, padding_value=-1.0)
    top = torch.topk(padded, max(k for _, k in kept), dim=1).values
    if all(k == kept[0][1] for _, k in kept):
        return top[:, kept[0][1] - 1].mean()
    return torch.stack([top[i, k - 1] for i, (_, k) in enumerate(kept)]).mean()


def error_statistic(errors: Sequence[torch.Tensor], topk: Union[int, Sequence[int]]) -> Optional[torch.Tensor]:
    """
    Args:
        errors: one 1-D tensor per image that has ground truth: for every proposal, the error
            ``(|dx| + |dy|) / 2`` of its regression target to its best-matching ground truth.
        topk: K_E >= 1, or one K_E per image of ``errors`` (``STATISTIC: scaled``).

    Returns:
        0-dim tensor: the k-th smallest error of the whole batch, with ``k = min(sum of the K_E of
        the images with values, number of values)`` (K_E x images for one K_E); None when empty.
    """
    ks = [topk] * len(errors) if isinstance(topk, int) else list(topk)
    kept = [(e, k) for e, k in zip(errors, ks) if e.numel() > 0]
    if not kept:
        return None
    values = torch.cat([e for e, _ in kept])
    k = min(sum(k for _, k in kept), values.numel())
    return torch.kthvalue(values, k).values


def scaled_topk(topk: int, num_objects: int, reference_objects: float) -> int:
    """
    ``topk`` re-scaled to an image of ``num_objects`` objects: ``max(1, round(topk x num_objects /
    reference_objects))``, where ``reference_objects`` is the number of objects per image the
    top-k was chosen for (7 for the paper's COCO values).
    """
    return max(1, int(round(topk * num_objects / reference_objects)))


def per_object_topk(topk: int, reference_objects: float) -> int:
    """The per-object share of a per-image top-k: ``max(1, round(topk / reference_objects))``."""
    return max(1, int(round(topk / reference_objects)))


def _kth_per_group(values: torch.Tensor, groups: torch.Tensor, num_groups: int, k: int, descending: bool):
    """
    For each group id in ``[0, num_groups)``: the k-th value of its members in the given order
    (its last when it has fewer than k), and whether it has members. Batched: two stable sorts.
    """
    order = torch.sort(values, descending=descending, stable=True).indices
    order = order[torch.sort(groups[order], stable=True).indices]  # by group, in value order inside
    counts = torch.bincount(groups, minlength=num_groups)
    starts = torch.cumsum(counts, 0) - counts
    pick = (starts + counts.clamp(max=k) - 1).clamp(min=0)
    picked = values[order[pick]] if len(values) else torch.zeros(num_groups, device=values.device)
    return picked, counts > 0


def object_statistics(
    max_ious: Sequence[torch.Tensor],
    matched_gt: Sequence[torch.Tensor],
    errors: Sequence[torch.Tensor],
    num_gt: Sequence[int],
    iou_topk: int,
    error_topk: int,
) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """
    The per-object statistics (``STATISTIC: object``). A proposal belongs to the ground-truth box
    it overlaps most (none if it overlaps none). Over the objects that have at least one proposal:

    - IoU statistic: the mean over objects of each object's ``iou_topk``-th largest IoU among its
      proposals (its smallest when it has fewer);
    - error statistic: the median (the lower middle value for an even count) over objects of each
      object's ``error_topk``-th smallest error among its proposals (its largest when it has fewer).

    Args:
        max_ious, matched_gt, errors: per image, for every proposal, its largest IoU with a
            ground-truth box, the index of that box, and its error ``(|dx| + |dy|) / 2`` to it.
        num_gt: per image, the number of ground-truth boxes.

    Returns:
        (iou statistic, error statistic) as 0-dim tensors, or None when no object has a proposal.
    """
    if len(max_ious) == 0:
        return None
    offsets = [sum(num_gt[:i]) for i in range(len(num_gt))]  # Python ints: no host-to-device copy
    groups = torch.cat([m + o for m, o in zip(matched_gt, offsets)])
    ious, errs = torch.cat(list(max_ious)), torch.cat(list(errors))
    belongs = ious > 0  # IoU 0 with every box: argmax picked box 0, but it covers no object
    groups, ious, errs = groups[belongs], ious[belongs], errs[belongs]
    if groups.numel() == 0:
        return None
    total = int(sum(num_gt))
    iou_k, present = _kth_per_group(ious, groups, total, iou_topk, descending=True)
    err_k, _ = _kth_per_group(errs, groups, total, error_topk, descending=False)
    n = present.sum()
    iou_stat = torch.where(present, iou_k, torch.zeros_like(iou_k)).sum() / n
    # Lower median over the present objects, without a device sync: absent ones sort last.
    ordered = torch.sort(torch.where(present, err_k, torch.full_like(err_k, float("inf")))).values
    err_stat = ordered[((n - 1) // 2).clamp(min=0)]
    return iou_stat, err_stat


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
    statistic: str = "image",
    reference_objects: float = 7.0,
) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """
    The two statistics of one iteration from what the matcher computed, per image that has
    ground truth and proposals (the other images are left out of every argument).

    Args:
        max_ious, matched_gt: per image, for every proposal, its largest IoU with a
            ground-truth box and the index of that box (``match_quality_matrix.max(dim=0)``).
        proposal_boxes, gt_boxes: per image, the Nx4 proposals as matched and the Mx4 ground truth.
        statistic: ``"image"`` (the paper: K_I per image, K_E x images over the batch),
            ``"scaled"`` (K_I and K_E scaled by each image's number of objects over
            ``reference_objects``) or ``"object"`` (:func:`object_statistics` with the per-object
            shares of K_I and K_E).

    Returns:
        (iou statistic, error statistic) as 0-dim tensors, or None when no image is given.
    """
    if len(max_ious) == 0:
        return None
    sources = torch.cat(list(proposal_boxes))
    targets = torch.cat([gt[idx] for gt, idx in zip(gt_boxes, matched_gt)])
    errors = box_errors(sources, targets, box2box_transform).split([len(p) for p in proposal_boxes])
    if statistic == "image":
        return iou_statistic(max_ious, iou_topk), error_statistic(errors, error_topk)
    num_gt = [len(g) for g in gt_boxes]
    if statistic == "scaled":
        return (
            iou_statistic(max_ious, [scaled_topk(iou_topk, n, reference_objects) for n in num_gt]),
            error_statistic(errors, [scaled_topk(error_topk, n, reference_objects) for n in num_gt]),
        )
    if statistic == "object":
        return object_statistics(
            max_ious, matched_gt, errors, num_gt,
            per_object_topk(iou_topk, reference_objects), per_object_topk(error_topk, reference_objects),
        )
    raise ValueError(f"statistic must be one of {STATISTICS}, got {statistic!r}")


def proposal_statistics(
    proposal_boxes: Sequence[Boxes],
    gt_boxes: Sequence[Boxes],
    box2box_transform: Box2BoxTransform,
    iou_topk: int,
    error_topk: int,
    statistic: str = "image",
    reference_objects: float = 7.0,
) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """
    The two statistics of one iteration, from the boxes the ROI head matches (the reference
    implementation: it computes the IoU matrix itself; the head reuses its matcher's).

    Args:
        proposal_boxes: per image, the proposals exactly as the ROI head matches them (with the
            ground-truth boxes appended when the head appends them).
        gt_boxes: per image, the ground-truth boxes. Images without any contribute nothing.
        box2box_transform: the ROI head's box transform (weights 10, 10, 5, 5 by default).
        statistic, reference_objects: as in :func:`matched_statistics`.

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
        statistic,
        reference_objects,
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
