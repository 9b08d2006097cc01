"""
Every command and snippet that README.md and the pages it links (docs/*.md, MODEL_ZOO.md) print in a
code block is run here exactly as printed, in a sandbox folder that holds the project (linked) and
the files the commands name.

A command either runs to its end, or starts training (it is stopped once detectron2 says "Starting
training": the long jobs), or stops with the error README says it gives here (the COCO commands: no
COCO on this machine). A command or snippet README gains without an entry below fails the test.
"""
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys

import cv2
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from dynamic_rcnn.data import generate_shapes_image

from conftest import ROOT

PAGES = [os.path.join(ROOT, "README.md"), os.path.join(ROOT, "MODEL_ZOO.md")] + sorted(
    glob.glob(os.path.join(ROOT, "docs", "*.md")))
RUN_DIR = "output/shapes_dynamic_rcnn_R_18_FPN"
NO_COCO = "error: DATASETS.TRAIN: the dataset 'coco_2017_train' needs datasets/coco/annotations/instances_train2017.json"
NO_COCO_LAZY = "error: dataloader.train.dataset.names: the dataset 'coco_2017_train' needs"
STARTS = "Starting training from iteration 0"

# command -> what it must do here: "ok" (exit 0), STARTS, or ("fails", the last stderr line's start).
COMMANDS = {
    "make releases": STARTS,
    "python train_net.py --config-file configs/dynamic_rcnn_R_50_FPN_1x.yaml --num-gpus 8": ("fails", NO_COCO),
    "python train_net.py --config-file configs/dynamic_cascade_rcnn_R_50_FPN_1x.yaml --num-gpus 8": ("fails", NO_COCO),
    "python train_net.py --config-file configs/dynamic_rcnn_R_50_FPN_1x.yaml --num-gpus 8 --resume": ("fails", NO_COCO),
    "python train_net.py --config-file configs/dynamic_rcnn_R_50_FPN_1x.yaml --eval-only MODEL.WEIGHTS "
    "output/model_final.pth": ("fails", "error: DATASETS.TEST: the dataset 'coco_2017_val' needs"),
    "python train_net.py --config-file configs/dynamic_rcnn_R_50_FPN_1x.yaml --num-gpus 8 --num-machines 2 "
    "--machine-rank 0 --dist-url tcp://10.0.0.1:29500": ("fails", NO_COCO),
    "python lazy_train_net.py --config-file configs/lazy/dynamic_rcnn_R_50_FPN_1x.py --num-gpus 8": ("fails", NO_COCO_LAZY),
    "python lazy_train_net.py --config-file configs/lazy/dynamic_rcnn_R_50_FPN_1x.py --num-gpus 8 "
    "model.roi_heads.tracker.iou_topk=50": ("fails", NO_COCO_LAZY),
    "python tools/publish_model.py output/shapes_dynamic_rcnn_R_18_FPN --name dynamic_rcnn_R_18_FPN_shapes "
    "--out releases": "ok",
    "python train_net.py --config-file configs/shapes/dynamic_rcnn_R_18_FPN_shapes.yaml --train-json train.json "
    "--train-images images/ --test-json val.json --test-images images/ OUTPUT_DIR output/mine": STARTS,
    "python demo.py --config-file configs/shapes/dynamic_rcnn_R_18_FPN_shapes.yaml --input some.jpg a/folder/ "
    "--output drawn/ --confidence-threshold 0.5 MODEL.WEIGHTS output/shapes_dynamic_rcnn_R_18_FPN/model_final.pth": "ok",
    "python -m dynamic_rcnn.tools.plot output/shapes_dynamic_rcnn_R_18_FPN": "ok",
    # The comparison is stopped once its first run trains; the report is then made of nothing recorded yet.
    "python -m dynamic_rcnn.tools.compare --config-file configs/shapes/faster_rcnn_R_18_FPN_shapes.yaml --train-json "
    "train.json --train-images images/ --test-json val.json --test-images images/ --seeds 0 1 2 3 --out "
    "output/compare_mine": ("until", "compare: run 1 of 8: reference, seed 0"),
    "python -m dynamic_rcnn.tools.compare --out output/compare_mine --report": "ok",
    "python tools/publish_model.py output/shapes_dynamic_rcnn_R_18_FPN --name my_shapes_model --out my_releases "
    "--verify": "ok",
    # Last: it trains into the folder of the finished run the commands above read (moving that run aside).
    "make demo": STARTS,
}
# Commands not run here, and why.
NOT_RUN = {
    "make test": "it is this test suite: CI runs it (.ci/run)",
}
# The first line of each Python snippet -> what its output must contain (checked besides exit 0).
SNIPPETS = {
    "from detectron2.engine import DefaultTrainer": "Dynamic R-CNN update at iteration 5 from 5 statistics",
    "from detectron2.data import build_detection_train_loader": "DynamicTracker(iou_threshold=",
    "from detectron2.config import LazyConfig, instantiate":
        "MODEL.DYNAMIC_RCNN.UPDATE_PERIOD = 0 is invalid: it must be an integer >= 1 (argument `update_period`).",
    "import cv2": "num_instances=",
    "from dynamic_rcnn.data import register_voc": "",
    "from dynamic_rcnn import model_zoo": "GeneralizedRCNN",
}
# Snippets that must run without dynamic_rcnn (plain detectron2): the package is made unimportable.
WITHOUT_DYNAMIC_RCNN = {"import cv2"}
# Snippets that load a release: it is published first, as the pages make it.
NEED_A_RELEASE = WITHOUT_DYNAMIC_RCNN | {"from dynamic_rcnn import model_zoo"}


def readme_blocks(lang):
    blocks = []
    for page in PAGES:
        with open(page) as f:
            blocks += re.findall(rf"^```{lang}\n(.*?)^```", f.read(), re.S | re.M)
    return blocks


def readme_commands():
    commands = []
    for block in readme_blocks("bash"):
        for line in block.splitlines():
            line = re.sub(r"(^|\s+)#.*$", "", line).strip()
            if line and line not in commands:
                commands.append(line)
    return commands


def test_every_readme_command_and_snippet_has_an_entry_here():
    commands = readme_commands()
    assert set(commands) == set(COMMANDS) | set(NOT_RUN), set(commands) ^ (set(COMMANDS) | set(NOT_RUN))
    firsts = [block.splitlines()[0] for block in readme_blocks("python")]
    assert sorted(firsts) == sorted(SNIPPETS)


def _write_image(path, seed=0):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    image, annos = generate_shapes_image(seed=7, index=seed, image_size=(96, 96))
    cv2.imwrite(path, image)
    return annos


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    """The project linked into a fresh folder, with the files README's commands name."""
    box = tmp_path_factory.mktemp("readme")
    for name in os.listdir(ROOT):
        if name not in ("output", "releases", ".git", ".pytest_cache") and not name.endswith(".egg-info"):
            os.symlink(os.path.join(ROOT, name), box / name)
    os.makedirs(box / "releases")
    for name in os.listdir(os.path.join(ROOT, "releases")):
        if name.endswith(".json"):
            shutil.copy(os.path.join(ROOT, "releases", name), box / "releases")
    # A finished shapes run (random weights): what publish_model, demo.py and the plot read.
    from dynamic_rcnn.engine import load_config

    cfg = load_config(os.path.join(ROOT, "configs", "shapes", "dynamic_rcnn_R_18_FPN_shapes.yaml"))
    run = box / RUN_DIR
    os.makedirs(run)
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(run)).save("model_final")
    (run / "config.yaml").write_text(cfg.dump())
    with open(run / "metrics.json", "w") as f:
        for it in range(19, 100, 20):
            f.write(json.dumps({"iteration": it, "dynamic_rcnn/iou_threshold": 0.4 + it / 1000,
                                "dynamic_rcnn/beta": 1.0 - it / 1000, "total_loss": 1.0 / (it + 1)}) + "\n")
    # Images for demo.py and the deployment snippet; a COCO json pair for the own-data command.
    for path in ("some.jpg", "a/folder/x.png"):
        _write_image(str(box / path))
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "circle"}, {"id": 2, "name": "square"},
                                                            {"id": 3, "name": "triangle"}]}
    for i in range(4):
        annos = _write_image(str(box / "images" / f"{i}.png"), seed=i)
        coco["images"].append({"id": i, "file_name": f"{i}.png", "height": 96, "width": 96})
        for a in annos:
            x0, y0, x1, y1 = a["bbox"]
            coco["annotations"].append({"id": len(coco["annotations"]) + 1, "image_id": i, "iscrowd": 0,
                                        "category_id": a["category_id"] + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                        "area": (x1 - x0) * (y1 - y0)})
    for name in ("train.json", "val.json"):
        (box / name).write_text(json.dumps(coco))
    # `python` in the commands is this environment's (its bin folder first: a venv's python finds
    # its packages through the pyvenv.cfg beside that folder).
    bin_dir = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", PYTHONWARNINGS="ignore")
    return box, env


def run(command, cwd, env, expect, timeout=900):
    """Run ``command`` in bash; for STARTS (or ``("until", line)``), stop its process group once training has
    started (that line is printed)."""
    proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    marker = STARTS if expect == STARTS else expect[1] if isinstance(expect, tuple) and expect[0] == "until" else None
    if marker:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if marker in line:
                os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=timeout)
        return "".join(lines)
    out, _ = proc.communicate(timeout=timeout)
    return out, proc.returncode


@pytest.mark.slow
@pytest.mark.parametrize("command", list(COMMANDS))
def test_readme_command(command, sandbox):
    box, env = sandbox
    expect = COMMANDS[command]
    if expect == STARTS or expect[0] == "until":
        out = run(command, box, env, expect)
        assert (STARTS if expect == STARTS else expect[1]) in out, out[-3000:]
        return
    out, rc = run(command, box, env, expect)
    if expect == "ok":
        assert rc == 0, out[-3000:]
    else:
        assert rc != 0 and "Traceback" not in out, out[-3000:]
        assert out.strip().splitlines()[-1].startswith(expect[1]), out[-1500:]


@pytest.mark.slow
@pytest.mark.parametrize("first_line", list(SNIPPETS))
def test_readme_snippet(first_line, sandbox, tmp_path):
    box, env = sandbox
    snippet = next(b for b in readme_blocks("python") if b.splitlines()[0] == first_line)
    script = tmp_path / "snippet.py"
    script.write_text(snippet)
    if first_line in NEED_A_RELEASE:
        run(COMMANDS_PUBLISH, box, env, "ok")  # the release the snippet loads, as the pages make it
        # The package is the checkout's (an editable install): its release folder is the sandbox's here.
        env = dict(env, DYNAMIC_RCNN_RELEASES=str(box / "releases"))
    if first_line in WITHOUT_DYNAMIC_RCNN:
        blocker = tmp_path / "blocker" / "dynamic_rcnn"
        os.makedirs(blocker)
        (blocker / "__init__.py").write_text("raise ImportError('this snippet must not need dynamic_rcnn')\n")
        env = dict(env, PYTHONPATH=str(blocker.parent))
    out, rc = run(f"python {script}", box, env, "ok")
    assert rc == 0, out[-3000:]
    assert SNIPPETS[first_line] in out, out[-3000:]


COMMANDS_PUBLISH = next(c for c in COMMANDS if c.startswith("python tools/publish_model.py"))
