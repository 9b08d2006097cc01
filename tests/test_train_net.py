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
    (tmp_path / "metrics.json").write_text("")  # a finished run's folder: --eval-only writes evaluation files only
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


@pytest.mark.parametrize("opts, message", [
    (["MODEL.WEIGHTS", "SOLVER.MAX_ITER", 10], "MODEL.WEIGHTS has no value"),
    (["SOLVER.MAX_ITER", 10, 20],
     "20 stands where a KEY belongs, and is no config key (a value without its key, or a misspelled key?)"),
    (["SOLVER.MAX_ITER"], "SOLVER.MAX_ITER has no value"),
])
def test_an_odd_override_list_is_one_line_naming_the_item_without_its_pair(tmp_path, opts, message):
    train_net, args = _in_process("OUTPUT_DIR", tmp_path, *opts)
    n = len(TINY_OPTS) + 2 + len(opts)
    assert _one_line_exit(train_net, args) == (
        f"error: the command line: {message}: the overrides after the options are KEY VALUE pairs ({n} items given)")


LOCK = ".training.lock"  # the file in OUTPUT_DIR that a training holds locked (fcntl.flock) while it runs


def _earlier_run(folder, files=("metrics.json", "model_final.pth", "last_checkpoint")):
    """A folder holding what a run wrote (``files``), a log, and a file of the user's; {name: content}."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in files + ("log.txt", "notes.txt"):
        (folder / name).write_text(f"the earlier {name}")
    return {p.name: p.read_text() for p in folder.iterdir()}


def _refused_run(out, files, key="OUTPUT_DIR"):
    """The line a training into ``out``, which holds ``files`` of an earlier run, is refused with."""
    return (f"error: {key} {out} holds a training run ({', '.join(files)}): a training into it would replace its "
            "checkpoints and add to its metrics.json. Go on from its last checkpoint with --resume, give another "
            f"{key}, or start over with --restart (it moves the run's files into {out / 'earlier_run_1'})")


@pytest.mark.parametrize("files", [("metrics.json",), ("last_checkpoint", "model_0000004.pth")])
def test_a_training_into_a_started_or_finished_run_is_refused_with_the_choices(tmp_path, files):
    out = tmp_path / "out"
    before = _earlier_run(out, files)
    proc = run_train_net("--config-file", SHAPES_CONFIG, *TINY_OPTS, "SOLVER.MAX_ITER", 1, "OUTPUT_DIR", out)
    assert_one_line_error(proc, 1, _refused_run(out, sorted(files)))
    assert {p.name: p.read_text() for p in out.iterdir() if p.name != LOCK} == before  # nothing written


def test_a_folder_with_only_a_log_or_nothing_is_no_run_and_a_training_holds_its_folder_locked(tmp_path):
    import fcntl

    from dynamic_rcnn.engine.launch import claim_output_dir

    (tmp_path / "log.txt").write_text("a log")
    (tmp_path / "tiny.pth").write_text("weights of the user's, not a run's checkpoint")
    for folder in (tmp_path, tmp_path / "new"):
        with claim_output_dir(str(folder), "OUTPUT_DIR", resume=False, restart=False):
            with open(folder / LOCK) as f, pytest.raises(BlockingIOError):
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while the run goes on
        with open(folder / LOCK) as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when it ends


@pytest.mark.parametrize("options", [[], ["--resume"]])
def test_a_folder_a_training_runs_in_is_refused_to_a_second_one(tmp_path, options):
    import fcntl

    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK).write_text("process 4242 on a-host since 2024-01-01 12:00:00")
    with open(out / LOCK) as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a training running into out
        proc = run_train_net("--config-file", SHAPES_CONFIG, *options, *TINY_OPTS, "SOLVER.MAX_ITER", 1,
                             "OUTPUT_DIR", out)
    assert_one_line_error(proc, 1, (
        f"error: OUTPUT_DIR {out} is in use by another training (process 4242 on a-host since 2024-01-01 12:00:00): "
        "two runs in one folder mix their checkpoints, config and metrics. Give another OUTPUT_DIR, or wait until "
        "that run ends"))
    assert sorted(p.name for p in out.iterdir()) == [LOCK]


@pytest.mark.slow
def test_restart_moves_the_earlier_run_aside_says_so_and_trains(tmp_path):
    """A stale lock (the file of a killed run, not held) blocks nothing; the user's own files stay."""
    out = tmp_path / "out"
    before = _earlier_run(out, ("metrics.json", "model_final.pth", "last_checkpoint", "config.yaml"))
    (out / LOCK).write_text("process 4242 on a-host since 2024-01-01 12:00:00")
    proc = run_train_net("--config-file", SHAPES_CONFIG, "--restart", *TINY_OPTS, "SOLVER.MAX_ITER", 1,
                         "OUTPUT_DIR", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    earlier = out / "earlier_run_1"
    assert (f"note: --restart: the earlier run's files in {out} (config.yaml, last_checkpoint, log.txt, metrics.json, "
            f"model_final.pth) moved to {earlier}; delete that folder to free the space\n") in proc.stdout
    assert {p.name: p.read_text() for p in earlier.iterdir()} == {k: v for k, v in before.items() if k != "notes.txt"}
    assert (out / "notes.txt").read_text() == before["notes.txt"]
    assert (out / "model_final.pth").stat().st_size > 1000 and '"iteration": 0' in (out / "metrics.json").read_text()


def test_restart_with_resume_or_eval_only_is_refused(tmp_path):
    for other in ("--resume", "--eval-only"):
        proc = run_train_net("--config-file", SHAPES_CONFIG, "--restart", other, *TINY_OPTS, "SOLVER.MAX_ITER", 1,
                             "OUTPUT_DIR", tmp_path)
        assert_one_line_error(proc, 2, (
            f"train_net.py: error: --restart starts the training over: it has no use with {other} (which "
            f"{'goes on from the last checkpoint' if other == '--resume' else 'trains nothing'})"))


def test_a_batch_that_the_processes_cannot_share_is_refused_at_start_up_naming_the_key(tmp_path):
    train_net, args = _in_process("SOLVER.IMS_PER_BATCH", 3, "OUTPUT_DIR", tmp_path / "out", options=["--num-gpus", 2])
    assert _one_line_exit(train_net, args) == (
        "error: SOLVER.IMS_PER_BATCH = 3 is not divisible by the 2 processes (--num-gpus x --num-machines): each "
        "process takes an equal share of the batch. Set SOLVER.IMS_PER_BATCH to a multiple of 2 (e.g. 4)")
    assert not (tmp_path / "out").exists()


def test_a_taken_port_of_dist_url_is_refused_before_launch_naming_the_option(tmp_path):
    import socket

    with socket.socket() as taken:  # another multi-process run's store
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        url = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        train_net, args = _in_process("SOLVER.IMS_PER_BATCH", 4, "OUTPUT_DIR", tmp_path / "out",
                                      options=["--num-gpus", 2, "--dist-url", url])
        assert _one_line_exit(train_net, args) == (
            f"error: --dist-url {url}: its port {url.rsplit(':', 1)[1]} is taken on this machine (another "
            "multi-process run?): give another --dist-url tcp://127.0.0.1:PORT, or --dist-url auto for a free port "
            "(on one machine)")
    assert not (tmp_path / "out").exists()


def as_a_terminal_job():
    """``preexec_fn`` of a training the test presses Ctrl-C in: SIGINT as a terminal's foreground job has it. A test
    session started in the background of a non-interactive shell (``make test &``) passes SIGINT on ignored, and a
    Python started so never raises KeyboardInterrupt: the training would go on (seen in a fresh-clone run)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_training(cmd, out, timeout=600):
    """
    Start ``cmd`` (a training into ``out``) in a process group of its own, press Ctrl-C (SIGINT to the group, as a
    terminal does) once it has written a checkpoint; returns (the process, its stderr, the checkpoint named then).
    """
    import contextlib
    import signal
    import time

    with open(out.parent / "stdout.txt", "w") as stdout, open(out.parent / "stderr.txt", "w+") as stderr:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=stdout, stderr=stderr, text=True, start_new_session=True,
                                env=dict(os.environ, PYTHONWARNINGS="ignore"), preexec_fn=as_a_terminal_job)
        start = time.time()
        while not (out / "last_checkpoint").is_file() and proc.poll() is None and time.time() - start < timeout:
            time.sleep(0.2)
        tagged = (out / "last_checkpoint").read_text() if (out / "last_checkpoint").is_file() else None
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=180)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # what is left of it, whatever happened
        stderr.seek(0)
        return proc, stderr.read(), tagged


def assert_interrupted_in_one_line(proc, stderr, out, tagged, cmd):
    """Exit 130 with one line: the iteration reached, the intact checkpoint, the --resume command."""
    import re
    import shlex

    assert tagged is not None and proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    line = stderr.strip().splitlines()[-1]
    found = re.fullmatch(r"error: training interrupted \(Ctrl-C\) at iteration (\d+) of 100000; the last "
                         r"checkpoint, (.*), is intact; go on from it with: (.*)", line)
    assert found, line
    assert found[2] == str(out / (out / "last_checkpoint").read_text())
    assert int(found[1]) >= int(re.search(r"\d+", tagged)[0])  # the checkpoint after that iteration was written
    resume = shlex.split(found[3])
    split = cmd.index("MODEL.DEVICE")  # the overrides, which --resume goes before
    assert resume[0] in ("python", sys.executable) and resume[1:] == cmd[1:split] + ["--resume"] + cmd[split:]
    return [sys.executable] + resume[1:]


@pytest.mark.slow
def test_ctrl_c_is_one_line_with_the_iteration_the_intact_checkpoint_and_the_resume_command(tmp_path):
    import contextlib
    import signal

    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", SHAPES_CONFIG,
           *map(str, TINY_OPTS), "SOLVER.MAX_ITER", "100000", "SOLVER.CHECKPOINT_PERIOD", "3", "OUTPUT_DIR", str(out)]
    proc, stderr, tagged = interrupt_training(cmd, out)
    resume = assert_interrupted_in_one_line(proc, stderr, out, tagged, cmd)
    # The folder is free again (the lock went with the run), and the command goes on after that checkpoint.
    tagged = (out / "last_checkpoint").read_text()
    proc = subprocess.Popen(resume, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=as_a_terminal_job)
    going_on = f"Starting training from iteration {int(tagged[len('model_'):-len('.pth')]) + 1}"
    try:
        for line in proc.stdout:
            if going_on in line or "error:" in line:
                break
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        rest = proc.communicate(timeout=180)[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert going_on in line and proc.returncode == 130, line + rest[-3000:]


@pytest.mark.slow
def test_ctrl_c_while_a_checkpoint_is_saved_is_the_same_line_and_leaves_no_cut_file(tmp_path, monkeypatch, capsys):
    """torch.save cut by the Ctrl-C fails on its way out (a RuntimeError of its zip writer): still a Ctrl-C."""
    import torch

    from dynamic_rcnn.engine.launch import launch_checked

    def cut(data, f, **kwargs):
        f.write(b"PK\x03\x04 the first part of a checkpoint")
        try:
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 61418560 vs 61418448")

    out = tmp_path / "out"
    train_net, args = _in_process("SOLVER.MAX_ITER", 2, "SOLVER.CHECKPOINT_PERIOD", 1, "OUTPUT_DIR", out)
    monkeypatch.setattr(torch, "save", cut)
    with pytest.raises(SystemExit) as e:
        launch_checked(train_net.main, args, train_net.checked_config, output_dir=lambda checked: checked[0].OUTPUT_DIR)
    assert e.value.code == 130
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(
        "error: training interrupted (Ctrl-C) at iteration 0 of 2; no checkpoint was saved yet; start again (from "
        "iteration 0) with: ")
    assert not [n for n in os.listdir(out) if ".pth" in n or n == "last_checkpoint"]
