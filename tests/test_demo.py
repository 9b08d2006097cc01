"""demo.py and train_net.py --eval-only on a tiny model checkpoint."""
import os

import cv2
import numpy as np
import pytest
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from conftest import ROOT, TINY_OPTS, load_module, save_tiny_checkpoint, tiny_cfg

CONFIG = os.path.join(ROOT, "configs", "shapes", "dynamic_rcnn_R_18_FPN_shapes.yaml")
OPTS = [str(o) for o in TINY_OPTS] + ["DATASETS.TEST", "('shapes_tiny_train',)"]


def load_script(name):
    return load_module(f"{name}.py")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("weights"))[1]


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
    run_demo = load_module("tools/run_demo.py")
    out = tmp_path / "demo"
    assert run_demo.main(["--num-images", "2", *OPTS, "SOLVER.MAX_ITER", "6",
                          "MODEL.DYNAMIC_RCNN.UPDATE_PERIOD", "3", "OUTPUT_DIR", str(out)]) == 0
    for name in ("model_final.pth", "metrics.json", "dynamics.png", "losses.png", "demo_results.json",
                 "inference/shapes_tiny_train/ap_table.md"):
        assert (out / name).is_file(), name
    assert len(os.listdir(out / "predictions")) == 2
    printed = capsys.readouterr().out
    assert "Dynamic R-CNN demo done" in printed and "AP90" in printed and str(out / "dynamics.png") in printed


@pytest.mark.parametrize("content", [None, b"\x00not a checkpoint"])
def test_eval_only_and_training_refuse_a_bad_checkpoint_with_its_path(tmp_path, content):
    from dynamic_rcnn.engine import Trainer

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


def png_header(width, height):
    """A PNG file whose header claims ``width`` x ``height`` pixels (its pixels are not there)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b""))


def test_demo_skips_an_image_past_the_pixel_limit_from_its_header_and_goes_on(
        weights, images, tmp_path, capsys):
    demo = load_script("demo")
    huge = images / "huge.png"
    huge.write_bytes(png_header(60000, 60000))
    rc = demo.main(["--config-file", CONFIG, "--input", str(images), "--output", str(tmp_path / "out"),
                    *OPTS, "MODEL.WEIGHTS", weights])
    captured = capsys.readouterr()
    assert rc == 1
    assert (f"error: cannot read {huge} as an image (60000x60000 is 3600 megapixels, past the limit of "
            "150 megapixels (MAX_IMAGE_PIXELS in demo.py): downscale it first): skipped") in captured.err
    assert "2 of 3 images drawn" in captured.out
    assert sorted(os.listdir(tmp_path / "out")) == ["img0.png", "img1.png"]


def test_read_image_reports_a_decoder_exception_instead_of_raising(tmp_path):
    demo = load_script("demo")
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header(60000, 60000))
    image, problem = demo.read_image(str(huge), max_pixels=10**12)  # past OpenCV's own limit
    assert image is None and problem.startswith("the decoder failed: error: ")


def test_demo_keeps_every_output_of_inputs_sharing_a_name_and_says_what_it_overwrites(
        weights, tmp_path, capsys):
    demo = load_script("demo")
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    cv2.imwrite(str(folder / "a.jpg"), np.zeros((40, 50, 3), np.uint8))
    cv2.imwrite(str(folder / "a.png"), np.zeros((60, 70, 3), np.uint8))
    (out / "a_png.png").write_bytes(b"an earlier drawing")
    rc = demo.main(["--config-file", CONFIG, "--input", str(folder), "--output", str(out), "--overwrite", *OPTS,
                    "MODEL.WEIGHTS", weights])
    printed = capsys.readouterr().out
    assert rc == 0
    assert sorted(os.listdir(out)) == ["a_jpg.png", "a_png.png"]
    assert cv2.imread(str(out / "a_jpg.png")).shape == (40, 50, 3)
    assert cv2.imread(str(out / "a_png.png")).shape == (60, 70, 3)
    assert f"{folder / 'a.jpg'}: 0 detections -> {out / 'a_jpg.png'}\n" in printed
    assert f"-> {out / 'a_png.png'} (replaces the existing {out / 'a_png.png'})" in printed


def test_demo_never_draws_over_an_input_in_the_output_folder(weights, images, capsys):
    demo = load_script("demo")
    before = (images / "img0.png").read_bytes()
    assert demo.main(["--config-file", CONFIG, "--input", str(images / "img0.png"), "--output", str(images),
                      *OPTS, "MODEL.WEIGHTS", weights]) == 0
    assert (images / "img0.png").read_bytes() == before
    assert f"-> {images / 'img0_2.png'}" in capsys.readouterr().out


def test_demo_shrinks_an_image_larger_than_the_test_size_and_says_so(weights, tmp_path, capsys):
    demo = load_script("demo")
    big = tmp_path / "big.jpg"
    cv2.imwrite(str(big), np.zeros((300, 400, 3), np.uint8))
    assert demo.main(["--config-file", CONFIG, "--input", str(big), "--output", str(tmp_path / "out"), *OPTS,
                      "MODEL.WEIGHTS", weights]) == 0
    assert cv2.imread(str(tmp_path / "out" / "big.png")).shape == (96, 128, 3)  # INPUT.MAX_SIZE_TEST 128
    assert "(resized from 400x300 to 128x96, the model's test size)" in capsys.readouterr().out


def test_demo_refuses_an_output_that_is_a_file(images, tmp_path):
    demo = load_script("demo")
    existing = tmp_path / "out.png"
    existing.write_bytes(b"keep me")
    with pytest.raises(SystemExit) as e:
        demo.main(["--config-file", CONFIG, "--input", str(images), "--output", str(existing), *OPTS])
    assert str(e.value) == (f"error: --output {existing} is a file, not a folder: name a folder for the "
                            "drawings (it is created if missing)")
    assert existing.read_bytes() == b"keep me"


def test_demo_refuses_weights_of_another_architecture_with_the_list(images, tmp_path):
    demo = load_script("demo")
    model = build_model(tiny_cfg("MODEL.ROI_HEADS.NUM_CLASSES", 7))
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("seven_classes")
    path = tmp_path / "seven_classes.pth"
    with pytest.raises(SystemExit) as e:
        demo.main(["--config-file", CONFIG, "--input", str(images), "--output", str(tmp_path / "out"), *OPTS,
                   "MODEL.WEIGHTS", str(path)])
    message = str(e.value)
    assert message.startswith(f"error: cannot load MODEL.WEIGHTS {path}: the weights do not fit the model")
    assert "parameters of another shape (4): roi_heads.box_predictor.cls_score.weight (checkpoint (8, 32), " \
           "model (4, 32))" in message
    assert not (tmp_path / "out").exists()


def test_demo_refuses_an_option_written_after_the_overrides(images, tmp_path, capsys):
    demo = load_script("demo")
    with pytest.raises(SystemExit) as e:
        demo.main(["--config-file", CONFIG, "--input", str(images), "--output", str(tmp_path / "out"),
                   "MODEL.WEIGHTS", "w.pth", "--confidence-threshold", "0.3"])
    assert e.value.code == 2
    assert ("error: option --confidence-threshold is written after the config overrides (KEY VALUE ...), "
            "which take the rest of the command line: move it (with its value, if it takes one) before the "
            "first override, MODEL.WEIGHTS") in capsys.readouterr().err


def register_rgb_dataset():
    """``rgb_tiny_train``: the tiny shapes images under other class names, as ``--train-json`` registers a user's."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if "rgb_tiny_train" not in DatasetCatalog:
        DatasetCatalog.register("rgb_tiny_train", lambda: DatasetCatalog.get("shapes_tiny_train"))
        MetadataCatalog.get("rgb_tiny_train").set(thing_classes=["red", "green", "blue"])


def drawn_with(monkeypatch):
    """The class names of every drawing demo.py makes meanwhile (the metadata it gives detectron2's Visualizer)."""
    import detectron2.utils.visualizer as visualizer

    names = []

    class Recording(visualizer.Visualizer):
        def __init__(self, image, metadata=None, *args, **kwargs):
            names.append(list(metadata.get("thing_classes", [])))
            super().__init__(image, metadata, *args, **kwargs)

    monkeypatch.setattr(visualizer, "Visualizer", Recording)
    return names


def test_demo_draws_the_class_names_its_weights_were_trained_on(images, tmp_path, monkeypatch, capsys):
    # A run of other classes than its config's test set (train_net.py --train-json: user_train, red/green/blue).
    from dynamic_rcnn.engine import Trainer

    register_rgb_dataset()
    run = tmp_path / "run"
    cfg = tiny_cfg("OUTPUT_DIR", str(run), "DATASETS.TRAIN", ("rgb_tiny_train",), "SOLVER.MAX_ITER", 1)
    Trainer(cfg).train()
    (run / "config.yaml").write_text(cfg.dump())
    demo, drawn = load_script("demo"), drawn_with(monkeypatch)
    command = ["--config-file", str(run / "config.yaml"), "--input", str(images), "--confidence-threshold", "0",
               "MODEL.WEIGHTS", str(run / "model_final.pth")]
    assert demo.main(command[:4] + ["--output", str(tmp_path / "a")] + command[4:]
                     + ["DATASETS.TEST", "('shapes_tiny_train',)"]) == 0
    assert drawn == [["red", "green", "blue"]] * 2
    assert ("class names from MODEL.WEIGHTS (the classes it was trained on): red, green, blue; not those of "
            "DATASETS.TEST[0] shapes_tiny_train: circle, square, triangle\n") in capsys.readouterr().out
    # The run's own config.yaml, whose test set has no class names here: the weights' again, not indices.
    del drawn[:]
    assert demo.main(command[:4] + ["--output", str(tmp_path / "b")] + command[4:]) == 0
    assert drawn == [["red", "green", "blue"]] * 2
    assert "class names from MODEL.WEIGHTS (the classes it was trained on): red, green, blue\n" in \
        capsys.readouterr().out


def test_demo_says_when_its_weights_hold_no_class_names(weights, images, tmp_path, monkeypatch, capsys):
    demo, drawn = load_script("demo"), drawn_with(monkeypatch)
    assert demo.main(["--config-file", CONFIG, "--input", str(images), "--output", str(tmp_path / "out"), *OPTS,
                      "MODEL.WEIGHTS", weights]) == 0
    assert drawn == [["circle", "square", "triangle"]] * 2  # an older checkpoint: its config's test set, as before
    assert (f"note: MODEL.WEIGHTS {weights} holds no class names (a checkpoint of an earlier version, or not saved "
            "by the project's trainers): drawn with those of DATASETS.TEST[0] shapes_tiny_train: circle, square, "
            "triangle\n") in capsys.readouterr().out


@pytest.mark.parametrize("value", ["50", "-0.1", "nan"])
def test_demo_refuses_a_confidence_threshold_outside_0_1_at_start_up(weights, images, tmp_path, value):
    demo = load_script("demo")
    with pytest.raises(SystemExit) as e:
        demo.main(["--config-file", CONFIG, "--input", str(images), "--output", str(tmp_path / "out"),
                   "--confidence-threshold", value, *OPTS, "MODEL.WEIGHTS", weights])
    assert str(e.value) == (f"error: --confidence-threshold {value} is outside [0, 1]: it is the lowest score a "
                            "detection is drawn with, between 0 and 1 (e.g. 0.5 for 50 %)")
    assert not (tmp_path / "out").exists()


def test_demo_never_draws_over_a_file_it_did_not_make_without_overwrite(weights, tmp_path, capsys):
    demo = load_script("demo")
    folder, out = tmp_path / "in", tmp_path / "out"
    folder.mkdir()
    out.mkdir()
    for name in ("photo.jpg", "other.jpg"):
        cv2.imwrite(str(folder / name), np.zeros((40, 50, 3), np.uint8))
    (out / "photo.png").write_bytes(b"the user's own photo")
    command = ["--config-file", CONFIG, "--input", str(folder), "--output", str(out), *OPTS, "MODEL.WEIGHTS", weights]
    with pytest.raises(SystemExit) as e:
        demo.main(command)
    assert str(e.value) == (f"error: --output {out} already holds photo.png, which this run would draw over: give "
                            "another --output folder, or add --overwrite to replace it")
    assert os.listdir(out) == ["photo.png"] and (out / "photo.png").read_bytes() == b"the user's own photo"
    assert capsys.readouterr().out == ""  # nothing drawn
    assert demo.main(command[:6] + ["--overwrite"] + command[6:]) == 0
    assert f"-> {out / 'photo.png'} (replaces the existing {out / 'photo.png'})" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["other.png", "photo.png"]


@pytest.mark.parametrize("config, opts, said", [
    ("misspelled.yaml", [], "error: {config}: Non-existent config key: MODEL.ROI_HEADS.SCORE_THRES (a misspelled"),
    (CONFIG, ["MODEL.ROI_HEADS.SCORE_THRES", "0.1"],
     "error: the command line: Non-existent key: MODEL.ROI_HEADS.SCORE_THRES (a misspelled"),
    (CONFIG, ["MODEL.DYNAMIC_RCNN.UPDATE_PERIOD", "0"], "error: MODEL.DYNAMIC_RCNN.UPDATE_PERIOD = 0 is invalid"),
    (CONFIG, ["SOLVER.BASE_LR", "fast"], "error: Type mismatch"),
    ("missing.yaml", [], "error: --config-file {config} does not exist"),
    (CONFIG, ["MODEL.WEIGHTS", "w.pth", "MODEL.DEVICE"],
     "error: the config overrides MODEL.WEIGHTS w.pth MODEL.DEVICE hold 3 items, an odd number"),
])
def test_demo_answers_a_bad_config_in_one_line(images, tmp_path, config, opts, said):
    demo = load_script("demo")
    if config == "misspelled.yaml":
        config = tmp_path / config
        config.write_text(f"_BASE_: {CONFIG}\nMODEL:\n  ROI_HEADS:\n    SCORE_THRES: 0.1\n")
    elif config == "missing.yaml":
        config = tmp_path / config
    with pytest.raises(SystemExit) as e:
        demo.main(["--config-file", str(config), "--input", str(images), "--output", str(tmp_path / "out"), *opts])
    assert str(e.value).startswith(said.format(config=config)) and "\n" not in str(e.value), str(e.value)
    assert not (tmp_path / "out").exists()
