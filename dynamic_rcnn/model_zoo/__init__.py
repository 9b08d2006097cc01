"""Released Dynamic R-CNN models and the project's configs, served as ``detectron2.model_zoo`` serves its own."""
from .model_zoo import (
    ChecksumError,
    configs_dir,
    get,
    get_checkpoint_file,
    get_config,
    get_config_file,
    get_thing_classes,
    release_dir,
    released_checkpoints,
    released_names,
    sha256_of,
    verify_checkpoint,
)

__all__ = ["ChecksumError", "configs_dir", "get", "get_checkpoint_file", "get_config", "get_config_file",
           "get_thing_classes", "release_dir", "released_checkpoints", "released_names", "sha256_of",
           "verify_checkpoint"]
