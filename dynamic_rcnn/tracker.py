"""The one home of Dynamic R-CNN's state: the values in force and the window in progress."""
import logging
from typing import Any, Dict, List, Optional, Tuple

from detectron2.utils import comm

from .statistics import updated_beta, updated_iou_threshold

__all__ = ["DynamicTracker"]

logger = logging.getLogger(__name__)


class DynamicTracker:
    """
    Owns the IoU threshold and the SmoothL1 beta in force, and the window of statistics recorded
    since the last update. ``DynamicROIHeads`` reads the values from it and records each
    iteration's statistics into it; :class:`DynamicRCNNHook` commits them to the window after
    every iteration and calls :meth:`update` every ``update_period`` iterations.

    With several processes, :meth:`commit` gathers every process's statistics of the iteration,
    so the window, and hence every update, is the same in all processes, and the window saved by
    the main process's checkpoint is the whole window. The state (:meth:`state_dict`) is plain
    Python data: the hook saves it in the trainer's part of every detectron2 checkpoint, so the
    model's own ``state_dict`` is exactly that of a ``StandardROIHeads`` model.
    """

    def __init__(
        self,
        *,
        iou_topk: int,
        error_topk: int,
        update_period: int,
        warmup_iou: float,
        warmup_beta: float,
        enable_dla: bool,
        enable_dsl: bool,
    ):
        self.iou_topk = iou_topk
        self.error_topk = error_topk
        self.update_period = update_period
        self.warmup_iou = warmup_iou
        self.warmup_beta = warmup_beta
        self.enable_dla = enable_dla
        self.enable_dsl = enable_dsl

        self.iou_threshold = float(warmup_iou)
        self.beta = float(warmup_beta)
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

    def record(self, iou_stat: float, error_stat: float) -> None:
        """Keep this iteration's statistics (numbers or 0-dim tensors) until :meth:`commit`."""
        if self._pending is not None:
            self._uncommitted += 1
            if self._uncommitted == self.update_period:
                logger.warning(
                    "Dynamic R-CNN statistics of %d iterations were never committed, so the IoU "
                    "threshold and beta stay fixed: register dynamic_rcnn.DynamicRCNNHook in your "
                    "trainer.",
                    self.update_period,
                )
        self._pending = (float(iou_stat), float(error_stat))

    def commit(self) -> Optional[Tuple[float, float]]:
        """
        Move the statistics recorded since the last commit, from every process, into the window.
        With several processes every process must call it (it is a collective).

        Returns:
            the committed (IoU statistic, error statistic), averaged over the processes that
            recorded; None if none did.
        """
        pending = self._pending
        self._pending = None
        self._uncommitted = 0
        if comm.get_world_size() > 1:
            rows = [r for r in comm.all_gather(pending) if r is not None]
        else:
            rows = [pending] if pending is not None else []
        if not rows:
            return None
        self._window.extend(rows)
        n = len(rows)
        return sum(r[0] for r in rows) / n, sum(r[1] for r in rows) / n

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
            self.iou_threshold = updated_iou_threshold(
                [v[0] for v in values], self.iou_threshold, self.warmup_iou
            )
        if self.enable_dsl:
            self.beta = updated_beta([v[1] for v in values], self.beta, self.warmup_beta)
        return len(values)

    def state_dict(self) -> Dict[str, Any]:
        """The values in force and the window in progress, as plain Python data."""
        return {
            "iou_threshold": self.iou_threshold,
            "beta": self.beta,
            "window": [list(v) for v in self._window],
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (e.g. from a checkpoint)."""
        missing = {"iou_threshold", "beta", "window"} - set(state)
        if missing:
            raise KeyError(f"Dynamic R-CNN state misses {sorted(missing)}; it has {sorted(state)}")
        self.iou_threshold = float(state["iou_threshold"])
        self.beta = float(state["beta"])
        self._window = [(float(a), float(b)) for a, b in state["window"]]
        self._pending = None

    def __repr__(self) -> str:
        return (
            f"DynamicTracker(iou_threshold={self.iou_threshold:.4f}, beta={self.beta:.4f}, "
            f"window={len(self._window)}, update_period={self.update_period}, "
            f"dla={self.enable_dla}, dsl={self.enable_dsl})"
        )
