"""
The harness around the method, for the project's scripts and your own: the ``Trainer`` (detectron2's
``DefaultTrainer`` with the hook and the evaluator), checkpoints that name what is wrong, the start-up checks of
a config and a command line, and detectron2's ``launch`` with one-line errors.
"""
from .checkpoint import AtomicCheckpointer, CheckpointError, load_checkpoint, load_model_weights
from .defaults import check_amp, device_or_cpu, load_config, merge_checked, validate_dynamic_rcnn_config
from .launch import check_output_dir, check_overrides, launch_checked
from .trainer import DynamicRCNNMetricPrinter, Trainer, create_ddp_model

__all__ = [
    "AtomicCheckpointer", "CheckpointError", "DynamicRCNNMetricPrinter", "Trainer", "check_amp", "check_output_dir",
    "check_overrides", "create_ddp_model", "device_or_cpu", "launch_checked", "load_checkpoint", "load_config",
    "load_model_weights", "merge_checked", "validate_dynamic_rcnn_config",
]
