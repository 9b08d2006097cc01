"""DynamicTracker: the rule on the window, the guard on non-finite statistics, the gather, the state."""
from types import SimpleNamespace

import pytest
import torch

from dynamic_rcnn import tracker as tracker_module
from dynamic_rcnn.tracker import ConfigError, DynamicTracker, gather

from conftest import logged_warnings


def make(dla=True, dsl=True, period=3, **kwargs):
    return DynamicTracker(**{**dict(iou_topk=75, beta_topk=10, update_period=period, warmup_iou=0.4, warmup_beta=1.0,
                                    enable_dla=dla, enable_dsl=dsl), **kwargs})


def feed(tracker, pairs):
    for iou, err in pairs:
        tracker.record(torch.tensor(iou, dtype=torch.float64), torch.tensor(err, dtype=torch.float64))


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


@pytest.mark.parametrize("bad", [(float("nan"), 0.2), (0.5, float("nan")), (float("inf"), 0.2), (0.5, -float("inf"))])
def test_a_non_finite_statistic_never_enters_the_window(bad):
    """One NaN in a window of good values changes nothing: T and beta are those of the good values alone."""
    good = [(0.6, 0.2), (0.7, 0.4), (0.8, 0.3)]
    clean, guarded = make(), make()
    feed(clean, good)
    feed(guarded, good[:1] + [bad] + good[1:])
    assert guarded.window == clean.window and guarded.non_finite == 1
    assert guarded.latest == pytest.approx(good[-1])  # the hook writes the last finite pair
    clean.update(), guarded.update()
    assert (guarded.iou_threshold, guarded.beta) == (clean.iou_threshold, clean.beta)
    assert guarded.iou_threshold == pytest.approx(0.7) and guarded.non_finite == 0


def test_warns_when_no_hook_updates():
    t = make(period=2)
    with logged_warnings() as messages:
        for _ in range(6):
            t.record(torch.tensor(0.5), torch.tensor(0.5))
    assert len(messages) == 1 and "add_dynamic_rcnn_hook" in messages[0]


@pytest.mark.parametrize("kwargs, message", [
    (dict(error_topk=10), r"BETA_TOPK \(argument `error_topk`\) is the argument `beta_topk` now"),
    (dict(min_positives_iou=0.5), r"MIN_POSITIVES_IOU \(argument `min_positives_iou`\) was removed"),
    (dict(beta_topk=-1, keys={"beta_topk": "MODEL.DYNAMIC_RCNN.CASCADE.BETA_TOPK[1] (stage 1)"}),
     r"MODEL.DYNAMIC_RCNN.CASCADE.BETA_TOPK\[1\] \(stage 1\) = -1 is invalid: it must be an integer >= 1, or 0 \(automatic\)"),
])
def test_refusals_name_the_key_the_argument_and_what_to_do(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        make(**kwargs)
    with pytest.raises(TypeError, match="unknown Dynamic R-CNN argument `iou_top_k`"):
        make(iou_top_k=3)


def fake_processes(monkeypatch, others):
    """comm as if ``others`` (one list of pending pairs a tracker) came from a second process; returns the calls."""
    calls = []
    monkeypatch.setattr(tracker_module, "comm", SimpleNamespace(
        get_world_size=lambda: 2, all_gather=lambda data: calls.append(data) or [data, others]))
    return calls


def test_gather_adds_every_process_pairs_to_every_window_in_one_collective(monkeypatch):
    a, b = make(), make()
    feed(a, [(0.5, 0.1)])
    feed(b, [(0.6, 0.2), (0.7, 0.3)])
    calls = fake_processes(monkeypatch, [[(0.9, 0.9)], []])
    gather([a, b])
    assert len(calls) == 1
    assert a.window == [(0.5, 0.1), (0.9, 0.9)] and b.window == [(0.6, 0.2), (0.7, 0.3)]
    gather([a, b])  # what was gathered is not sent again
    assert calls[1] == [[], []] and len(a.window) == 3


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


def test_a_restored_window_is_not_gathered_again(monkeypatch):
    """Every process loads the same checkpoint: its window is every process's already."""
    t = make()
    t.load_state_dict({"iou_threshold": 0.5, "beta": 0.5, "window": [[0.6, 0.2]]})
    feed(t, [(0.7, 0.3)])
    calls = fake_processes(monkeypatch, [[(0.8, 0.4)]])
    gather([t])
    assert calls == [[[(0.7, 0.3)]]] and t.window == [(0.6, 0.2), (0.7, 0.3), (0.8, 0.4)]


def test_resume_uses_this_runs_switches_floor_and_ceiling():
    t = make()
    feed(t, [(0.7, 0.2)])
    t.update()
    off = make(dla=False, dsl=False)
    with logged_warnings() as messages:
        off.load_state_dict(t.state_dict())
    assert (off.iou_threshold, off.beta) == (0.4, 1.0)
    assert "the checkpoint's IoU threshold 0.7000 and beta 0.2000 become 0.4000 and 1.0000" in messages[0]
    dla = make(dla=True, dsl=False)
    dla.load_state_dict(t.state_dict())
    assert (dla.iou_threshold, dla.beta) == (pytest.approx(0.7), 1.0)
    stricter = make(warmup_iou=0.75, warmup_beta=0.1)
    stricter.load_state_dict(t.state_dict())
    assert (stricter.iou_threshold, stricter.beta) == (0.75, 0.1)


def test_resume_with_other_window_settings_warns_with_both_values():
    t = make(period=3)
    feed(t, [(0.7, 0.2), (0.6, 0.3)])
    other = DynamicTracker(iou_topk=20, beta_topk=10, update_period=5, warmup_iou=0.4)
    with logged_warnings() as messages:
        other.load_state_dict(t.state_dict())
    assert "IOU_TOPK 75 -> 20; MODEL.DYNAMIC_RCNN.UPDATE_PERIOD 3 -> 5" in messages[0]
    assert "the 2 statistics" in messages[0]
    assert len(other.window) == 2  # kept: it enters the next update
    with logged_warnings() as messages:
        make(period=3).load_state_dict(t.state_dict())
    assert messages == []
