#!/usr/bin/env python
"""
Dynamic R-CNN training and evaluation script: detectron2's train_net.py with the project's config
keys and Trainer (DefaultTrainer + DynamicRCNNHook + COCO-style evaluation with AP50-AP90).

    python train_net.py --config-file configs/dynamic_rcnn_R_50_FPN_1x.yaml --num-gpus 8
    python train_net.py --config-file ... --resume
    python train_net.py --config-file ... --restart    # over an earlier run of OUTPUT_DIR, its files moved aside
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
    python train_net.py --config-file ... --train-json a.json --train-images imgs/ --test-json ...
"""
import logging
import os
import sys
import warnings

warnings.filterwarnings("ignore", category=FutureWarning, module="torch")

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import CfgNode  # noqa: E402
from detectron2.engine import default_argument_parser, default_setup  # noqa: E402

from dynamic_rcnn.data import check_datasets, check_test_sets, register_from_args  # noqa: E402  (registers them)
from dynamic_rcnn.engine import Trainer, check_amp, check_output_dir, check_overrides, launch_checked  # noqa: E402
from dynamic_rcnn.engine import add_restart_option, check_batch_size, load_config, load_model_weights  # noqa: E402
from dynamic_rcnn.engine.checkpoint import LAST_CHECKPOINT, checkpoint_to_load  # noqa: E402

logger = logging.getLogger("detectron2.dynamic_rcnn.train_net")


def check_eval_only(args, cfg: CfgNode):
    """
    ``--eval-only`` needs trained weights: MODEL.WEIGHTS, or with ``--resume`` an
    ``OUTPUT_DIR/last_checkpoint``. Without them it would evaluate a randomly initialized model and
    report AP 0 as a success, so exit with an ``error: ...`` line instead.
    """
    tagged = os.path.isfile(os.path.join(cfg.OUTPUT_DIR, LAST_CHECKPOINT))
    if args.eval_only and not cfg.MODEL.WEIGHTS and not (args.resume and tagged):
        sys.exit("error: --eval-only needs trained weights: add MODEL.WEIGHTS path/to/model_final.pth "
                 "to the command (or --resume with an OUTPUT_DIR that has a last_checkpoint)")


def checked_config(args):
    """
    The run's config with every start-up check done (config values, options, datasets and their
    files, --eval-only weights, AMP on a GPU, a batch the processes share, an OUTPUT_DIR that can be
    written; launch_checked then refuses one that holds a finished or running training): a problem
    ends the run before anything is built or written. Returns (cfg, the note of --train-json on
    MODEL.ROI_HEADS.NUM_CLASSES or None), the note for the log once it is set up.
    """
    cfg = load_config(args.config_file, args.opts)
    note = register_from_args(args, cfg)
    if not args.eval_only:
        check_datasets(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
        check_amp(cfg.SOLVER.AMP.ENABLED, cfg.MODEL.DEVICE, "SOLVER.AMP.ENABLED")
        check_batch_size(cfg.SOLVER.IMS_PER_BATCH, args.num_gpus * args.num_machines, "SOLVER.IMS_PER_BATCH")
    check_datasets(cfg.DATASETS.TEST, "DATASETS.TEST")
    check_eval_only(args, cfg)
    check_output_dir(cfg.OUTPUT_DIR, "OUTPUT_DIR")
    check_test_sets(cfg.DATASETS.TEST, "DATASETS.TEST")  # last: it loads them
    return cfg, note


def setup(args):
    cfg, note = checked_config(args)
    cfg.freeze()
    default_setup(cfg, args)
    if note:
        logger.info(note)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        # Strictly: weights that do not fit the model would otherwise be evaluated half random.
        checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        path = checkpoint_to_load(checkpointer, cfg.MODEL.WEIGHTS, args.resume)
        load_model_weights(model, path)
        return Trainer.evaluate(cfg, model)

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def argument_parser():
    parser = add_restart_option(default_argument_parser())
    group = parser.add_argument_group("your own COCO-format or VOC-layout data (registered as user_train / user_test)")
    group.add_argument("--train-json", help="COCO instances json of the training set")
    group.add_argument("--train-images", help="folder of the training images")
    group.add_argument("--test-json", help="COCO instances json of the evaluation set")
    group.add_argument("--test-images", help="folder of the evaluation images")
    group.add_argument("--train-voc", metavar="FOLDER[:SPLIT]", help="a VOC layout folder and its split (default train); "
                       "its classes: those its XML files name")
    group.add_argument("--test-voc", metavar="FOLDER[:SPLIT]", help="a VOC layout folder and its split (default test)")
    return parser


def parse_args(argv=None):
    """``argument_parser().parse_args(argv)``, refusing options written after the overrides."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    check_overrides(parser, args)
    return args


if __name__ == "__main__":
    args = parse_args()
    print("Command Line Args:", args)
    launch_checked(main, args, checked_config, output_dir=lambda checked: checked[0].OUTPUT_DIR)
