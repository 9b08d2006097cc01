#!/usr/bin/env python
"""
Run a trained model on images and write the drawings (detectron2's DefaultPredictor and Visualizer):

    python demo.py --config-file configs/shapes/dynamic_rcnn_R_18_FPN_shapes.yaml \\
        --input a.jpg some/folder/ --output out/ [--confidence-threshold 0.5] \\
        MODEL.WEIGHTS output/shapes_dynamic_rcnn_R_18_FPN/model_final.pth

An image is read only when its header gives at most MAX_IMAGE_PIXELS pixels (150 megapixels;
a larger or unreadable one is skipped with a message and the run goes on), shrunk to the model's
test size (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST) when it is larger, and drawn at that size to
OUTPUT/<name>.png. Inputs that share a name (a.jpg and a.png) are written as a_jpg.png and
a_png.png; a file already there (the user's, or an earlier run's) is replaced only with --overwrite.
The class names drawn are those the weights were trained on (saved in every checkpoint by the project's
trainers, kept in a release), else those of the config's DATASETS.TEST[0].
"""
import argparse
import collections
import itertools
import os
import sys
import warnings

warnings.filterwarnings("ignore", category=FutureWarning, module="torch")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Larger images are skipped: decoding alone takes 3 bytes a pixel (450 MB here, 10.8 GB for a
# 60000x60000 PNG) before any shrinking. 150 megapixels is 12247x12247.
MAX_IMAGE_PIXELS = 150_000_000


def argument_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="image files and/or folders of images")
    parser.add_argument("--output", required=True, help="folder for the drawn images")
    parser.add_argument("--confidence-threshold", type=float, default=0.5, help="lowest score drawn, in [0, 1]")
    parser.add_argument("--overwrite", action="store_true", help="replace files already in --output")
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


def read_image(path, max_pixels=MAX_IMAGE_PIXELS):
    """
    ``(image, None)``: the BGR image of ``path``; or ``(None, reason)`` when it cannot be read:
    its header (read with PIL, without decoding the pixels) gives more than ``max_pixels`` pixels,
    the decoder fails, or the file is no image. Never raises for a bad file.
    """
    import cv2
    from PIL import Image, UnidentifiedImageError

    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # PIL's own bomb check would raise before we know the size
    try:
        with Image.open(path) as header:
            width, height = header.size
    except (UnidentifiedImageError, OSError, ValueError):
        width = height = None  # not a format PIL knows: OpenCV may still read it
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    if width is not None and width * height > max_pixels:
        return None, (f"{width}x{height} is {width * height / 1e6:.0f} megapixels, past the limit of "
                      f"{max_pixels / 1e6:g} megapixels (MAX_IMAGE_PIXELS in demo.py): downscale it first")
    try:
        image = cv2.imread(path, cv2.IMREAD_COLOR)
    except Exception as e:  # cv2.error, MemoryError: one bad file must not end the run
        return None, f"the decoder failed: {type(e).__name__}: {' '.join(str(e).split())}"
    if image is None:
        return None, "not an image file, or a damaged one"
    return image, None


def fit_to_test_size(image, min_size, max_size):
    """
    ``image`` shrunk (never enlarged) to the size the model sees it at, detectron2's
    ``ResizeShortestEdge(min_size, max_size)``: predicting and drawing a 10000x10000 image at full
    size took 13 GB and 76 s for a model that sees 800x800. Returns the image and whether it was
    shrunk.
    """
    import cv2
    from detectron2.data.transforms import ResizeShortestEdge

    height, width = image.shape[:2]
    if min_size <= 0:  # detectron2's "no resizing"
        return image, False
    new_h, new_w = ResizeShortestEdge.get_output_shape(height, width, min_size, max_size)
    if new_h * new_w >= height * width:
        return image, False
    return cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA), True


def output_paths(files, folder):
    """
    ``{input path: output path}`` in ``folder``, one per input, never two alike: ``<name>.png``;
    inputs that share a name keep their extension in it (``a.jpg`` and ``a.png`` give ``a_jpg.png``
    and ``a_png.png``), and a name still taken (``x/a.png`` and ``y/a.png``) is numbered
    (``a_png_2.png``). An input that lives in ``folder`` is never an output: a drawing never
    replaces its image.
    """
    def key(name):  # a.png and A.png are one file on case-insensitive file systems
        return name.lower()

    stems = collections.Counter(key(os.path.splitext(os.path.basename(f))[0]) for f in files)
    real = os.path.realpath(folder)
    taken = {key(os.path.basename(f)) for f in files if os.path.realpath(os.path.dirname(f)) == real}
    paths = {}
    for path in files:
        stem, ext = os.path.splitext(os.path.basename(path))
        base = stem if stems[key(stem)] == 1 else f"{stem}_{ext.lstrip('.').lower()}"
        candidates = itertools.chain([f"{base}.png"], (f"{base}_{n}.png" for n in itertools.count(2)))
        name = next(c for c in candidates if key(c) not in taken)
        taken.add(key(name))
        paths[path] = os.path.join(folder, name)
    return paths


def class_metadata(cfg, weights: str, trained_on):
    """
    The metadata to draw with, and the line that says where its class names come from (None when the two
    sources agree): the classes the weights were trained on (``trained_on``, the checkpoint's ``thing_classes``)
    before those of the config's ``DATASETS.TEST[0]``, which another training set (``--train-json``) does not
    share; a checkpoint without them (an earlier version's) gets the latter, as before.
    """
    from detectron2.data import Metadata, MetadataCatalog

    test = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None
    metadata = MetadataCatalog.get(test) if test else Metadata(name="none")
    theirs = list(metadata.get("thing_classes", []))
    named = f"DATASETS.TEST[0] {test}: {', '.join(theirs)}" if theirs else None
    if trained_on:
        if list(trained_on) == theirs:
            return metadata, None
        return Metadata(name=weights, thing_classes=list(trained_on)), (
            f"class names from MODEL.WEIGHTS (the classes it was trained on): {', '.join(trained_on)}"
            + (f"; not those of {named}" if named else ""))
    return metadata, (f"note: MODEL.WEIGHTS {weights} holds no class names (a checkpoint of an earlier version, or not "
                      "saved by the project's trainers): drawn with "
                      + (f"those of {named}" if named else "class indices (DATASETS.TEST[0] has no class names here)"))


def main(argv=None):
    parser = argument_parser()
    args = parser.parse_args(argv)
    from dynamic_rcnn.engine import check_overrides

    check_overrides(parser, args)
    if not 0 <= args.confidence_threshold <= 1:
        sys.exit(f"error: --confidence-threshold {args.confidence_threshold:g} is outside [0, 1]: it is the lowest "
                 "score a detection is drawn with, between 0 and 1 (e.g. 0.5 for 50 %)")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        sys.exit(f"error: --output {args.output} is a file, not a folder: name a folder for the drawings "
                 "(it is created if missing)")
    if len(args.opts) % 2:  # yacs would stop on a bare assert
        sys.exit(f"error: the config overrides {' '.join(args.opts)} hold {len(args.opts)} items, an odd number: "
                 "they are KEY VALUE pairs, so a key lacks its value (or a value with spaces its quotes)")
    import cv2
    from detectron2.engine import DefaultPredictor
    from detectron2.utils.visualizer import Visualizer

    from dynamic_rcnn.engine import CheckpointError, load_config, load_model_weights
    from dynamic_rcnn.modeling import deformable_fallback

    try:  # as train_net.py answers them: a missing file, a misspelled key, a bad value
        cfg = load_config(args.config_file, args.opts)
    except (ValueError, KeyError, OSError) as e:
        sys.exit(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}")
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
    outputs = output_paths(files, args.output)
    existing = [os.path.basename(p) for p in outputs.values() if os.path.lexists(p)]
    if existing and not args.overwrite:
        more = f" (and {len(existing) - 10} more)" if len(existing) > 10 else ""
        sys.exit(f"error: --output {args.output} already holds {', '.join(existing[:10])}{more}, which this run "
                 f"would draw over: give another --output folder, or add --overwrite to replace "
                 f"{'it' if len(existing) == 1 else 'them'}")
    # DefaultPredictor's own load only logs the parameters that do not fit (weights of another
    # architecture): build it without weights and load them strictly.
    cfg.MODEL.WEIGHTS = ""
    cfg.freeze()
    with deformable_fallback(cfg):
        predictor = DefaultPredictor(cfg)
    try:
        extra = load_model_weights(predictor.model, weights)
    except CheckpointError as e:  # a truncated, foreign or mismatched file: say which and why
        sys.exit(f"error: cannot load MODEL.WEIGHTS {weights}: {e.reason}")
    metadata, said = class_metadata(cfg, weights, extra.get("thing_classes"))
    if said:
        print(said)

    try:
        os.makedirs(args.output, exist_ok=True)
    except OSError as e:
        sys.exit(f"error: cannot create the --output folder {args.output}: {e.strerror or e}")
    failed = 0
    for path in files:
        image, problem = read_image(path)
        if image is None:
            print(f"error: cannot read {path} as an image ({problem}): skipped", file=sys.stderr)
            failed += 1
            continue
        height, width = image.shape[:2]
        image, shrunk = fit_to_test_size(image, cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
        instances = predictor(image)["instances"].to("cpu")
        drawing = Visualizer(image[:, :, ::-1], metadata).draw_instance_predictions(instances)
        out = outputs[path]
        notes = []
        if shrunk:
            new_h, new_w = image.shape[:2]
            notes.append(f"resized from {width}x{height} to {new_w}x{new_h}, the model's test size")
        if os.path.exists(out):
            notes.append(f"replaces the existing {out}")
        if not cv2.imwrite(out, drawing.get_image()[:, :, ::-1]):
            print(f"error: cannot write {out}: skipped", file=sys.stderr)
            failed += 1
            continue
        print(f"{path}: {len(instances)} detections -> {out}" + (f" ({'; '.join(notes)})" if notes else ""))
    print(f"{len(files) - failed} of {len(files)} images drawn in {args.output}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
