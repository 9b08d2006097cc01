"""
``RegimeCheck``: the run says, in one line with its numbers and the key to change, when its statistics are in a
regime measured to lose (BENCHMARKS.md): the appended ground truth deciding them, or a cascade stage's threshold
past the next stage's. It only reads the trackers; :func:`dynamic_rcnn.add_dynamic_rcnn_hook` registers it.
"""
import logging
from typing import List, Tuple

from detectron2.engine import HookBase

__all__ = ["GT_SHARE", "RegimeCheck", "regime_warnings"]

logger = logging.getLogger("detectron2.dynamic_rcnn.regime")

# From this share of the K_I boxes on, the appended ground truth (IoU 1) decides the IoU statistic: it reads only
# each object's very best proposals and the threshold climbs (BCCD, 14 cells an image, K_I 22: 64 %, T 0.78-0.82).
GT_SHARE = 0.5
_LOST = ("measured to lose on BCCD (14 cells an image): Dynamic Cascade -8.0 AP against detectron2's Cascade, the "
         "single head -3.5 AP against the authors' baseline (BENCHMARKS.md)")


def regime_warnings(trackers, sums: List[List[float]], first: bool) -> List[Tuple[Tuple[str, int], str]]:
    """
    The lines to log after an update, each with what it is about: ``("ground truth", stage)`` (judged at the run's
    ``first`` update only) or ``("order", stage)``. ``sums``: per tracker, over the iterations since the last
    update, ``[iterations, images, appended ground truth, sum of K_I, sum of K_E, iterations whose ground truth
    alone filled K_E]``, added up from the head's ``tracker.counts``.
    """
    lines = []
    zero = "0" if len(trackers) == 1 else f"[{', '.join('0' * len(trackers))}]"  # automatic K, at every stage

    def key(t, arg):  # the config key alone, without "of stage k (by default ...)"
        return t.keys[arg].split(" ")[0].split("[")[0]
    for stage, (t, (iters, images, gt, k_iou, k_error, filled)) in enumerate(zip(trackers, sums) if first else ()):
        if not (t.stats_include_gt and iters and gt):
            continue
        share, parts = gt / k_iou, []
        if t.enable_dla and t.iou_topk > 0 and share >= GT_SHARE:
            parts.append(f"{gt / images:.1f} objects an image are {share:.0%} of the K_I = {t.iou_topk} boxes the IoU "
                         "statistic reads (the threshold climbs on each object's best proposals)")
        if t.enable_dsl and t.beta_topk > 0 and filled >= iters / 2:
            parts.append(f"they fill the K_E = {t.beta_topk} boxes an image of the error statistic in {filled:.0f} of "
                         f"{iters:.0f} iterations (the statistic is 0: beta cannot move)")
        if parts:
            lines.append((("ground truth", stage),
                          f"Dynamic R-CNN{t.stage}: the appended ground truth decides the statistics: "
                          f"{'; '.join(parts)}; {_LOST}. Set {key(t, 'stats_include_gt')} False, or "
                          f"{key(t, 'iou_topk')} and {key(t, 'beta_topk')} {zero} (automatic, the defaults: at least 3 "
                          "boxes an object)."))
    for k, (a, b) in enumerate(zip(trackers, trackers[1:])):
        if a.enable_dla and a.iou_threshold > b.iou_threshold:
            lines.append((("order", k),
                          f"Dynamic Cascade R-CNN: stage {k}'s IoU threshold {a.iou_threshold:.4f} is past stage "
                          f"{k + 1}'s {b.iou_threshold:.4f}: stage {k + 1} labels the boxes stage {k} refined more "
                          f"loosely than stage {k} labelled its own. Measured on BCCD in 7 of 72 runs: 3 with the "
                          "ground truth deciding the statistics (0.3's defaults, -8.0 AP against detectron2's Cascade), "
                          f"4 level with it (BENCHMARKS.md). A larger {key(a, 'iou_topk')}[{k}] reads a lower IoU; "
                          f"{zero} is automatic."))
    return lines


class RegimeCheck(HookBase):
    """
    After :class:`DynamicRCNNHook`: adds up what each stage's statistics were made of (the head's
    ``tracker.counts``) and, after an update, logs :func:`regime_warnings`, each once a run.
    """

    def __init__(self, hook):
        self.hook, self._first, self._said = hook, True, set()
        self._sums: List[List[float]] = []

    def after_step(self):
        trackers = self.hook.trackers
        if len(self._sums) != len(trackers):
            self._sums = [[0.0] * 6 for _ in trackers]
        for t, s in zip(trackers, self._sums):
            counts, t.counts = getattr(t, "counts", None), None
            if counts:
                images, gt, k_iou, k_error = counts
                for i, v in enumerate((1, images, gt, k_iou, k_error, gt >= k_error)):
                    s[i] += v
        if (self.trainer.iter + 1) % trackers[0].update_period or not any(t.enabled for t in trackers):
            return
        for kind, line in regime_warnings(trackers, self._sums, self._first):
            if kind not in self._said:
                self._said.add(kind)
                logger.warning(line)
        self._first, self._sums = False, []
