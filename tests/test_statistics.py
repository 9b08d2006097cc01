import pytest
import torch
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.structures import Boxes

from dynamic_rcnn.statistics import (
    BETA_COLLAPSE_GUARD,
    box_errors,
    error_statistic,
    iou_statistic,
    updated_beta,
    updated_iou_threshold,
)

from conftest import reference_statistics as proposal_statistics

T = Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0))
GT = Boxes(torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
# IoU with GT: 1, 0.5, 0.25, 0; error (|dx| + |dy|) / 2 with weights 10, 10: 0, 2.5, 5, 20.
IMAGE1 = Boxes(torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 5, 5], [20, 20, 30, 30]]))
IMAGE2 = Boxes(torch.tensor([[0.0, 0, 5, 5]]))  # IoU 0.25, error 5


def test_iou_statistic_is_mean_of_per_image_kth_largest():
    ious = [torch.tensor([0.25, 1.0, 0.0, 0.5]), torch.tensor([0.3])]
    # image 1: 2nd largest 0.5; image 2 has fewer than K_I values: its smallest, 0.3.
    assert iou_statistic(ious, topk=2).item() == pytest.approx((0.5 + 0.3) / 2)
    assert iou_statistic(ious, topk=1).item() == pytest.approx((1.0 + 0.3) / 2)
    assert iou_statistic([], topk=2) is None
    assert iou_statistic([torch.zeros(0)], topk=2) is None


def random_boxes(n, generator, size=100.0):
    xy = torch.rand(n, 2, generator=generator) * size
    wh = torch.rand(n, 2, generator=generator) * size / 2 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_iou_statistic_batched_top_k_equals_one_image_at_a_time():
    g = torch.Generator().manual_seed(0)
    ious = [torch.rand(n, generator=g) for n in (7, 12, 5)]  # every image has >= K_I values
    expected = torch.stack([torch.sort(v, descending=True).values[4] for v in ious]).mean()
    assert torch.allclose(iou_statistic(ious, topk=5), expected)


def test_box_errors_are_get_deltas_dx_dy():
    g = torch.Generator().manual_seed(0)
    src, dst = random_boxes(50, g), random_boxes(50, g)
    deltas = T.get_deltas(src, dst)
    assert torch.equal(box_errors(src, dst, T), (deltas[:, 0].abs() + deltas[:, 1].abs()) / 2)


def test_error_statistic_is_kth_smallest_over_the_batch():
    errors = [torch.tensor([20.0, 0.0, 5.0, 2.5]), torch.tensor([5.0])]
    assert error_statistic(errors, topk=1).item() == pytest.approx(2.5)  # k = 1 x 2 images
    assert error_statistic(errors, topk=2).item() == pytest.approx(5.0)  # k = 4
    assert error_statistic(errors, topk=10).item() == pytest.approx(20.0)  # k = min(20, 5)
    assert error_statistic([torch.zeros(0)], topk=1) is None


def test_proposal_statistics_on_hand_made_boxes():
    no_gt = Boxes(torch.zeros(0, 4))
    iou, err = proposal_statistics([IMAGE1, IMAGE2, IMAGE1], [GT, GT, no_gt], T, iou_topk=2, beta_topk=1)
    # The image without ground truth contributes nothing: mean of 0.5 and 0.25; k = 1 x 2.
    assert iou.item() == pytest.approx((0.5 + 0.25) / 2)
    assert err.item() == pytest.approx(2.5)
    iou, err = proposal_statistics([IMAGE1, IMAGE2], [GT, GT], T, iou_topk=75, beta_topk=10)
    assert iou.item() == pytest.approx((0.0 + 0.25) / 2)  # fewer proposals than K_I: the smallest
    assert err.item() == pytest.approx(20.0)


def test_proposal_statistics_best_matching_ground_truth():
    gts = Boxes(torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]))
    props = Boxes(torch.tensor([[21.0, 20, 31, 30]]))  # matches the second box: IoU 9/11, dx = 10 * -1 / 10
    iou, err = proposal_statistics([props], [gts], T, iou_topk=1, beta_topk=1)
    assert iou.item() == pytest.approx(90 / 110)
    assert err.item() == pytest.approx(0.5)


def test_proposal_statistics_none_without_ground_truth_or_proposals():
    assert proposal_statistics([IMAGE1], [Boxes(torch.zeros(0, 4))], T, 2, 1) is None
    assert proposal_statistics([Boxes(torch.zeros(0, 4))], [GT], T, 2, 1) is None


def test_iou_threshold_is_window_mean_with_warmup_floor():
    assert updated_iou_threshold([0.5, 0.6, 0.7], current=0.4, warmup_iou=0.4) == pytest.approx(0.6)
    assert updated_iou_threshold([0.1, 0.2], current=0.55, warmup_iou=0.4) == pytest.approx(0.4)
    assert updated_iou_threshold([], current=0.55, warmup_iou=0.4) == 0.55


def test_beta_is_window_median_with_warmup_ceiling_and_guard():
    assert updated_beta([0.3, 0.1, 5.0], current=1.0, warmup_beta=1.0) == pytest.approx(0.3)
    assert updated_beta([0.2, 0.4], current=1.0, warmup_beta=1.0) == pytest.approx(0.3)
    assert updated_beta([3.0, 4.0], current=0.5, warmup_beta=1.0) == pytest.approx(1.0)
    tiny = BETA_COLLAPSE_GUARD / 10
    assert updated_beta([0.0, 0.0, tiny], current=0.3, warmup_beta=1.0) == 0.3
    assert updated_beta([], current=0.3, warmup_beta=1.0) == 0.3


def test_error_statistic_counts_the_zeros_of_appended_ground_truth_without_making_them():
    errors = [torch.tensor([20.0, 5.0, 2.5]), torch.tensor([5.0])]
    # Image 1 has 2 appended boxes (error 0), image 2 one: values 0, 0, 0, 2.5, 5, 5, 20.
    assert error_statistic(errors, topk=1, zeros=[2, 1]).item() == 0.0  # k = 2 <= 3 zeros
    assert error_statistic(errors, topk=2, zeros=[2, 1]).item() == pytest.approx(2.5)  # k = 4
    assert error_statistic(errors, topk=10, zeros=[2, 1]).item() == pytest.approx(20.0)  # k = min(20, 7)
    # An image with only appended boxes still counts as an image with values: k = 2 of [0, 3], not 1.
    assert error_statistic([torch.zeros(0), torch.tensor([3.0])], topk=1, zeros=[1, 0]).item() == 3.0
    # The same as the k-th smallest with the zeros there: k = 6 of the 7 values.
    reference = torch.kthvalue(torch.tensor([0.0, 0, 0, 20, 5, 2.5, 5]), 6).values
    assert error_statistic(errors, topk=3, zeros=[2, 1]) == reference


def test_the_automatic_k_is_the_papers_share_of_the_proposals_with_three_boxes_an_object():
    from dynamic_rcnn.statistics import topk_of_image

    assert topk_of_image(20, objects=14, proposals=300, share=0.075) == 20  # set: used as it is
    # COCO: 7 objects, 1000 proposals: the paper's 75 and 10. shapes: 7 objects, 300 proposals: 23 and 21.
    # BCCD: 14 cells, 300 proposals: 42 for both (3 boxes a cell).
    assert topk_of_image(0, 7, 1000, 0.075) == 75 and topk_of_image(0, 7, 1000, 0.01) == 21
    assert topk_of_image(0, 7, 300, 0.075) == 23 and topk_of_image(0, 7, 300, 0.01) == 21
    assert topk_of_image(0, 14, 300, 0.075) == 42 and topk_of_image(0, 0, 0, 0.01) == 1


def test_statistics_take_one_k_an_image():
    ious = [torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([]), torch.tensor([0.5, 0.4])]
    # Image 0: its 3rd largest (0.7); image 1 has no box; image 2: its 1st (0.5). Mean 0.6.
    assert float(iou_statistic(ious, [3, 5, 1])) == pytest.approx(0.6)
    errors = [torch.tensor([0.1, 0.4, 0.2]), torch.tensor([]), torch.tensor([0.3])]
    # k = 2 + 1 (the images with values): the 3rd smallest of 0.1, 0.2, 0.3, 0.4.
    assert float(error_statistic(errors, [2, 7, 1])) == pytest.approx(0.3)
