#!/usr/bin/env python
"""
Turn a training run into a model-zoo release:

    python tools/publish_model.py RUN_DIR --name NAME [--checkpoint model_final.pth] [--out releases/] [--replace]

Keeps the model weights (drops optimizer, scheduler and trainer state) and the class names they were
trained on (``thing_classes``, which the project's trainers save in every checkpoint), embeds the run's
config.yaml, and writes ``OUT/NAME_<first 8 hex of sha256>.pth``, ``OUT/NAME.metrics.json``
(AP table, schedule, and the run's cost when tools/run_summary.py ran it: iterations, s/iter, peak
memory, machine, detectron2 and torch versions) and
``OUT/NAME.inference.yaml``: the config plain detectron2 (without ``dynamic_rcnn``) builds the
model from, for ``DefaultPredictor``, ``build_model`` + ``DetectionCheckpointer`` and detectron2's
export tools (a Dynamic R-CNN model is a ``StandardROIHeads`` model at inference).
A NAME whose weights (``NAME_<hash>.pth``) are already in OUT is refused: ``--replace`` replaces that
release whole (its earlier weights are removed once the new release is written).
With ``--verify`` it then loads the release back through ``dynamic_rcnn.model_zoo`` (hash checked,
embedded config), evaluates it on the config's test sets and fails unless every AP of the metrics
file comes back (within ``--tolerance`` AP points).
"""
import argparse
import glob
import json
import os
import re
import sys
import tempfile
import warnings

warnings.filterwarnings("ignore", category=FutureWarning, module="torch")


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def collect_metrics(run_dir: str) -> dict:
    """What the run says of itself: its AP tables, and what tools/run_summary.py measured of it (if it ran it)."""
    ap = {}
    for path in sorted(glob.glob(os.path.join(run_dir, "inference", "*", "ap_table.json"))):
        ap.update(_read_json(path))
    summary_file = os.path.join(run_dir, "run_summary.json")
    summary = _read_json(summary_file) if os.path.isfile(summary_file) else {}
    return {"ap": ap, "train": summary}


# The Dynamic R-CNN heads, and the detectron2 head each is at inference (the same weights and outputs).
INFERENCE_HEADS = {"DynamicROIHeads": "StandardROIHeads", "DynamicCascadeROIHeads": "CascadeROIHeads"}


def inference_config(cfg_text: str, weights: str) -> str:
    """
    The training config ``cfg_text`` (a full dump, as train_net.py writes config.yaml) as a config of
    plain detectron2: without ``MODEL.DYNAMIC_RCNN``, with ``StandardROIHeads`` in place of
    ``DynamicROIHeads`` and ``CascadeROIHeads`` in place of ``DynamicCascadeROIHeads`` (the same weights
    and inference), and ``MODEL.WEIGHTS`` set to ``weights``.
    Raises ValueError when a key of the result is unknown to detectron2's ``get_cfg()``.
    """
    from detectron2.config import CfgNode, get_cfg

    cfg = CfgNode.load_cfg(cfg_text)
    cfg.MODEL.pop("DYNAMIC_RCNN", None)
    trained_with = cfg.MODEL.ROI_HEADS.NAME
    cfg.MODEL.ROI_HEADS.NAME = INFERENCE_HEADS.get(trained_with, trained_with)
    cfg.MODEL.WEIGHTS = weights
    plain = get_cfg()
    try:
        plain.merge_from_other_cfg(cfg)
    except KeyError as e:
        raise ValueError(f"the run's config has keys plain detectron2 does not know: {e}") from e
    header = (
        "# Inference config for plain detectron2 (no dynamic_rcnn import needed): the model trained with\n"
        f"# {trained_with} is a {cfg.MODEL.ROI_HEADS.NAME} model at inference. MODEL.WEIGHTS is relative to the\n"
        "# release folder: run from there, or give the path (MODEL.WEIGHTS path/to/file).\n"
    )
    return header + plain.dump()


def check_name(name: str) -> None:
    """``name`` makes the release's file names (``OUT/NAME_<hash>.pth``, ...): one file name, or ValueError."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"--name {name!r} is not a release name: give one file name of letters, digits, '_', '.' "
                         "and '-', beginning with a letter or digit (e.g. dynamic_rcnn_R_18_FPN_shapes)")


def earlier_release(name: str, out_dir: str):
    """What ``out_dir`` holds of a release ``name``: (its checkpoints, its metadata files), file names."""
    from dynamic_rcnn.model_zoo import released_checkpoints

    meta = [f for f in (f"{name}.metrics.json", f"{name}.inference.yaml") if os.path.isfile(os.path.join(out_dir, f))]
    return released_checkpoints(name, out_dir), meta


def publish(run_dir: str, name: str, out_dir: str, checkpoint: str = "model_final.pth", replace: bool = False):
    """
    Write the release ``name`` of the run ``run_dir`` into ``out_dir`` (see the module's doc); returns its
    metrics and the notes to print. Raises ValueError for a bad name, OSError for an ``out_dir`` that is no
    folder or already holds weights of ``name`` (without ``replace``), before anything is read or written;
    FileNotFoundError, ValueError or OSError naming what is wrong; the checkpoint is written whole or not at all.
    """
    import torch
    from detectron2.config import CfgNode

    from dynamic_rcnn.engine import check_output_dir
    from dynamic_rcnn.model_zoo import sha256_of

    check_name(name)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"--out {out_dir} is a file: --out must be a folder, for the release's files (it is "
                                 "created if missing)")
    check_output_dir(out_dir, "--out")
    weights, meta = earlier_release(name, out_dir)
    if weights and not replace:
        raise FileExistsError(f"{out_dir} already holds the release {name} ({', '.join(weights + meta)}): publishing "
                              "it again would leave those weights orphaned. Give another --name, or add --replace to "
                              "replace the release whole")
    ckpt_path = checkpoint if os.path.isabs(checkpoint) else os.path.join(run_dir, checkpoint)
    cfg_path = os.path.join(run_dir, "config.yaml")
    for path, what in ((ckpt_path, "checkpoint"), (cfg_path, "config.yaml (written by train_net.py)")):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} does not exist: RUN_DIR must hold the run's {what}")
    try:
        checkpoint_data = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"{ckpt_path} is not a readable checkpoint: {type(e).__name__}: {e}") from e
    if not isinstance(checkpoint_data, dict) or "model" not in checkpoint_data:
        raise ValueError(f"{ckpt_path} has no 'model' entry: not a detectron2 checkpoint")
    with open(cfg_path) as f:
        cfg_text = f.read()
    cfg = CfgNode.load_cfg(cfg_text)
    classes = list(checkpoint_data.get("thing_classes") or []) or None  # for demo.py and model_zoo.get_thing_classes

    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".pth", dir=out_dir)
    os.close(fd)
    try:  # the file is named by its hash once written whole: a failure leaves nothing behind
        kept = {"thing_classes": classes} if classes else {}
        torch.save({"model": checkpoint_data["model"], "cfg": cfg_text, **kept, "__author__": "dynamic_rcnn"}, tmp)
        digest = sha256_of(tmp)
        file_name = f"{name}_{digest[:8]}.pth"
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, os.path.join(out_dir, file_name))
    except BaseException:
        os.remove(tmp)
        raise

    inference_file = f"{name}.inference.yaml"
    with open(os.path.join(out_dir, inference_file), "w") as f:
        f.write(inference_config(cfg_text, file_name))

    collected = collect_metrics(run_dir)
    metrics = {
        "name": name,
        "checkpoint": file_name,
        "inference_config": inference_file,
        "sha256": digest,
        "size_mb": round(os.path.getsize(os.path.join(out_dir, file_name)) / 2**20, 2),
        "config": os.path.relpath(cfg_path),
        "datasets": {"train": list(cfg.DATASETS.TRAIN), "test": list(cfg.DATASETS.TEST)},
        "thing_classes": classes,
        "schedule": {
            "max_iter": cfg.SOLVER.MAX_ITER,
            "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH,
            "base_lr": cfg.SOLVER.BASE_LR,
            "steps": list(cfg.SOLVER.STEPS),
        },
        "roi_heads": cfg.MODEL.ROI_HEADS.NAME,
        "dynamic_rcnn": dict(cfg.MODEL.get("DYNAMIC_RCNN", {})),
        **collected,
    }
    with open(os.path.join(out_dir, f"{name}.metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2)
    notes = []
    if not classes:
        notes.append(f"note: {ckpt_path} holds no class names (a checkpoint of an earlier version, or not saved by "
                     "the project's trainers): the release has none, and demo.py draws those of the config's "
                     "DATASETS.TEST[0]")
    removed = [w for w in weights if w != file_name]  # --replace: the release whole, once the new one is written
    for earlier in removed:
        os.remove(os.path.join(out_dir, earlier))
    if removed:
        notes.append(f"replaced the release {name}: {', '.join(removed)} removed")
    elif meta and not weights:
        notes.append(f"note: replaced {' and '.join(meta)} of an earlier release of {name}, whose weights are not "
                     f"in {out_dir}")
    return metrics, notes


def verify(name: str, out_dir: str, tolerance: float) -> list:
    """Evaluate the release ``name`` loaded from ``out_dir``; the (dataset, metric, published, measured) that differ."""
    from detectron2.utils.logger import setup_logger

    from dynamic_rcnn import model_zoo  # registers the built-in datasets
    from dynamic_rcnn.engine import Trainer

    setup_logger()
    os.environ["DYNAMIC_RCNN_RELEASES"] = out_dir
    cfg = model_zoo.get_config(name, trained=True)
    cfg.defrost()
    cfg.OUTPUT_DIR = os.path.join(tempfile.mkdtemp(prefix="verify_"), name)
    model = model_zoo.get(name, trained=True, device=cfg.MODEL.DEVICE)
    measured = Trainer.evaluate(cfg, model)
    if len(cfg.DATASETS.TEST) == 1 and cfg.DATASETS.TEST[0] not in measured:
        measured = {cfg.DATASETS.TEST[0]: measured}  # detectron2 unwraps a single test set's results
    published = _read_json(os.path.join(out_dir, f"{name}.metrics.json"))["ap"]
    differ = []
    for dataset, tasks in published.items():
        for task, values in tasks.items():
            for metric, value in values.items():
                got = measured.get(dataset, {}).get(task, {}).get(metric)
                same = (got != got and value != value) or (got is not None and abs(got - value) <= tolerance)
                if not same:
                    differ.append((dataset, f"{task}/{metric}", value, got))
    return differ


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="the OUTPUT_DIR of a training run")
    parser.add_argument("--name", required=True, help="release name, e.g. dynamic_rcnn_R_18_FPN_shapes")
    parser.add_argument("--checkpoint", default="model_final.pth", help="checkpoint in RUN_DIR (or a path)")
    parser.add_argument("--out", default=None, help="release folder (default: $DYNAMIC_RCNN_RELEASES or releases/)")
    parser.add_argument("--replace", action="store_true", help="replace a release of this --name in --out, whole")
    parser.add_argument("--verify", action="store_true", help="then evaluate the release and compare its AP")
    parser.add_argument("--tolerance", type=float, default=0.05, help="--verify: AP points allowed apart")
    args = parser.parse_args(argv)
    from dynamic_rcnn.model_zoo import release_dir

    try:
        metrics, notes = publish(args.run_dir, args.name, args.out or release_dir(), args.checkpoint, args.replace)
    except (OSError, ValueError) as e:  # OSError: FileNotFoundError, a full disk...
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {metrics['checkpoint']} ({metrics['size_mb']} MB, sha256 {metrics['sha256']}), "
          f"{args.name}.metrics.json and {metrics['inference_config']}")
    print("\n".join(notes), end="\n" if notes else "")
    if args.verify:
        differ = verify(args.name, args.out or release_dir(), args.tolerance)
        for dataset, metric, published, measured in differ:
            print(f"error: {dataset} {metric}: {published} published, {measured} measured", file=sys.stderr)
        if differ:
            return 1
        print(f"verified: {metrics['checkpoint']} loaded through dynamic_rcnn.model_zoo gives the published AP")
    return 0


if __name__ == "__main__":
    sys.exit(main())
