"""
Datasets: built-in ones registered in detectron2's catalogs when ``dynamic_rcnn`` is imported,
and functions that register your own VOC-layout folders and COCO json files.
"""
import logging
import os

from detectron2.data import DatasetCatalog

from .coco import load_coco_instances, read_coco_json, register_coco
from .sanitize import DropLog, image_file_size, sanitize_dataset_dicts
from .shapes import SHAPES_CLASSES, generate_shapes_image, load_shapes, register_shapes
from .voc import BCCD_CLASSES, load_voc_instances, register_voc

__all__ = [
    "SHAPES_CLASSES",
    "BCCD_CLASSES",
    "generate_shapes_image",
    "load_shapes",
    "register_shapes",
    "load_voc_instances",
    "register_voc",
    "load_coco_instances",
    "register_coco",
    "read_coco_json",
    "sanitize_dataset_dicts",
    "image_file_size",
    "DropLog",
    "bccd_root",
    "register_builtin",
    "register_from_args",
    "check_datasets",
]

logger = logging.getLogger(__name__)

# name: (number of images, seed, (height, width)); different seeds keep the splits disjoint.
_SHAPES_SPLITS = {
    "shapes_train": (1000, 0, (192, 192)),
    "shapes_val": (500, 1, (192, 192)),  # 500: AP differences of ~1 point need a big enough test set
    "shapes_tiny_train": (16, 2, (128, 128)),  # for tests and smoke runs
}
# name suffix: the VOC split(s) it reads. `valtest` pools val and test (159 images) for evaluations
# whose noise matters more than comparability with the usual test split (the benchmarks).
_BCCD_SPLITS = {"train": "train", "val": "val", "trainval": "trainval", "test": "test", "valtest": ("val", "test")}


def bccd_root() -> str:
    """
    Where the ``bccd_*`` datasets are read from: ``$DYNAMIC_RCNN_DATASETS/BCCD`` when that variable is
    set, else ``$DETECTRON2_DATASETS/BCCD`` (``datasets/BCCD`` when unset), where detectron2 keeps its
    own datasets. Registration does not need the folder; ``check_datasets`` says when it is missing.
    """
    if os.environ.get("DYNAMIC_RCNN_DATASETS"):
        return os.path.join(os.environ["DYNAMIC_RCNN_DATASETS"], "BCCD")
    return os.path.join(os.environ.get("DETECTRON2_DATASETS", "datasets"), "BCCD")


def register_builtin() -> None:
    """Register the ``shapes_*`` splits and the ``bccd_*`` ones from ``bccd_root()`` (those not registered yet)."""
    registered = set(DatasetCatalog.list())
    for name, (n, seed, size) in _SHAPES_SPLITS.items():
        if name not in registered:
            register_shapes(name, n, seed, size)
    root = bccd_root()
    for suffix, split in _BCCD_SPLITS.items():
        if f"bccd_{suffix}" not in registered:
            register_voc(f"bccd_{suffix}", root, split, BCCD_CLASSES)


def register_from_args(args, cfg) -> None:
    """
    ``--train-json/--train-images`` and ``--test-json/--test-images`` of ``train_net.py``: register
    the pairs as ``user_train`` / ``user_test``, use them as ``DATASETS.TRAIN`` / ``DATASETS.TEST``
    and set ``MODEL.ROI_HEADS.NUM_CLASSES`` to their number of categories.
    """
    from detectron2.data import MetadataCatalog

    for split, key in (("train", "TRAIN"), ("test", "TEST")):
        json_file, images = getattr(args, f"{split}_json", None), getattr(args, f"{split}_images", None)
        if not json_file and not images:
            continue
        if not (json_file and images):
            raise ValueError(f"--{split}-json and --{split}-images go together: give both")
        for path in (json_file, images):
            if not os.path.exists(path):
                raise FileNotFoundError(f"{path} (given to --{split}-json/--{split}-images) does not exist")
        name = f"user_{split}"
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        try:
            register_coco(name, json_file, images)
        except ValueError as e:  # the message names the file; say which option gave it
            raise ValueError(f"--{split}-json {e}") from None
        cfg.DATASETS[key] = (name,)
        num_classes = len(MetadataCatalog.get(name).thing_classes)
        if cfg.MODEL.ROI_HEADS.NUM_CLASSES != num_classes:
            logger.info("MODEL.ROI_HEADS.NUM_CLASSES = %d, the categories of %s", num_classes, json_file)
            cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes


def check_datasets(names, key: str) -> None:
    """
    Before anything is built: every dataset of ``names`` (a config's ``DATASETS.TRAIN`` or ``TEST``,
    named ``key`` in messages) is registered, and the files its metadata points at exist (detectron2
    registers COCO, LVIS, ... with paths under ``$DETECTRON2_DATASETS``, and loads them only when
    training starts). Raises FileNotFoundError / KeyError naming the dataset, the path and the fix.
    """
    from detectron2.data import MetadataCatalog

    registered = DatasetCatalog.list()
    for name in names:
        if name not in registered:
            raise KeyError(
                f"{key} names the dataset {name!r}, which is not registered. Register it (see README, *Your "
                f"own data*) or use one of: {', '.join(sorted(registered))}"
            )
        meta = MetadataCatalog.get(name)
        for field in ("json_file", "image_root", "dirname"):
            path = getattr(meta, field, None) if field in meta.as_dict() else None
            if isinstance(path, str) and "://" not in path and not os.path.exists(path):
                where = os.environ.get("DETECTRON2_DATASETS", "datasets")
                ours = " (this project's BCCD: also $DYNAMIC_RCNN_DATASETS, which comes first)" if name.startswith("bccd_") else ""
                raise FileNotFoundError(
                    f"{key}: the dataset {name!r} needs {path}, which does not exist. detectron2 looks for its "
                    f"built-in datasets under $DETECTRON2_DATASETS (now {where!r}, relative to the current "
                    f"folder){ours}: put the data there in detectron2's layout, or set the variable."
                )
