"""demo.py and train_net.py --eval-only on a tiny model checkpoint."""
import importlib.util
import os

import cv2
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from conftest import ROOT, TINY_OPTS, tiny_cfg

CONFIG = os.path.join(ROOT, "configs", "shapes", "dynamic_rcnn_R_18_FPN_shapes.yaml")
OPTS = [str(o) for o in TINY_OPTS] + ["DATASETS.TEST", "('shapes_tiny_train',)"]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    DetectionCheckpointer(model, save_dir=str(out)).save("tiny")
    return str(out / "tiny.pth")


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(2):
        cv2.imwrite(str(folder / f"img{i}.png"), np.full((100, 120, 3), 60 * i, np.uint8))
    return folder


def test_demo_draws_every_image_of_files_and_folders(weights, images, tmp_path, capsys):
    demo = load_script("demo")
    out = tmp_path / "out"
    extra = tmp_path / "extra.jpg"
    cv2.imwrite(str(extra), np.zeros((80, 80, 3), np.uint8))
    rc = demo.main(["--config-file", CONFIG, "--input", str(images), str(extra), "--output", str(out),
                    "--confidence-threshold", "0.0", *OPTS, "MODEL.WEIGHTS", weights])
    assert rc == 0
    assert sorted(os.listdir(out)) == ["extra.png", "img0.png", "img1.png"]
    assert cv2.imread(str(out / "img0.png")).shape == (100, 120, 3)
    assert "3 of 3 images drawn" in capsys.readouterr().out


def test_demo_reports_an_unreadable_image_and_goes_on(weights, images, tmp_path, capsys):
    demo = load_script("demo")
    (images / "broken.png").write_bytes(b"not an image")
    rc = demo.main(["--config-file", CONFIG, "--input", str(images), "--output", str(tmp_path / "out"),
                    *OPTS, "MODEL.WEIGHTS", weights])
    captured = capsys.readouterr()
    assert rc == 1
    assert f"cannot read {images / 'broken.png'} as an image" in captured.err
    assert "2 of 3 images drawn" in captured.out


@pytest.mark.parametrize("bad, message", [
    ("missing.pth", "MODEL.WEIGHTS {path} does not exist"),
    ("corrupt.pth", "cannot load MODEL.WEIGHTS {path}"),
])
def test_demo_refuses_bad_weights_with_their_path(images, tmp_path, bad, message):
    demo = load_script("demo")
    path = tmp_path / bad
    if bad == "corrupt.pth":
        path.write_bytes(b"\x00garbage")
    with pytest.raises(SystemExit) as e:
        demo.main(["--config-file", CONFIG, "--input", str(images), "--output", str(tmp_path / "o"),
                   *OPTS, "MODEL.WEIGHTS", str(path)])
    assert message.format(path=path) in str(e.value)


def test_eval_only_returns_the_ap_table(weights, tmp_path):
    train_net = load_script("train_net")
    args = train_net.argument_parser().parse_args(
        ["--config-file", CONFIG, "--eval-only", *OPTS, "MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path)])
    res = train_net.main(args)
    assert {"AP", "AP50", "AP60", "AP70", "AP80", "AP90", "APs", "APm", "APl"} <= set(res["bbox"])
    assert os.path.isfile(os.path.join(str(tmp_path), "inference", "shapes_tiny_train", "ap_table.json"))


@pytest.mark.slow
def test_main_job_leaves_model_metrics_plots_and_drawings(tmp_path, capsys):
    """tools/run_demo.py (`make demo`) on the tiny model: every promised file, and the summary."""
    spec = importlib.util.spec_from_file_location("run_demo", os.path.join(ROOT, "tools", "run_demo.py"))
    run_demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_demo)
    out = tmp_path / "demo"
    assert run_demo.main(["--num-images", "2", *OPTS, "SOLVER.MAX_ITER", "6",
                          "MODEL.DYNAMIC_RCNN.UPDATE_PERIOD", "3", "OUTPUT_DIR", str(out)]) == 0
    for name in ("model_final.pth", "metrics.json", "dynamics.png", "losses.png", "train_summary.json",
                 "inference/shapes_tiny_train/ap_table.md"):
        assert (out / name).is_file(), name
    assert len(os.listdir(out / "predictions")) == 2
    printed = capsys.readouterr().out
    assert "Dynamic R-CNN demo done" in printed and "AP90" in printed and str(out / "dynamics.png") in printed


@pytest.mark.parametrize("content", [None, b"\x00not a checkpoint"])
def test_eval_only_and_training_refuse_a_bad_checkpoint_with_its_path(tmp_path, content):
    from dynamic_rcnn import Trainer

    bad = tmp_path / "bad.pth"
    if content is not None:
        bad.write_bytes(content)
    train_net = load_script("train_net")
    args = train_net.argument_parser().parse_args(
        ["--config-file", CONFIG, "--eval-only", *OPTS, "MODEL.WEIGHTS", str(bad), "OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(RuntimeError, match=f"Cannot load the checkpoint {bad}"):
        train_net.main(args)
    trainer = Trainer(tiny_cfg("MODEL.WEIGHTS", str(bad), "OUTPUT_DIR", str(tmp_path / "train")))
    with pytest.raises(RuntimeError, match=f"Cannot load the checkpoint {bad}"):
        trainer.resume_or_load(resume=False)
