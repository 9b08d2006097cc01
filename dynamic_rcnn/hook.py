"""``DynamicRCNNHook``: drives the tracker's updates from any detectron2 trainer."""
import logging
import weakref
from typing import Optional

from detectron2.engine import HookBase, hooks
from detectron2.utils.events import CommonMetricPrinter, get_event_storage
from torch import nn

from .tracker import DynamicTracker

__all__ = ["DynamicRCNNHook", "DynamicRCNNMetricPrinter", "add_dynamic_rcnn_hook", "find_tracker"]

logger = logging.getLogger(__name__)

# Hooks that read what an iteration recorded (checkpointers save the hook's state, writers the
# scalars, evaluation may do either): DynamicRCNNHook must run before them in every iteration.
_READERS = (hooks.PeriodicCheckpointer, hooks.BestCheckpointer, hooks.PeriodicWriter, hooks.EvalHook)


def find_tracker(model: nn.Module) -> Optional[DynamicTracker]:
    """The ``tracker`` of the model's ``DynamicROIHeads`` (inside DDP wrappers too), or None."""
    trackers = [
        m.tracker for m in model.modules() if isinstance(getattr(m, "tracker", None), DynamicTracker)
    ]
    if len(trackers) > 1:
        raise ValueError(f"The model has {len(trackers)} DynamicTrackers; DynamicRCNNHook drives one.")
    return trackers[0] if trackers else None


def hook_position(hook_list) -> int:
    """Where DynamicRCNNHook goes in a list of hooks: before the first checkpointer, writer or evaluator."""
    return next((i for i, h in enumerate(hook_list) if isinstance(h, _READERS)), len(hook_list))


def add_dynamic_rcnn_hook(trainer, tracker: Optional[DynamicTracker] = None) -> "DynamicRCNNHook":
    """
    Put a :class:`DynamicRCNNHook` where it belongs among the hooks of any detectron2 ``TrainerBase``
    (``DefaultTrainer``, ``SimpleTrainer``, ``AMPTrainer``, your own): before detectron2's
    checkpointers, writers and evaluation hooks, so that a checkpoint holds the statistics of the
    iteration it is written at and ``metrics.json`` gets the Dynamic R-CNN scalars in the row of
    their iteration. Call it before ``resume_or_load`` (a resumed run restores the hook's state).

    Returns:
        the hook. Raises ValueError if the trainer has one already.
    """
    if any(isinstance(h, DynamicRCNNHook) for h in trainer._hooks):
        raise ValueError("The trainer has a DynamicRCNNHook already (dynamic_rcnn.Trainer adds its own).")
    hook = DynamicRCNNHook(tracker)
    # What TrainerBase.register_hooks does, at a chosen position instead of the end.
    hook.trainer = weakref.proxy(trainer)
    trainer._hooks.insert(hook_position(trainer._hooks), hook)
    return hook


def _share_detectron2_handlers() -> None:
    """
    ``default_setup`` sets up detectron2's logger only: without handlers of its own, the
    ``dynamic_rcnn`` logger's INFO lines (the updates) would be lost. Give it detectron2's.
    """
    ours, theirs = logging.getLogger("dynamic_rcnn"), logging.getLogger("detectron2")
    if not ours.handlers and theirs.handlers:
        for handler in theirs.handlers:
            ours.addHandler(handler)
        ours.setLevel(min(theirs.level or logging.INFO, logging.INFO))
        ours.propagate = False


class DynamicRCNNHook(HookBase):
    """
    Drives Dynamic R-CNN in any detectron2 trainer (put it in place with
    :func:`add_dynamic_rcnn_hook`; ``dynamic_rcnn.Trainer`` does it itself).

    After every iteration it commits the statistics ``DynamicROIHeads`` recorded (gathered from
    all processes) and writes to the current ``EventStorage``:

    - ``dynamic_rcnn/iou_stat``, ``dynamic_rcnn/error_stat``: the iteration's statistics (their
      mean over processes), when recorded: an iteration whose images have no ground truth records
      nothing;
    - ``dynamic_rcnn/iou_threshold``, ``dynamic_rcnn/beta``: the values in force.

    Before iterations ``k * UPDATE_PERIOD`` (k >= 1) it updates the threshold and beta from the
    window of the ``UPDATE_PERIOD`` iterations before. A checkpoint written after iteration
    ``k * UPDATE_PERIOD - 1`` thus holds the full window, and a run resumed from it makes the same
    update at the same iteration. It must run before detectron2's checkpointers and writers in each
    iteration (the hook warns otherwise).

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
        self.restored = False  # whether load_state_dict ran (a resumed run)

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
        _share_detectron2_handlers()
        t = self.tracker
        hook_list = list(getattr(self.trainer, "_hooks", []))
        mine = next(i for i, h in enumerate(hook_list) if h is self) if self in hook_list else 0
        late = [type(h).__name__ for h in hook_list[:mine] if isinstance(h, _READERS)]
        if late:
            logger.warning(
                "DynamicRCNNHook is registered after %s: a checkpoint will miss the statistics of the "
                "iteration it is written at, and metrics.json gets them a row late. Put the hook in place "
                "with dynamic_rcnn.add_dynamic_rcnn_hook(trainer).", ", ".join(late),
            )
        # TrainerBase.train sets both; a loop that calls the hooks itself may not.
        start = getattr(self.trainer, "start_iter", self.trainer.iter)
        end = getattr(self.trainer, "max_iter", None)
        if start > 0 and not self.restored:
            logger.warning(
                "Dynamic R-CNN resumes at iteration %d from a checkpoint without Dynamic R-CNN state (a "
                "baseline run, or one without the hook): it starts from the warm-up values.", start,
            )
        first_update = max(1, -(-start // t.update_period)) * t.update_period
        if t.enabled and end is not None and first_update >= end:
            logger.warning(
                "Dynamic R-CNN will never update: UPDATE_PERIOD %d and training from iteration %d to %d "
                "(SOLVER.MAX_ITER) leave no update iteration; the warm-up values stay in force. Lower "
                "MODEL.DYNAMIC_RCNN.UPDATE_PERIOD.", t.update_period, start, end,
            )
        logger.info(
            "Dynamic R-CNN from iteration %d: IoU threshold %.4f, beta %.4f, %d statistics in the "
            "window, updates every %d iterations (DLA %s, DSL %s)",
            start, t.iou_threshold, t.beta, len(t.window), t.update_period,
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
            "beta %.4f -> %.4f", it, n, old[0], t.iou_threshold, old[1], t.beta,
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
        self.restored = True
        logger.info("Dynamic R-CNN state restored: %s", self.tracker)


class DynamicRCNNMetricPrinter(CommonMetricPrinter):
    """
    detectron2's ``CommonMetricPrinter`` (the console line every 20 iterations) with the IoU
    threshold and beta in force added at its end, when the run writes them.
    """

    def write(self):
        storage = get_event_storage()
        histories = storage.histories()
        extra = "".join(
            f"  {label}: {histories[key].latest():.4g}"
            for key, label in (("dynamic_rcnn/iou_threshold", "iou_thr"), ("dynamic_rcnn/beta", "beta"))
            if key in histories
        )
        printer_logger = self.logger
        self.logger = _Suffixed(printer_logger, extra)
        try:
            super().write()
        finally:
            self.logger = printer_logger


class _Suffixed:
    """A logger whose ``info`` appends a fixed text to the message."""

    def __init__(self, target: logging.Logger, suffix: str):
        self._target, self._suffix = target, suffix

    def info(self, msg, *args, **kwargs):
        self._target.info(msg + self._suffix, *args, **kwargs)
