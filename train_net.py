#!/usr/bin/env python
"""
Dynamic R-CNN training and evaluation script, detectron2's train_net.py with the project's
config keys and Trainer (DefaultTrainer + DynamicRCNNHook + COCO evaluation).

    python train_net.py --config-file configs/dynamic_rcnn_R_50_FPN_1x.yaml --num-gpus 8
    python train_net.py --config-file ... --resume
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS output/model_final.pth
"""
import logging

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch

import dynamic_rcnn  # noqa: F401  (registers DynamicROIHeads and the built-in datasets)
from dynamic_rcnn import Trainer, add_dynamic_rcnn_config, validate_dynamic_rcnn_config


def setup(args):
    cfg = get_cfg()
    add_dynamic_rcnn_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger("dynamic_rcnn").warning("MODEL.DEVICE=%s but no GPU is visible: using the CPU.", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    validate_dynamic_rcnn_config(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        return Trainer.evaluate(cfg, model)

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
