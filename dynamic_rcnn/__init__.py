"""
Dynamic R-CNN (Zhang et al., ECCV 2020) as a detectron2 project. Importing it registers ``DynamicROIHeads`` and
``DynamicCascadeROIHeads`` in detectron2's ``ROI_HEADS_REGISTRY`` and loads the method only; the harness lives in
sub-packages imported where used: ``engine`` (Trainer, checkpoints, launch), ``data`` (datasets, registered when
imported), ``evaluation``, ``modeling``, ``model_zoo``, ``tools``.
"""
try:
    import detectron2  # noqa: F401
except ModuleNotFoundError as _e:
    if _e.name != "detectron2":
        raise  # a dependency of detectron2 is missing: its own message names it
    import sys as _sys

    raise ModuleNotFoundError(
        f"dynamic_rcnn needs detectron2, which this Python ({_sys.executable}) cannot import. detectron2 is not on "
        "PyPI under its own name, so `pip install` of this project does not install it. Get it with the project's "
        "set-up script: `bash tools/setup_env.sh VENV` (a pure-Python detectron2 from PyPI's sal-detectron2 wheel), "
        "or `DETECTRON2_SRC=/path/to/detectron2 bash tools/setup_env.sh VENV` (a source checkout); or build your "
        "own: https://detectron2.readthedocs.io/en/latest/tutorials/install.html",
        name="detectron2",
    ) from _e

from .config import add_dynamic_rcnn_config
from .hook import DynamicRCNNHook, add_dynamic_rcnn_hook, find_trackers
from .roi_heads import DynamicCascadeROIHeads, DynamicROIHeads
from .tracker import DynamicTracker

__all__ = [
    "add_dynamic_rcnn_config", "DynamicROIHeads", "DynamicCascadeROIHeads",
    "DynamicRCNNHook", "add_dynamic_rcnn_hook", "find_trackers", "DynamicTracker",
]
__version__ = "0.5.2"

# Names of the harness that earlier versions exported here: importable, loaded only when asked for.
_HARNESS = {"Trainer": "engine", "DynamicRCNNMetricPrinter": "engine", "validate_dynamic_rcnn_config": "engine"}


def __getattr__(name):
    if name in _HARNESS:
        import importlib

        return getattr(importlib.import_module(f".{_HARNESS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
