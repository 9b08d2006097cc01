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
