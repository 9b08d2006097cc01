"""``DynamicRCNNHook``: drives the tracker's updates from any detectron2 trainer."""
import logging
from typing import Optional

from detectron2.engine import HookBase
from torch import nn

from .tracker import DynamicTracker

__all__ = ["DynamicRCNNHook", "find_tracker"]

logger = logging.getLogger(__name__)


def find_tracker(model: nn.Module) -> Optional[DynamicTracker]:
    """The ``tracker`` of the model's ``DynamicROIHeads`` (inside DDP wrappers too), or None."""
    trackers = [
        m.tracker for m in model.modules() if isinstance(getattr(m, "tracker", None), DynamicTracker)
    ]
    if len(trackers) > 1:
        raise ValueError(f"The model has {len(trackers)} DynamicTrackers; DynamicRCNNHook drives one.")
    return trackers[0] if trackers else None


class DynamicRCNNHook(HookBase):
    """
    Drives Dynamic R-CNN in any detectron2 trainer (``trainer.register_hooks([DynamicRCNNHook()])``).

    After every iteration it commits the statistics ``DynamicROIHeads`` recorded (gathered from
    all processes) and writes to the current ``EventStorage``:

    - ``dynamic_rcnn/iou_stat``, ``dynamic_rcnn/error_stat``: the iteration's statistics (their
      mean over processes), when recorded: an iteration whose images have no ground truth records
      nothing;
    - ``dynamic_rcnn/iou_threshold``, ``dynamic_rcnn/beta``: the values in force.

    Before iterations ``k * UPDATE_PERIOD`` (k >= 1) it updates the threshold and beta from the
    window of the ``UPDATE_PERIOD`` iterations before. A checkpoint written after iteration
    ``k * UPDATE_PERIOD - 1`` thus holds the full window, and a run resumed from it makes the same
    update at the same iteration. Register it before ``PeriodicCheckpointer`` (``Trainer`` does; the
    hook warns otherwise), so that a checkpoint also holds the statistics of the iteration it is
    written at.

    Its ``state_dict`` is the tracker's state, saved and restored with the trainer's state
    (``DefaultTrainer``'s checkpointer does this; with your own ``DetectionCheckpointer``, pass
    ``trainer=trainer`` to it).
    """

    def __init__(self, tracker: Optional[DynamicTracker] = None):
        """
        Args:
            tracker: the tracker to drive; by default the one in ``trainer.model``.
        """
        self._tracker = tracker

    @property
    def tracker(self) -> DynamicTracker:
        if self._tracker is None:
            model = getattr(self.trainer, "model", None) if hasattr(self, "trainer") else None
            self._tracker = find_tracker(model) if model is not None else None
            if self._tracker is None:
                raise ValueError(
                    "DynamicRCNNHook found no DynamicROIHeads in trainer.model: set "
                    "MODEL.ROI_HEADS.NAME: DynamicROIHeads (after dynamic_rcnn.add_dynamic_rcnn_config), "
                    "or pass DynamicRCNNHook(tracker=...)."
                )
        return self._tracker

    def before_train(self):
        t = self.tracker
        hooks_in_order = [type(h).__name__ for h in getattr(self.trainer, "_hooks", [])]
        if "PeriodicCheckpointer" in hooks_in_order[: hooks_in_order.index(type(self).__name__)]:
            logger.warning(
                "DynamicRCNNHook is registered after PeriodicCheckpointer: a checkpoint will miss the "
                "statistics of the iteration it is written at. Register DynamicRCNNHook first."
            )
        logger.info(
            "Dynamic R-CNN from iteration %d: IoU threshold %.4f, beta %.4f, %d statistics in the "
            "window, updates every %d iterations (DLA %s, DSL %s)",
            self.trainer.iter, t.iou_threshold, t.beta, len(t.window), t.update_period,
            "on" if t.enable_dla else "off", "on" if t.enable_dsl else "off",
        )

    def before_step(self):
        t = self.tracker
        it = self.trainer.iter
        if not t.enabled or it == 0 or it % t.update_period != 0:
            return
        old = (t.iou_threshold, t.beta)
        n = t.update()
        logger.info(
            "Dynamic R-CNN update at iteration %d from %d statistics: IoU threshold %.4f -> %.4f, "
            "beta %.4f -> %.4f",
            it, n, old[0], t.iou_threshold, old[1], t.beta,
        )

    def after_step(self):
        t = self.tracker
        storage = self.trainer.storage
        if t.enabled:
            stats = t.commit()
            if stats is not None:
                storage.put_scalars(
                    **{"dynamic_rcnn/iou_stat": stats[0], "dynamic_rcnn/error_stat": stats[1]},
                    smoothing_hint=False,
                )
        storage.put_scalars(
            **{"dynamic_rcnn/iou_threshold": t.iou_threshold, "dynamic_rcnn/beta": t.beta},
            smoothing_hint=False,
        )

    def state_dict(self):
        return self.tracker.state_dict()

    def load_state_dict(self, state_dict):
        self.tracker.load_state_dict(state_dict)
        logger.info("Dynamic R-CNN state restored: %s", self.tracker)
