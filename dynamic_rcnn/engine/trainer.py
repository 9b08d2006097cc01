"""``Trainer``: detectron2's ``DefaultTrainer`` with Dynamic R-CNN's hook and a COCO evaluator."""
import contextlib
import logging
import os
import sys
from collections import OrderedDict

from detectron2.data import build_detection_train_loader
from detectron2.engine import DefaultTrainer, hooks
from detectron2.engine import defaults as _d2_defaults
from detectron2.engine.defaults import create_ddp_model as _d2_create_ddp_model
from detectron2.evaluation import verify_results
from detectron2.modeling import GeneralizedRCNNWithTTA
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, get_event_storage

from ..data import FileNamingMapper, explain_no_training_data
from ..evaluation import HighIoUCOCOEvaluator, format_ap_table
from ..hook import add_dynamic_rcnn_hook, find_trackers
from ..modeling import build_model
from .checkpoint import AtomicCheckpointer, dataset_classes, load_checkpoint

__all__ = ["DynamicRCNNMetricPrinter", "Trainer", "create_ddp_model"]

logger = logging.getLogger("detectron2." + __name__)


def create_ddp_model(model, **kwargs):
    """
    detectron2's ``create_ddp_model``, for CPU models as well: detectron2 hands
    ``device_ids=[local_rank]`` to ``DistributedDataParallel``, which DDP refuses for a CPU model
    (it needs ``device_ids=None`` there). Both entry points (``Trainer``, lazy_train_net.py) use it.
    """
    if next(model.parameters()).device.type == "cpu":
        kwargs.setdefault("device_ids", None)
    return _d2_create_ddp_model(model, **kwargs)


@contextlib.contextmanager
def _defaults_use(function):
    # DefaultTrainer.__init__ calls create_ddp_model by its module-level name: ours while it runs.
    original = _d2_defaults.create_ddp_model
    _d2_defaults.create_ddp_model = function
    try:
        yield
    finally:
        _d2_defaults.create_ddp_model = original


class Trainer(DefaultTrainer):
    """
    ``DefaultTrainer`` that

    - registers :class:`DynamicRCNNHook` when the model has ``DynamicROIHeads`` (a baseline
      config with ``StandardROIHeads`` trains as plain detectron2);
    - evaluates with detectron2's ``COCOEvaluator`` plus AP60-AP90 (any registered dataset);
    - saves its checkpoints atomically, with the class names of ``DATASETS.TRAIN[0]`` (``thing_classes``);
    - runs with several processes on the CPU as well as on GPUs.
    """

    def __init__(self, cfg):
        with _defaults_use(create_ddp_model):
            super().__init__(cfg)
        if find_trackers(self.model):
            add_dynamic_rcnn_hook(self)  # before the checkpointer, the writers and the evaluation
        else:
            logger.info("MODEL.ROI_HEADS.NAME = %s: no Dynamic R-CNN (a baseline run).", cfg.MODEL.ROI_HEADS.NAME)

    @classmethod
    def build_model(cls, cfg):
        """detectron2's, with deformable convolutions by torchvision where detectron2._C lacks them."""
        model = build_model(cfg)
        logger.info("Model:\n%s", model)
        return model

    def build_hooks(self):
        # DefaultTrainer.__init__ made a DetectionCheckpointer just before calling this: the same,
        # saving atomically and with the training set's class names, for the hooks built here
        # (PeriodicCheckpointer) and for resume.
        c, classes = self.checkpointer, dataset_classes(self.cfg.DATASETS.TRAIN)
        self.checkpointer = AtomicCheckpointer(c.model, c.save_dir, save_to_disk=c.save_to_disk, thing_classes=classes,
                                               **c.checkpointables)
        return super().build_hooks()

    @classmethod
    def build_train_loader(cls, cfg):
        """detectron2's; a training set without a box to train on, or an image that fails while
        training, is a DatasetError that names it."""
        with explain_no_training_data(cfg.DATASETS.TRAIN, "DATASETS.TRAIN"):
            return build_detection_train_loader(cfg, mapper=FileNamingMapper(cfg, True))

    def build_writers(self):
        """detectron2's writers, with the console line showing the IoU threshold and beta in force."""
        return [
            DynamicRCNNMetricPrinter(self.max_iter) if type(w) is CommonMetricPrinter else w
            for w in super().build_writers()
        ]

    def train(self):
        """Train; returns the final evaluation's results (``DefaultTrainer`` returns them only with
        ``TEST.EXPECTED_RESULTS``)."""
        results = super().train()
        return results if results is not None else getattr(self, "_last_eval_results", None)

    def after_train(self):
        """
        The hooks' ``after_train``; after a failed training (an exception on its way out), without
        the evaluation. detectron2's ``EvalHook`` tells a failure by ``iter + 1 < max_iter`` and so
        still evaluates after one at the last iteration (the final checkpoint's save on a full
        disk): an evaluation whose own failure would replace the cause with its traceback. The
        other hooks' failures are logged, and the cause goes on.
        """
        if sys.exc_info()[1] is None:
            return super().after_train()
        self.storage.iter = self.iter
        for h in self._hooks:
            if isinstance(h, hooks.EvalHook):
                logger.info("Training failed at iteration %d: no final evaluation.", self.iter)
                continue
            try:
                h.after_train()
            except Exception:
                logger.exception("%s.after_train failed after the training's failure:", type(h).__name__)

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
            cls.build_evaluator(cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, "inference_TTA", name))
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


class DynamicRCNNMetricPrinter(CommonMetricPrinter):
    """
    detectron2's ``CommonMetricPrinter`` (the console line every 20 iterations) with the IoU threshold and beta
    in force at its end, when the run writes them (``a/b/c`` for a cascade's stages).
    """

    def write(self):
        histories = get_event_storage().histories()
        extra = ""
        for name, label in (("iou_threshold", "iou_thr"), ("beta", "beta")):
            keys = sorted(k for k in histories if k == f"dynamic_rcnn/{name}" or k.endswith(f"/dynamic_rcnn/{name}"))
            if keys:
                extra += f"  {label}: " + "/".join(f"{histories[k].latest():.4g}" for k in keys)
        printer_logger = self.logger
        self.logger = _Suffixed(printer_logger, extra)
        try:
            super().write()
        finally:
            self.logger = printer_logger


class _Suffixed:
    """A logger whose ``info`` appends a fixed text to the message."""

    def __init__(self, target: logging.Logger, suffix: str):
        self._target, self._suffix = target, suffix

    def info(self, msg, *args, **kwargs):
        self._target.info(msg + self._suffix, *args, **kwargs)
