"""``DynamicRCNNHook``: drives the trackers of a Dynamic head (one a stage) from any detectron2 trainer."""
import logging
import weakref
from typing import List, Optional, Sequence

from detectron2.engine import HookBase, hooks
from detectron2.utils import comm
from torch import nn

from .tracker import DynamicTracker, gather

__all__ = ["DynamicRCNNHook", "DynamicStateError", "add_dynamic_rcnn_hook", "find_trackers"]

logger = logging.getLogger("detectron2." + __name__)

# Hooks that read what an iteration recorded (checkpointers its state, writers its scalars): the hook goes first.
_READERS = (hooks.PeriodicCheckpointer, hooks.BestCheckpointer, hooks.PeriodicWriter, hooks.EvalHook)


def find_trackers(model: nn.Module) -> List[DynamicTracker]:
    """The trackers of the model's Dynamic head (DDP-wrapped too), in stage order; [] when it has none."""
    heads = [m for m in model.modules() if isinstance(getattr(m, "trackers", None), list)
             and all(isinstance(t, DynamicTracker) for t in m.trackers)]
    if len(heads) > 1:
        raise ValueError(f"The model has {len(heads)} Dynamic R-CNN heads; DynamicRCNNHook drives one.")
    return list(heads[0].trackers) if heads else []


def add_dynamic_rcnn_hook(trainer) -> "DynamicRCNNHook":
    """
    Put a :class:`DynamicRCNNHook` among the hooks of any detectron2 ``TrainerBase`` (``DefaultTrainer``,
    ``SimpleTrainer``, ``AMPTrainer``, your own) before its checkpointers, writers and evaluation, so that a
    checkpoint holds the state of the iteration it is written at and ``metrics.json`` the scalars in the row of
    their iteration; after it, ``engine.regime.RegimeCheck`` (a warning when the run is in a regime measured to lose).
    Call it before ``resume_or_load``. Returns the hook; ValueError if the trainer has one.
    """
    if any(isinstance(h, DynamicRCNNHook) for h in trainer._hooks):
        raise ValueError("The trainer has a DynamicRCNNHook already (dynamic_rcnn's Trainer adds its own).")
    hook = DynamicRCNNHook()
    hook.trainer = weakref.proxy(trainer)  # what TrainerBase.register_hooks does, at the hook's own place
    at = next((i for i, h in enumerate(trainer._hooks) if isinstance(h, _READERS)), len(trainer._hooks))
    from .engine.regime import RegimeCheck  # the harness's one-line warnings of regimes measured to lose

    trainer._hooks[at:at] = [hook, RegimeCheck(hook)]
    trainer._hooks[at + 1].trainer = hook.trainer
    return hook


class DynamicStateError(ValueError):
    """A checkpoint's Dynamic R-CNN state that does not fit the model's trackers (another number of stages)."""


class DynamicRCNNHook(HookBase):
    """
    Drives every tracker of ``trainer.model`` (``DynamicROIHeads``: one; ``DynamicCascadeROIHeads``: one a stage).
    After every iteration it writes to the ``EventStorage``, under ``stage{k}/`` for a cascade's stage k,
    ``dynamic_rcnn/iou_threshold`` and ``dynamic_rcnn/beta`` (in force) and, when recorded (images with ground
    truth), ``dynamic_rcnn/iou_stat`` and ``dynamic_rcnn/error_stat`` (this process's). After iterations
    ``k * UPDATE_PERIOD - 1`` it gathers every process's window (one collective for all stages) and updates
    every tracker, so every process applies the same values from iteration ``k * UPDATE_PERIOD`` on; before a
    checkpoint between two updates it gathers the windows too, so that every checkpoint holds them whole and a
    resumed run makes the same updates. Its ``state_dict`` (every stage's) is saved with the trainer's state.
    """

    def __init__(self, trackers: Optional[Sequence[DynamicTracker]] = None):
        """``trackers``: those to drive, in stage order; by default those of ``trainer.model``."""
        self._trackers = list(trackers) if trackers is not None else None
        self._saves = None  # (period, last iteration) of the checkpoints the main process writes

    @property
    def trackers(self) -> List[DynamicTracker]:
        if not self._trackers:
            self._trackers = find_trackers(self.trainer.model) if hasattr(self, "trainer") else []
            if not self._trackers:
                raise ValueError("DynamicRCNNHook found no Dynamic R-CNN head in trainer.model: set "
                                 "MODEL.ROI_HEADS.NAME: DynamicROIHeads (or DynamicCascadeROIHeads) after "
                                 "dynamic_rcnn.add_dynamic_rcnn_config, or pass DynamicRCNNHook(trackers=...).")
        return self._trackers

    def before_train(self):
        trackers, start, end = self.trackers, self.trainer.iter, getattr(self.trainer, "max_iter", None)
        period = trackers[0].update_period
        if start > 0 and start % period == 0 and any(t.window for t in trackers):
            self._update(start)  # a checkpoint written before its window's update (an earlier version's)
        if comm.get_world_size() > 1:  # only the main process has the checkpointer: every process learns when
            saves = [h for h in self.trainer._hooks if isinstance(h, hooks.PeriodicCheckpointer)]
            self._saves = comm.all_gather((saves[0].period, end - 1) if saves and end else None)[0]
        if any(t.enabled for t in trackers) and end is not None and start < period and period >= end:
            logger.warning("Dynamic R-CNN will never update: UPDATE_PERIOD %d and training from iteration %d to %d "
                           "(SOLVER.MAX_ITER) leave no update; the warm-up values stay in force. Lower "
                           "MODEL.DYNAMIC_RCNN.UPDATE_PERIOD.", period, start, end)
        for t in trackers:
            logger.info("Dynamic R-CNN%s from iteration %d: IoU threshold %.4f, beta %.4f, %d statistics in the "
                        "window, an update every %d iterations (DLA %s, DSL %s)", t.stage, start, t.iou_threshold,
                        t.beta, len(t.window), period, "on" if t.enable_dla else "off", "on" if t.enable_dsl else "off")

    def after_step(self):
        it, storage = self.trainer.iter, self.trainer.storage
        for t in self.trackers:
            names = [f"{t.scope}/dynamic_rcnn/{n}".lstrip("/") for n in ("iou_stat", "error_stat", "iou_threshold", "beta")]
            values = (t.latest or (None, None)) + (t.iou_threshold, t.beta)
            storage.put_scalars(**{n: v for n, v in zip(names, values) if v is not None}, smoothing_hint=False)
            t.latest = None
        if (it + 1) % self.trackers[0].update_period == 0:
            self._update(it + 1)
        elif self._saves and ((it + 1) % self._saves[0] == 0 or it == self._saves[1]):
            gather(self.trackers)  # a checkpoint follows: it holds every process's window

    def _update(self, it: int):
        trackers = [t for t in self.trackers if t.enabled]
        if not trackers:
            return
        gather(trackers)
        for t in trackers:
            old, left_out = (t.iou_threshold, t.beta), t.non_finite
            n = t.update()
            logger.info("Dynamic R-CNN%s update at iteration %d from %d statistics%s: IoU threshold %.4f -> %.4f, "
                        "beta %.4f -> %.4f", t.stage, it, n, f" ({left_out} non-finite left out)" if left_out else "",
                        old[0], t.iou_threshold, old[1], t.beta)

    def state_dict(self):
        return {"stages": [t.state_dict() for t in self.trackers]}

    def load_state_dict(self, state_dict):
        states = state_dict.get("stages")
        if states is None:  # the single head's format of dynamic_rcnn 0.2
            states = [state_dict]
            logger.info("Dynamic R-CNN: the checkpoint's state is in the single-head format of dynamic_rcnn 0.2, "
                        "read as one stage.")
        if len(states) != len(self.trackers):
            what = {1: "a single head"}
            raise DynamicStateError(
                f"the checkpoint holds the Dynamic R-CNN state of {what.get(len(states), f'a cascade of {len(states)} stages')}"
                f", but this model has {what.get(len(self.trackers), f'a cascade of {len(self.trackers)} stages')} (another "
                "MODEL.ROI_HEADS.NAME or number of stages): resume with the config the checkpoint was trained with, or "
                "train into a new OUTPUT_DIR")
        for t, state in zip(self.trackers, states):
            t.load_state_dict(state)
            logger.info("Dynamic R-CNN%s state restored: %s", t.stage, t)
