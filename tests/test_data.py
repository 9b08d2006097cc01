import json
import logging
import os
import re

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from PIL import Image

from dynamic_rcnn.data import (
    BCCD_CLASSES,
    bccd_root,
    generate_shapes_image,
    load_coco_instances,
    load_voc_instances,
    sanitize_dataset_dicts,
)


def test_shapes_are_deterministic_and_seeds_differ():
    img1, annos1 = generate_shapes_image(seed=3, index=7, image_size=(96, 128))
    img2, annos2 = generate_shapes_image(seed=3, index=7, image_size=(96, 128))
    assert img1.shape == (96, 128, 3) and img1.dtype == np.uint8
    assert np.array_equal(img1, img2) and annos1 == annos2
    img3, _ = generate_shapes_image(seed=4, index=7, image_size=(96, 128))
    assert not np.array_equal(img1, img3)


def test_shapes_have_exact_boxes_small_objects_and_crowds():
    counts, sides = [], []
    for i in range(60):
        _, annos = generate_shapes_image(seed=0, index=i, image_size=(256, 256))
        counts.append(len(annos))
        for a in annos:
            x0, y0, x1, y1 = a["bbox"]
            assert 0 <= x0 < x1 <= 256 and 0 <= y0 < y1 <= 256
            poly = np.array(a["segmentation"][0]).reshape(-1, 2)
            # The box is the polygon's extent: exact, not loose.
            assert poly[:, 0].min() == pytest.approx(x0) and poly[:, 0].max() == pytest.approx(x1)
            assert poly[:, 1].min() == pytest.approx(y0) and poly[:, 1].max() == pytest.approx(y1)
            assert a["category_id"] in (0, 1, 2)
            sides.append(max(x1 - x0, y1 - y0))
    assert max(counts) >= 12  # crowded images
    assert min(counts) >= 1
    assert sum(s < 16 for s in sides) >= 0.15 * len(sides)  # small objects


def test_builtin_datasets_are_registered():
    import dynamic_rcnn  # noqa: F401

    for name in ("shapes_train", "shapes_val", "shapes_tiny_train"):
        assert name in DatasetCatalog.list()
        assert MetadataCatalog.get(name).thing_classes == ["circle", "square", "triangle"]
    records = DatasetCatalog.get("shapes_tiny_train")
    assert len(records) == 16 and all(os.path.isfile(r["file_name"]) for r in records)
    img = cv2.imread(records[0]["file_name"])
    assert img.shape == (records[0]["height"], records[0]["width"], 3)


def _record(tmp_path, annos, exists=True, name="a.jpg"):
    path = tmp_path / name
    if exists:
        cv2.imwrite(str(path), np.zeros((100, 200, 3), np.uint8))
    return {"file_name": str(path), "image_id": name, "height": 100, "width": 200, "annotations": annos}


def _box(x0, y0, x1, y1, cls=0):
    return {"bbox": [x0, y0, x1, y1], "bbox_mode": BoxMode.XYXY_ABS, "category_id": cls, "iscrowd": 0}


def test_sanitize_mends_or_drops_each_kind_and_says_so(tmp_path, caplog):
    dicts = [
        _record(tmp_path, [
            _box(10, 10, 50, 50),              # fine
            _box(150, 50, 250, 120),           # partly outside: clipped to [150, 50, 200, 100]
            _box(20, 20, 20, 40),              # zero area
            _box(300, 300, 350, 350),          # wholly outside: zero area after clipping
            _box(10, 10, 30, 30, cls=7),       # unknown class
            _box(float("nan"), 0, 10, 10),     # no valid coordinates
            {"bbox": [5, 5, 10, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1, "iscrowd": 0},
        ]),
        _record(tmp_path, [_box(1, 1, 5, 5)], exists=False, name="missing.jpg"),
    ]
    with caplog.at_level(logging.INFO, logger="detectron2.dynamic_rcnn"):
        out = sanitize_dataset_dicts(dicts, "mine", num_classes=2)
    assert len(out) == 1
    boxes = [a["bbox"] for a in out[0]["annotations"]]
    assert boxes == [[10, 10, 50, 50], [150, 50, 200, 100], [5, 5, 15, 25]]
    assert all(a["bbox_mode"] == BoxMode.XYXY_ABS for a in out[0]["annotations"])
    line = [r.getMessage() for r in caplog.records if r.getMessage().startswith("mine:")]
    assert line == [
        "mine: 1 images, 3 boxes; mended or dropped: 1 boxes clipped to the image (a.jpg), 1 boxes of unknown "
        "classes (a.jpg), 1 boxes without valid coordinates (a.jpg), 1 missing image files (missing.jpg), "
        "2 zero-area boxes (a.jpg)"
    ]
    assert len(dicts[0]["annotations"]) == 7  # the input is left as it was


VOC_XML = """<annotation><filename>{name}.jpg</filename><size><width>64</width><height>48</height></size>
{objects}</annotation>"""
VOC_OBJ = "<object><name>{cls}</name><bndbox><xmin>{0}</xmin><ymin>{1}</ymin><xmax>{2}</xmax><ymax>{3}</ymax></bndbox></object>"


def make_voc(root, images):
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for name, objects, has_image in images:
        if objects is None:  # an unreadable XML file
            xml = "<annotation><broken"
        else:
            xml = VOC_XML.format(name=name, objects="".join(VOC_OBJ.format(*b, cls=c) for c, b in objects))
        with open(os.path.join(root, "Annotations", f"{name}.xml"), "w") as f:
            f.write(xml)
        if has_image:
            cv2.imwrite(os.path.join(root, "JPEGImages", f"{name}.jpg"), np.zeros((48, 64, 3), np.uint8))
    with open(os.path.join(root, "ImageSets", "Main", "train.txt"), "w") as f:
        f.write("\n".join(n for n, _, _ in images) + "\n")


def test_voc_folder_with_broken_annotations(tmp_path, caplog):
    root = str(tmp_path / "voc")
    make_voc(root, [
        ("img1", [("cat", (1, 1, 10, 10)), ("dog", (5, 5, 5, 5)), ("zebra", (1, 1, 9, 9)), ("cat", (50, 40, 80, 60))], True),
        ("img2", [("dog", (2, 3, 20, 30))], False),
        ("img3", None, True),
    ])
    with caplog.at_level(logging.INFO, logger="detectron2.dynamic_rcnn"):
        dicts = load_voc_instances(root, "train", ["cat", "dog"], name="myvoc")
    assert [d["image_id"] for d in dicts] == ["img1"]
    annos = dicts[0]["annotations"]
    assert [a["bbox"] for a in annos] == [[0.0, 0.0, 10.0, 10.0], [49.0, 39.0, 64.0, 48.0]]
    assert [a["category_id"] for a in annos] == [0, 0]
    text = caplog.text
    assert "img3.xml" in text  # with its parse error
    assert (
        "myvoc: 1 images, 2 boxes; mended or dropped: 1 boxes clipped to the image (img1.jpg), 1 boxes of "
        "the unknown class 'zebra' (img1.jpg), 1 missing image files (img2.jpg), 1 unreadable annotation files (img3.xml), "
        "1 zero-area boxes (img1.jpg)"
    ) in text
    with pytest.raises(FileNotFoundError, match="PASCAL VOC layout"):
        load_voc_instances(root, "nosuchsplit", ["cat"])


@pytest.mark.skipif(not os.path.isdir(os.path.join(bccd_root(), "Annotations")),
                    reason=f"BCCD not found in {bccd_root()}: set DYNAMIC_RCNN_DATASETS to the folder that holds BCCD/")
def test_bccd_splits_drop_its_two_zero_area_boxes(caplog):
    import dynamic_rcnn  # noqa: F401

    with caplog.at_level(logging.INFO, logger="detectron2.dynamic_rcnn"):
        sizes = {s: len(DatasetCatalog.get(f"bccd_{s}")) for s in ("train", "val", "trainval", "test")}
    assert sizes == {"train": 205, "val": 87, "trainval": 292, "test": 72}
    assert (
        "bccd_trainval: 292 images, 3941 boxes; mended or dropped: 2 zero-area boxes "
        "(BloodImage_00338.jpg, BloodImage_00343.jpg)"
    ) in caplog.text
    assert MetadataCatalog.get("bccd_test").thing_classes == BCCD_CLASSES


def test_coco_json_maps_ids_and_drops_broken(tmp_path, caplog):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((40, 50, 3), np.uint8))
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 50},
                   {"id": 2, "file_name": "gone.png", "height": 40, "width": 50}],
        "categories": [{"id": 9, "name": "b"}, {"id": 5, "name": "a"}],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [1, 2, 10, 10], "category_id": 9, "iscrowd": 0, "area": 100},
            {"id": 2, "image_id": 1, "bbox": [3, 3, 10, 10], "category_id": 5, "iscrowd": 0, "area": 100},
            {"id": 3, "image_id": 1, "bbox": [3, 3, 10, 10], "category_id": 77, "iscrowd": 0, "area": 100},
            {"id": 4, "image_id": 1, "bbox": [45, 30, 20, 20], "category_id": 5, "iscrowd": 0, "area": 400},
            {"id": 5, "image_id": 2, "bbox": [3, 3, 10, 10], "category_id": 5, "iscrowd": 0, "area": 100},
        ],
    }
    json_file = tmp_path / "train.json"
    json_file.write_text(json.dumps(data))
    with caplog.at_level(logging.INFO, logger="detectron2.dynamic_rcnn"):
        dicts = load_coco_instances(str(json_file), str(images), "mycoco")
    assert len(dicts) == 1
    annos = dicts[0]["annotations"]
    # Categories sorted by id: 5 -> 0 ("a"), 9 -> 1 ("b").
    assert [(a["category_id"], a["bbox"]) for a in annos] == [
        (1, [1, 2, 11, 12]), (0, [3, 3, 13, 13]), (0, [45, 30, 50, 40])]
    assert (
        "1 boxes clipped to the image (a.png), 1 boxes of the unknown category id 77 (a.png), "
        "1 missing image files (gone.png)"
    ) in caplog.text


def _summary(caplog, name):
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{name}: ")]
    assert len(lines) == 1, lines
    return lines[0]


def test_summary_names_up_to_three_files_per_kind(tmp_path, caplog):
    dicts = [_record(tmp_path, [], exists=False, name=f"m{i}.jpg") for i in range(5)]
    dicts.append(_record(tmp_path, [_box(5, 5, 5, 9), _box(7, 7, 7, 9)], name="z.jpg"))
    with caplog.at_level(logging.INFO, logger="detectron2.dynamic_rcnn"):
        out = sanitize_dataset_dicts(dicts, "few", num_classes=1)
    assert [os.path.basename(r["file_name"]) for r in out] == ["z.jpg"]
    # Counts are of things (5 files, 2 boxes); examples are distinct files.
    assert _summary(caplog, "few") == (
        "few: 1 images, 0 boxes; mended or dropped: 5 missing image files (m0.jpg, m1.jpg, m2.jpg, ...), "
        "2 zero-area boxes (z.jpg)"
    )


def test_voc_non_numeric_fields_drop_the_box_and_read_the_size_from_the_image(tmp_path, caplog):
    root = str(tmp_path / "voc")
    make_voc(root, [("good", [("cat", (1, 1, 10, 10))], True), ("bad", [("cat", (1, 1, 10, 10))], True),
                    ("nosize", [("cat", (1, 1, 10, 10))], True)])
    ann = os.path.join(root, "Annotations")
    with open(os.path.join(ann, "bad.xml")) as f:
        xml = f.read()
    xml = xml.replace("<width>64</width>", "<width>abc</width>")
    xml = xml.replace("</annotation>", VOC_OBJ.format("abc", 2, 20, 20, cls="cat") + "</annotation>")
    with open(os.path.join(ann, "bad.xml"), "w") as f:
        f.write(xml)
    with open(os.path.join(ann, "nosize.xml")) as f:
        xml = f.read()
    with open(os.path.join(ann, "nosize.xml"), "w") as f:
        f.write(xml.replace("<size><width>64</width><height>48</height></size>", ""))
    with caplog.at_level(logging.INFO, logger="detectron2.dynamic_rcnn"):
        dicts = load_voc_instances(root, "train", ["cat"], name="numbers")
    assert [(d["image_id"], d["height"], d["width"], len(d["annotations"])) for d in dicts] == [
        ("good", 48, 64, 1), ("bad", 48, 64, 1), ("nosize", 48, 64, 1)]
    assert _summary(caplog, "numbers") == (
        "numbers: 3 images, 3 boxes; mended or dropped: 1 boxes without valid coordinates (bad.jpg), "
        "2 image sizes read from the image file (bad.jpg, nosize.jpg)"
    )


def test_unreadable_image_files_are_dropped_at_load(tmp_path, caplog):
    root = str(tmp_path / "voc")
    make_voc(root, [("ok", [("cat", (1, 1, 10, 10))], True), ("fake", [("cat", (1, 1, 10, 10))], False)])
    # Passes an existence check; PIL (detectron2's reader) cannot identify it.
    with open(os.path.join(root, "JPEGImages", "fake.jpg"), "wb") as f:
        f.write(b"<html>not an image</html>")
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "ok.png"), np.zeros((40, 50, 3), np.uint8))
    (images / "fake.png").write_text("not an image either")
    json_file = tmp_path / "c.json"
    json_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "ok.png", "height": 40, "width": 50},
                   {"id": 2, "file_name": "fake.png", "height": 40, "width": 50}],
        "categories": [{"id": 1, "name": "cat"}],
        "annotations": [{"id": i, "image_id": i, "bbox": [1, 1, 5, 5], "category_id": 1} for i in (1, 2)],
    }))
    with caplog.at_level(logging.INFO, logger="detectron2.dynamic_rcnn"):
        voc = load_voc_instances(root, "train", ["cat"], name="fakevoc")
        coco = load_coco_instances(str(json_file), str(images), "fakecoco")
    assert [d["image_id"] for d in voc] == ["ok"] and [d["image_id"] for d in coco] == [1]
    dropped = "1 images, 1 boxes; mended or dropped: 1 unreadable image files"
    assert _summary(caplog, "fakevoc") == f"fakevoc: {dropped} (fake.jpg)"
    assert _summary(caplog, "fakecoco") == f"fakecoco: {dropped} (fake.png)"


def test_coco_broken_entries_are_dropped_and_counted(tmp_path, caplog):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(images / name), np.zeros((40, 50, 3), np.uint8))

    def anno(i, image_id=1, **kw):
        return dict({"id": i, "image_id": image_id, "bbox": [1, 2, 10, 10], "category_id": 1, "iscrowd": 0}, **kw)

    no_bbox = anno(2)
    del no_bbox["bbox"]
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": 40, "width": 50},
                   {"id": 2, "file_name": "b.png"},  # no size: read from b.png
                   {"file_name": "c.png"}],  # no id
        "categories": [{"id": 1, "name": "cell"}],
        "annotations": [
            anno(1),
            no_bbox,
            anno(3, bbox=None),
            anno(4, bbox=[1, 2, 3]),
            anno(5, bbox="1,2,3,4"),
            anno(6, bbox=[1, "2", 3, 4]),
            anno(7, image_id=99),
            anno(8, segmentation=[[1, 2, 3, 4]]),  # fewer than 3 points: detectron2 drops it
            anno(9, image_id=2, bbox=[5, 5, 10, 10]),
        ],
    }
    json_file = tmp_path / "broken.json"
    json_file.write_text(json.dumps(data))
    with caplog.at_level(logging.INFO, logger="detectron2.dynamic_rcnn"):
        dicts = load_coco_instances(str(json_file), str(images), "brokencoco")
    assert [(d["image_id"], d["height"], d["width"]) for d in dicts] == [(1, 40, 50), (2, 40, 50)]
    assert [a["bbox"] for d in dicts for a in d["annotations"]] == [[1, 2, 11, 12], [5, 5, 15, 15]]
    assert _summary(caplog, "brokencoco") == (
        "brokencoco: 2 images, 2 boxes; mended or dropped: 1 annotations of no listed image (annotations[6]), "
        "1 annotations without a valid segmentation (a.png), 5 boxes without valid coordinates (a.png), "
        "1 image entries without id or file_name (images[2]), 1 image sizes read from the image file (b.png)"
    )


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json at all", r"not a json file \(Expecting value: line 1 column 1"),
        ('{"images": [], "annotations": [], "categories": []}', r'"categories" is \[\]: list the classes'),
        ('{"images": [], "annotations": []}', r'"categories" is null'),
        ('[1, 2]', r"the json holds a list, not an object"),
        ('{"images": [], "categories": [{"id": 1}]}', r'categories\[0\] is \{"id": 1\}'),
    ],
)
def test_broken_coco_files_are_refused_at_registration_with_their_path(tmp_path, content, message):
    from types import SimpleNamespace

    from detectron2.config import get_cfg

    from dynamic_rcnn.data import register_coco, register_from_args

    json_file = tmp_path / "bad.json"
    json_file.write_text(content)
    path = re.escape(str(json_file))
    with pytest.raises(ValueError, match=rf"^{path}: {message}"):
        register_coco("refused_coco", str(json_file), str(tmp_path))
    assert "refused_coco" not in DatasetCatalog.list()
    args = SimpleNamespace(train_json=str(json_file), train_images=str(tmp_path), test_json=None, test_images=None)
    with pytest.raises(ValueError, match=rf"^--train-json {path}: {message}"):
        register_from_args(args, get_cfg())


def test_bccd_is_read_from_the_project_variable_else_where_detectron2_keeps_datasets(monkeypatch):
    monkeypatch.delenv("DYNAMIC_RCNN_DATASETS", raising=False)
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    assert bccd_root() == os.path.join("datasets", "BCCD")  # detectron2's default: ./datasets
    monkeypatch.setenv("DETECTRON2_DATASETS", "/d2")
    assert bccd_root() == "/d2/BCCD"
    monkeypatch.setenv("DYNAMIC_RCNN_DATASETS", "/mine")
    assert bccd_root() == "/mine/BCCD"


def test_check_datasets_names_unregistered_datasets_and_missing_files(tmp_path, monkeypatch):
    from dynamic_rcnn.data import check_datasets, register_coco

    check_datasets(("shapes_tiny_train",), "DATASETS.TRAIN")
    with pytest.raises(KeyError, match="DATASETS.TRAIN names the dataset 'nope', which is not registered"):
        check_datasets(("nope",), "DATASETS.TRAIN")
    # detectron2's built-in COCO points under $DETECTRON2_DATASETS, loaded only when training starts.
    with pytest.raises(FileNotFoundError, match="'coco_2017_train' needs .*instances_train2017.json, which does not exist"):
        check_datasets(("coco_2017_train",), "DATASETS.TRAIN")
    # BCCD is registered wherever it is looked for; a missing folder is said before training.
    from dynamic_rcnn.data import register_voc

    register_voc("bccd_check_datasets_tmp", str(tmp_path / "no" / "BCCD"), "train", BCCD_CLASSES)
    with pytest.raises(FileNotFoundError, match=r"'bccd_check_datasets_tmp' needs .*no/BCCD, which does not exist.*"
                                                r"DYNAMIC_RCNN_DATASETS"):
        check_datasets(("bccd_check_datasets_tmp",), "DATASETS.TRAIN")
    images = tmp_path / "images"
    images.mkdir()
    coco = tmp_path / "a.json"
    coco.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    register_coco("check_datasets_tmp", str(coco), str(images))
    check_datasets(("check_datasets_tmp",), "DATASETS.TEST")
    images.rmdir()
    with pytest.raises(FileNotFoundError, match="DATASETS.TEST: the dataset 'check_datasets_tmp' needs .*images"):
        check_datasets(("check_datasets_tmp",), "DATASETS.TEST")


def test_an_image_id_given_to_two_images_is_refused_naming_it_and_both_files(tmp_path):
    from dynamic_rcnn.data import register_coco

    json_file = tmp_path / "twice.json"
    json_file.write_text(json.dumps({
        "images": [{"id": 7, "file_name": "a.png"}, {"id": 8, "file_name": "b.png"}, {"id": 7, "file_name": "c.png"}],
        "categories": [{"id": 1, "name": "cell"}], "annotations": []}))
    with pytest.raises(ValueError) as e:
        register_coco("twice_coco", str(json_file), str(tmp_path))
    assert str(e.value) == (
        f"{json_file}: the image id 7 is given to two images, 'a.png' and 'c.png': give each image its own id; "
        'a COCO instances file is {"images": [...], "annotations": [...], "categories": [{"id": 1, "name": '
        '"cell"}, ...]}')
    assert "twice_coco" not in DatasetCatalog.list()


def _write_voc(root, entries):
    """``entries``: (split id, XML <filename> or None for none, image file written or None)."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    for image_id, filename, image in entries:
        tag = f"<filename>{filename}</filename>" if filename is not None else ""
        with open(os.path.join(root, "Annotations", f"{image_id}.xml"), "w") as f:
            f.write(f"<annotation>{tag}<size><width>64</width><height>48</height></size>"
                    + VOC_OBJ.format(1, 1, 10, 10, cls="cat") + "</annotation>")
        if image:
            Image.new("RGB", (64, 48)).save(os.path.join(root, "JPEGImages", image),
                                            format={"png": "PNG", "bmp": "BMP"}.get(image[-3:].lower(), "JPEG"))
    with open(os.path.join(root, "ImageSets", "Main", "train.txt"), "w") as f:
        f.write("\n".join(e[0] for e in entries) + "\n")


def test_voc_image_is_the_split_ids_whatever_its_xml_filename_says(tmp_path, caplog):
    root = str(tmp_path / "voc")
    _write_voc(root, [
        ("v001", "V001.PNG", "v001.jpg"),          # another case and extension only: not a problem
        ("v002", "v002.png", "v002.PNG"),          # found by its id, extension of any case
        ("IMG_0004", "IMG_0004.JPG", "IMG_0004.JPG"),
        ("v003", "v005.jpg", "v003.jpg"),          # names another image: v003.jpg is used, and said
        ("v005", "v005.jpg", "v005.jpg"),          # so v005.jpg is not read twice
        ("v006", None, "v006.bmp"),                # no <filename>
    ])
    with caplog.at_level(logging.INFO, logger="detectron2.dynamic_rcnn"):
        dicts = load_voc_instances(root, "train", ["cat"], name="voc_names")
    assert [os.path.basename(d["file_name"]) for d in dicts] == [
        "v001.jpg", "v002.PNG", "IMG_0004.JPG", "v003.jpg", "v005.jpg", "v006.bmp"]
    assert _summary(caplog, "voc_names") == (
        "voc_names: 6 images, 6 boxes; mended or dropped: 1 XML <filename> of another image than the split "
        "id's, the id's image used (v003.xml names v005.jpg)")


def test_voc_image_missing_under_its_id_is_named_by_its_id(tmp_path, caplog):
    root = str(tmp_path / "voc")
    _write_voc(root, [("v007", "v007.jpg", "v007.gif.txt"), ("v008", "v008.jpg", "v008.jpg")])
    with caplog.at_level(logging.INFO, logger="detectron2.dynamic_rcnn"):
        dicts = load_voc_instances(root, "train", ["cat"], name="voc_missing")
    assert [d["image_id"] for d in dicts] == ["v008"]
    assert _summary(caplog, "voc_missing") == (
        "voc_missing: 1 images, 1 boxes; mended or dropped: 1 missing image files (v007.jpg)")


def test_16_bit_and_float_images_are_dropped_with_what_to_do(tmp_path, caplog):
    # detectron2's read_image converts them to 8-bit RGB by clipping: a 16-bit image comes out white.
    paths = {}
    for name, array in (("deep.png", np.full((48, 64), 40000, np.uint16)), ("float.tif", np.full((48, 64), 0.5, np.float32)),
                        ("int32.tif", np.full((48, 64), 70000, np.int32)), ("fine.png", np.zeros((48, 64, 3), np.uint8))):
        paths[name] = str(tmp_path / name)
        Image.fromarray(array).save(paths[name])
    dicts = [{"file_name": p, "image_id": n, "height": 48, "width": 64, "annotations": [_box(1, 1, 9, 9)]}
             for n, p in paths.items()]
    with caplog.at_level(logging.INFO, logger="detectron2.dynamic_rcnn"):
        out = sanitize_dataset_dicts(dicts, "deep", num_classes=1)
    assert [r["image_id"] for r in out] == ["fine.png"]
    assert _summary(caplog, "deep") == (
        "deep: 1 images, 1 boxes; mended or dropped: 3 images of 16-bit, 32-bit or float pixels, which "
        "detectron2 reads clipped to 8 bits: convert them to 8-bit (deep.png in mode I;16, float.tif in mode F, "
        "int32.tif in mode I)")


def test_voc_unknown_classes_are_named(tmp_path, caplog):
    root = str(tmp_path / "voc")
    make_voc(root, [("v000", [("Rbc", (1, 1, 10, 10)), ("Rbc", (2, 2, 10, 10)), ("RBC", (3, 3, 10, 10))], True),
                    ("v001", [("WBC ", (1, 1, 10, 10)), ("red cell", (1, 1, 10, 10))], True)])
    with open(os.path.join(root, "Annotations", "v001.xml")) as f:
        xml = f.read()
    with open(os.path.join(root, "Annotations", "v001.xml"), "w") as f:
        f.write(xml.replace("</annotation>", "<object><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax>"
                                             "<ymax>9</ymax></bndbox></object></annotation>"))
    with caplog.at_level(logging.INFO, logger="detectron2.dynamic_rcnn"):
        dicts = load_voc_instances(root, "train", ["RBC", "WBC"], name="voc_classes")
    assert [[a["category_id"] for a in d["annotations"]] for d in dicts] == [[0], [1]]  # "WBC " as written: WBC
    assert _summary(caplog, "voc_classes") == (
        "voc_classes: 2 images, 2 boxes; mended or dropped: 2 boxes of the unknown class 'Rbc' (v000.jpg), "
        "1 boxes of the unknown class 'red cell' (v001.jpg), 1 boxes without a class <name> (v001.jpg)")


def test_image_sizes_that_disagree_with_the_file_are_the_files(tmp_path, caplog):
    # Swapped in the json; and a photo turned by EXIF (width 64, height 48 stored, shown 48 x 64).
    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((100, 200, 3), np.uint8))
    exif = Image.Exif()
    exif[274] = 6  # a quarter turn, as phones write
    Image.new("RGB", (64, 48)).save(str(tmp_path / "turned.jpg"), exif=exif)
    dicts = [
        {"file_name": str(tmp_path / "a.jpg"), "image_id": 1, "height": 200, "width": 100,
         "annotations": [_box(150, 50, 190, 90)]},
        {"file_name": str(tmp_path / "turned.jpg"), "image_id": 2, "height": 48, "width": 64,
         "annotations": [_box(1, 1, 40, 60)]},
    ]
    with caplog.at_level(logging.INFO, logger="detectron2.dynamic_rcnn"):
        out = sanitize_dataset_dicts(dicts, "sizes", num_classes=1)
    assert [(r["height"], r["width"]) for r in out] == [(100, 200), (64, 48)]
    # Boxes as given, in the frame of the image as detectron2 reads it.
    assert [a["bbox"] for r in out for a in r["annotations"]] == [[150, 50, 190, 90], [1, 1, 40, 60]]
    assert _summary(caplog, "sizes") == (
        "sizes: 2 images, 2 boxes; mended or dropped: 2 image sizes (width x height) that disagreed with the "
        "file, the file's used (a.jpg: 100x200 given, 200x100 in the file, turned.jpg: 64x48 given, 48x64 in "
        "the file)")


def _coco_json(path, categories):
    path.write_text(json.dumps({"images": [], "annotations": [],
                                "categories": [{"id": i, "name": n} for i, n in categories.items()]}))
    return str(path)


def _user_args(tmp_path, train=None, test=None, opts=()):
    from types import SimpleNamespace

    return SimpleNamespace(train_json=train, train_images=str(tmp_path) if train else None,
                           test_json=test, test_images=str(tmp_path) if test else None, opts=list(opts))


def test_num_classes_is_the_train_jsons_and_said(tmp_path):
    from detectron2.config import get_cfg

    from dynamic_rcnn.data import register_from_args

    train = _coco_json(tmp_path / "train.json", {1: "a", 5: "b"})
    cfg = get_cfg()  # NUM_CLASSES 80 in detectron2's defaults, as in a COCO config file
    assert register_from_args(_user_args(tmp_path, train, train), cfg) == (
        f"MODEL.ROI_HEADS.NUM_CLASSES = 2, the categories of {train}")
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 2 and cfg.DATASETS.TRAIN == ("user_train",)
    # The same number on the command line: nothing to say.
    assert register_from_args(_user_args(tmp_path, train, opts=["MODEL.ROI_HEADS.NUM_CLASSES", "2"]), cfg) is None


def test_num_classes_on_the_command_line_other_than_the_jsons_is_refused(tmp_path):
    from detectron2.config import get_cfg

    from dynamic_rcnn.data import register_from_args

    train = _coco_json(tmp_path / "train.json", {1: "a", 5: "b"})
    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5
    with pytest.raises(ValueError) as e:
        register_from_args(_user_args(tmp_path, train, opts=["MODEL.ROI_HEADS.NUM_CLASSES", "5"]), cfg)
    assert str(e.value) == (
        f"MODEL.ROI_HEADS.NUM_CLASSES is 5 on the command line, but --train-json {train} has 2 categories, "
        "which decide it: drop MODEL.ROI_HEADS.NUM_CLASSES from the command line (or list 5 categories in the json)")


def test_train_and_test_jsons_of_other_categories_are_refused_naming_the_differences(tmp_path):
    from detectron2.config import get_cfg

    from dynamic_rcnn.data import register_from_args

    train = _coco_json(tmp_path / "train.json", {1: "a", 2: "b", 4: "x"})
    test = _coco_json(tmp_path / "test.json", {1: "a", 2: "c", 3: "d"})
    with pytest.raises(ValueError) as e:
        register_from_args(_user_args(tmp_path, train, test), get_cfg())
    assert str(e.value) == (
        f"--test-json {test} and --train-json {train} list other categories (the model learns those of "
        f"--train-json): id 2 is 'b' in {train}, 'c' in {test}; id 3 ('d') is only in {test}; id 4 ('x') is only "
        f"in {train}. Give both files the same categories (ids and names)")


def test_category_names_given_twice_are_refused_naming_the_ids_or_positions(tmp_path):
    # One per-class AP would vanish (detectron2 reports them by name); in VOC one class would get every box.
    from dynamic_rcnn.data import register_coco, register_voc

    json_file = _coco_json(tmp_path / "names.json", {1: "red", 2: "red", 3: "blue"})
    with pytest.raises(ValueError) as e:
        register_coco("names_twice_coco", json_file, str(tmp_path))
    assert str(e.value).startswith(
        f"{json_file}: the category name 'red' is given to the ids 1 and 2: give each category its own name")
    assert "names_twice_coco" not in DatasetCatalog.list()
    root = str(tmp_path / "voc")
    make_voc(root, [("v0", [("red", (1, 1, 10, 10))], True)])
    with pytest.raises(ValueError) as e:
        register_voc("names_twice_voc", root, "train", ["red", "blue", "red"])
    assert str(e.value) == (
        "names_twice_voc: the class list ['red', 'blue', 'red'] has 'red' at positions 0 and 2: every box of 'red' "
        "would be given one of them, the other never learned nor scored; list each class once")
    assert "names_twice_voc" not in DatasetCatalog.list()
    with pytest.raises(ValueError, match="has 'red' at positions 0 and 2"):
        load_voc_instances(root, "train", ["red", "blue", "red"])


def test_one_image_file_under_two_image_ids_is_refused_naming_it_and_both_ids(tmp_path):
    from dynamic_rcnn.data import register_coco

    json_file = tmp_path / "file_twice.json"
    json_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "b.png"}, {"id": 3, "file_name": "./a.png"}],
        "categories": [{"id": 1, "name": "cell"}],
        "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5]} for i in (1, 2, 3)]}))
    with pytest.raises(ValueError) as e:
        register_coco("file_twice_coco", str(json_file), str(tmp_path))
    assert str(e.value).startswith(
        f"{json_file}: the image file './a.png' is listed under two image ids, 1 and 3, its boxes split between them: "
        "list each image once, with all its annotations under one id;")
    assert "file_twice_coco" not in DatasetCatalog.list()


def test_a_voc_id_listed_twice_in_a_split_is_loaded_once_and_said(tmp_path, caplog):
    root = str(tmp_path / "voc")
    make_voc(root, [("v0", [("cat", (1, 1, 10, 10))], True), ("v1", [("cat", (1, 1, 10, 10))], True)])
    with open(os.path.join(root, "ImageSets", "Main", "train.txt"), "a") as f:
        f.write("v0\n")
    with open(os.path.join(root, "ImageSets", "Main", "val.txt"), "w") as f:
        f.write("v1\n")
    with caplog.at_level(logging.INFO, logger="detectron2.dynamic_rcnn"):
        dicts = load_voc_instances(root, ("train", "val"), ["cat"], name="voc_twice")
    assert [d["image_id"] for d in dicts] == ["v0", "v1"]
    assert _summary(caplog, "voc_twice") == (
        "voc_twice: 2 images, 2 boxes; mended or dropped: 2 split ids listed more than once, loaded once "
        "(v0 in train.txt, v1 in val.txt)")


def test_voc_difficult_flag_is_kept_in_the_records(tmp_path):
    root = str(tmp_path / "voc")
    make_voc(root, [("v0", [("cat", (1, 1, 10, 10)), ("cat", (20, 20, 30, 30))], True)])
    xml_file = os.path.join(root, "Annotations", "v0.xml")
    with open(xml_file) as f:
        xml = f.read()
    with open(xml_file, "w") as f:  # the second object difficult, as VOC writes it
        f.write(xml.replace("cat</name><bndbox><xmin>20", "cat</name><difficult>1</difficult><bndbox><xmin>20"))
    annos = load_voc_instances(root, "train", ["cat"])[0]["annotations"]
    assert [(a["difficult"], a["iscrowd"]) for a in annos] == [(0, 0), (1, 0)]


def test_coco_ids_written_as_integral_floats_are_those_integers(tmp_path, caplog):
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((40, 50, 3), np.uint8))
    json_file = tmp_path / "floats.json"
    json_file.write_text(json.dumps({
        "images": [{"id": 1.0, "file_name": "a.png", "height": 40, "width": 50}],
        "categories": [{"id": 1.0, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1.0, "bbox": [1, 1, 5, 5]},
                        {"id": 2.0, "image_id": 1.0, "category_id": 2, "bbox": [1, 1, 5, 5]},
                        {"id": 3, "image_id": 1, "category_id": 1.5, "bbox": [1, 1, 5, 5]}]}))
    with caplog.at_level(logging.INFO, logger="detectron2.dynamic_rcnn"):
        dicts = load_coco_instances(str(json_file), str(images), "floats")
    assert [(d["image_id"], type(d["image_id"])) for d in dicts] == [(1, int)]
    assert [a["category_id"] for a in dicts[0]["annotations"]] == [0, 1]
    assert _summary(caplog, "floats") == (
        "floats: 1 images, 2 boxes; mended or dropped: 1 boxes of the category id 1.5, which is not an integer: "
        "use the categories' ids (a.png), 4 entries with ids written as integral floats (1.0), read as integers "
        "(categories[0], images[0], a.png)")
    json_file.write_text(json.dumps({"images": [], "categories": [{"id": 1.5, "name": "a"}]}))
    with pytest.raises(ValueError, match=r": categories\[0\] has the id 1.5, which is not an integer;"):
        load_coco_instances(str(json_file), str(images), "floats")


def test_images_above_pils_pixel_limit_are_dropped_saying_so(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses above twice that: 200 x 100 is 20000
    dicts = [_record(tmp_path, [_box(1, 1, 9, 9)], name="big.png")]
    with caplog.at_level(logging.INFO, logger="detectron2.dynamic_rcnn"):
        assert sanitize_dataset_dicts(dicts, "bomb", num_classes=1) == []
    assert _summary(caplog, "bomb") == (
        "bomb: 0 images, 0 boxes; mended or dropped: 1 images above PIL's limit of 2000 pixels (2 x "
        "PIL.Image.MAX_IMAGE_PIXELS), which it refuses to open: raise PIL.Image.MAX_IMAGE_PIXELS in your launcher "
        "(None: no limit) or shrink the images (big.png: 20000 pixels)")


def test_check_test_sets_says_in_one_line_when_no_test_image_is_left(tmp_path):
    from dynamic_rcnn.data import DatasetError, check_test_sets, register_coco

    json_file = tmp_path / "gone.json"
    json_file.write_text(json.dumps({
        "images": [{"id": i, "file_name": f"{i}.png", "height": 40, "width": 50} for i in (1, 2)],
        "categories": [{"id": 1, "name": "cell"}], "annotations": []}))
    if "test_sets_gone" not in DatasetCatalog.list():
        register_coco("test_sets_gone", str(json_file), str(tmp_path))
    check_test_sets(("shapes_tiny_train",), "DATASETS.TEST")
    with pytest.raises(DatasetError) as e:
        check_test_sets(("shapes_tiny_train", "test_sets_gone"), "DATASETS.TEST")
    assert str(e.value) == (
        "DATASETS.TEST: the test set 'test_sets_gone' has no image left to evaluate on. What the loading found: "
        "test_sets_gone: 0 images, 0 boxes; mended or dropped: 2 missing image files (1.png, 2.png). Check that "
        f"its images are in {tmp_path}, under the names its annotations give, and that they are images")


def test_a_voc_folder_from_the_command_line_is_registered_with_the_classes_its_files_name(tmp_path):
    """train_net.py --train-voc FOLDER[:SPLIT] --test-voc FOLDER: both splits with the train split's classes."""
    from types import SimpleNamespace

    from detectron2.data import DatasetCatalog

    from dynamic_rcnn.data import register_from_args

    from conftest import tiny_cfg

    root = tmp_path / "voc"
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(root / d)
    for i, names in enumerate([("zebra", "ant"), ("ant",), ("moth",)]):
        cv2.imwrite(str(root / "JPEGImages" / f"v{i}.jpg"), np.zeros((40, 40, 3), np.uint8))
        objects = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>5</xmin><ymin>5</ymin>"
                          f"<xmax>30</xmax><ymax>30</ymax></bndbox></object>" for n in names)
        (root / "Annotations" / f"v{i}.xml").write_text(f"<annotation><size><width>40</width><height>40</height>"
                                                        f"</size>{objects}</annotation>")
    (root / "ImageSets" / "Main" / "trainval.txt").write_text("v0\nv1\n")
    (root / "ImageSets" / "Main" / "test.txt").write_text("v2\n")
    cfg = tiny_cfg()
    args = SimpleNamespace(train_voc=f"{root}:trainval", test_voc=str(root), opts=[])
    note = register_from_args(args, cfg)
    assert cfg.DATASETS.TRAIN == ("user_train",) and cfg.DATASETS.TEST == ("user_test",)
    assert MetadataCatalog.get("user_test").thing_classes == ["ant", "zebra"]  # the train split's, sorted
    assert note.startswith("MODEL.ROI_HEADS.NUM_CLASSES = 2") and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 2
    assert len(DatasetCatalog.get("user_train")) == 2 and len(DatasetCatalog.get("user_test")) == 1
    with pytest.raises(ValueError, match="has no split file .*val.txt"):
        register_from_args(SimpleNamespace(train_voc=f"{root}:val", opts=[]), tiny_cfg())
    with pytest.raises(ValueError, match="--train-voc and --train-json/--train-images are two ways"):
        register_from_args(SimpleNamespace(train_voc=str(root), train_json="a.json", opts=[]), tiny_cfg())
