"""
Dynamic R-CNN, Faster R-CNN R-50-FPN, 1x (90k iterations at 16 images), as a LazyConfig: detectron2's
common R-50-FPN model (its mask branch removed), COCO data, SGD and 1x schedule, with
``DynamicROIHeads`` and the authors' RPN NMS threshold 0.85. Train it with

    python lazy_train_net.py --config-file configs/lazy/dynamic_rcnn_R_50_FPN_1x.py --num-gpus 8

Any value can be changed on the command line (``model.roi_heads.tracker.iou_topk=50``) or in a
config that imports this one.
"""
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from dynamic_rcnn import DynamicROIHeads, DynamicTracker
from dynamic_rcnn.evaluation import HighIoUCOCOEvaluator

model = get_config("common/models/mask_rcnn_fpn.py").model
dataloader = get_config("common/data/coco.py").dataloader
optimizer = get_config("common/optim.py").SGD
lr_multiplier = get_config("common/coco_schedule.py").lr_multiplier_1x
train = get_config("common/train.py").train

# Faster R-CNN: no mask branch.
model.roi_heads.mask_in_features = None
model.roi_heads.mask_pooler = None
model.roi_heads.mask_head = None
dataloader.train.mapper.use_instance_mask = False

# Dynamic R-CNN: the paper's settings (the package's defaults but for the paper's statistics: K_I 75, K_E 10,
# the appended ground truth counted, the floor 0.4; 0, 0, False, 0.5 is the automatic rule). The head takes
# its IoU threshold and SmoothL1 beta from the tracker; the Matcher's 0.5 is replaced by warmup_iou.
model.roi_heads._target_ = DynamicROIHeads
model.roi_heads.tracker = L(DynamicTracker)(
    iou_topk=75,
    beta_topk=10,
    update_period=100,
    warmup_iou=0.4,
    warmup_beta=1.0,
    enable_dla=True,
    enable_dsl=True,
    stats_include_gt=True,
)
# The authors raise the RPN's NMS threshold in their Dynamic R-CNN configs (train and test).
model.proposal_generator.nms_thresh = 0.85

# COCO AP with the paper's AP50-AP90 columns, written under the run's folder (which datasets that
# are not in COCO format need).
dataloader.evaluator._target_ = HighIoUCOCOEvaluator
dataloader.evaluator.output_dir = "${...train.output_dir}/inference"

model.backbone.bottom_up.freeze_at = 2
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.output_dir = "./output/lazy_dynamic_rcnn_R_50_FPN_1x"
