"""The one home of Dynamic R-CNN's state: the values in force and the window in progress."""
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

from detectron2.utils import comm

from .config import CONFIG_KEYS, check_dynamic_rcnn_args
from .statistics import updated_beta, updated_iou_threshold

__all__ = ["DynamicTracker", "commit", "scalar_name"]

logger = logging.getLogger(__name__)

# The settings that decide what a statistic of the window means; a checkpoint records them so that
# a run resumed with other values can say so.
_WINDOW_SETTINGS = ("iou_topk", "error_topk", "update_period", "stats_include_gt")


class DynamicTracker:
    """
    Owns the Dynamic R-CNN settings, the IoU threshold and the SmoothL1 beta in force, and the
    window of statistics recorded since the last update (one tracker a stage in a cascade).
    ``DynamicROIHeads`` reads the values from it and records each iteration's statistics into it;
    :class:`DynamicRCNNHook` commits them to the window after every iteration and calls
    :meth:`update` every ``update_period`` iterations.

    With several processes, :func:`commit` gathers every process's statistics of the iteration, so
    the window, hence every update, is the same in all processes, and the main process's checkpoint
    holds the whole window. The state (:meth:`state_dict`) is plain Python data that the hook saves
    in the trainer's part of every detectron2 checkpoint: the model's own ``state_dict`` is exactly
    that of a ``StandardROIHeads`` model.

    Every argument is checked here (the rules of ``dynamic_rcnn.config``), so a bad value fails when
    the tracker is built, from a YAML config, a LazyConfig or code alike.
    """

    def __init__(
        self,
        *,
        iou_topk: int = 75,
        error_topk: int = 10,
        update_period: int = 100,
        warmup_iou: float = 0.4,
        warmup_beta: float = 1.0,
        enable_dla: bool = True,
        enable_dsl: bool = True,
        stats_include_gt: bool = True,
        **removed,
    ):
        """
        Args: those of ``MODEL.DYNAMIC_RCNN`` (``CONFIG_KEYS`` maps them), defaults the paper's:
            iou_topk (K_I), error_topk (K_E), update_period (C), warmup_iou, warmup_beta,
            enable_dla, enable_dsl, stats_include_gt. Arguments of earlier versions are refused
            with what to use instead.
        """
        check_dynamic_rcnn_args(
            iou_topk=iou_topk, error_topk=error_topk, update_period=update_period, warmup_iou=warmup_iou,
            warmup_beta=warmup_beta, enable_dla=enable_dla, enable_dsl=enable_dsl,
            stats_include_gt=stats_include_gt, **removed,
        )
        self.iou_topk = iou_topk
        self.error_topk = error_topk
        self.update_period = update_period
        self.warmup_iou = float(warmup_iou)
        self.warmup_beta = float(warmup_beta)
        self.enable_dla = enable_dla
        self.enable_dsl = enable_dsl
        self.stats_include_gt = stats_include_gt

        # Where the hook writes this tracker's scalars: "" for DynamicROIHeads' one tracker,
        # "stage{k}" (detectron2's naming) for a cascade's stage k, set by the head.
        self.scope = ""

        self.iou_threshold = self.warmup_iou
        self.beta = self.warmup_beta
        self._window: List[Tuple[float, float]] = []
        self._pending: Optional[Tuple[float, float]] = None
        self._uncommitted = 0

    @property
    def enabled(self) -> bool:
        """Whether anything is recorded and updated (DLA or DSL on)."""
        return self.enable_dla or self.enable_dsl

    @property
    def window(self) -> List[Tuple[float, float]]:
        """The (IoU statistic, error statistic) pairs committed since the last update."""
        return list(self._window)

    def settings(self) -> Dict[str, Any]:
        """The settings that decide what a statistic of the window means."""
        return {name: getattr(self, name) for name in _WINDOW_SETTINGS}

    def record(self, iou_stat: float, error_stat: float) -> None:
        """Keep this iteration's statistics (numbers or 0-dim tensors) until :meth:`commit`."""
        if self._pending is not None:
            self._uncommitted += 1
            if self._uncommitted == self.update_period:
                logger.warning(
                    "Dynamic R-CNN statistics of %d iterations were never committed, so the IoU "
                    "threshold and beta stay fixed: register dynamic_rcnn.DynamicRCNNHook in your "
                    "trainer (dynamic_rcnn.add_dynamic_rcnn_hook(trainer)).",
                    self.update_period,
                )
        self._pending = (float(iou_stat), float(error_stat))

    def commit(self) -> Optional[Tuple[float, float]]:
        """:func:`commit` of this tracker alone (a collective with several processes)."""
        return commit([self])[0]

    def update(self) -> int:
        """
        Apply the update rule to the window (mean IoU statistic with the warm-up floor, median
        error statistic with the warm-up ceiling), then start a new window. A part that is
        switched off keeps its value; an empty window changes nothing.

        Returns:
            the number of statistics the new values were computed from.
        """
        values, self._window = self._window, []
        if self.enable_dla:
            self.iou_threshold = updated_iou_threshold([v[0] for v in values], self.iou_threshold, self.warmup_iou)
        if self.enable_dsl:
            self.beta = updated_beta([v[1] for v in values], self.beta, self.warmup_beta)
        return len(values)

    def state_dict(self) -> Dict[str, Any]:
        """The values in force, the window in progress and the settings it was recorded with."""
        return {
            "iou_threshold": self.iou_threshold,
            "beta": self.beta,
            "window": [list(v) for v in self._window],
            "settings": self.settings(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """
        Restore what :meth:`state_dict` returned (e.g. from a checkpoint), under this tracker's
        settings, which win over the checkpoint's:

        - a part that is switched off keeps its warm-up value (the restored one is logged as ignored);
        - the warm-up floor of T and ceiling of beta hold (a restored value beyond them is moved back);
        - a window recorded under other settings (K_I, K_E, C, STATS_INCLUDE_GT) is kept and enters
          the next update with the statistics recorded from now on; a warning names what differs.
        """
        missing = {"iou_threshold", "beta", "window"} - set(state)
        if missing:
            raise KeyError(f"Dynamic R-CNN state misses {sorted(missing)}; it has {sorted(state)}")
        restored_t, restored_beta = float(state["iou_threshold"]), float(state["beta"])
        self._window = [(float(a), float(b)) for a, b in state["window"]]
        self._pending = None
        self.iou_threshold = self._restored("DLA", self.enable_dla, restored_t, self.warmup_iou, "WARMUP_IOU",
                                            max(self.warmup_iou, restored_t), "IoU threshold")
        self.beta = self._restored("DSL", self.enable_dsl, restored_beta, self.warmup_beta, "WARMUP_BETA",
                                   min(self.warmup_beta, restored_beta), "beta")
        saved = state.get("settings", {})
        differ = [
            f"{CONFIG_KEYS[name]} {saved[name]!r} -> {getattr(self, name)!r}"
            for name in _WINDOW_SETTINGS
            if name in saved and saved[name] != getattr(self, name)
        ]
        if differ:
            logger.warning(
                "Dynamic R-CNN resumes with other settings than the checkpoint's (%s): the %d statistics of "
                "the restored window were computed with the checkpoint's; they enter the next update together "
                "with those recorded from now on.", "; ".join(differ), len(self._window),
            )

    @staticmethod
    def _restored(part, enabled, restored, warmup, warmup_key, bounded, what) -> float:
        if not enabled:
            if restored != warmup:
                logger.info(
                    "Dynamic R-CNN: %s is off: the restored %s %.4f is ignored, %s %.4f is in force.",
                    part, what, restored, warmup_key, warmup,
                )
            return warmup
        if bounded != restored:
            logger.warning(
                "Dynamic R-CNN: the restored %s %.4f is beyond %s %.4f: %.4f is in force.",
                what, restored, warmup_key, warmup, bounded,
            )
        return bounded

    def __repr__(self) -> str:
        return (
            f"DynamicTracker(iou_threshold={self.iou_threshold:.4f}, beta={self.beta:.4f}, "
            f"window={len(self._window)}, update_period={self.update_period}, "
            f"dla={self.enable_dla}, dsl={self.enable_dsl}{', ' + self.scope if self.scope else ''})"
        )


def commit(trackers: Sequence[DynamicTracker]) -> List[Optional[Tuple[float, float]]]:
    """
    Move the statistics each tracker recorded since the last commit, from every process, into its
    window: one gather for all the trackers (a model's stages), so every process holds the same
    windows. With several processes every process must call it (it is a collective).

    Returns:
        per tracker, the committed (IoU statistic, error statistic) averaged over the processes
        that recorded, or None if none did.
    """
    pending = []
    for t in trackers:
        pending.append(t._pending)
        t._pending, t._uncommitted = None, 0
    gathered = comm.all_gather(pending) if comm.get_world_size() > 1 else [pending]
    out = []
    for i, t in enumerate(trackers):
        rows = [process[i] for process in gathered if process[i] is not None]
        t._window.extend(rows)
        out.append((sum(r[0] for r in rows) / len(rows), sum(r[1] for r in rows) / len(rows)) if rows else None)
    return out


def scalar_name(tracker: DynamicTracker, name: str) -> str:
    """``dynamic_rcnn/NAME``, under detectron2's stage naming for a cascade's stage (``stage1/dynamic_rcnn/NAME``)."""
    return f"{tracker.scope}/dynamic_rcnn/{name}" if tracker.scope else f"dynamic_rcnn/{name}"
