"""Built-in datasets, registered in detectron2's catalogs when ``dynamic_rcnn`` is imported."""
from detectron2.data import DatasetCatalog

from .shapes import SHAPES_CLASSES, generate_shapes_image, load_shapes, register_shapes

__all__ = ["SHAPES_CLASSES", "generate_shapes_image", "load_shapes", "register_shapes", "register_builtin"]

# name: (number of images, seed); different seeds keep the splits disjoint.
_SHAPES_SPLITS = {
    "shapes_train": (1000, 0),
    "shapes_val": (100, 1),
    "shapes_tiny_train": (16, 2),  # for tests and smoke runs
}


def register_builtin() -> None:
    for name, (n, seed) in _SHAPES_SPLITS.items():
        if name not in DatasetCatalog.list():
            register_shapes(name, n, seed)
