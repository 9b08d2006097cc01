"""detectron2's Cascade R-CNN R-50-FPN 3x (270k iterations at 16 images) as a LazyConfig."""
from detectron2.model_zoo import get_config

from .cascade_rcnn_R_50_FPN_1x import dataloader, model, optimizer, train

lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_3x
train.max_iter = 270000
train.output_dir = "./output/lazy_cascade_rcnn_R_50_FPN_3x"
