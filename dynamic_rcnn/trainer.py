"""``Trainer``: detectron2's ``DefaultTrainer`` with Dynamic R-CNN's hook and a COCO evaluator."""
import contextlib
import json
import logging
import os
import platform
import resource
import time
from collections import OrderedDict
from typing import Tuple

import detectron2
import torch
from detectron2.engine import DefaultTrainer
from detectron2.engine import defaults as _d2_defaults
from detectron2.evaluation import verify_results
from detectron2.modeling import GeneralizedRCNNWithTTA
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter

from .checkpoint import load_checkpoint
from .config import validate_dynamic_rcnn_config
from .evaluation import HighIoUCOCOEvaluator, format_ap_table
from .hook import DynamicRCNNHook, DynamicRCNNMetricPrinter, find_tracker, hook_position

__all__ = ["Trainer"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _ddp_on_the_model_device(device):
    """
    detectron2's ``create_ddp_model`` hands ``device_ids=[local_rank]`` to
    ``DistributedDataParallel`` even for a CPU model, which DDP refuses; for a CPU model it must
    get ``device_ids=None``. ``DefaultTrainer.__init__`` calls it by its module-level name.
    """
    if torch.device(device).type != "cpu":
        yield
        return
    original = _d2_defaults.create_ddp_model

    def create_ddp_model(model, **kwargs):
        kwargs.setdefault("device_ids", None)
        return original(model, **kwargs)

    _d2_defaults.create_ddp_model = create_ddp_model
    try:
        yield
    finally:
        _d2_defaults.create_ddp_model = original


def peak_memory_mb(device) -> Tuple[float, str]:
    """The process's peak memory so far, in MiB, and what it measures."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20, "torch.cuda.max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak resident set size of the process"


def machine_description(device) -> str:
    if torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name()} (x{comm.get_world_size()})"
    return f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def write_train_summary(cfg, iterations: int, step_times, wall_seconds: float) -> dict:
    """
    Write ``OUTPUT_DIR/train_summary.json``, what the model zoo and the benchmarks report of a run:
    ``s_per_iter`` is the median of detectron2's per-iteration ``time`` (the training step; data
    loading and hooks excluded; detectron2 leaves the first iterations out), ``wall_seconds`` the
    whole ``train()`` call, final evaluation included.
    """
    memory, memory_kind = peak_memory_mb(cfg.MODEL.DEVICE)
    step_times = sorted(step_times)
    summary = {
        "iterations": iterations,
        "max_iter": cfg.SOLVER.MAX_ITER,
        "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "s_per_iter": round(step_times[len(step_times) // 2], 4) if step_times else None,
        "train_step_seconds": round(sum(step_times), 1),
        "wall_seconds": round(wall_seconds, 1),
        "peak_memory_mb": round(memory, 1),
        "peak_memory_kind": memory_kind,
        "machine": machine_description(cfg.MODEL.DEVICE),
        "world_size": comm.get_world_size(),
        "torch": torch.__version__,
        "detectron2": detectron2.__version__,
    }
    with open(os.path.join(cfg.OUTPUT_DIR, "train_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


class Trainer(DefaultTrainer):
    """
    ``DefaultTrainer`` that

    - checks the Dynamic R-CNN keys at start-up (a bad value fails here, not at iteration 5000);
    - registers :class:`DynamicRCNNHook` when the model has ``DynamicROIHeads`` (a baseline
      config with ``StandardROIHeads`` trains as plain detectron2);
    - evaluates with detectron2's ``COCOEvaluator`` plus AP50-AP90 (any registered dataset);
    - runs with several processes on the CPU as well as on GPUs;
    - writes ``OUTPUT_DIR/train_summary.json`` (iterations, wall time, peak memory, machine).
    """

    def __init__(self, cfg):
        validate_dynamic_rcnn_config(cfg)
        with _ddp_on_the_model_device(cfg.MODEL.DEVICE):
            super().__init__(cfg)

    def build_hooks(self):
        ret = super().build_hooks()
        if find_tracker(self.model) is not None:
            # Before the checkpointer, so that a checkpoint holds the statistics of the iteration
            # it is written at, and before the writers, so that they write them in its row.
            ret.insert(hook_position(ret), DynamicRCNNHook())
        else:
            logger.info(
                "MODEL.ROI_HEADS.NAME = %s: no Dynamic R-CNN (a baseline run).", self.cfg.MODEL.ROI_HEADS.NAME
            )
        return ret

    def build_writers(self):
        """detectron2's writers, with the console line showing the IoU threshold and beta in force."""
        return [
            DynamicRCNNMetricPrinter(self.max_iter) if type(w) is CommonMetricPrinter else w
            for w in super().build_writers()
        ]

    def train(self):
        """Train; returns the final evaluation's results (``DefaultTrainer`` returns them only with
        ``TEST.EXPECTED_RESULTS``)."""
        start = time.perf_counter()
        results = super().train()
        if results is None:
            results = getattr(self, "_last_eval_results", None)
        if comm.is_main_process():
            times = [t for t, _ in self.storage.history("time").values()] if "time" in self.storage.histories() else []
            write_train_summary(self.cfg, self.iter - self.start_iter, times, time.perf_counter() - start)
        return results

    def resume_or_load(self, resume=True):
        """``DefaultTrainer.resume_or_load``; a checkpoint that cannot be loaded is named in the error."""
        load_checkpoint(self.checkpointer, self.cfg.MODEL.WEIGHTS, resume)
        if resume and self.checkpointer.has_checkpoint():
            # The checkpoint's iteration is the one trained last: go on from the next.
            self.start_iter = self.iter + 1

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return HighIoUCOCOEvaluator(dataset_name, output_dir=output_folder)

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """Evaluate with detectron2's test-time augmentation (``TEST.AUG``)."""
        logger.info("Running inference with test-time augmentation ...")
        model = GeneralizedRCNNWithTTA(cfg, model)
        evaluators = [
            cls.build_evaluator(
                cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name)
            )
            for name in cfg.DATASETS.TEST
        ]
        res = cls.test(cfg, model, evaluators)
        return OrderedDict({k + "_TTA": v for k, v in res.items()})

    @classmethod
    def evaluate(cls, cfg, model):
        """``--eval-only``: plain evaluation, plus TTA when ``TEST.AUG.ENABLED``."""
        res = cls.test(cfg, model)
        if cfg.TEST.AUG.ENABLED:
            res.update(cls.test_with_TTA(cfg, model))
        if comm.is_main_process():
            verify_results(cfg, res)
            logger.info("Evaluation of %s:\n%s", cfg.MODEL.WEIGHTS, format_ap_table(res))
        return res
