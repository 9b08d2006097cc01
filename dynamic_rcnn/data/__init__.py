"""
Datasets: built-in ones registered in detectron2's catalogs when this module is imported,
and functions that register your own VOC-layout folders and COCO json files.
"""
import contextlib
import os
from typing import Optional, Sequence

from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog

from .coco import load_coco_instances, read_coco_json, register_coco
from .prepared import PREPARED, prepared_root, register_prepared
from .sanitize import DropLog, image_file_size, loaded_summary, sanitize_dataset_dicts
from .shapes import SHAPES_CLASSES, generate_shapes_image, load_shapes, register_shapes
from .voc import BCCD_CLASSES, load_voc_instances, register_voc, voc_class_names

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
    "register_prepared",
    "prepared_root",
    "register_from_args",
    "check_datasets",
    "check_test_sets",
    "DatasetError",
    "explain_no_training_data",
    "FileNamingMapper",
]

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
    """Register the ``shapes_*`` splits, the ``bccd_*`` ones from ``bccd_root()`` and the data sets that
    ``tools/prepare_datasets.py`` made (``kangaroo_*``, ``pear640_*``, ``cells_*``), those not registered yet."""
    register_prepared()
    registered = set(DatasetCatalog.list())
    for name, (n, seed, size) in _SHAPES_SPLITS.items():
        if name not in registered:
            register_shapes(name, n, seed, size)
    root = bccd_root()
    for suffix, split in _BCCD_SPLITS.items():
        if f"bccd_{suffix}" not in registered:
            register_voc(f"bccd_{suffix}", root, split, BCCD_CLASSES)


def _categories(name: str) -> dict:
    """``{category id of the json: name}`` of a dataset registered by ``register_coco``."""
    meta = MetadataCatalog.get(name)
    return {i: meta.thing_classes[c] for i, c in meta.thing_dataset_id_to_contiguous_id.items()}


def _differences(train: dict, test: dict, train_json: str, test_json: str) -> str:
    """What differs between two ``{id: name}`` category lists, one clause per id."""
    said = []
    for i in sorted(set(train) | set(test)):
        if i in train and i in test and train[i] != test[i]:
            said.append(f"id {i} is {train[i]!r} in {train_json}, {test[i]!r} in {test_json}")
        elif i not in train or i not in test:
            name, where = (test[i], test_json) if i in test else (train[i], train_json)
            said.append(f"id {i} ({name!r}) is only in {where}")
    return "; ".join(said)


def register_from_args(args, cfg) -> Optional[str]:
    """
    ``--train-json/--train-images`` and ``--test-json/--test-images`` of ``train_net.py`` (or a VOC layout
    folder, ``--train-voc/--test-voc FOLDER[:SPLIT]``, its classes those the train split's XML files name):
    register them as ``user_train`` / ``user_test`` and use them as ``DATASETS.TRAIN`` / ``DATASETS.TEST``.
    The categories of the train json (of the test json when only it is given) decide
    ``MODEL.ROI_HEADS.NUM_CLASSES``. Raises ValueError naming the files when the two jsons list other
    categories (names by id), or when the command line (``args.opts``) sets NUM_CLASSES to another
    number. Returns the note to log when NUM_CLASSES was changed from the config's, else None (the
    caller logs it: this runs before the logger is set up).
    """
    given, classes = {}, None
    for split, key in (("train", "TRAIN"), ("test", "TEST")):
        json_file, images = getattr(args, f"{split}_json", None), getattr(args, f"{split}_images", None)
        voc = getattr(args, f"{split}_voc", None)
        if voc:  # FOLDER[:SPLIT], a VOC layout folder; its classes are those the train split's XML files name
            if json_file or images:
                raise ValueError(f"--{split}-voc and --{split}-json/--{split}-images are two ways to give one set: "
                                 "give one")
            root, _, part = voc.partition(":") if not os.path.isdir(voc) else (voc, "", "")
            if not os.path.isdir(root):
                raise FileNotFoundError(f"{root} (given to --{split}-voc) is not a folder")
            part = part or split
            if classes is None:
                train_voc = getattr(args, "train_voc", None) if split == "test" else None
                classes = voc_class_names(*((train_voc.partition(":")[0], train_voc.partition(":")[2] or "train")
                                            if train_voc else (root, part)))
            name = f"user_{split}"
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)
            register_voc(name, root, part, classes)
            cfg.DATASETS[key] = (name,)
            given[split] = (voc, dict(enumerate(classes)), "voc")
            continue
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
        given[split] = (json_file, _categories(name), "json")
    if not given:
        return None
    if len(given) == 2 and given["train"][1] != given["test"][1]:
        # The model's class k is the train json's k-th id: scored against other ids, AP is wrong.
        (train_json, train, rk), (test_json, test, tk) = given["train"], given["test"]
        raise ValueError(
            f"--test-{tk} {test_json} and --train-{rk} {train_json} list other categories (the model learns those "
            f"of --train-{rk}): {_differences(train, test, train_json, test_json)}. Give both files the same "
            "categories (ids and names)"
        )
    split = "train" if "train" in given else "test"
    json_file, categories, kind = given[split]
    opts = list(getattr(args, "opts", None) or [])
    if "MODEL.ROI_HEADS.NUM_CLASSES" in opts[::2] and cfg.MODEL.ROI_HEADS.NUM_CLASSES != len(categories):
        n = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        raise ValueError(
            f"MODEL.ROI_HEADS.NUM_CLASSES is {n} on the command line, but --{split}-{kind} {json_file} has "
            f"{len(categories)} categories, which decide it: drop MODEL.ROI_HEADS.NUM_CLASSES from the command "
            f"line (or list {n} categories in the json)"
        )
    if cfg.MODEL.ROI_HEADS.NUM_CLASSES == len(categories):
        return None
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(categories)
    return f"MODEL.ROI_HEADS.NUM_CLASSES = {len(categories)}, the categories of {json_file}"


class DatasetError(ValueError):
    """A dataset that cannot be trained on; the message names it and says what its loading found."""


@contextlib.contextmanager
def explain_no_training_data(names: Sequence[str], key: str):
    """
    Around the building of a train loader of the datasets ``names`` (the config's ``key``):
    detectron2's bare assertions "No valid data found in ..." and "Dataset '...' is empty!" (no
    image with a box is left) become a DatasetError naming the datasets, with the summary lines of
    their loading (what was dropped, e.g. boxes of unknown classes) and what to check.
    """
    try:
        yield
    except AssertionError as e:
        if not (str(e).startswith("No valid data found") or str(e).endswith("is empty!")):
            raise
        found = " ".join(f"{s}." for s in map(loaded_summary, names) if s)
        raise DatasetError(
            f"{key}: no image of {', '.join(names)} has a box to train on (detectron2: {str(e).rstrip('.')})."
            + (f" What the loading found: {found}" if found else "")
            + " Check that the annotations' classes (names, category ids) are the dataset's, and that its "
            "images are where they are looked for"
        ) from None


def check_test_sets(names: Sequence[str], key: str) -> None:
    """
    At start-up: load the records of every test dataset of ``names`` (the config's ``key``) and raise
    a DatasetError in one line, naming the dataset with the summary of its loading and what to check,
    when none of its images is left (all missing or unreadable). detectron2 finds it only at the
    evaluation, after the training, as a bare ``AssertionError: Dataset '...' is empty!``.
    """
    for name in names:
        if DatasetCatalog.get(name):
            continue
        meta = MetadataCatalog.get(name).as_dict()
        folder = meta.get("image_root") or (os.path.join(meta["dirname"], "JPEGImages") if "dirname" in meta else None)
        found = loaded_summary(name)
        raise DatasetError(
            f"{key}: the test set {name!r} has no image left to evaluate on."
            + (f" What the loading found: {found}." if found else "")
            + f" Check that its images are {f'in {folder}' if folder else 'where its records say'}, under the names "
            "its annotations give, and that they are images"
        )


class FileNamingMapper(DatasetMapper):
    """
    detectron2's ``DatasetMapper``, whose failure on an image (a file changed or cut after
    start-up: PIL's "image file is truncated" names no file) is a DatasetError naming the file.
    """

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except Exception as e:
            raise DatasetError(
                f"{dataset_dict.get('file_name', '?')} failed in the data loader: {type(e).__name__}: {e}. "
                "Replace the file or remove it from the dataset, then go on with --resume"
            ) from e


def check_datasets(names, key: str) -> None:
    """
    Before anything is built: every dataset of ``names`` (a config's ``DATASETS.TRAIN`` or ``TEST``,
    named ``key`` in messages) is registered, and the files its metadata points at exist (detectron2
    registers COCO, LVIS, ... with paths under ``$DETECTRON2_DATASETS``, and loads them only when
    training starts). Raises FileNotFoundError / KeyError naming the dataset, the path and the fix.
    """
    registered = DatasetCatalog.list()
    for name in names:
        prepared = name.rsplit("_", 1)[0]
        if name not in registered and prepared in PREPARED:
            raise KeyError(
                f"{key} names the dataset {name!r}, which is made by the project's preparation command and is not in "
                f"{os.path.join(prepared_root(), prepared)}: make it with `python tools/prepare_datasets.py --out "
                f"{prepared_root()} {prepared}=/path/to/a/clone` (BENCHMARKS.md names the repository), or set "
                "$DYNAMIC_RCNN_DATASETS to the folder that holds it"
            )
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


register_builtin()  # as detectron2 registers its own datasets when detectron2.data is imported
