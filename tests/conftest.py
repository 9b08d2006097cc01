"""Tiny configs, models and inputs shared by the tests: small enough for 2 CPU cores."""
import contextlib
import importlib.util
import logging
import os
import tempfile

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances, pairwise_iou

import dynamic_rcnn.data  # noqa: F401  (registers the built-in datasets)
from dynamic_rcnn import add_dynamic_rcnn_config
from dynamic_rcnn.statistics import box_errors, error_statistic, iou_statistic

# Generated datasets go to a folder of this test session, never to the user's cache.
os.environ.setdefault("DYNAMIC_RCNN_CACHE", tempfile.mkdtemp(prefix="dynamic_rcnn_test_cache_"))
# One CPU thread in this process and in the processes the tests start: the models are tiny, and
# several processes with several threads each on 2 cores spend their time waiting for each other.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES_CONFIG = os.path.join(ROOT, "configs", "shapes", "dynamic_rcnn_R_18_FPN_shapes.yaml")
FEATURE_CHANNELS = 16


# The shapes config shrunk to a model and input that train at a few steps per second.
TINY_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.FPN.OUT_CHANNELS", FEATURE_CHANNELS,
    "MODEL.FPN.NORM", "",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 300,
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", 150,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 150,
    "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 32,
    "MODEL.ROI_MASK_HEAD.CONV_DIM", 8,
    "MODEL.ROI_MASK_HEAD.NUM_CONV", 1,
    "MODEL.DYNAMIC_RCNN.UPDATE_PERIOD", 4,
    "DATASETS.TRAIN", ("shapes_tiny_train",),
    "DATASETS.TEST", (),
    "INPUT.MIN_SIZE_TRAIN", (128,),
    "INPUT.MAX_SIZE_TRAIN", 128,
    "INPUT.MIN_SIZE_TEST", 128,
    "INPUT.MAX_SIZE_TEST", 128,
    "SOLVER.IMS_PER_BATCH", 2,
    "SOLVER.BASE_LR", 0.01,
    "SOLVER.WARMUP_ITERS", 0,
    "SOLVER.STEPS", (),
    "SOLVER.MAX_ITER", 8,
    "SOLVER.CHECKPOINT_PERIOD", 100000,
    "DATALOADER.NUM_WORKERS", 0,
    "SEED", 0,
]


def tiny_cfg(*opts):
    cfg = get_cfg()
    add_dynamic_rcnn_config(cfg)
    cfg.merge_from_file(SHAPES_CONFIG)
    cfg.merge_from_list(list(TINY_OPTS) + list(opts))
    return cfg


def load_module(path):
    """A script of the project (``tools/run_demo.py``, ``benchmarks/accuracy.py``...) imported from its path."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save_tiny_checkpoint(out_dir):
    """The tiny model with seeded random weights, saved as ``out_dir/tiny.pth``: (model, path)."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg())
    DetectionCheckpointer(model, save_dir=str(out_dir)).save("tiny")
    return model, os.path.join(str(out_dir), "tiny.pth")


def roi_input_shape(cfg):
    return {
        name: ShapeSpec(channels=FEATURE_CHANNELS, stride=2 ** (int(name[1]))) for name in cfg.MODEL.ROI_HEADS.IN_FEATURES
    }


def roi_features(cfg, image_size=(64, 64), batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = image_size
    return {
        name: torch.randn(batch, FEATURE_CHANNELS, h // 2 ** int(name[1]), w // 2 ** int(name[1]), generator=g)
        for name in cfg.MODEL.ROI_HEADS.IN_FEATURES
    }


def proposals(image_size, boxes):
    p = Instances(image_size)
    p.proposal_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    p.objectness_logits = torch.zeros(len(p.proposal_boxes))
    return p


def targets(image_size, boxes, classes=None):
    t = Instances(image_size)
    t.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    n = len(t.gt_boxes)
    t.gt_classes = torch.tensor(classes if classes is not None else [0] * n, dtype=torch.int64)
    return t


@pytest.fixture
def tmp_output(tmp_path):
    return str(tmp_path / "output")


def reference_statistics(proposal_boxes, gt_boxes, box2box_transform, iou_topk, beta_topk):
    """
    The paper's two statistics of one iteration computed from scratch (their own IoU matrix), from
    the boxes as the ROI head matches them (``Boxes`` per image, ground truth appended when it is
    counted): what the head, which reuses its matcher's IoUs, must record. None when no image has
    both boxes and ground truth.
    """
    kept = [(p, g) for p, g in zip(proposal_boxes, gt_boxes) if len(p) > 0 and len(g) > 0]
    if not kept:
        return None
    best = [pairwise_iou(g, p).max(dim=0) for p, g in kept]
    errors = [box_errors(p.tensor, g.tensor[b.indices], box2box_transform) for (p, g), b in zip(kept, best)]
    return iou_statistic([b.values for b in best], iou_topk), error_statistic(errors, beta_topk)


@contextlib.contextmanager
def logged_warnings(name="detectron2.dynamic_rcnn", level=logging.WARNING):
    """
    The messages of the warnings the ``name`` logger emits meanwhile. A handler of its own: once a
    trainer has set up detectron2's logger, it no longer propagates to pytest's ``caplog``.
    """
    messages = []

    class Handler(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler, logger = Handler(level), logging.getLogger(name)
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(min(old or level, level))
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


def recorded(tracker):
    """The statistics ``tracker`` recorded last (as the hook takes them), or None; cleared."""
    pair, tracker.latest = tracker.latest, None
    return pair
