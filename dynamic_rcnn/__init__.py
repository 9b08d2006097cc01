"""Dynamic R-CNN (Zhang et al., ECCV 2020) as a detectron2 project."""
# First: without detectron2 every module below fails with a bare "No module named 'detectron2'",
# and pip cannot install it for us (it is not on PyPI under its own name), so say how to get it.
try:
    import detectron2  # noqa: F401
except ModuleNotFoundError as _e:
    if _e.name != "detectron2":
        raise  # a dependency of detectron2 is missing: its own message names it
    import sys as _sys

    raise ModuleNotFoundError(
        f"dynamic_rcnn needs detectron2, which this Python ({_sys.executable}) cannot import. "
        "detectron2 is not on PyPI under its own name, so `pip install` of this project does not "
        "install it. Get it with the project's set-up script, which installs it into the environment "
        "(with torch if missing): `bash tools/setup_env.sh VENV` (a pure-Python detectron2 from PyPI's "
        "sal-detectron2 wheel), or `DETECTRON2_SRC=/path/to/detectron2 bash tools/setup_env.sh VENV` "
        "(a detectron2 source checkout, as pure Python); or build your own: "
        "https://detectron2.readthedocs.io/en/latest/tutorials/install.html",
        name="detectron2",
    ) from _e

from . import data
from .config import add_dynamic_rcnn_config, validate_dynamic_rcnn_config
from .hook import DynamicRCNNHook, DynamicRCNNMetricPrinter, add_dynamic_rcnn_hook
from .cascade import DynamicCascadeROIHeads
from .roi_heads import DynamicROIHeads
from .tracker import DynamicTracker
from .trainer import Trainer

__all__ = [
    "add_dynamic_rcnn_config",
    "validate_dynamic_rcnn_config",
    "DynamicROIHeads",
    "DynamicCascadeROIHeads",
    "DynamicRCNNHook",
    "DynamicRCNNMetricPrinter",
    "add_dynamic_rcnn_hook",
    "DynamicTracker",
    "Trainer",
]
__version__ = "0.2.0"

data.register_builtin()  # the built-in datasets, as detectron2 registers its own at import
