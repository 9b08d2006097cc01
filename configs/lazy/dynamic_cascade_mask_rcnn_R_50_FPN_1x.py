"""
Dynamic Cascade Mask R-CNN R-50-FPN 1x as a LazyConfig: ``cascade_mask_rcnn_R_50_FPN_1x.py`` with every
stage's threshold and beta following the boxes it labels (docs/CASCADE.md). Any tracker value can be
changed on the command line: ``model.roi_heads.trackers.1.iou_topk=50``.

    python lazy_train_net.py --config-file configs/lazy/dynamic_cascade_mask_rcnn_R_50_FPN_1x.py --num-gpus 8
"""
from ._dynamic_cascade import make_dynamic
from .cascade_mask_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

make_dynamic(model)
train.output_dir = "./output/lazy_dynamic_cascade_mask_rcnn_R_50_FPN_1x"
