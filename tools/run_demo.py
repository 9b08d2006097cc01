#!/usr/bin/env python
"""
The main job (`make demo`): train Dynamic R-CNN from scratch on the synthetic `shapes` data,
evaluate it on `shapes_val` (AP, AP50-AP90), draw its dynamics and a few of its detections, and say
where everything is. A few minutes on a 2-core CPU; no download, no GPU.

    python tools/run_demo.py [--config-file FILE] [--num-images N] [KEY VALUE ...]
"""
import argparse
import json
import os
import sys
import time
import warnings

warnings.filterwarnings("ignore", category=FutureWarning, module="torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(ROOT, "configs", "shapes", "dynamic_rcnn_R_18_FPN_shapes.yaml")


def draw_predictions(cfg, weights, dataset, out_dir, num_images):
    """Draw the model's detections (score >= 0.5) on the first images of ``dataset``."""
    import cv2
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.engine import DefaultPredictor
    from detectron2.utils.visualizer import Visualizer

    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = weights
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.5
    predictor = DefaultPredictor(cfg)
    os.makedirs(out_dir, exist_ok=True)
    for record in DatasetCatalog.get(dataset)[:num_images]:
        image = cv2.imread(record["file_name"])
        instances = predictor(image)["instances"].to("cpu")
        drawing = Visualizer(image[:, :, ::-1], MetadataCatalog.get(dataset), scale=2.0)
        out = drawing.draw_instance_predictions(instances).get_image()[:, :, ::-1]
        cv2.imwrite(os.path.join(out_dir, os.path.basename(record["file_name"])), out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=DEFAULT_CONFIG)
    parser.add_argument("--num-images", type=int, default=6, help="validation images to draw")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args(argv)

    from detectron2.engine import default_argument_parser, default_setup

    import dynamic_rcnn.data  # noqa: F401  (registers the built-in datasets)
    from dynamic_rcnn.engine import Trainer, load_config
    from dynamic_rcnn.engine.launch import claim_output_dir
    from dynamic_rcnn.evaluation import format_ap_table
    from dynamic_rcnn.tools.plot import plot_dynamics, plot_losses, read_metrics

    start = time.time()
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    out = os.path.abspath(cfg.OUTPUT_DIR)
    # The demo starts over each time: an earlier demo's files are moved aside (said), never trained over.
    with claim_output_dir(out, "OUTPUT_DIR", resume=False, restart=True):
        default_setup(cfg, default_argument_parser().parse_args(["--config-file", args.config_file]))
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        results = trainer.train()  # evaluates on DATASETS.TEST at the end
    train_minutes = (time.time() - start) / 60

    series = read_metrics(os.path.join(out, "metrics.json"))
    plot_dynamics(series, os.path.join(out, "dynamics.png"), cfg.MODEL.DYNAMIC_RCNN.UPDATE_PERIOD)
    plot_losses(series, os.path.join(out, "losses.png"))
    weights = os.path.join(out, "model_final.pth")
    predictions = os.path.join(out, "predictions")
    if cfg.DATASETS.TEST:
        draw_predictions(cfg, weights, cfg.DATASETS.TEST[0], predictions, args.num_images)
    with open(os.path.join(out, "demo_results.json"), "w") as f:
        json.dump({"results": results, "train_and_eval_minutes": train_minutes,
                   "total_minutes": (time.time() - start) / 60}, f, indent=2)

    t = series.get("dynamic_rcnn/iou_threshold", [(0, float("nan"))])
    b = series.get("dynamic_rcnn/beta", [(0, float("nan"))])
    print("\n" + "=" * 78)
    print(f"Dynamic R-CNN demo done in {(time.time() - start) / 60:.1f} min ({train_minutes:.1f} training + evaluation)")
    print(f"IoU threshold {t[0][1]:.3f} -> {t[-1][1]:.3f}, SmoothL1 beta {b[0][1]:.3f} -> {b[-1][1]:.3f}")
    print(f"\nAP on {', '.join(cfg.DATASETS.TEST)}:\n{format_ap_table(results)}\n")
    for what, path in [
        ("model", weights),
        ("metrics", os.path.join(out, "metrics.json")),
        ("dynamics plot", os.path.join(out, "dynamics.png")),
        ("loss plot", os.path.join(out, "losses.png")),
        ("detections drawn", predictions + "/"),
        ("log", os.path.join(out, "log.txt")),
    ]:
        print(f"  {what:17s} {path}")
    print("=" * 78)
    return 0


if __name__ == "__main__":
    sys.exit(main())
