"""End to end through ``train_net.py``, as a user runs it."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, TINY_OPTS


def run_train_net(*args, timeout=600):
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), *[str(a) for a in args]]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_short_training_updates_threshold_and_beta_by_the_rule(tmp_path, monkeypatch):
    """
    Every update of a real train_net.py run follows the rule: after iteration k*C - 1 the IoU threshold becomes
    max(WARMUP_IOU, mean of the window's IoU statistics) and beta min(WARMUP_BETA, median of its error
    statistics), in force from iteration k*C; the values in force are what metrics.json, the log's update lines
    and the checkpoints report. The rule is checked, not one trajectory's values: those depend on the data order,
    which differs between detectron2 versions (newer ones seed the training sampler with SEED).
    """
    import re
    import statistics

    import torch

    from dynamic_rcnn.statistics import BETA_COLLAPSE_GUARD
    from dynamic_rcnn.tracker import DynamicTracker

    updates, update = [], DynamicTracker.update

    def spy(tracker):  # the window and the values each update starts from, and what it made of them
        before = (tracker.iou_threshold, tracker.beta, tracker.window)
        n = update(tracker)
        updates.append((before, (tracker.iou_threshold, tracker.beta), n))
        return n

    monkeypatch.setattr(DynamicTracker, "update", spy)
    out = str(tmp_path)
    period, max_iter, warmup_iou, warmup_beta = 5, 30, 0.4, 1.0
    train_net, args = _in_process(
        "SOLVER.MAX_ITER", max_iter, "SOLVER.BASE_LR", 0.02, "SOLVER.CHECKPOINT_PERIOD", 10,
        "MODEL.DYNAMIC_RCNN.UPDATE_PERIOD", period, "MODEL.DYNAMIC_RCNN.IOU_TOPK", 10,
        "MODEL.DYNAMIC_RCNN.WARMUP_IOU", warmup_iou, "MODEL.DYNAMIC_RCNN.WARMUP_BETA", warmup_beta, "OUTPUT_DIR", out)
    train_net.main(args)
    assert os.path.isfile(os.path.join(out, "model_final.pth"))

    # One update after each window (iterations 4, 9, ..., 29), each from the C statistics of its window
    # (every shapes image has objects), each starting from the values the one before made.
    assert len(updates) == max_iter // period
    assert updates[0][0][:2] == (warmup_iou, warmup_beta)
    in_force = [(warmup_iou, warmup_beta)]
    for (t, beta, window), after, n in updates:
        assert (t, beta) == in_force[-1] and n == len(window) == period
        median = statistics.median(e for _, e in window)
        rule = (max(warmup_iou, statistics.fmean(i for i, _ in window)),
                beta if median < BETA_COLLAPSE_GUARD else min(warmup_beta, median))
        assert after == pytest.approx(rule, abs=1e-12)
        in_force.append(after)

    # metrics.json: at every logged iteration, the values in force and that iteration's statistics.
    with open(os.path.join(out, "metrics.json")) as f:
        rows = [json.loads(line) for line in f]
    keys = [f"dynamic_rcnn/{k}" for k in ("iou_stat", "error_stat", "iou_threshold", "beta")]
    rows = [r for r in rows if keys[2] in r]
    assert rows and all(k in r for r in rows for k in keys)
    for row in rows:
        it = row["iteration"]
        assert (row[keys[2]], row[keys[3]]) == pytest.approx(in_force[it // period], abs=1e-9), it
        if it % period == period - 1:  # the last statistics of the window of update it // period
            assert [row[keys[0]], row[keys[1]]] == pytest.approx(updates[it // period][0][2][-1], abs=1e-6), it

    # The checkpoints after iterations 9, 19 and the final one: the values made after them, an empty window.
    for name, k in (("model_0000009.pth", 2), ("model_0000019.pth", 4), ("model_final.pth", 6)):
        (state,) = torch.load(os.path.join(out, name), map_location="cpu",
                              weights_only=False)["trainer"]["hooks"]["DynamicRCNNHook"]["stages"]
        assert (state["iou_threshold"], state["beta"], state["window"]) == (*in_force[k], []), name

    # The log: one update line per window, from the value in force to the next one (4 decimals).
    with open(os.path.join(out, "log.txt")) as f:
        lines = re.findall(
            r"update at iteration (\d+) .*?IoU threshold ([0-9.]+) -> ([0-9.]+), beta ([0-9.]+) -> ([0-9.]+)", f.read()
        )
    assert [int(u[0]) for u in lines] == list(range(period, max_iter + 1, period))
    for (_, t0, t1, b0, b1), before, after in zip(lines, in_force, in_force[1:]):
        assert [float(v) for v in (t0, t1, b0, b1)] == pytest.approx([before[0], after[0], before[1], after[1]],
                                                                     abs=1e-4)


def test_bad_config_value_fails_at_start_up(tmp_path):
    proc = run_train_net(
        "--config-file", "configs/shapes/dynamic_rcnn_R_18_FPN_shapes.yaml",
        "MODEL.DYNAMIC_RCNN.WARMUP_IOU", 1.5, "OUTPUT_DIR", str(tmp_path),
    )
    assert proc.returncode != 0
    assert "MODEL.DYNAMIC_RCNN.WARMUP_IOU = 1.5 is invalid" in proc.stderr
    assert not os.path.exists(os.path.join(str(tmp_path), "metrics.json"))



SHAPES_CONFIG = "configs/shapes/dynamic_rcnn_R_18_FPN_shapes.yaml"


def assert_one_line_error(proc, rc, message):
    """``proc`` exited with ``rc`` and its last stderr line is ``message``, without a traceback."""
    assert proc.returncode == rc, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == message


def test_eval_only_without_weights_is_refused_before_writing_anything(tmp_path):
    out = tmp_path / "out"
    proc = run_train_net("--config-file", SHAPES_CONFIG, "--eval-only", *TINY_OPTS, "OUTPUT_DIR", out)
    assert_one_line_error(proc, 1, (
        "error: --eval-only needs trained weights: add MODEL.WEIGHTS path/to/model_final.pth to the "
        "command (or --resume with an OUTPUT_DIR that has a last_checkpoint)"))
    assert not out.exists()


@pytest.mark.parametrize("late", [["--resume"], ["--train-json", "a.json"]])
def test_an_option_after_the_overrides_is_refused_with_where_it_goes(tmp_path, late):
    proc = run_train_net("--config-file", SHAPES_CONFIG, "MODEL.WEIGHTS", "w.pth", *late)
    assert_one_line_error(proc, 2, (
        f"train_net.py: error: option {late[0]} is written after the config overrides (KEY VALUE ...), "
        "which take the rest of the command line: move it (with its value, if it takes one) before the "
        "first override, MODEL.WEIGHTS"))


def test_resume_with_an_empty_last_checkpoint_is_a_one_line_error_naming_the_checkpoints(tmp_path):
    (tmp_path / "model_0000004.pth").write_bytes(b"")
    tag = tmp_path / "last_checkpoint"
    tag.write_text("")
    proc = run_train_net("--config-file", SHAPES_CONFIG, "--resume", *TINY_OPTS, "OUTPUT_DIR", tmp_path)
    assert_one_line_error(proc, 1, (
        f"error: Cannot resume from {tag}: --resume goes on from the checkpoint this file names, but it "
        f"is empty; the checkpoints in {tmp_path} are model_0000004.pth. To fix: write one of their names "
        f"into it (e.g. echo model_0000004.pth > {tag}) to resume from it, or delete it to start from "
        "MODEL.WEIGHTS (empty: a randomly initialized model)."))


def test_eval_only_refuses_weights_that_do_not_fit_the_model(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from conftest import tiny_cfg

    seven_classes = build_model(tiny_cfg("MODEL.ROI_HEADS.NUM_CLASSES", 7))
    DetectionCheckpointer(seven_classes, save_dir=str(tmp_path)).save("seven")
    proc = run_train_net("--config-file", SHAPES_CONFIG, "--eval-only", *TINY_OPTS,
                         "DATASETS.TEST", "('shapes_tiny_train',)",
                         "MODEL.WEIGHTS", tmp_path / "seven.pth", "OUTPUT_DIR", tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f"error: Cannot load the checkpoint {tmp_path / 'seven.pth'}: the weights do not fit the model "
        "(another architecture or number of classes?): parameters of another shape (4): "
        "roi_heads.box_predictor.cls_score.weight (checkpoint (8, 32), model (4, 32))")
    assert not (tmp_path / "inference").exists()


def _in_process(*overrides, options=()):
    """train_net.py's module and its parsed command line: the shapes config, ``options``, the tiny model."""
    from conftest import load_module

    train_net = load_module("train_net.py")
    return train_net, train_net.parse_args(["--config-file", os.path.join(ROOT, SHAPES_CONFIG), *map(str, options),
                                            *map(str, TINY_OPTS + list(overrides))])


def _one_line_exit(train_net, args):
    """What launch_checked exits with: its one ``error: ...`` line."""
    from dynamic_rcnn.engine.launch import launch_checked

    with pytest.raises(SystemExit) as e:
        launch_checked(train_net.main, args, train_net.checked_config)
    return e.value.code


def _coco_pair(tmp_path, categories, annotations):
    import cv2
    import numpy as np

    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.zeros((64, 64, 3), np.uint8))
    json_file = tmp_path / "train.json"
    json_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png", "height": 64, "width": 64}],
        "categories": [{"id": i, "name": n} for i, n in categories.items()],
        "annotations": [dict(a, id=k + 1, image_id=1, iscrowd=0) for k, a in enumerate(annotations)]}))
    return json_file, images


def test_the_num_classes_of_a_train_json_is_said_in_the_runs_log(tmp_path):
    json_file, images = _coco_pair(tmp_path, {1: "cell", 2: "other"}, [{"bbox": [1, 1, 9, 9], "category_id": 1}])
    out = tmp_path / "out"
    train_net, args = _in_process("OUTPUT_DIR", out, options=["--train-json", json_file, "--train-images", images])
    cfg = train_net.setup(args)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 2  # the shapes config says 3
    assert f"MODEL.ROI_HEADS.NUM_CLASSES = 2, the categories of {json_file}" in (out / "log.txt").read_text()


def test_a_training_set_without_boxes_is_one_line_naming_it_and_what_its_loading_dropped(tmp_path):
    json_file, images = _coco_pair(tmp_path, {1: "cell"}, [{"bbox": [1, 1, 9, 9], "category_id": 7}] * 2)
    train_net, args = _in_process("OUTPUT_DIR", tmp_path / "out",
                                  options=["--train-json", json_file, "--train-images", images])
    assert _one_line_exit(train_net, args) == (
        "error: DATASETS.TRAIN: no image of user_train has a box to train on (detectron2: No valid data found in "
        "user_train). What the loading found: user_train: 1 images, 0 boxes; mended or dropped: 2 boxes of the "
        "unknown category id 7 (a.png). Check that the annotations' classes (names, category ids) are the "
        "dataset's, and that its images are where they are looked for")
    # No image at all (detectron2 says "is empty!"): the same line, with what the loading found.
    os.remove(images / "a.png")
    assert _one_line_exit(train_net, args).startswith(
        "error: DATASETS.TRAIN: no image of user_train has a box to train on (detectron2: Dataset 'user_train' is "
        "empty!). What the loading found: user_train: 0 images, 0 boxes; mended or dropped: 2 boxes of the unknown "
        "category id 7 (a.png), 1 missing image files (a.png). Check")


@pytest.mark.parametrize("workers", [0, 1])
def test_an_image_cut_after_its_header_is_named_when_the_loader_fails_on_it(tmp_path, workers):
    # Its header reads (the start-up check passes); PIL's error while decoding names no file.
    import cv2
    import numpy as np

    json_file, images = _coco_pair(tmp_path, {1: "cell"}, [{"bbox": [1, 1, 9, 9], "category_id": 1}])
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    cv2.imwrite(str(images / "a.png"), noise)
    content = (images / "a.png").read_bytes()
    (images / "a.png").write_bytes(content[: len(content) // 2])
    train_net, args = _in_process("DATALOADER.NUM_WORKERS", workers, "OUTPUT_DIR", tmp_path / "out",
                                  options=["--train-json", json_file, "--train-images", images])
    line = _one_line_exit(train_net, args)
    assert line.startswith(f"error: {images / 'a.png'} failed in the data loader: OSError: "), line
    assert line.endswith("Replace the file or remove it from the dataset, then go on with --resume") and "\n" not in line


def test_amp_without_a_gpu_is_refused_at_start_up(tmp_path):
    import torch

    out = tmp_path / "out"
    train_net, args = _in_process("SOLVER.AMP.ENABLED", True, "OUTPUT_DIR", out)
    unseen = "" if torch.cuda.is_available() else " (no GPU is visible)"
    assert _one_line_exit(train_net, args) == (
        f"error: SOLVER.AMP.ENABLED is True, but the model is on cpu{unseen}: detectron2's AMPTrainer (mixed "
        "precision) trains on a GPU only. Set SOLVER.AMP.ENABLED False to train on the CPU")
    assert not out.exists()


def test_an_output_dir_that_cannot_be_made_is_refused_before_launch(tmp_path, monkeypatch):
    from dynamic_rcnn.engine.launch import check_output_dir

    blocker = tmp_path / "a_file"
    blocker.write_text("")
    train_net, args = _in_process("OUTPUT_DIR", blocker / "out")
    assert _one_line_exit(train_net, args) == (
        f"error: OUTPUT_DIR {blocker / 'out'} cannot be created: {blocker} is a file, not a folder")
    # A folder this user cannot write to (root writes anywhere: os.access is what says so).
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(PermissionError) as e:
        check_output_dir(str(tmp_path / "new" / "out"), "OUTPUT_DIR")
    assert str(e.value) == (f"OUTPUT_DIR {tmp_path / 'new' / 'out'} cannot be created: this user cannot write "
                            f"in {tmp_path} (its permissions, or a read-only file system)")


@pytest.mark.slow
def test_folders_with_spaces_and_accents_train_and_their_faults_still_answer_in_one_line(tmp_path):
    """A user's data and output under "données d'été/": they train, and a bad checkpoint there is one line."""
    from PIL import Image

    base = tmp_path / "données d'été"
    images = base / "mes images"
    images.mkdir(parents=True)
    Image.new("RGB", (64, 64), (90, 120, 30)).save(images / "é 1.png")
    json_file = base / "entraînement.json"
    json_file.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "é 1.png", "height": 64, "width": 64}],
        "categories": [{"id": 1, "name": "cellule"}],
        "annotations": [{"id": 1, "image_id": 1, "bbox": [8, 8, 30, 30], "category_id": 1, "iscrowd": 0}]}))
    out = base / "sortie 1"
    train_net, args = _in_process("SOLVER.MAX_ITER", 2, "OUTPUT_DIR", out,
                                  options=["--train-json", json_file, "--train-images", images])
    from dynamic_rcnn.engine.launch import launch_checked

    launch_checked(train_net.main, args, train_net.checked_config)
    assert (out / "model_final.pth").is_file() and (out / "metrics.json").is_file()
    cut = out / "coupé.pth"
    cut.write_bytes((out / "model_final.pth").read_bytes()[:5000])
    train_net, args = _in_process("MODEL.WEIGHTS", cut, "OUTPUT_DIR", out, options=["--eval-only"])
    line = _one_line_exit(train_net, args)
    assert line.startswith(f"error: Cannot load the checkpoint {cut}: the file is a truncated or damaged zip archive")
