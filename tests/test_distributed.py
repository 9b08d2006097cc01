"""Several processes for real: detectron2's ``launch`` with 2 CPU processes (gloo)."""
import json
import os

import pytest

from conftest import tiny_cfg

OPTS = ["MODEL.DYNAMIC_RCNN.WARMUP_IOU", 0.05, "MODEL.DYNAMIC_RCNN.WARMUP_BETA", 50.0,
        "MODEL.DYNAMIC_RCNN.IOU_TOPK", 10, "MODEL.DYNAMIC_RCNN.UPDATE_PERIOD", 3,
        "SOLVER.IMS_PER_BATCH", 4, "SOLVER.MAX_ITER", 5]


def _worker(out_dir):
    import torch
    from detectron2.utils import comm

    from dynamic_rcnn.engine import Trainer
    from dynamic_rcnn import find_trackers

    torch.set_num_threads(1)
    trainer = Trainer(tiny_cfg(*OPTS, "OUTPUT_DIR", out_dir))
    (tracker,) = find_trackers(trainer.model)
    local, windows = [], []
    record, update = tracker.record, tracker.update

    def spy_record(iou, err):
        local.append([float(iou), float(err)])
        record(iou, err)

    def spy_update():
        windows.append([list(v) for v in tracker.window])
        return update()

    tracker.record, tracker.update = spy_record, spy_update
    trainer.train()
    history = {k: [v for v, _ in trainer.storage.history(f"dynamic_rcnn/{k}").values()] for k in ("iou_threshold", "beta")}
    with open(os.path.join(out_dir, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump({"local": local, "windows": windows, "history": history}, f)


@pytest.mark.slow
def test_two_processes_gather_windows_and_apply_the_same_values(tmp_path):
    from detectron2.engine import launch

    out = str(tmp_path)
    launch(_worker, 2, dist_url="auto", args=(out,))
    r0, r1 = (json.load(open(os.path.join(out, f"rank{r}.json"))) for r in (0, 1))
    # Every process recorded its own statistics ...
    assert len(r0["local"]) == len(r1["local"]) == 5
    assert r0["local"] != r1["local"]
    # ... and the update at iteration 3 saw both processes' statistics of iterations 0-2.
    assert len(r0["windows"]) == 1 and r0["windows"] == r1["windows"]
    expected = r0["local"][:3] + r1["local"][:3]  # every process's pairs, process by process
    flat = [x for pair in r0["windows"][0] for x in pair]
    assert flat == pytest.approx([x for pair in expected for x in pair], rel=1e-6)
    # The same threshold and beta in force in both processes at every iteration, moved at 3.
    assert r0["history"] == r1["history"]
    thresholds = r0["history"]["iou_threshold"]
    mean_iou = sum(s[0] for s in expected) / len(expected)
    assert thresholds[:3] == [0.05] * 3 and thresholds[3] == pytest.approx(max(0.05, mean_iou))


CASCADE = ["MODEL.ROI_HEADS.NAME", "DynamicCascadeROIHeads", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True,
           "MODEL.DYNAMIC_RCNN.CASCADE.WARMUP_IOU", [0.05, 0.06, 0.07]]


def _cascade_worker(out_dir):
    import torch
    from detectron2.utils import comm

    from dynamic_rcnn.engine import Trainer
    from dynamic_rcnn import find_trackers

    torch.set_num_threads(1)
    trainer = Trainer(tiny_cfg(*OPTS, *CASCADE, "OUTPUT_DIR", out_dir))
    windows = {}
    for k, tracker in enumerate(find_trackers(trainer.model)):
        def spy_update(tracker=tracker, update=tracker.update, k=k):
            windows.setdefault(k, []).append([list(v) for v in tracker.window])
            return update()

        tracker.update = spy_update
    trainer.train()
    history = {f"{k}/{name}": [v for v, _ in trainer.storage.history(f"stage{k}/dynamic_rcnn/{name}").values()]
               for k in range(3) for name in ("iou_threshold", "beta")}
    with open(os.path.join(out_dir, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump({"windows": windows, "history": history}, f)


@pytest.mark.slow
def test_two_processes_hold_the_same_windows_for_every_stage(tmp_path):
    from detectron2.engine import launch

    out = str(tmp_path)
    launch(_cascade_worker, 2, dist_url="auto", args=(out,))
    r0, r1 = (json.load(open(os.path.join(out, f"rank{r}.json"))) for r in (0, 1))
    assert sorted(r0["windows"]) == ["0", "1", "2"] and r0["windows"] == r1["windows"]
    # The update at iteration 3 of every stage: 3 iterations x 2 processes.
    assert all(len(w[0]) == 6 for w in r0["windows"].values())
    assert r0["history"] == r1["history"]
    # Every stage's threshold: its floor before the update, then the rule on that stage's gathered window.
    for k, floor in enumerate([0.05, 0.06, 0.07]):
        thresholds = r0["history"][f"{k}/iou_threshold"]
        mean_iou = sum(s[0] for s in r0["windows"][str(k)][0]) / 6
        assert thresholds[:3] == pytest.approx([floor] * 3)
        assert thresholds[3] == pytest.approx(max(floor, mean_iou))


def _counting_worker(out_dir, opts):
    """Trains with the hook, counting the collectives the project makes (calls of comm.all_gather from it)."""
    import inspect

    import torch
    from detectron2.utils import comm

    from dynamic_rcnn.engine import Trainer

    torch.set_num_threads(1)
    trainer = Trainer(tiny_cfg(*opts, "OUTPUT_DIR", out_dir))
    calls, all_gather = [], comm.all_gather

    def counted(data, group=None):
        if inspect.stack()[1].frame.f_globals.get("__name__", "").startswith("dynamic_rcnn"):
            calls.append(comm.get_rank())
        return all_gather(data, group=group)

    comm.all_gather = counted
    try:
        trainer.train()
    finally:
        comm.all_gather = all_gather
    history = [v for v, _ in trainer.storage.history("dynamic_rcnn/iou_threshold").values()]
    with open(os.path.join(out_dir, f"rank{comm.get_rank()}.json"), "w") as f:
        json.dump({"collectives": len(calls), "history": history}, f)


@pytest.mark.slow
def test_one_collective_an_update_period_and_every_checkpoint_holds_every_process_window(tmp_path):
    """2 processes, 20 iterations, an update every 5: at most 6 collectives (one at start, one an update); with a
    checkpoint every 3 iterations between the updates, each checkpoint holds both processes' window."""
    import torch
    from detectron2.engine import launch

    opts = OPTS + ["MODEL.DYNAMIC_RCNN.UPDATE_PERIOD", 5, "SOLVER.MAX_ITER", 20]
    out = str(tmp_path / "a")
    launch(_counting_worker, 2, dist_url="auto", args=(out, opts))
    r0, r1 = (json.load(open(os.path.join(out, f"rank{r}.json"))) for r in (0, 1))
    assert r0["collectives"] == r1["collectives"] <= 6, (r0, r1)
    assert r0["history"] == r1["history"] and len(set(r0["history"])) > 1
    out = str(tmp_path / "b")
    launch(_counting_worker, 2, dist_url="auto", args=(out, opts + ["SOLVER.CHECKPOINT_PERIOD", 3]))
    for it, pairs in ((2, 6), (5, 2), (17, 6)):  # since the last update: 3, 1 and 3 iterations of both processes
        ckpt = torch.load(os.path.join(out, f"model_{it:07d}.pth"), map_location="cpu", weights_only=False)
        assert len(ckpt["trainer"]["hooks"]["DynamicRCNNHook"]["stages"][0]["window"]) == pairs, it


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_machines_on_one_host_apply_the_same_values(tmp_path):
    """train_net.py --num-machines 2: each "machine" one process, its own --machine-rank, gloo over TCP."""
    import re
    import subprocess
    import sys

    from conftest import ROOT, TINY_OPTS

    out = str(tmp_path)
    url = f"tcp://127.0.0.1:{_free_port()}"
    opts = [str(o) for o in TINY_OPTS + OPTS] + ["SOLVER.MAX_ITER", "7", "OUTPUT_DIR", out]
    machines = [
        subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file",
             "configs/shapes/dynamic_rcnn_R_18_FPN_shapes.yaml", "--num-gpus", "1", "--num-machines", "2",
             "--machine-rank", str(rank), "--dist-url", url, *opts],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"),
        )
        for rank in (0, 1)
    ]
    logs = [m.communicate(timeout=600)[0] for m in machines]
    assert [m.returncode for m in machines] == [0, 0], "\n".join(log[-2000:] for log in logs)
    # Each process logs its updates (rank 1 to log.txt.rank1): the same values at the same iterations.
    updates = []
    for name in ("log.txt", "log.txt.rank1"):
        with open(os.path.join(out, name)) as f:
            updates.append(re.findall(r"Dynamic R-CNN update at iteration (\d+) from (\d+) statistics: "
                                      r"IoU threshold \S+ -> (\S+), beta \S+ -> (\S+)", f.read()))
    assert updates[0] == updates[1]
    # Updates at 3 and 6 (UPDATE_PERIOD 3), each from both machines' statistics of 3 iterations.
    assert [(it, n) for it, n, _, _ in updates[0]] == [("3", "6"), ("6", "6")]
    assert float(updates[0][0][2]) != 0.05 and float(updates[0][0][3]) != 50.0


def _read_an_image_cut_after_start(args):
    """
    One process of two: it loads its own one-image dataset (checked at load), then the image of
    process 1 is cut short (``args.how == "cut"``; a disk or a copy going wrong while the run goes
    on) and read, or process 1 is killed (``"kill"``); process 0 stands for the rest of the run.
    """
    import signal
    import time

    from detectron2.data import DatasetCatalog, build_detection_train_loader
    from detectron2.structures import BoxMode
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    rank = comm.get_rank()
    setup_logger(args.out, distributed_rank=rank)  # as train_net.py's default_setup
    image = os.path.join(args.out, f"image{rank}.png")
    box = {"bbox": [1, 1, 30, 30], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "iscrowd": 0}
    DatasetCatalog.register("one_image", lambda: [
        {"file_name": image, "image_id": 0, "height": 64, "width": 64, "annotations": [box]}])
    loader = build_detection_train_loader(tiny_cfg("DATASETS.TRAIN", ("one_image",)))
    comm.synchronize()
    if rank == 1:
        if args.how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        with open(image, "wb") as f:
            f.write(b"cut")
        next(iter(loader))
    time.sleep(300)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["cut", "kill"])
def test_a_failing_process_ends_the_run_in_one_line_naming_the_file_and_its_log(tmp_path, how):
    import time
    from types import SimpleNamespace

    import cv2
    import numpy as np

    from dynamic_rcnn.engine.launch import launch_checked

    out = str(tmp_path)
    for rank in (0, 1):
        cv2.imwrite(os.path.join(out, f"image{rank}.png"), np.zeros((64, 64, 3), np.uint8))
    args = SimpleNamespace(num_gpus=2, num_machines=1, machine_rank=0, dist_url="auto", out=out, how=how)
    start = time.time()
    with pytest.raises(SystemExit) as e:
        launch_checked(_read_an_image_cut_after_start, args, lambda a: a, output_dir=lambda a: a.out)
    assert time.time() - start < 200  # process 0 would sleep 300 s: it was stopped
    log = os.path.join(out, "log.txt.rank1")
    if how == "kill":
        assert e.value.code == f"error: process 1 (rank 1) was killed by SIGKILL (out of memory?); its log is {log}"
        return
    image = os.path.join(out, "image1.png")
    assert e.value.code == (
        f"error: process 1 (rank 1) failed: PIL.UnidentifiedImageError: cannot identify image file "
        f"<_io.BufferedReader name='{image}'>; the traceback is in {log}")
    with open(log) as f:
        text = f.read()
    assert "Process of rank 1 failed:\nTraceback" in text and f"name='{image}'" in text


@pytest.mark.slow
def test_a_finished_run_is_refused_before_any_process_starts(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT, TINY_OPTS

    for name in ("metrics.json", "model_final.pth", "last_checkpoint"):
        (tmp_path / name).write_text("an earlier run's")
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file",
         "configs/shapes/dynamic_rcnn_R_18_FPN_shapes.yaml", "--num-gpus", "2", "--dist-url", "auto",
         *map(str, TINY_OPTS + OPTS), "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: OUTPUT_DIR {tmp_path} holds a training run")
    assert not (tmp_path / "log.txt").exists()  # no process was started


@pytest.mark.slow
def test_ctrl_c_of_two_processes_is_one_line_with_the_iteration_the_checkpoint_and_the_resume_command(tmp_path):
    import sys

    from conftest import ROOT, TINY_OPTS
    from test_train_net import assert_interrupted_in_one_line, interrupt_training

    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file",
           "configs/shapes/dynamic_rcnn_R_18_FPN_shapes.yaml", "--num-gpus", "2", "--dist-url", "auto",
           *map(str, TINY_OPTS + OPTS), "SOLVER.MAX_ITER", "100000", "SOLVER.CHECKPOINT_PERIOD", "3",
           "OUTPUT_DIR", str(out)]
    proc, stderr, tagged = interrupt_training(cmd, out)
    assert_interrupted_in_one_line(proc, stderr, out, tagged, cmd)


def _never_called(args):
    raise AssertionError("the processes must not get this far")


@pytest.mark.slow
def test_a_port_taken_after_the_start_up_check_is_named_with_dist_url(tmp_path, monkeypatch):
    """The check before launch passed, then another run took the port: the process that fails says so too."""
    import socket
    from types import SimpleNamespace

    from dynamic_rcnn.engine import launch as launch_module

    monkeypatch.setattr(launch_module, "check_dist_url", lambda args: None, raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        url = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        args = SimpleNamespace(num_gpus=2, num_machines=1, machine_rank=0, dist_url=url)
        with pytest.raises(SystemExit) as e:
            launch_module.launch_checked(_never_called, args, lambda a: a)
    assert e.value.code == (
        f"error: --dist-url {url}: its port {url.rsplit(':', 1)[1]} is taken on this machine (another multi-process "
        "run?): give another --dist-url tcp://127.0.0.1:PORT, or --dist-url auto for a free port (on one machine)")
