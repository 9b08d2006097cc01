"""LazyConfig: configs/lazy/*.py and lazy_train_net.py, as a detectron2 user runs them."""
import json
import os
import subprocess
import sys

import pytest
from detectron2.config import LazyConfig, instantiate

from conftest import ROOT

LAZY = os.path.join(ROOT, "configs", "lazy")
# Shrink detectron2's common COCO setup to the tiny shapes data on the CPU.
TINY = [
    "train.device=cpu", "train.init_checkpoint=", "train.max_iter=3", "train.log_period=1",
    "dataloader.train.dataset.names=shapes_tiny_train", "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0",
    "dataloader.train.mapper.augmentations.0.short_edge_length=[128]",
    "dataloader.train.mapper.augmentations.0.max_size=128",
    "dataloader.test.dataset.names=shapes_tiny_train", "dataloader.test.num_workers=0",
    "dataloader.test.mapper.augmentations.0.short_edge_length=128",
    "dataloader.test.mapper.augmentations.0.max_size=128",
    # From scratch (no ImageNet weights here) FrozenBN diverges: BN, and a small learning rate.
    "model.backbone.bottom_up.stem.norm=BN", "model.backbone.bottom_up.stages.norm=BN", "optimizer.lr=0.002",
    "model.roi_heads.num_classes=3", "model.roi_heads.batch_size_per_image=64",
    "model.proposal_generator.pre_nms_topk=[300,100]", "model.proposal_generator.post_nms_topk=[100,50]",
]


def run(config, *overrides, timeout=600):
    cmd = [sys.executable, os.path.join(ROOT, "lazy_train_net.py"), "--config-file", os.path.join(LAZY, config),
           *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))


@pytest.mark.parametrize("config, mask_on", [("dynamic_rcnn_R_50_FPN_1x.py", False),
                                             ("dynamic_mask_rcnn_R_50_FPN_1x.py", True)])
def test_lazy_configs_build_the_papers_model(config, mask_on):
    cfg = LazyConfig.load(os.path.join(LAZY, config))
    model = instantiate(cfg.model)
    heads = model.roi_heads
    assert type(heads).__name__ == "DynamicROIHeads" and heads.mask_on == mask_on
    t = heads.tracker
    assert (t.iou_topk, t.beta_topk, t.update_period, t.warmup_iou, t.warmup_beta) == (75, 10, 100, 0.4, 1.0)
    assert heads.proposal_matcher.thresholds[1] == 0.4 and heads.box_predictor.smooth_l1_beta == 1.0
    assert model.proposal_generator.nms_thresh == 0.85
    assert cfg.dataloader.train.mapper.use_instance_mask == mask_on


@pytest.mark.parametrize("override, message", [
    ("model.roi_heads.tracker.update_period=0", "UPDATE_PERIOD = 0 is invalid: it must be an integer >= 1"),
    ("model.roi_heads.tracker.warmup_iou=1.5", "WARMUP_IOU = 1.5 is invalid"),
    ("model.roi_heads.tracker.iou_topk=-1", "IOU_TOPK = -1 is invalid"),
    ("model.roi_heads.box_predictor.box_reg_loss_type=giou", "ENABLE_DSL = True needs MODEL.ROI_BOX_HEAD.BBOX_REG_LOSS_TYPE"),
])
def test_a_bad_lazy_value_fails_when_the_model_is_built(override, message):
    cfg = LazyConfig.apply_overrides(LazyConfig.load(os.path.join(LAZY, "dynamic_rcnn_R_50_FPN_1x.py")), [override])
    with pytest.raises(ValueError, match=message):
        instantiate(cfg.model)


@pytest.mark.slow
def test_lazy_train_net_trains_with_the_hook_and_logs_the_updates(tmp_path):
    out = str(tmp_path)
    proc = run("dynamic_rcnn_R_50_FPN_1x.py", *TINY, "model.roi_heads.tracker.update_period=1",
               "model.roi_heads.tracker.warmup_iou=0.05", f"train.output_dir={out}")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert "Dynamic R-CNN update at iteration 1 from 1 statistics" in log  # the dynamic_rcnn logger is set up
    assert " iou_thr: " in log and " beta: " in log  # the console line
    with open(os.path.join(out, "metrics.json")) as f:
        rows = [json.loads(line) for line in f]
    loss_rows = [r for r in rows if "total_loss" in r]
    assert [r["iteration"] for r in loss_rows] == [0, 1, 2]
    assert all("dynamic_rcnn/iou_threshold" in r for r in loss_rows)  # the hook runs before the writers
    assert os.path.isfile(os.path.join(out, "model_final.pth"))


def test_lazy_train_net_refuses_a_bad_value_before_training(tmp_path):
    proc = run("dynamic_rcnn_R_50_FPN_1x.py", *TINY, "model.roi_heads.tracker.update_period=0",
               f"train.output_dir={tmp_path}")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error: MODEL.DYNAMIC_RCNN.UPDATE_PERIOD = 0 is invalid")
    assert "Traceback" not in proc.stderr
    assert not os.path.exists(os.path.join(str(tmp_path), "metrics.json"))


@pytest.mark.parametrize("config, mask_on, schedule", [("dynamic_cascade_rcnn_R_50_FPN_1x.py", False, 90000),
                                                       ("dynamic_cascade_rcnn_R_50_FPN_3x.py", False, 270000),
                                                       ("dynamic_cascade_mask_rcnn_R_50_FPN_1x.py", True, 90000)])
def test_lazy_dynamic_cascades_are_their_stock_cascade_with_one_tracker_a_stage(config, mask_on, schedule):
    cfg = LazyConfig.load(os.path.join(LAZY, config))
    stock = LazyConfig.load(os.path.join(LAZY, config.replace("dynamic_", "")))
    heads, stock_heads = instantiate(cfg.model).roi_heads, instantiate(stock.model).roi_heads
    assert (type(heads).__name__, type(stock_heads).__name__) == ("DynamicCascadeROIHeads", "CascadeROIHeads")
    assert heads.mask_on == stock_heads.mask_on == mask_on and cfg.train.max_iter == stock.train.max_iter == schedule
    assert [(t.iou_topk, t.warmup_iou, t.warmup_beta, t.beta_topk, t.stats_include_gt) for t in heads.trackers] == [
        (0, 0.5, 1.0, 0, False), (0, 0.6, 1.0, 0, False), (0, 0.7, 1.0, 0, False)]  # the automatic rule
    assert [m.thresholds[1] for m in heads.proposal_matchers] == [0.5, 0.6, 0.7]


@pytest.mark.slow
def test_lazy_train_net_trains_a_dynamic_cascade(tmp_path):
    out = str(tmp_path)
    proc = run("dynamic_cascade_rcnn_R_50_FPN_1x.py", *TINY, *[f"model.roi_heads.trackers.{k}.update_period=1"
                                                               for k in range(3)], f"train.output_dir={out}")
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    for k in range(3):
        assert f"Dynamic R-CNN stage{k} update at iteration 1 from 1 statistics" in log
    with open(os.path.join(out, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if "total_loss" in line]
    assert all(f"stage{k}/dynamic_rcnn/beta" in r for r in rows for k in range(3))


def _lazy(*overrides):
    """lazy_train_net.py's module and its parsed command line (the paper's LazyConfig, shrunk)."""
    from detectron2.engine import default_argument_parser

    from conftest import load_module

    lazy = load_module("lazy_train_net.py")
    args = default_argument_parser().parse_args(
        ["--config-file", os.path.join(LAZY, "dynamic_rcnn_R_50_FPN_1x.py"), *TINY, *map(str, overrides)])
    return lazy, args


def _one_line_exit(lazy, args):
    from dynamic_rcnn.engine.launch import launch_checked

    with pytest.raises(SystemExit) as e:
        launch_checked(lazy.main, args, lazy.checked_config)
    return e.value.code


def test_lazy_amp_without_a_gpu_and_an_output_dir_in_the_way_are_refused_at_start_up(tmp_path):
    import torch

    unseen = "" if torch.cuda.is_available() else " (no GPU is visible)"
    lazy, args = _lazy("train.amp.enabled=True", f"train.output_dir={tmp_path / 'out'}")
    assert _one_line_exit(lazy, args) == (
        f"error: train.amp.enabled is True, but the model is on cpu{unseen}: detectron2's AMPTrainer (mixed "
        "precision) trains on a GPU only. Set train.amp.enabled False to train on the CPU")
    (tmp_path / "a_file").write_text("")
    lazy, args = _lazy(f"train.output_dir={tmp_path / 'a_file' / 'out'}")
    assert _one_line_exit(lazy, args) == (
        f"error: train.output_dir {tmp_path / 'a_file' / 'out'} cannot be created: {tmp_path / 'a_file'} is a file, "
        "not a folder")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_lazy_train_net_saves_checkpoints_whole_or_not_at_all(tmp_path, monkeypatch):
    import errno

    import torch

    from dynamic_rcnn.engine.checkpoint import CheckpointError

    save = torch.save

    def full_disk(data, f, **kwargs):  # for checkpoints: the final evaluation's files are written
        if not f.name.endswith(".pth.tmp"):
            return save(data, f, **kwargs)
        f.write(b"PK\x03\x04 the first part of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    lazy, args = _lazy("train.max_iter=1", f"train.output_dir={tmp_path}")
    cfg = lazy.checked_config(args)
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=rf"^Cannot save {tmp_path / 'model_final.pth'}: \[Errno 28\] No space"):
        lazy.do_train(args, cfg)
    assert not [n for n in os.listdir(tmp_path) if ".pth" in n]


@pytest.mark.parametrize("override, message", [
    ("train.max_iter", "is not key=value: write it as train.max_iter=VALUE"),
    ("train.max_itr=3", ": train has no key max_itr (did you mean max_iter?): a misspelled key? To add a new one, "
                        "write +train.max_itr=3"),
    ("model.roi_heads.tracker.iou_topkk=5", ": model.roi_heads.tracker has no key iou_topkk (did you mean iou_topk?): "
                                            "a misspelled key? To add a new one, write "
                                            "+model.roi_heads.tracker.iou_topkk=5"),
    ("model.roi_head.tracker.iou_topk=5", ": model has no key roi_head (did you mean roi_heads?): a misspelled key? To "
                                          "add a new one, write +model.roi_head.tracker.iou_topk=5"),
    ("train.max_iter.x=5", ": train.max_iter is a value (3), not a config with keys"),
    ("train.max_iter=3=4", "cannot be read: mismatched input '=' expecting <EOF> (detectron2 reads key=value with "
                           "hydra's override grammar)"),
])
def test_a_lazy_override_without_equals_or_of_a_misspelled_key_is_one_line_naming_it(tmp_path, override, message):
    lazy, args = _lazy(f"train.output_dir={tmp_path / 'out'}", override)
    assert _one_line_exit(lazy, args) == f"error: override {override}{'' if message[0] == ':' else ' '}{message}"
    assert not (tmp_path / "out").exists()


def test_a_lazy_override_of_an_argument_the_config_does_not_list_is_taken(tmp_path):
    # detectron2's ROIHeads (a base class of DynamicROIHeads) takes proposal_append_gt, which the config does not
    # list: an argument to set, not a misspelled key; a new key with `+`.
    lazy, args = _lazy(f"train.output_dir={tmp_path}", "model.roi_heads.proposal_append_gt=False", "+train.mine=1")
    cfg = lazy.checked_config(args)
    assert cfg.model.roi_heads.proposal_append_gt is False and cfg.train.mine == 1


def test_lazy_train_net_refuses_a_finished_run_and_a_batch_the_processes_cannot_share(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("metrics.json", "model_final.pth", "last_checkpoint"):
        (out / name).write_text("an earlier run's")
    proc = run("dynamic_rcnn_R_50_FPN_1x.py", *TINY, "train.max_iter=1", f"train.output_dir={out}")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: train.output_dir {out} holds a training run (last_checkpoint, metrics.json, model_final.pth): a "
        "training into it would replace its checkpoints and add to its metrics.json. Go on from its last checkpoint "
        f"with --resume, give another train.output_dir, or start over with --restart (it moves the run's files into "
        f"{out / 'earlier_run_1'})")
    lazy, args = _lazy(f"train.output_dir={tmp_path / 'new'}", "dataloader.train.total_batch_size=3")
    args.num_gpus = 2
    assert _one_line_exit(lazy, args) == (
        "error: dataloader.train.total_batch_size = 3 is not divisible by the 2 processes (--num-gpus x "
        "--num-machines): each process takes an equal share of the batch. Set dataloader.train.total_batch_size to a "
        "multiple of 2 (e.g. 4)")
