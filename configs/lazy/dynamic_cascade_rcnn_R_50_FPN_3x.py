"""Dynamic Cascade R-CNN R-50-FPN 3x as a LazyConfig: ``cascade_rcnn_R_50_FPN_3x.py`` made dynamic."""
from ._dynamic_cascade import make_dynamic
from .cascade_rcnn_R_50_FPN_3x import dataloader, lr_multiplier, model, optimizer, train

make_dynamic(model)
train.output_dir = "./output/lazy_dynamic_cascade_rcnn_R_50_FPN_3x"
