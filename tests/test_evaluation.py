import json
import os

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode, Boxes, Instances

from dynamic_rcnn.evaluation import AP_COLUMNS, HighIoUCOCOEvaluator, format_ap_table

GT = [[0.0, 0.0, 40.0, 40.0], [50.0, 50.0, 90.0, 90.0]]
NAME = "test_evaluation_two_images"


@pytest.fixture(scope="module")
def dataset():
    if NAME not in DatasetCatalog.list():
        records = [
            {"file_name": f"{i}.png", "image_id": i, "height": 100, "width": 100,
             "annotations": [{"bbox": b, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "iscrowd": 0} for b in GT]}
            for i in range(2)
        ]
        DatasetCatalog.register(NAME, lambda: records)
        MetadataCatalog.get(NAME).set(thing_classes=["thing"])
    return NAME


def evaluate(name, boxes, out_dir):
    evaluator = HighIoUCOCOEvaluator(name, output_dir=out_dir)
    evaluator.reset()
    for i in range(2):
        inst = Instances((100, 100))
        inst.pred_boxes = Boxes(torch.tensor(boxes))
        inst.scores = torch.ones(len(boxes))
        inst.pred_classes = torch.zeros(len(boxes), dtype=torch.int64)
        evaluator.process([{"image_id": i}], [{"instances": inst}])
    return evaluator.evaluate()


def test_perfect_boxes_score_100_in_every_column(dataset, tmp_path):
    res = evaluate(dataset, GT, str(tmp_path))["bbox"]
    for column in AP_COLUMNS[:6]:
        assert res[column] == pytest.approx(100.0), column


def test_high_iou_columns_split_at_the_boxes_iou(dataset, tmp_path):
    # IoU 1152 / 1600 = 0.72 with each ground-truth box: found at 0.5-0.7, missed at 0.75 and above.
    res = evaluate(dataset, [[0.0, 0.0, 40.0, 28.8], [50.0, 50.0, 90.0, 78.8]], str(tmp_path))["bbox"]
    assert [res[c] for c in ("AP50", "AP60", "AP70", "AP80", "AP90")] == pytest.approx([100, 100, 100, 0, 0])
    assert res["AP"] == pytest.approx(50.0)  # 5 of COCO's 10 thresholds
    with open(os.path.join(str(tmp_path), "ap_table.json")) as f:
        saved = json.load(f)
    assert saved[dataset]["bbox"]["AP80"] == pytest.approx(0.0)
    with open(os.path.join(str(tmp_path), "ap_table.md")) as f:
        table = f.read()
    assert f"{dataset}/bbox" in table and "AP90" in table


def test_format_ap_table_finds_every_result():
    text = format_ap_table({"ds": {"bbox": {"AP": 12.34, "AP50": 50.0}, "segm": {"AP": 1.0}}, "other": 3})
    lines = text.splitlines()
    assert lines[0].split("|")[1].strip() == "result"
    assert [c.strip() for c in lines[0].split("|")[2:-1]] == AP_COLUMNS
    assert lines[2].split("|")[1].strip() == "ds/bbox" and "12.3" in lines[2]
    assert lines[3].split("|")[1].strip() == "ds/segm" and "nan" in lines[3]


def test_results_carry_the_jsons_own_category_ids_and_score_against_it_as_reported(tmp_path):
    import cv2
    import numpy as np
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from dynamic_rcnn.data import register_coco

    images = tmp_path / "images"
    images.mkdir()
    for file_name in ("a.png", "b.png"):
        cv2.imwrite(str(images / file_name), np.zeros((100, 100, 3), np.uint8))

    def anno(i, image_id, category_id, x, y, w, h):
        return {"id": i, "image_id": image_id, "category_id": category_id, "bbox": [x, y, w, h], "area": w * h,
                "iscrowd": 0}

    json_file = tmp_path / "mine.json"
    json_file.write_text(json.dumps({
        "images": [{"id": 10, "file_name": "a.png", "height": 100, "width": 100},
                   {"id": 20, "file_name": "b.png", "height": 100, "width": 100}],
        "categories": [{"id": 9, "name": "c"}, {"id": 1, "name": "a"}, {"id": 5, "name": "b"}],
        "annotations": [anno(1, 10, 1, 0, 0, 40, 40), anno(2, 10, 5, 50, 50, 40, 40), anno(3, 20, 9, 10, 10, 50, 30),
                        anno(4, 20, 1, 60, 0, 30, 30)],
    }))
    # The model's classes are the ids in order: 0 -> 1 ("a"), 1 -> 5 ("b"), 2 -> 9 ("c").
    predictions = {10: [([0, 0, 40, 40], 0.9, 0), ([50, 50, 90, 80], 0.8, 1), ([5, 5, 30, 30], 0.3, 2)],
                   20: [([10, 10, 60, 40], 0.7, 2), ([60, 0, 90, 30], 0.6, 1)]}  # the last one of another class
    name, results = "test_evaluation_ids_1_5_9", str(tmp_path / "eval" / "coco_instances_results.json")

    def evaluate_registered():
        # As a new process does: the dataset registered anew, its metadata only what registration set.
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco(name, str(json_file), str(images))
        evaluator = HighIoUCOCOEvaluator(name, output_dir=str(tmp_path / "eval"))
        evaluator.reset()
        for image_id, found in predictions.items():
            inst = Instances((100, 100))
            inst.pred_boxes = Boxes(torch.tensor([b for b, _, _ in found], dtype=torch.float32))
            inst.scores = torch.tensor([s for _, s, _ in found])
            inst.pred_classes = torch.tensor([c for _, _, c in found])
            evaluator.process([{"image_id": image_id}], [{"instances": inst}])
        reported = evaluator.evaluate()["bbox"]
        with open(results) as f:
            written = json.load(f)
        assert sorted((r["image_id"], r["category_id"], round(r["score"], 3)) for r in written) == [
            (10, 1, 0.9), (10, 5, 0.8), (10, 9, 0.3), (20, 5, 0.6), (20, 9, 0.7)]
        return reported

    reported = evaluate_registered()
    # Again, with the records' conversion for COCO's API already in the output folder: written anew (never
    # reused: the annotations may have changed), with the same ids and AP.
    assert os.path.isfile(tmp_path / "eval" / f"{name}_coco_format.json")
    assert evaluate_registered()["AP"] == reported["AP"]
    # The user's own file and tool give the AP the evaluator reported.
    truth = COCO(str(json_file))
    coco_eval = COCOeval(truth, truth.loadRes(results), "bbox")
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    assert 0 < reported["AP"] < 100
    assert reported["AP"] == pytest.approx(coco_eval.stats[0] * 100, abs=1e-6)
    assert reported["AP50"] == pytest.approx(coco_eval.stats[1] * 100, abs=1e-6)


def _register_coco_boxes(name, tmp_path, boxes, again=True):
    """``name``: a COCO json of one 100 x 100 image (id 1) with ``boxes`` (XYWH), registered anew (as a new
    process does) unless ``again`` is False; the json is rewritten either way."""
    from dynamic_rcnn.data import register_coco

    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    import cv2
    import numpy as np

    cv2.imwrite(str(images / "a.png"), np.zeros((100, 100, 3), np.uint8))
    json_file = tmp_path / "test.json"
    json_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": 100, "width": 100}],
        "categories": [{"id": 1, "name": "cell"}],
        "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
                        for i, b in enumerate(boxes)]}))
    if again:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        register_coco(name, str(json_file), str(images))


def _evaluate_one_image(name, boxes, out_dir, image_id=1):
    evaluator = HighIoUCOCOEvaluator(name, output_dir=out_dir)
    evaluator.reset()
    inst = Instances((100, 100))
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.scores = torch.linspace(1.0, 0.5, len(boxes))
    inst.pred_classes = torch.zeros(len(boxes), dtype=torch.int64)
    evaluator.process([{"image_id": image_id}], [{"instances": inst}])
    return evaluator.evaluate()["bbox"]["AP"]


def test_changed_annotations_are_scored_not_an_earlier_conversion_of_them(tmp_path):
    # train_net.py --eval-only with another --test-json into an OUTPUT_DIR that evaluated before: detectron2's
    # COCOEvaluator reuses OUTPUT_DIR/inference/<dataset>/<dataset>_coco_format.json, the earlier set's.
    name, out = "test_evaluation_changed_annotations", str(tmp_path / "inference")
    found = [[0.0, 0.0, 40.0, 40.0]]
    _register_coco_boxes(name, tmp_path, [[0, 0, 40, 40]])
    assert _evaluate_one_image(name, found, out) == pytest.approx(100.0)
    _register_coco_boxes(name, tmp_path, [[50, 50, 40, 40]])  # the same name and folder, other annotations
    assert _evaluate_one_image(name, found, out) == pytest.approx(0.0)
    # In one process, the dataset not registered anew: its records are read again, and scored.
    _register_coco_boxes(name, tmp_path, [[0, 0, 40, 40]], again=False)
    assert _evaluate_one_image(name, found, out) == pytest.approx(100.0)


def test_voc_difficult_objects_are_trained_on_and_ignored_in_evaluation(tmp_path):
    import cv2
    import numpy as np

    from dynamic_rcnn.data import register_voc

    root = tmp_path / "voc"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    cv2.imwrite(str(root / "JPEGImages" / "v1.jpg"), np.zeros((100, 100, 3), np.uint8))
    obj = ("<object><name>cell</name><difficult>{}</difficult><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax>"
           "<ymax>{}</ymax></bndbox></object>")
    (root / "Annotations" / "v1.xml").write_text(
        "<annotation><size><width>100</width><height>100</height></size>"
        + obj.format(0, 1, 1, 40, 40) + obj.format(1, 51, 51, 90, 90) + "</annotation>")
    (root / "ImageSets" / "Main" / "test.txt").write_text("v1\n")
    name = "test_evaluation_voc_difficult"
    if name not in DatasetCatalog.list():
        register_voc(name, str(root), "test", ["cell"])
    # Training keeps both (detectron2's DatasetMapper drops iscrowd annotations: the flag is apart).
    annos = DatasetCatalog.get(name)[0]["annotations"]
    assert [(a["iscrowd"], a["difficult"]) for a in annos] == [(0, 0), (0, 1)]
    out = str(tmp_path / "inference")
    # Found the ordinary object only: 100 as the VOC protocol scores it (not 50).
    assert _evaluate_one_image(name, [[0.0, 0.0, 40.0, 40.0]], out, image_id="v1") == pytest.approx(100.0)
    # A detection on the difficult object is no false positive either.
    assert _evaluate_one_image(name, [[0.0, 0.0, 40.0, 40.0], [50.0, 50.0, 90.0, 90.0]], out,
                               image_id="v1") == pytest.approx(100.0)
