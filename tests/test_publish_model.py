"""tools/publish_model.py: a release that plain detectron2 loads, runs and exports without dynamic_rcnn."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from dynamic_rcnn.data import generate_shapes_image

from conftest import load_module, tiny_cfg

# Runs in a process that never imports dynamic_rcnn: detectron2 alone builds the released model from
# NAME.inference.yaml and predicts (DefaultPredictor, build_model + DetectionCheckpointer), traces
# and scripts it with its export tools; every way gives its boxes, scores and classes.
PLAIN_DETECTRON2 = r"""
import json, sys, cv2, torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import DefaultPredictor
from detectron2.export import TracingAdapter, scripting_with_instances
from detectron2.modeling import build_model
from detectron2.structures import Boxes

release, image_file = sys.argv[1], sys.argv[2]
cfg = get_cfg()
cfg.merge_from_file(release + "/tiny.inference.yaml")
cfg.MODEL.WEIGHTS = release + "/" + cfg.MODEL.WEIGHTS
cfg.MODEL.DEVICE = "cpu"
cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
image = cv2.imread(image_file)
out = {}
def save(name, boxes, scores, classes):
    out[name] = [boxes.tolist(), scores.tolist(), classes.tolist()]

inst = DefaultPredictor(cfg)(image)["instances"]
save("predictor", inst.pred_boxes.tensor, inst.scores, inst.pred_classes)

model = build_model(cfg).eval()
DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
tensor = torch.as_tensor(image.transpose(2, 0, 1).copy())  # same size: the test image is at test size
with torch.no_grad():
    inst = model([{"image": tensor}])[0]["instances"]
save("build_model", inst.pred_boxes.tensor, inst.scores, inst.pred_classes)

def inference(model, inputs):
    inst = model.inference(inputs, do_postprocess=False)[0]
    return [{"instances": inst}]
adapter = TracingAdapter(model, [{"image": tensor}], inference)
traced = torch.jit.trace(adapter, adapter.flattened_inputs)
inst = adapter.outputs_schema(traced(tensor))[0]["instances"]
save("traced", inst.pred_boxes.tensor, inst.scores, inst.pred_classes)

fields = {"proposal_boxes": Boxes, "objectness_logits": torch.Tensor, "pred_boxes": Boxes,
          "scores": torch.Tensor, "pred_classes": torch.Tensor}
try:
    scripted = scripting_with_instances(model, fields)
except RuntimeError as e:  # detectron2's own CascadeROIHeads does not script: said, for the test to check
    out["scripting_error"] = str(e)
else:
    inst = scripted.inference([{"image": tensor}], do_postprocess=False)[0]
    save("scripted", inst.pred_boxes.tensor, inst.scores, inst.pred_classes)

assert not any(m.startswith("dynamic_rcnn") for m in sys.modules), "dynamic_rcnn was imported"
print(json.dumps(out))
"""


def load_tool(name):
    return load_module(f"tools/{name}.py")


HEADS = {"DynamicROIHeads": ("StandardROIHeads", []),
         "DynamicCascadeROIHeads": ("CascadeROIHeads", ["MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True])}


@pytest.fixture(scope="module", params=list(HEADS))
def release(tmp_path_factory, request):
    """A tiny Dynamic R-CNN run (random weights; the single head or the cascade) published to a release folder."""
    base = tmp_path_factory.mktemp("release")
    run, out = base / "run", base / "releases"
    cfg = tiny_cfg("OUTPUT_DIR", str(run), "MODEL.ROI_HEADS.NAME", request.param, *HEADS[request.param][1])
    torch.manual_seed(0)
    model = build_model(cfg)
    os.makedirs(run)
    DetectionCheckpointer(model, save_dir=str(run)).save("model_final")
    (run / "config.yaml").write_text(cfg.dump())
    assert load_tool("publish_model").main([str(run), "--name", "tiny", "--out", str(out)]) == 0
    return cfg, out


def test_inference_config_is_plain_detectron2(release):
    _, out = release
    metrics = json.loads((out / "tiny.metrics.json").read_text())
    assert metrics["inference_config"] == "tiny.inference.yaml"
    text = (out / "tiny.inference.yaml").read_text()
    trained_with = metrics["roi_heads"]
    assert "DYNAMIC_RCNN" not in text and f"NAME: {trained_with}" not in text
    assert f"NAME: {HEADS[trained_with][0]}" in text and f"WEIGHTS: {metrics['checkpoint']}" in text


def test_plain_detectron2_gives_the_projects_detections(release, tmp_path):
    cfg, out = release
    image, _ = generate_shapes_image(seed=9, index=0, image_size=(128, 128))
    image_file = str(tmp_path / "image.png")
    cv2.imwrite(image_file, image)
    proc = subprocess.run([sys.executable, "-c", PLAIN_DETECTRON2, str(out), image_file], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = json.loads(proc.stdout.strip().splitlines()[-1])
    if cfg.MODEL.ROI_HEADS.NAME == "DynamicCascadeROIHeads":
        # TorchScript fails inside detectron2's own CascadeROIHeads (a stock Cascade model alike): the
        # release exports as far as detectron2's Cascade does.
        assert "cascade_rcnn.py" in plain.pop("scripting_error")
        assert set(plain) == {"predictor", "build_model", "traced"}
    else:
        assert set(plain) == {"predictor", "build_model", "traced", "scripted"}

    # Through the project: the training config, DynamicROIHeads, the released weights.
    cfg = cfg.clone()
    cfg.MODEL.WEIGHTS = str(out / json.loads((out / "tiny.metrics.json").read_text())["checkpoint"])
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    inst = DefaultPredictor(cfg)(image)["instances"]
    assert type(DefaultPredictor(cfg).model.roi_heads).__name__ == cfg.MODEL.ROI_HEADS.NAME
    want_boxes, want_scores = inst.pred_boxes.tensor.numpy(), inst.scores.numpy()
    assert len(want_boxes) > 0
    for way, (boxes, scores, classes) in plain.items():
        assert np.allclose(np.array(boxes).reshape(-1, 4), want_boxes, atol=1e-3), way
        assert np.allclose(scores, want_scores, atol=1e-5), way
        assert classes == inst.pred_classes.tolist(), way


@pytest.mark.parametrize("name", ["a/b", "..", ".x", "my model"])
def test_a_release_name_that_is_not_one_file_name_is_refused_before_anything_is_written(release, tmp_path, capsys,
                                                                                      name):
    cfg, _ = release
    out = tmp_path / "releases"
    assert load_tool("publish_model").main([cfg.OUTPUT_DIR, "--name", name, "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: --name {name!r} is not a release name: give one file name of letters, digits, '_', '.' and '-', "
        "beginning with a letter or digit (e.g. dynamic_rcnn_R_18_FPN_shapes)\n")
    assert not out.exists()


def test_a_failed_save_leaves_no_partial_file(release, tmp_path, capsys, monkeypatch):
    import errno

    cfg, _ = release
    out = tmp_path / "releases"

    def full_disk(data, f, **kwargs):
        with open(f, "wb") as w:
            w.write(b"PK\x03\x04 the first megabytes")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    assert load_tool("publish_model").main([cfg.OUTPUT_DIR, "--name", "tiny", "--out", str(out)]) == 2
    assert capsys.readouterr().err == "error: [Errno 28] No space left on device\n"
    assert os.listdir(out) == []


def test_publishing_a_name_again_is_refused_unless_replace_which_replaces_the_release_whole(release, tmp_path,
                                                                                            capsys):
    cfg, _ = release
    out = tmp_path / "releases"
    publish = load_tool("publish_model")
    assert publish.main([cfg.OUTPUT_DIR, "--name", "tiny", "--out", str(out)]) == 0
    first = json.loads((out / "tiny.metrics.json").read_text())["checkpoint"]
    before = {f: (out / f).read_bytes() for f in os.listdir(out)}
    capsys.readouterr()
    assert publish.main([cfg.OUTPUT_DIR, "--name", "tiny", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"error: {out} already holds the release tiny ({first}, tiny.metrics.json, tiny.inference.yaml): publishing "
        "it again would leave those weights orphaned. Give another --name, or add --replace to replace the release "
        "whole\n")
    assert {f: (out / f).read_bytes() for f in os.listdir(out)} == before  # nothing written

    assert publish.main([cfg.OUTPUT_DIR, "--name", "tiny", "--out", str(out), "--replace"]) == 0
    second = json.loads((out / "tiny.metrics.json").read_text())["checkpoint"]
    assert sorted(os.listdir(out)) == sorted([second, "tiny.metrics.json", "tiny.inference.yaml"]) and second != first
    assert f"replaced the release tiny: {first} removed\n" in capsys.readouterr().out

    # The metadata of a release whose weights are elsewhere (the project's releases/: the .pth files are not in
    # git) is replaced, and said: nothing is orphaned.
    os.remove(out / second)
    assert publish.main([cfg.OUTPUT_DIR, "--name", "tiny", "--out", str(out)]) == 0
    assert (f"note: replaced tiny.metrics.json and tiny.inference.yaml of an earlier release of tiny, whose weights "
            f"are not in {out}\n") in capsys.readouterr().out


def test_an_out_that_is_a_file_is_refused_as_not_a_folder(release, tmp_path, capsys):
    cfg, _ = release
    out = tmp_path / "releases.txt"
    out.write_text("keep me")
    assert load_tool("publish_model").main([cfg.OUTPUT_DIR, "--name", "tiny", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (f"error: --out {out} is a file: --out must be a folder, for the release's "
                                       "files (it is created if missing)\n")
    assert out.read_text() == "keep me" and os.listdir(tmp_path) == ["releases.txt"]
