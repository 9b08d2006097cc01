"""Dynamic R-CNN (Zhang et al., ECCV 2020) as a detectron2 project."""
from . import data
from .config import add_dynamic_rcnn_config, validate_dynamic_rcnn_config
from .hook import DynamicRCNNHook
from .roi_heads import DynamicROIHeads
from .tracker import DynamicTracker
from .trainer import Trainer

__all__ = [
    "add_dynamic_rcnn_config",
    "validate_dynamic_rcnn_config",
    "DynamicROIHeads",
    "DynamicRCNNHook",
    "DynamicTracker",
    "Trainer",
]
__version__ = "0.1.0"

data.register_builtin()
