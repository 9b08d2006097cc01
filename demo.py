#!/usr/bin/env python
"""
Run a trained model on images and write the drawings (detectron2's DefaultPredictor and Visualizer):

    python demo.py --config-file configs/shapes/dynamic_rcnn_R_18_FPN_shapes.yaml \\
        --input a.jpg some/folder/ --output out/ [--confidence-threshold 0.5] \\
        MODEL.WEIGHTS output/shapes_dynamic_rcnn_R_18_FPN/model_final.pth
"""
import argparse
import os
import sys
import warnings

warnings.filterwarnings("ignore", category=FutureWarning, module="torch")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def argument_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="image files and/or folders of images")
    parser.add_argument("--output", required=True, help="folder for the drawn images")
    parser.add_argument("--confidence-threshold", type=float, default=0.5)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    return parser


def list_images(inputs):
    """Image files named or found (not recursively) in the folders named; missing paths are errors."""
    files = []
    for path in inputs:
        if os.path.isdir(path):
            files += sorted(
                os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS)
            )
        elif os.path.isfile(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"--input {path} does not exist")
    return files


def main(argv=None):
    args = argument_parser().parse_args(argv)
    import cv2
    from detectron2.data import MetadataCatalog
    from detectron2.engine import DefaultPredictor
    from detectron2.utils.visualizer import Visualizer

    from dynamic_rcnn.config import load_config

    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        sys.exit("error: no model weights: add MODEL.WEIGHTS path/to/model_final.pth to the command")
    if "://" not in weights and not os.path.isfile(weights):
        sys.exit(f"error: MODEL.WEIGHTS {weights} does not exist")
    try:
        files = list_images(args.input)
    except FileNotFoundError as e:
        sys.exit(f"error: {e}")
    if not files:
        sys.exit(f"error: no image ({', '.join(IMAGE_EXTENSIONS)}) in {' '.join(args.input)}")
    cfg.freeze()
    try:
        predictor = DefaultPredictor(cfg)
    except Exception as e:  # a truncated or foreign file: say which one
        sys.exit(f"error: cannot load MODEL.WEIGHTS {weights}: {type(e).__name__}: {e}")
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused")

    os.makedirs(args.output, exist_ok=True)
    failed = 0
    for path in files:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            print(f"error: cannot read {path} as an image: skipped", file=sys.stderr)
            failed += 1
            continue
        instances = predictor(image)["instances"].to("cpu")
        drawing = Visualizer(image[:, :, ::-1], metadata).draw_instance_predictions(instances)
        out = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + ".png")
        cv2.imwrite(out, drawing.get_image()[:, :, ::-1])
        print(f"{path}: {len(instances)} detections -> {out}")
    print(f"{len(files) - failed} of {len(files)} images drawn in {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
