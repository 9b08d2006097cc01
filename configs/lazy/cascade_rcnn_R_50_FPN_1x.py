"""detectron2's Cascade R-CNN R-50-FPN 1x (no mask branch) as a LazyConfig: the stock baseline of
``dynamic_cascade_rcnn_R_50_FPN_1x.py``."""
from .cascade_mask_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.mask_in_features = None
model.roi_heads.mask_pooler = None
model.roi_heads.mask_head = None
dataloader.train.mapper.use_instance_mask = False
train.output_dir = "./output/lazy_cascade_rcnn_R_50_FPN_1x"
