"""
detectron2's Cascade Mask R-CNN R-50-FPN 1x as a LazyConfig: its common Cascade model, COCO data, SGD and
1x schedule, with 2000 proposals in training (as its Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml). The stock
baseline of ``dynamic_cascade_mask_rcnn_R_50_FPN_1x.py``.
"""
from detectron2.model_zoo import get_config

from dynamic_rcnn.evaluation import HighIoUCOCOEvaluator

model = get_config("common/models/cascade_rcnn.py").model
dataloader = get_config("common/data/coco.py").dataloader
optimizer = get_config("common/optim.py").SGD
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_1x
train = get_config("common/train.py").train

model.proposal_generator.post_nms_topk = [2000, 1000]
# COCO AP with the paper's AP50-AP90 columns, written under the run's folder.
dataloader.evaluator._target_ = HighIoUCOCOEvaluator
dataloader.evaluator.output_dir = "${...train.output_dir}/inference"
model.backbone.bottom_up.freeze_at = 2
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.output_dir = "./output/lazy_cascade_mask_rcnn_R_50_FPN_1x"
