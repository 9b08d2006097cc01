"""``DynamicRCNNHook``: drives the trackers' updates (one a stage) from any detectron2 trainer."""
import logging
import statistics
import weakref
from typing import List, Optional, Sequence, Union

from detectron2.engine import HookBase, hooks
from detectron2.utils.events import CommonMetricPrinter, get_event_storage
from torch import nn

from .tracker import DynamicTracker, commit, scalar_name

__all__ = ["DynamicRCNNHook", "DynamicRCNNMetricPrinter", "add_dynamic_rcnn_hook", "find_tracker", "find_trackers"]

logger = logging.getLogger(__name__)

# Hooks that read what an iteration recorded (checkpointers save the hook's state, writers the
# scalars, evaluation may do either): DynamicRCNNHook must run before them in every iteration.
_READERS = (hooks.PeriodicCheckpointer, hooks.BestCheckpointer, hooks.PeriodicWriter, hooks.EvalHook)


def find_trackers(model: nn.Module) -> List[DynamicTracker]:
    """
    The trackers of the model's Dynamic R-CNN head (inside DDP wrappers too), in stage order: one for
    ``DynamicROIHeads``, one a stage for ``DynamicCascadeROIHeads``; [] when the model has none.
    """
    heads = [m for m in model.modules() if isinstance(getattr(m, "trackers", None), list)
             and all(isinstance(t, DynamicTracker) for t in m.trackers)]
    if len(heads) > 1:
        raise ValueError(f"The model has {len(heads)} Dynamic R-CNN heads; DynamicRCNNHook drives one.")
    return list(heads[0].trackers) if heads else []


def find_tracker(model: nn.Module) -> Optional[DynamicTracker]:
    """The tracker of the model's ``DynamicROIHeads``, or None; a cascade's several: :func:`find_trackers`."""
    trackers = find_trackers(model)
    if len(trackers) > 1:
        raise ValueError(f"The model has {len(trackers)} DynamicTrackers (one a cascade stage): use find_trackers.")
    return trackers[0] if trackers else None


def hook_position(hook_list) -> int:
    """Where DynamicRCNNHook goes in a list of hooks: before the first checkpointer, writer or evaluator."""
    return next((i for i, h in enumerate(hook_list) if isinstance(h, _READERS)), len(hook_list))


def add_dynamic_rcnn_hook(trainer, tracker: Union[None, DynamicTracker, Sequence[DynamicTracker]] = None
                          ) -> "DynamicRCNNHook":
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
    :func:`add_dynamic_rcnn_hook`; ``dynamic_rcnn.Trainer`` does it itself), for every tracker of the
    model: the one of ``DynamicROIHeads``, or one a stage of ``DynamicCascadeROIHeads``.

    After every iteration it commits the statistics the head recorded (all trackers in one gather
    over the processes) and writes to the current ``EventStorage``, under ``stage{k}/`` for a
    cascade's stage k:

    - ``dynamic_rcnn/iou_stat``, ``dynamic_rcnn/error_stat``: the iteration's statistics (their
      mean over processes), when recorded: an iteration whose images have no ground truth records
      nothing;
    - ``dynamic_rcnn/iou_threshold``, ``dynamic_rcnn/beta``: the values in force.

    Before iterations ``k * UPDATE_PERIOD`` (k >= 1) every tracker updates its threshold and beta from
    the window of the ``UPDATE_PERIOD`` iterations before. A checkpoint written after iteration
    ``k * UPDATE_PERIOD - 1`` thus holds the full windows, and a run resumed from it makes the same
    updates at the same iteration. It must run before detectron2's checkpointers and writers in each
    iteration (the hook warns otherwise).

    Its ``state_dict`` is the trackers' state, saved and restored with the trainer's state
    (``DefaultTrainer``'s checkpointer does this; with your own ``DetectionCheckpointer``, pass
    ``trainer=trainer`` to it).
    """

    def __init__(self, tracker: Union[None, DynamicTracker, Sequence[DynamicTracker]] = None):
        """
        Args:
            tracker: the tracker, or the trackers in stage order, to drive; by default those of
                ``trainer.model``.
        """
        self._trackers = None if tracker is None else [tracker] if isinstance(tracker, DynamicTracker) else list(tracker)
        self.restored = False  # whether load_state_dict ran (a resumed run)
        self._warned_positives, self._low_windows = set(), {}

    @property
    def trackers(self) -> List[DynamicTracker]:
        """Every tracker driven, in stage order."""
        if not self._trackers:
            model = getattr(self.trainer, "model", None) if hasattr(self, "trainer") else None
            self._trackers = find_trackers(model) if model is not None else []
            if not self._trackers:
                raise ValueError(
                    "DynamicRCNNHook found no Dynamic R-CNN head in trainer.model: set MODEL.ROI_HEADS.NAME: "
                    "DynamicROIHeads (or DynamicCascadeROIHeads) after dynamic_rcnn.add_dynamic_rcnn_config, "
                    "or pass DynamicRCNNHook(tracker=...)."
                )
        return self._trackers

    @property
    def tracker(self) -> DynamicTracker:
        """The one tracker of a ``DynamicROIHeads`` model (a cascade has one a stage: :attr:`trackers`)."""
        if len(self.trackers) != 1:
            raise ValueError(f"The model has {len(self.trackers)} trackers, one a cascade stage: use hook.trackers.")
        return self.trackers[0]

    def before_train(self):
        _share_detectron2_handlers()
        trackers = self.trackers
        periods = {t.update_period for t in trackers}
        if len(periods) > 1:
            raise ValueError(
                "Every stage must update at the same iteration, but the trackers' update_period differ ("
                + ", ".join(f"{t.scope or 'the head'}: {t.update_period}" for t in trackers)
                + "): give them one MODEL.DYNAMIC_RCNN.UPDATE_PERIOD."
            )
        period = periods.pop()
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
        self._last_update = start
        if start > 0 and not self.restored:
            logger.warning(
                "Dynamic R-CNN resumes at iteration %d from a checkpoint without Dynamic R-CNN state (a "
                "baseline run, or one without the hook): it starts from the warm-up values.", start,
            )
        first_update = max(1, -(-start // period)) * period
        if any(t.enabled for t in trackers) and end is not None and first_update >= end:
            logger.warning(
                "Dynamic R-CNN will never update: UPDATE_PERIOD %d and training from iteration %d to %d "
                "(SOLVER.MAX_ITER) leave no update iteration; the warm-up values stay in force. Lower "
                "MODEL.DYNAMIC_RCNN.UPDATE_PERIOD.", period, start, end,
            )
        for t in trackers:
            logger.info(
                "Dynamic R-CNN%s from iteration %d: IoU threshold %.4f, beta %.4f, %d statistics in the "
                "window, updates every %d iterations (DLA %s, DSL %s)", _stage(t),
                start, t.iou_threshold, t.beta, len(t.window), t.update_period,
                "on" if t.enable_dla else "off", "on" if t.enable_dsl else "off",
            )

    def before_step(self):
        it = self.trainer.iter
        trackers = [t for t in self.trackers if t.enabled]
        if not trackers or it == 0 or it % trackers[0].update_period != 0:
            return
        for t in trackers:
            self._check_positives(t, it)
            old = (t.iou_threshold, t.beta)
            n = t.update()
            logger.info(
                "Dynamic R-CNN%s update at iteration %d from %d statistics: IoU threshold %.4f -> %.4f, "
                "beta %.4f -> %.4f", _stage(t), it, n, old[0], t.iou_threshold, old[1], t.beta,
            )
        self._last_update = it

    def _check_positives(self, t: DynamicTracker, it: int) -> None:
        """
        Say once (a tracker) when the threshold in force left the head almost no box of its own as
        foreground in three windows in a row: a young RPN gives few good proposals for a while, a floor
        that the boxes cannot reach (``WARMUP_IOU`` 0.999) gives none ever.
        """
        history = self.trainer.storage.histories().get(scalar_name(t, "proposal_fg"))
        if history is None or not t.enable_dla or t.scope in self._warned_positives:
            return
        recent = [v for v, i in history.values() if self._last_update <= i < it]
        low = bool(recent) and statistics.fmean(recent) < 1.0
        self._low_windows[t.scope] = self._low_windows.get(t.scope, 0) + 1 if low else 0
        if self._low_windows[t.scope] >= 3:
            self._warned_positives.add(t.scope)
            boxes = "RPN proposals" if t.scope in ("", "stage0") else f"boxes of {t.scope}"
            key = "WARMUP_IOU" if not t.scope else f"CASCADE.WARMUP_IOU of {t.scope}"
            logger.warning(
                "Dynamic R-CNN%s: for 3 update periods (up to iteration %d) the IoU threshold, now %.4f, left "
                "%.2f %s an image at or above it (%s): the box head trains on little but the appended ground "
                "truth, whose box loss is 0. Lower MODEL.DYNAMIC_RCNN.%s, the threshold's floor (%.4f).",
                _stage(t), it - 1, t.iou_threshold, statistics.fmean(recent), boxes,
                scalar_name(t, "proposal_fg"), key, t.warmup_iou,
            )

    def after_step(self):
        storage = self.trainer.storage
        enabled = [t for t in self.trackers if t.enabled]
        for t, stats in zip(enabled, commit(enabled)):  # one gather for all stages
            if stats is not None:
                storage.put_scalars(**{scalar_name(t, "iou_stat"): stats[0], scalar_name(t, "error_stat"): stats[1]},
                                    smoothing_hint=False)
        for t in self.trackers:
            storage.put_scalars(**{scalar_name(t, "iou_threshold"): t.iou_threshold, scalar_name(t, "beta"): t.beta},
                                smoothing_hint=False)

    def state_dict(self):
        states = [t.state_dict() for t in self.trackers]
        return states[0] if len(states) == 1 else {"stages": states}

    def load_state_dict(self, state_dict):
        states = state_dict["stages"] if "stages" in state_dict else [state_dict]
        if len(states) != len(self.trackers):
            def what(n):
                return "a single head" if n == 1 else f"a cascade of {n} stages"

            raise DynamicStateError(
                f"the checkpoint holds the Dynamic R-CNN state of {what(len(states))}, but this model has "
                f"{what(len(self.trackers))} (another MODEL.ROI_HEADS.NAME or number of stages): resume with the "
                "config the checkpoint was trained with, or train into a new OUTPUT_DIR"
            )
        for t, state in zip(self.trackers, states):
            t.load_state_dict(state)
            logger.info("Dynamic R-CNN%s state restored: %s", _stage(t), t)
        self.restored = True


class DynamicStateError(ValueError):
    """A checkpoint's Dynamic R-CNN state that does not fit the model's trackers (another number of stages)."""


def _stage(t: DynamicTracker) -> str:
    return f" {t.scope}" if t.scope else ""


class DynamicRCNNMetricPrinter(CommonMetricPrinter):
    """
    detectron2's ``CommonMetricPrinter`` (the console line every 20 iterations) with the IoU
    threshold and beta in force added at its end, when the run writes them (``a/b/c`` for a cascade's stages).
    """

    def write(self):
        storage = get_event_storage()
        histories = storage.histories()
        extra = ""
        for name, label in (("iou_threshold", "iou_thr"), ("beta", "beta")):
            # dynamic_rcnn/NAME, or stage0/dynamic_rcnn/NAME, stage1/... in stage order
            keys = sorted(k for k in histories if k == f"dynamic_rcnn/{name}" or k.endswith(f"/dynamic_rcnn/{name}"))
            if keys:
                extra += f"  {label}: " + "/".join(f"{histories[k].latest():.4g}" for k in keys)
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
