import logging

import pytest
import torch

from dynamic_rcnn.tracker import DynamicTracker


def make(dla=True, dsl=True, period=3):
    return DynamicTracker(
        iou_topk=75, error_topk=10, update_period=period, warmup_iou=0.4, warmup_beta=1.0,
        enable_dla=dla, enable_dsl=dsl,
    )


def feed(tracker, pairs):
    for iou, err in pairs:
        tracker.record(torch.tensor(iou), torch.tensor(err))
        tracker.commit()


def test_starts_at_warmup_values():
    t = make()
    assert (t.iou_threshold, t.beta) == (0.4, 1.0)


def test_update_applies_mean_and_median_then_clears_window():
    t = make()
    feed(t, [(0.5, 0.3), (0.6, 0.1), (0.7, 5.0)])
    assert len(t.window) == 3
    assert t.update() == 3
    assert t.iou_threshold == pytest.approx(0.6)
    assert t.beta == pytest.approx(0.3)
    assert t.window == []


def test_empty_window_changes_nothing():
    t = make()
    feed(t, [(0.6, 0.2)])
    t.update()
    before = (t.iou_threshold, t.beta)
    assert t.commit() is None  # nothing recorded this iteration
    assert t.update() == 0
    assert (t.iou_threshold, t.beta) == before


def test_each_part_moves_only_its_own_value():
    dla = make(dla=True, dsl=False)
    dsl = make(dla=False, dsl=True)
    for t in (dla, dsl):
        feed(t, [(0.7, 0.2), (0.8, 0.2)])
        t.update()
    assert dla.iou_threshold == pytest.approx(0.75) and dla.beta == 1.0
    assert dsl.iou_threshold == 0.4 and dsl.beta == pytest.approx(0.2)


def test_commit_returns_recorded_values():
    t = make()
    t.record(torch.tensor(0.25), torch.tensor(0.5))
    assert t.commit() == pytest.approx((0.25, 0.5))
    assert t.commit() is None


def test_state_dict_round_trip_keeps_values_and_window():
    t = make()
    feed(t, [(0.6, 0.2), (0.7, 0.4)])
    t.update()
    feed(t, [(0.9, 0.05)])
    restored = make()
    restored.load_state_dict(t.state_dict())
    assert (restored.iou_threshold, restored.beta) == (t.iou_threshold, t.beta)
    assert restored.window == t.window == [pytest.approx((0.9, 0.05))]
    with pytest.raises(KeyError, match="window"):
        restored.load_state_dict({"iou_threshold": 0.5, "beta": 0.5})


def test_warns_when_nothing_commits(caplog):
    t = make(period=2)
    with caplog.at_level(logging.WARNING):
        for _ in range(4):
            t.record(torch.tensor(0.5), torch.tensor(0.5))
    assert "DynamicRCNNHook" in caplog.text


def test_resume_with_both_parts_off_uses_the_warmup_values(caplog):
    t = make()
    feed(t, [(0.7, 0.2)])
    t.update()
    off = make(dla=False, dsl=False)
    with caplog.at_level(logging.INFO):
        off.load_state_dict(t.state_dict())
    assert (off.iou_threshold, off.beta) == (0.4, 1.0)
    assert "DLA is off: the restored IoU threshold 0.7000 is ignored, WARMUP_IOU 0.4000 is in force" in caplog.text
    assert "DSL is off: the restored beta 0.2000 is ignored, WARMUP_BETA 1.0000 is in force" in caplog.text
    dla = make(dla=True, dsl=False)
    dla.load_state_dict(t.state_dict())
    assert (dla.iou_threshold, dla.beta) == (pytest.approx(0.7), 1.0)


def test_resume_keeps_the_warmup_floor_and_ceiling():
    t = make()
    feed(t, [(0.45, 0.2)])
    t.update()
    stricter = DynamicTracker(iou_topk=75, error_topk=10, update_period=3, warmup_iou=0.5, warmup_beta=0.1)
    stricter.load_state_dict(t.state_dict())
    assert (stricter.iou_threshold, stricter.beta) == (0.5, 0.1)


def test_resume_with_other_window_settings_warns_with_both_values(caplog):
    t = make(period=3)
    feed(t, [(0.7, 0.2), (0.6, 0.3)])
    other = DynamicTracker(iou_topk=20, error_topk=10, update_period=5)
    with caplog.at_level(logging.WARNING):
        other.load_state_dict(t.state_dict())
    assert "IOU_TOPK 75 -> 20; UPDATE_PERIOD 3 -> 5" in caplog.text and "the 2 statistics" in caplog.text
    # The window is kept: it enters the next update.
    assert len(other.window) == 2
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        make(period=3).load_state_dict(t.state_dict())
    assert caplog.text == ""
