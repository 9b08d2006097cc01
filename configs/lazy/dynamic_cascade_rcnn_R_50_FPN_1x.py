"""Dynamic Cascade R-CNN R-50-FPN 1x (no mask branch) as a LazyConfig: ``cascade_rcnn_R_50_FPN_1x.py`` with
every stage's threshold and beta following the boxes it labels (docs/CASCADE.md)."""
from ._dynamic_cascade import make_dynamic
from .cascade_rcnn_R_50_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

make_dynamic(model)
train.output_dir = "./output/lazy_dynamic_cascade_rcnn_R_50_FPN_1x"
