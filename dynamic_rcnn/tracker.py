"""``DynamicTracker``: the one home of a stage's settings, of the IoU threshold and beta in force, and of the window."""
import logging
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from detectron2.utils import comm

from .statistics import updated_beta, updated_iou_threshold

__all__ = ["ConfigError", "DynamicTracker", "RULES", "REMOVED", "check_tracker_args", "gather"]

logger = logging.getLogger("detectron2." + __name__)


class ConfigError(ValueError):
    """A Dynamic R-CNN value out of range, removed, or undefined with the others, named by its key and argument."""


def _count(v, least=1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= least


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# The one table of valid values: argument -> (config key under MODEL.DYNAMIC_RCNN, test, what is allowed).
RULES = {
    "enable_dla": ("ENABLE_DLA", lambda v: isinstance(v, bool), "it must be True or False"),
    "enable_dsl": ("ENABLE_DSL", lambda v: isinstance(v, bool), "it must be True or False"),
    "iou_topk": ("IOU_TOPK", lambda v: _count(v, 0), "it must be an integer >= 1, or 0 (automatic)"),
    "beta_topk": ("BETA_TOPK", lambda v: _count(v, 0), "it must be an integer >= 1, or 0 (automatic)"),
    "update_period": ("UPDATE_PERIOD", _count, "it must be an integer >= 1"),
    "warmup_iou": ("WARMUP_IOU", lambda v: _number(v) and 0 < v < 1, "it must lie in the open interval (0, 1)"),
    "warmup_beta": ("WARMUP_BETA", lambda v: _number(v) and v >= 0,
                    "it must be a finite number >= 0 (0 is the L1 loss, with ENABLE_DSL False only)"),
    "stats_include_gt": ("STATS_INCLUDE_GT", lambda v: isinstance(v, bool), "it must be True or False"),
}
# Arguments of earlier versions: argument -> (config key, what became of it), refused in one line.
REMOVED = {
    "statistic": ("STATISTIC", "was removed: the per-object and scaled statistics lost 1-6 AP: delete the key"),
    "reference_objects": ("REFERENCE_OBJECTS", "was removed: it served the removed STATISTIC: delete it"),
    "min_positives_iou": ("MIN_POSITIVES_IOU", "was removed: the positives guard lost 2.4 AP on shapes: delete it"),
    "error_topk": ("BETA_TOPK", "is the argument `beta_topk` now, named as its key"),
}


def check_tracker_args(keys: Optional[Dict[str, str]] = None, **values) -> None:
    """
    Check :class:`DynamicTracker` arguments against ``RULES``. ``keys`` names an argument's config key in the
    messages when it is not ``MODEL.DYNAMIC_RCNN.KEY`` (a cascade stage's). Raises ConfigError (a ValueError)
    naming the key, the argument and what is allowed; TypeError for an argument that never existed.
    """
    keys = keys or {}
    for arg, value in values.items():
        if arg in REMOVED:
            key, what = REMOVED[arg]
            raise ConfigError(f"MODEL.DYNAMIC_RCNN.{key} (argument `{arg}`) {what}.")
        if arg not in RULES:
            raise TypeError(f"unknown Dynamic R-CNN argument `{arg}`; the arguments are {', '.join(RULES)}")
        key, ok, allowed = RULES[arg]
        if not ok(value):
            raise ConfigError(f"{keys.get(arg, 'MODEL.DYNAMIC_RCNN.' + key)} = {value!r} is invalid: {allowed} "
                              f"(argument `{arg}`).")
    if values.get("enable_dsl") and values.get("warmup_beta") == 0:
        raise ConfigError(
            f"{keys.get('warmup_beta', 'MODEL.DYNAMIC_RCNN.WARMUP_BETA')} = 0 is invalid with DSL on: DSL lowers beta "
            "from WARMUP_BETA, its ceiling, and 0 (the L1 loss) leaves it nothing to move. Set WARMUP_BETA > 0, or "
            "ENABLE_DSL False to train DLA alone with an L1 box loss (argument `warmup_beta`).")


class DynamicTracker:
    """
    A stage's Dynamic R-CNN settings, the IoU threshold and SmoothL1 beta in force, and the window of
    (IoU statistic, error statistic) pairs recorded since the last update. The head records one pair an
    iteration (:meth:`record`); :class:`DynamicRCNNHook` gathers the processes' pairs (:func:`gather`) and
    calls :meth:`update` every ``update_period`` iterations, so every process applies the same values. Its
    state (:meth:`state_dict`) is plain Python data saved with the trainer's state: the model's own weights
    are those of detectron2's head. Every argument is checked here, however the tracker is built.
    """

    def __init__(self, *, iou_topk: int = 0, beta_topk: int = 0, update_period: int = 100, warmup_iou: float = 0.5,
                 warmup_beta: float = 1.0, enable_dla: bool = True, enable_dsl: bool = True,
                 stats_include_gt: bool = False, keys: Optional[Dict[str, str]] = None, **removed):
        """The keys of ``MODEL.DYNAMIC_RCNN`` in lower case, with its defaults; ``keys``: each argument's config
        key as messages name it (a cascade stage's), by default ``MODEL.DYNAMIC_RCNN.KEY``."""
        check_tracker_args(keys, iou_topk=iou_topk, beta_topk=beta_topk, update_period=update_period,
                           warmup_iou=warmup_iou, warmup_beta=warmup_beta, enable_dla=enable_dla,
                           enable_dsl=enable_dsl, stats_include_gt=stats_include_gt, **removed)
        self.iou_topk, self.beta_topk, self.update_period = iou_topk, beta_topk, update_period
        self.warmup_iou, self.warmup_beta = float(warmup_iou), float(warmup_beta)
        self.enable_dla, self.enable_dsl, self.stats_include_gt = enable_dla, enable_dsl, stats_include_gt
        self.keys = {arg: (keys or {}).get(arg, f"MODEL.DYNAMIC_RCNN.{RULES[arg][0]}") for arg in RULES}
        self.scope = ""  # "stage{k}" for a cascade's stage k: where its scalars are written
        self.iou_threshold, self.beta = self.warmup_iou, self.warmup_beta
        self.latest: Optional[Tuple[float, float]] = None  # this iteration's pair, until the hook writes it
        self.non_finite = 0  # pairs left out of the window since the last update
        self._window: List[Tuple[float, float]] = []  # every process's pairs, gathered or restored
        self._local: List[Tuple[float, float]] = []  # this process's pairs, not gathered yet

    enabled = property(lambda self: self.enable_dla or self.enable_dsl)
    stage = property(lambda self: f" {self.scope}" if self.scope else "")  # for log lines

    @property
    def window(self) -> List[Tuple[float, float]]:
        """The pairs of the window: those gathered (every process's), then this process's not gathered yet."""
        return self._window + self._local

    def settings(self) -> Dict[str, Any]:
        """The settings that decide what a statistic of the window means."""
        return {a: getattr(self, a) for a in ("iou_topk", "beta_topk", "update_period", "stats_include_gt")}

    def record(self, iou_stat: float, error_stat: float) -> None:
        """Keep this iteration's pair; a non-finite one never enters the window (counted in the update's log line)."""
        pair = (float(iou_stat), float(error_stat))
        if not all(map(math.isfinite, pair)):
            self.non_finite += 1
            return
        self.latest = pair
        self._local.append(pair)
        if len(self._local) == 3 * self.update_period:
            logger.warning("Dynamic R-CNN: %d iterations recorded and no update: the IoU threshold and beta stay "
                           "fixed. Register the hook: dynamic_rcnn.add_dynamic_rcnn_hook(trainer).", len(self._local))

    def update(self) -> int:
        """The rule on the window (T: the mean IoU statistic, at least ``warmup_iou``; beta: the median error
        statistic, at most ``warmup_beta``), then a new window; returns the pairs used. A part off, or no pair,
        changes nothing."""
        values, self._window, self._local, self.non_finite = self.window, [], [], 0
        if self.enable_dla:
            self.iou_threshold = updated_iou_threshold([v[0] for v in values], self.iou_threshold, self.warmup_iou)
        if self.enable_dsl:
            self.beta = updated_beta([v[1] for v in values], self.beta, self.warmup_beta)
        return len(values)

    def state_dict(self) -> Dict[str, Any]:
        """The values in force, the window (call :func:`gather` first with several processes) and the settings."""
        return {"iou_threshold": self.iou_threshold, "beta": self.beta, "window": [list(v) for v in self.window],
                "settings": self.settings()}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` under this tracker's settings, which win (switches, floor of T, ceiling of
        beta); a window recorded with other settings is kept for the next update, with a warning naming them."""
        missing = {"iou_threshold", "beta", "window"} - set(state)
        if missing:
            raise KeyError(f"Dynamic R-CNN state misses {sorted(missing)}; it has {sorted(state)}")
        self._window, self._local, self.latest = [(float(a), float(b)) for a, b in state["window"]], [], None
        t, beta = float(state["iou_threshold"]), float(state["beta"])
        self.iou_threshold = max(self.warmup_iou, t) if self.enable_dla else self.warmup_iou
        self.beta = min(self.warmup_beta, beta) if self.enable_dsl else self.warmup_beta
        if (self.iou_threshold, self.beta) != (t, beta):
            logger.warning("Dynamic R-CNN%s: the checkpoint's IoU threshold %.4f and beta %.4f become %.4f and %.4f "
                           "under this run's switches, floor and ceiling.", self.stage, t, beta, self.iou_threshold,
                           self.beta)
        saved = {("beta_topk" if k == "error_topk" else k): v for k, v in state.get("settings", {}).items()}
        differ = [f"{self.keys[a]} {saved[a]!r} -> {v!r}" for a, v in self.settings().items() if saved.get(a, v) != v]
        if differ:
            logger.warning("Dynamic R-CNN%s resumes with other settings than the checkpoint's (%s): the %d statistics "
                           "of its window enter the next update with those recorded from now on.", self.stage,
                           "; ".join(differ), len(self._window))

    def __repr__(self) -> str:
        return (f"DynamicTracker({self.scope + ', ' if self.scope else ''}iou_threshold={self.iou_threshold:.4f}, "
                f"beta={self.beta:.4f}, window={len(self.window)}, update_period={self.update_period}, "
                f"dla={self.enable_dla}, dsl={self.enable_dsl})")


def gather(trackers: Sequence[DynamicTracker]) -> None:
    """Every process's pairs not gathered yet into every process's window: one ``comm.all_gather`` (a collective)
    for all the trackers of a model; nothing is sent with one process."""
    local = [t._local for t in trackers]
    everyone = comm.all_gather(local) if comm.get_world_size() > 1 else [local]
    for i, t in enumerate(trackers):
        t._window.extend(pair for process in everyone for pair in process[i])
        t._local = []
