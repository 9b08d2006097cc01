"""
Dynamic R-CNN, Mask R-CNN R-50-FPN, 1x, as a LazyConfig: ``dynamic_rcnn_R_50_FPN_1x.py`` with the
mask branch of detectron2's common model kept. Dynamic R-CNN changes the box head's training only;
the mask head trains on the foreground the dynamic threshold selects.

    python lazy_train_net.py --config-file configs/lazy/dynamic_mask_rcnn_R_50_FPN_1x.py --num-gpus 8
"""
from detectron2.model_zoo import get_config

from .dynamic_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

common = get_config("common/models/mask_rcnn_fpn.py").model.roi_heads
model.roi_heads.mask_in_features = common.mask_in_features
model.roi_heads.mask_pooler = common.mask_pooler
model.roi_heads.mask_head = common.mask_head
dataloader.train.mapper.use_instance_mask = True
train.output_dir = "./output/lazy_dynamic_mask_rcnn_R_50_FPN_1x"
