"""
The harness around the method, for the project's scripts and your own: the ``Trainer`` (detectron2's
``DefaultTrainer`` with the hook and the evaluator), checkpoints that name what is wrong, the start-up checks of
a config and a command line, the hold of a training's output folder, and detectron2's ``launch`` with one-line
errors (Ctrl-C included).
"""
from .checkpoint import AtomicCheckpointer, CheckpointError, load_checkpoint, load_model_weights
from .defaults import (apply_lazy_overrides, check_amp, check_batch_size, device_or_cpu, load_config, merge_checked,
                       validate_dynamic_rcnn_config)
from .launch import add_restart_option, check_output_dir, check_overrides, claim_output_dir, launch_checked
from .trainer import DynamicRCNNMetricPrinter, Trainer, create_ddp_model

__all__ = [
    "AtomicCheckpointer", "CheckpointError", "DynamicRCNNMetricPrinter", "Trainer", "add_restart_option",
    "apply_lazy_overrides", "check_amp", "check_batch_size", "check_output_dir", "check_overrides", "claim_output_dir",
    "create_ddp_model", "device_or_cpu", "launch_checked", "load_checkpoint", "load_config", "load_model_weights",
    "merge_checked", "validate_dynamic_rcnn_config",
]
