#!/usr/bin/env python
"""
Dynamic R-CNN training with detectron2's LazyConfig (Python configs such as those of
``configs/lazy/``, detectron2's ``new_baselines``, ViTDet): detectron2's
``tools/lazyconfig_train_net.py`` with the Dynamic R-CNN hook in place and its log lines shown.

    python lazy_train_net.py --config-file configs/lazy/dynamic_rcnn_R_50_FPN_1x.py --num-gpus 8
    python lazy_train_net.py --config-file ... --resume
    python lazy_train_net.py --config-file ... --restart    # over an earlier run of train.output_dir
    python lazy_train_net.py --config-file ... --eval-only train.init_checkpoint=output/model_final.pth
    python lazy_train_net.py --config-file ... model.roi_heads.tracker.iou_topk=50 train.max_iter=1000

Any LazyConfig whose ``model`` holds a ``DynamicROIHeads`` trains with Dynamic R-CNN; others train as
plain detectron2. Bad Dynamic R-CNN values fail when the model is built, before the first iteration.
"""
import logging
import warnings

warnings.filterwarnings("ignore", category=FutureWarning, module="torch")

from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.engine import (  # noqa: E402
    AMPTrainer,
    SimpleTrainer,
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
)
from detectron2.evaluation import inference_on_dataset, print_csv_format  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.events import CommonMetricPrinter  # noqa: E402

from dynamic_rcnn import add_dynamic_rcnn_hook, find_trackers  # noqa: E402
from dynamic_rcnn.data import check_datasets, check_test_sets, explain_no_training_data  # noqa: E402
from dynamic_rcnn.engine import (  # noqa: E402
    AtomicCheckpointer,
    DynamicRCNNMetricPrinter,
    add_restart_option,
    apply_lazy_overrides,
    check_amp,
    check_batch_size,
    check_output_dir,
    check_overrides,
    create_ddp_model,
    device_or_cpu,
    launch_checked,
    load_checkpoint,
    load_model_weights,
)

logger = logging.getLogger("detectron2.dynamic_rcnn.lazy_train_net")


def do_test(cfg, model):
    """Evaluate with ``cfg.dataloader.test`` and ``cfg.dataloader.evaluator``; {} when there is none."""
    if "evaluator" not in cfg.dataloader:
        return {}
    ret = inference_on_dataset(model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator))
    print_csv_format(ret)
    return ret


def writers(cfg):
    """detectron2's default writers, the console line with the IoU threshold and beta in force."""
    return [
        DynamicRCNNMetricPrinter(cfg.train.max_iter) if type(w) is CommonMetricPrinter else w
        for w in default_writers(cfg.train.output_dir, cfg.train.max_iter)
    ]


def do_train(args, cfg):
    """
    Build the model, optimizer and data from the LazyConfig, then train ``cfg.train.max_iter``
    iterations with detectron2's hooks and, when the model has ``DynamicROIHeads``, the
    Dynamic R-CNN hook before the checkpointer and writers. Returns the trainer.
    """
    model = instantiate(cfg.model)
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    with explain_no_training_data(_names(cfg, "train"), "dataloader.train.dataset.names"):
        train_loader = instantiate(cfg.dataloader.train)
    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = (AMPTrainer if cfg.train.amp.enabled else SimpleTrainer)(model, train_loader, optim)
    checkpointer = AtomicCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer) if comm.is_main_process() else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            hooks.PeriodicWriter(writers(cfg), period=cfg.train.log_period) if comm.is_main_process() else None,
        ]
    )
    if find_trackers(model):
        add_dynamic_rcnn_hook(trainer)  # before resume: the checkpoint restores its state
    else:
        logger.info("The model has no DynamicROIHeads: a plain detectron2 run.")
    load_checkpoint(checkpointer, cfg.train.init_checkpoint, args.resume)
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)
    return trainer


def _names(cfg, part: str) -> list:
    """The dataset names of ``cfg.dataloader[part]``, as a list ([] when it has none)."""
    names = cfg.dataloader[part].dataset.get("names", ()) if part in cfg.dataloader else ()
    return [names] if isinstance(names, str) else list(names)


def checked_config(args):
    """
    The LazyConfig with its overrides (each ``key=value`` of a key it has), its datasets checked
    (registered, files present), ``train.device`` moved to the CPU when no GPU is visible, AMP only
    on a GPU, a batch the processes share and an output folder that can be written; the model is
    checked when built.
    """
    cfg = apply_lazy_overrides(LazyConfig.load(args.config_file), args.opts)
    for part in ("train", "test"):
        if part == "test" or not args.eval_only:
            check_datasets(_names(cfg, part), f"dataloader.{part}.dataset.names")
    cfg.train.device = device_or_cpu(cfg.train.device, "train.device")
    if not args.eval_only:
        check_amp(cfg.train.amp.enabled, cfg.train.device, "train.amp.enabled")
        check_batch_size(cfg.dataloader.train.get("total_batch_size"), args.num_gpus * args.num_machines,
                         "dataloader.train.total_batch_size")
    check_output_dir(cfg.train.output_dir, "train.output_dir")
    check_test_sets(_names(cfg, "test"), "dataloader.test.dataset.names")  # last: it loads them
    return cfg


def setup(args):
    cfg = checked_config(args)
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        if not cfg.train.init_checkpoint:
            raise SystemExit("error: --eval-only needs weights: add train.init_checkpoint=path/to/model_final.pth")
        model = instantiate(cfg.model)
        model.to(cfg.train.device)
        load_model_weights(model, cfg.train.init_checkpoint)  # strictly: no half-random evaluation
        return do_test(cfg, model)
    do_train(args, cfg)


if __name__ == "__main__":
    parser = add_restart_option(default_argument_parser())
    args = parser.parse_args()
    check_overrides(parser, args)
    launch_checked(main, args, checked_config, output_dir=lambda checked: checked.train.output_dir,
                   output_key="train.output_dir")
