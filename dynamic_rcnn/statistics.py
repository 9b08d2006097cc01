"""The math of Dynamic R-CNN as pure functions: the two statistics of an iteration, and the rule that turns a
window of them into a new IoU threshold and a new SmoothL1 beta (docs/ALGORITHM.md)."""
import math
import statistics as _stats
from typing import Optional, Sequence, Union

import torch
from detectron2.modeling.box_regression import Box2BoxTransform

__all__ = ["BETA_COLLAPSE_GUARD", "OBJECT_BOXES", "box_errors", "iou_statistic", "error_statistic", "topk_of_image",
           "updated_iou_threshold", "updated_beta"]

# A median error below this keeps the previous beta: a beta collapsing to zero makes the
# SmoothL1 loss an L1 loss with an infinite quadratic part (MMDetection's fix).
BETA_COLLAPSE_GUARD = 1e-6
# The automatic K reads at least this many boxes an object: the depth the measured best settings read (docs/ALGORITHM.md).
OBJECT_BOXES = 3


def topk_of_image(topk: int, objects: int, proposals: int, share: float) -> int:
    """``topk`` when it is set (>= 1); 0 (automatic): ``max(OBJECT_BOXES x objects, ceil(share x proposals))``,
    the paper's share of an image's proposals (75 or 10 of 1000), at least ``OBJECT_BOXES`` boxes an object."""
    return topk if topk > 0 else max(OBJECT_BOXES * objects, math.ceil(share * proposals), 1)


def box_errors(sources: torch.Tensor, targets: torch.Tensor, box2box_transform: Box2BoxTransform) -> torch.Tensor:
    """
    ``(|dx| + |dy|) / 2`` of the regression targets from ``sources`` to ``targets`` (Nx4 XYXY each),
    with the head's ``box2box_transform`` (its weights, 10, 10, 5, 5 by default, set the units).
    """
    deltas = box2box_transform.get_deltas(sources, targets)
    return (deltas[:, 0].abs() + deltas[:, 1].abs()) / 2


def iou_statistic(max_ious: Sequence[torch.Tensor], topk: Union[int, Sequence[int]]) -> Optional[torch.Tensor]:
    """
    ``max_ious``: one 1-D tensor an image that has ground truth, every box's largest IoU with a ground-truth box
    (empty ones are skipped); ``topk``: K_I >= 1, or one an image. Returns a 0-dim tensor, the mean over images of
    each image's K_I-th largest value (its smallest when it has fewer); None when no image has a value.
    """
    topks = [topk] * len(max_ious) if isinstance(topk, int) else topk
    kept = [(v, k) for v, k in zip(max_ious, topks) if v.numel() > 0]
    if not kept:
        return None
    # One top-k for the whole batch: IoUs are >= 0, so the -1 padding is never among the k
    # largest of an image that has k values. Indexing with Python ints: no device sync.
    ks = [min(k, v.numel()) for v, k in kept]
    kept = [v for v, _ in kept]
    padded = torch.nn.utils.rnn.pad_sequence(kept, batch_first=True, padding_value=-1.0)
    top = torch.topk(padded, max(ks), dim=1).values
    if all(k == ks[0] for k in ks):
        return top[:, ks[0] - 1].mean()
    return torch.stack([top[i, k - 1] for i, k in enumerate(ks)]).mean()


def error_statistic(errors: Sequence[torch.Tensor], topk: Union[int, Sequence[int]],
                    zeros: Optional[Sequence[int]] = None) -> Optional[torch.Tensor]:
    """
    ``errors``: one 1-D tensor an image that has ground truth, every box's error ``(|dx| + |dy|) / 2`` to its
    best-matching ground truth; ``topk``: K_E >= 1, or one an image; ``zeros``: an image's further errors of exactly
    0 (appended ground truth, whose target is itself). Returns a 0-dim tensor, the k-th smallest error of the
    batch, ``k = min(the sum of K_E over the images with values, number of values)``; None when there is none.
    """
    topks = [topk] * len(errors) if isinstance(topk, int) else topk
    kept = [(e, z, k) for e, z, k in zip(errors, zeros or [0] * len(errors), topks) if e.numel() + z > 0]
    if not kept:
        return None
    values = torch.cat([e for e, _, _ in kept])
    n_zeros = sum(z for _, z, _ in kept)
    k = min(sum(k for _, _, k in kept), values.numel() + n_zeros)
    # The zeros come first in the order: no need to make them, only to count them.
    return values.new_zeros(()) if k <= n_zeros else torch.kthvalue(values, k - n_zeros).values


def updated_iou_threshold(iou_stats: Sequence[float], current: float, warmup_iou: float) -> float:
    """``max(warmup_iou, mean(iou_stats))``; ``current`` when the window recorded nothing."""
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

