"""
tools/prepare_datasets.py on tiny fake clones of the three source layouts (kangaroo, pear640, cells),
and dynamic_rcnn.data.prepared registering what it writes.
"""

import importlib.util
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from dynamic_rcnn.data import prepared

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tools", "prepare_datasets.py")
NAMES = [f"{name}_{split}" for name in prepared.PREPARED for split in prepared.PREPARED_SPLITS]


def _load_tool():
    spec = importlib.util.spec_from_file_location("prepare_datasets", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


def _noise(seed, height, width, channels=3):
    """A random image: no two of them look alike (the near-duplicate search must keep them apart)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 4, width // 4, channels), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST).reshape(
        height, width, channels
    )


def _voc(path, image_name, width, height, objects):
    body = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects
    )
    with open(path, "w") as f:
        f.write(
            f"<annotation><filename>{image_name}</filename>"
            f"<size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{body}</annotation>"
        )


def make_kangaroo(root):
    """6 photos (one a byte copy, one cut short) + an XML without a photo: 5 kept, 6 boxes kept."""
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "annots"))
    boxes = {
        "00001": [("kangaroo", (10, 10, 40, 50)), ("kangaroo", (120, 30, 175, 130))],  # the second clipped
        "00002": [("kangaroo", (5, 5, 30, 30)), ("dog", (40, 10, 60, 40))],  # the dog dropped
        "00003": [("kangaroo", (20, 20, 20, 40)), ("kangaroo", (30, 10, 70, 50))],  # zero width: dropped
        "00004": [("kangaroo", (10, 10, 50, 50))],  # truncated file: re-encoded as PNG
        "00005": [("kangaroo", (1, 1, 160, 120))],  # the whole image
        "00006": [("kangaroo", (11, 11, 41, 51))],  # a byte copy of 00001.jpg: dropped
        "00007": [("kangaroo", (1, 1, 10, 10))],  # no image
    }
    for i, (stem, objects) in enumerate(boxes.items()):
        path = os.path.join(root, "images", f"{stem}.jpg")
        if stem == "00006":
            with open(os.path.join(root, "images", "00001.jpg"), "rb") as f, open(path, "wb") as g:
                g.write(f.read())
        elif stem != "00007":
            cv2.imwrite(path, _noise(i, 120, 160))
        if stem == "00004":
            data = open(path, "rb").read()
            with open(path, "wb") as f:
                f.write(data[:-200])
        _voc(os.path.join(root, "annots", f"{stem}.xml"), f"{stem}.jpg", 160, 120, objects)
    return root


def make_pear640(root):
    """3 photos of 2 crops each with 2 pears kept; a zero-size, a sliver and an unknown category dropped."""
    folder = os.path.join(root, "data", "images")
    os.makedirs(folder)
    images, annotations = [], []
    for i, (photo, crop) in enumerate(
        (p, c) for p in ("DSC_0001_a", "DSC_0002_b", "DSC_0003_c") for c in (0, 1)
    ):
        name = f"{photo}_{crop}.jpg"
        cv2.imwrite(os.path.join(folder, name), _noise(10 + i, 64, 64))
        images.append({"id": i + 1, "file_name": name, "height": 64, "width": 64})
        for bbox in (
            [10.5, 10.5, 20.25, 15.0],
            [40.0, 44.0, 24.0000001, 20.0],
        ):  # the second ends at 64 + 1e-7
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": 0,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
    for bbox, category in (
        ([5.0, 5.0, 0.0, 10.0], 0),
        ([30.0, 0.0, 1.5, 12.0], 0),
        ([20.0, 20.0, 10.0, 10.0], 7),
    ):
        annotations.append(
            {
                "id": len(annotations) + 1,
                "image_id": 1,
                "category_id": category,
                "bbox": bbox,
                "area": 0,
                "iscrowd": 0,
            }
        )
    with open(os.path.join(root, "data", "data.json"), "w") as f:
        json.dump(
            {
                "images": images,
                "annotations": annotations,
                "categories": [{"id": 0, "name": "pear", "supercategory": "fruit"}],
            },
            f,
        )
    return root


def make_cells(root):
    """6 images of several PNG modes (one 16-bit, one a flipped copy) + one without XML: 5 distinct."""
    folder = os.path.join(root, "Original Dataset")
    os.makedirs(folder)
    rgb = _noise(20, 58, 60)
    images = {
        "ncell (1).png": Image.fromarray(rgb),
        "ncell (2).png": Image.fromarray(_noise(21, 58, 60)).convert("P"),
        "b (3).png": Image.fromarray(_noise(22, 58, 60, 1)[..., 0], "L"),
        "image_4.png": Image.fromarray(_noise(23, 60, 60, 1)[..., 0].astype(np.uint16) * 256 + 77),  # 16-bit
        "image5.png": Image.fromarray(_noise(24, 60, 60, 1)[..., 0], "L"),
        "cell (6).png": Image.fromarray(np.ascontiguousarray(rgb[::-1])),  # ncell (1) upside down
        "c (7).png": Image.fromarray(_noise(26, 58, 60)),  # no XML
    }
    for i, (name, image) in enumerate(images.items()):
        image.save(os.path.join(folder, name))
        if name != "c (7).png":
            _voc(
                os.path.join(folder, name[:-4] + ".xml"),
                name,
                image.width,
                image.height,
                [("Living Cell", (5 + i, 5, 20 + i, 21)), ("Dead Cell", (30, 30, 45, 44))],
            )
    return root


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    base = tmp_path_factory.mktemp("sources")
    return {
        "kangaroo": make_kangaroo(str(base / "kangaroo")),
        "pear640": make_pear640(str(base / "pear640")),
        "cells": make_cells(str(base / "cells")),
    }


def _run(out, sources):
    return tool.main(["--out", str(out)] + [f"{k}={v}" for k, v in sources.items()])


@pytest.fixture(scope="module")
def out(sources, tmp_path_factory):
    folder = tmp_path_factory.mktemp("prepared")
    assert _run(folder, sources) == 0
    return folder


def _json(path):
    with open(path) as f:
        return json.load(f)


def _files(folder):
    found = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                found[os.path.relpath(path, folder)] = f.read()
    return found


def test_layout_and_counts(sources, out):
    for name in ("kangaroo", "pear640", "cells"):
        assert sorted(os.listdir(out / name)) == ["images", "prepared.json", "test.json", "train.json"]
        info = _json(out / name / "prepared.json")
        for split in ("train", "test"):
            data = _json(out / name / f"{split}.json")
            assert [c["name"] for c in data["categories"]] == prepared.PREPARED[name]
            assert [c["id"] for c in data["categories"]] == list(range(1, len(prepared.PREPARED[name]) + 1))
            stats = info["splits"][split]
            assert stats["images"] == len(data["images"]) > 0
            assert stats["objects"] == len(data["annotations"])
            for img in data["images"]:
                assert os.path.isfile(out / name / "images" / img["file_name"])
                assert (img["width"], img["height"]) == Image.open(
                    out / name / "images" / img["file_name"]
                ).size
            for a in data["annotations"]:
                x, y, w, h = a["bbox"]
                img = data["images"][a["image_id"] - 1]
                assert a["iscrowd"] == 0 and a["area"] == pytest.approx(w * h, abs=0.01)
                assert 0 <= x and 0 <= y and x + w <= img["width"] + 1e-6 and y + h <= img["height"] + 1e-6
                assert w >= tool.MIN_BOX_SIDE and h >= tool.MIN_BOX_SIDE
        total = {k: sum(info["splits"][s][k] for s in ("train", "test")) for k in ("images", "objects")}
        assert (
            total
            == {
                "kangaroo": {"images": 5, "objects": 6},
                "pear640": {"images": 6, "objects": 12},
                "cells": {"images": 5, "objects": 10},
            }[name]
        )
        assert info["source"]["commit"] is None  # not a git clone
    notes = _json(out / "kangaroo" / "prepared.json")["mended_or_dropped"]
    assert {k: v["count"] for k, v in notes.items()} == {
        "annotation files without an image (ignored)": 1,
        "boxes clipped to the image": 1,
        "boxes of the unknown class 'dog' (dropped)": 1,
        f"boxes under {tool.MIN_BOX_SIDE:g} px wide or high, zero-size ones included (dropped)": 1,
        "images re-encoded as PNG (truncated)": 1,
        "pixel-identical copies of an earlier image (dropped)": 1,
    }
    assert sorted(os.listdir(out / "kangaroo" / "images")) == [
        "00001.jpg",
        "00002.jpg",
        "00003.jpg",
        "00004.png",
        "00005.jpg",
    ]
    # Copied byte for byte when nothing is wrong with the file.
    with open(os.path.join(sources["kangaroo"], "images", "00001.jpg"), "rb") as f:
        assert (out / "kangaroo" / "images" / "00001.jpg").read_bytes() == f.read()
    notes = _json(out / "pear640" / "prepared.json")["mended_or_dropped"]
    assert {k: v["count"] for k, v in notes.items()} == {
        "boxes of the unknown class 'category id 7' (dropped)": 1,
        f"boxes under {tool.MIN_BOX_SIDE:g} px wide or high, zero-size ones included (dropped)": 2,
    }  # the box ending 1e-7 past the border is not counted as clipped


def test_cells_names_modes_and_near_duplicates(out):
    info = _json(out / "cells" / "prepared.json")
    assert info["near_duplicate_groups"] == [
        ["Original Dataset/cell (6).png", "Original Dataset/ncell (1).png"]
    ]
    notes = info["mended_or_dropped"]
    assert notes["images without an annotation file (dropped)"]["examples"] == ["Original Dataset/c (7).png"]
    assert notes["near-duplicates of a chosen image (left out)"]["count"] == 1
    assert notes["images re-encoded as PNG (16-bit)"]["examples"] == ["Original Dataset/image_4.png"]
    names = sorted(os.listdir(out / "cells" / "images"))
    assert len(names) == 5 and not any(" " in n or "(" in n for n in names)
    assert (
        "image_4.png" in names and "b_3.png" in names and ("ncell_1.png" in names) != ("cell_6.png" in names)
    )
    for n in names:  # every cells image an 8-bit RGB PNG
        assert Image.open(out / "cells" / "images" / n).mode == "RGB"
    deep = np.asarray(Image.open(out / "cells" / "images" / "image_4.png"))[..., 0]
    assert deep.max() > 200 and deep.min() < 60  # scaled down by 256, not clipped to white
    s = info["splits"]
    assert (s["train"]["images"], s["test"]["images"]) == (2, 3)  # fewer than 600 + 800: shared 600:800


def test_pear_photos_never_straddle_the_split(out):
    photos = {}
    for split in ("train", "test"):
        photos[split] = {
            img["file_name"].rsplit("_", 2)[0] for img in _json(out / "pear640" / f"{split}.json")["images"]
        }
    assert photos["train"] and photos["test"] and not photos["train"] & photos["test"]
    s = _json(out / "pear640" / "prepared.json")["splits"]
    assert (s["train"]["photos"], s["test"]["photos"]) == (2, 1)
    assert (s["train"]["images"], s["test"]["images"]) == (4, 2)


def test_deterministic_and_replaced_whole(sources, out, tmp_path):
    again = tmp_path / "again"
    assert _run(again, sources) == 0
    assert _files(again) == _files(out)  # byte-identical, prepared.json included
    stray = again / "kangaroo" / "images" / "stray.jpg"
    stray.write_bytes(b"old")
    assert _run(again, {"kangaroo": sources["kangaroo"]}) == 0
    assert not stray.exists()
    assert sorted(os.listdir(again)) == ["cells", "kangaroo", "pear640"]  # no temporary folder left
    assert _files(again) == _files(out)


def _one_line_error(capsys, argv):
    assert tool.main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


def test_bad_input_is_one_line(sources, tmp_path, capsys):
    out = str(tmp_path / "out")
    missing = str(tmp_path / "nowhere")
    assert missing in _one_line_error(capsys, ["--out", out, f"kangaroo={missing}"])
    line = _one_line_error(capsys, ["--out", out, f"kangaroo={sources['pear640']}"])  # another repository
    assert (
        "not a clone of experiencor/kangaroo" in line and os.path.join(sources["pear640"], "images") in line
    )
    line = _one_line_error(capsys, ["--out", out, f"cells={sources['kangaroo']}"])
    assert "Original Dataset" in line and "maxKudi/Cell-Dataset" in line
    assert "unknown data set 'coco'" in _one_line_error(capsys, ["--out", out, "coco=/tmp"])
    assert "NAME=FOLDER" in _one_line_error(capsys, ["--out", out, sources["kangaroo"]])
    empty = tmp_path / "empty_pear"
    (empty / "data" / "images").mkdir(parents=True)
    (empty / "data" / "data.json").write_text("{not json")
    assert "is not a COCO instances file" in _one_line_error(capsys, ["--out", out, f"pear640={empty}"])
    assert not os.path.exists(os.path.join(out, "pear640"))


def test_command_line(sources, tmp_path):
    """The script as a command: a summary line a data set; bad input exits 2 with one line."""
    run = subprocess.run(
        [sys.executable, SCRIPT, "--out", str(tmp_path), f"kangaroo={sources['kangaroo']}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("kangaroo: 5 images (train ") and "1 pixel-identical" in run.stdout
    run = subprocess.run(
        [sys.executable, SCRIPT, "--out", str(tmp_path), f"pear640={tmp_path / 'no'}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        run.returncode == 2 and len(run.stderr.strip().splitlines()) == 1 and "no such folder" in run.stderr
    )


@pytest.fixture
def clean_catalog():
    def clear():
        for name in NAMES:
            if name in DatasetCatalog.list():
                DatasetCatalog.remove(name)
                MetadataCatalog.remove(name)

    saved = {
        n: (DatasetCatalog[n], MetadataCatalog.get(n).as_dict()) for n in NAMES if n in DatasetCatalog.list()
    }
    clear()
    yield
    clear()
    for name, (loader, meta) in saved.items():
        DatasetCatalog.register(name, loader)
        MetadataCatalog.get(name).set(**{k: v for k, v in meta.items() if k != "name"})


def test_register_prepared(out, clean_catalog, tmp_path):
    assert sorted(prepared.register_prepared(str(out))) == sorted(NAMES)
    assert prepared.register_prepared(str(out)) == []  # already registered: skipped
    for name in NAMES:
        dataset, split = name.rsplit("_", 1)
        data = _json(out / dataset / f"{split}.json")
        records = DatasetCatalog.get(name)
        assert len(records) == len(data["images"])
        assert sum(len(r["annotations"]) for r in records) == len(data["annotations"])
        assert all(os.path.isfile(r["file_name"]) for r in records)
        assert MetadataCatalog.get(name).thing_classes == prepared.PREPARED[dataset]


def test_register_only_what_exists(out, clean_catalog, tmp_path, caplog):
    root = tmp_path / "root"
    (root / "kangaroo").mkdir(parents=True)
    (root / "kangaroo" / "train.json").write_bytes((out / "kangaroo" / "train.json").read_bytes())
    (root / "cells").mkdir()
    (root / "cells" / "test.json").write_text("[]")  # broken: a warning, not registered
    assert prepared.register_prepared(str(root)) == ["kangaroo_train"]
    assert "cells_test not registered" in caplog.text and str(root / "cells" / "test.json") in caplog.text


def test_prepared_root(monkeypatch):
    monkeypatch.setenv("DYNAMIC_RCNN_DATASETS", "/a")
    monkeypatch.setenv("DETECTRON2_DATASETS", "/b")
    assert prepared.prepared_root() == "/a"
    monkeypatch.delenv("DYNAMIC_RCNN_DATASETS")
    assert prepared.prepared_root() == "/b"
    monkeypatch.delenv("DETECTRON2_DATASETS")
    assert prepared.prepared_root() == "datasets"


def test_classes_agree():
    assert {n: s["classes"] for n, s in tool.SPECS.items()} == prepared.PREPARED


def test_a_prepared_data_set_that_is_missing_says_how_to_make_it(tmp_path, monkeypatch):
    from dynamic_rcnn.data import check_datasets

    monkeypatch.setenv("DYNAMIC_RCNN_DATASETS", str(tmp_path))
    with pytest.raises(KeyError, match=r"DATASETS.TRAIN names the dataset 'pear640_val', which is made by the "
                                        r"project's preparation command .*python tools/prepare_datasets.py --out "):
        check_datasets(["pear640_val"], "DATASETS.TRAIN")  # never registered: the command makes train and test
