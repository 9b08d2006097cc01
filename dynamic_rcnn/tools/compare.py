"""
Does Dynamic R-CNN help on your data? Paired training runs of your detectron2 config as given (the reference)
and with Dynamic R-CNN switched on (``StandardROIHeads`` -> ``DynamicROIHeads``, ``CascadeROIHeads`` ->
``DynamicCascadeROIHeads``), same data, schedule, initial weights and seeds, then the paired differences:

    python -m dynamic_rcnn.tools.compare --config-file my_faster_rcnn.yaml --seeds 0 1 2 3 --num-gpus 8
    python -m dynamic_rcnn.tools.compare --config-file my.yaml --train-json train.json --train-images imgs/ \\
        --test-json val.json --test-images imgs/ --variant nms85 MODEL.ROI_HEADS.NAME DynamicROIHeads \\
        MODEL.RPN.NMS_THRESH 0.85 -- SOLVER.MAX_ITER 20000
    python -m dynamic_rcnn.tools.compare --out output/compare --report      # the report of what is recorded

Each run is the project's ``train_net.py`` (detectron2's ``launch``: GPUs, machines or CPU processes) in its own
folder, ``OUT/runs/VARIANT/seedS``; its numbers go to ``OUT/results/VARIANT/seedS.json`` when it ends and its
checkpoints are deleted (``--keep-checkpoints`` keeps them). The same command again skips what is recorded and
starts a cut run again from scratch; more seeds or variants can be added to a comparison later. Overrides for
every run (``KEY VALUE ...``) go last, after ``--`` when they follow a ``--variant``. Everything is checked
before the first run. The report (``OUT/report.md``, pictures beside it) is made from the results at the end, or
at any time with ``--report``.
"""
import argparse
import glob
import hashlib
import json
import os
import re
import sys
from typing import Dict, List, Tuple

from . import paired

__all__ = ["main", "parse_args", "plan"]

HEADS = {"StandardROIHeads": "DynamicROIHeads", "CascadeROIHeads": "DynamicCascadeROIHeads"}
REFERENCE, DYNAMIC = "reference", "dynamic"
SAID = {DYNAMIC: "Dynamic R-CNN"}
DATA = ("train_json", "train_images", "test_json", "test_images", "train_voc", "test_voc")


def argument_parser():
    parser = argparse.ArgumentParser(prog="python -m dynamic_rcnn.tools.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", metavar="FILE", help="your detectron2 config (YAML)")
    parser.add_argument("--seeds", nargs="+", default=["0", "1", "2", "3"], metavar="SEED",
                        help="paired seeds, the same for every variant (default: 0 1 2 3)")
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME KEY VALUE",
                        help="a variant of your config: its name, then config overrides (repeatable)")
    parser.add_argument("--no-dynamic", action="store_true", help="no default Dynamic R-CNN variant: only yours")
    parser.add_argument("--out", default="output/compare", help="the comparison's folder (default: output/compare)")
    parser.add_argument("--report", action="store_true", help="no run: the report of what OUT has recorded")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep every run's checkpoints")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads a run (default: torch's)")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between two progress lines")
    launch = parser.add_argument_group("parallelism of each run, as train_net.py takes it")
    launch.add_argument("--num-gpus", type=int, default=1)
    launch.add_argument("--num-machines", type=int, default=1)
    launch.add_argument("--machine-rank", type=int, default=0)
    launch.add_argument("--dist-url", default="auto")
    data = parser.add_argument_group("your own COCO-format or VOC-layout data, as train_net.py takes it")
    for name in DATA:
        data.add_argument("--" + name.replace("_", "-"), help=name.replace("_", " "))
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE", help="config overrides for every run")
    return parser


def parse_args(argv=None):
    """The command line; the integers after ``--seeds`` are the seeds, what follows them the overrides."""
    parser = argument_parser()
    args = parser.parse_args(argv)
    count = next((i for i, s in enumerate(args.seeds) if not re.fullmatch(r"\d+", s)), len(args.seeds))
    args.opts, args.seeds = args.seeds[count:] + list(args.opts), [int(s) for s in args.seeds[:count]]
    return args


def _config_text(cfg) -> str:
    """What a run trains with, less where it writes and its seed (which differ by run by design)."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.OUTPUT_DIR, cfg.SEED = "", -1
    return cfg.dump()


def plan(args) -> Tuple[Dict[str, List[str]], Dict[str, str], str]:
    """
    Everything checked before the first run, in one line each (ValueError, KeyError, OSError): the config, the
    data, the seeds, the variants. Returns ({variant: overrides on the config and ``args.opts``}, {variant: hash of
    its config}, the test set's name).
    """
    from ..data import check_datasets, check_test_sets, register_from_args
    from ..engine import load_config
    from ..engine.defaults import check_batch_size
    from ..engine.launch import check_output_dir

    if not args.config_file:
        raise ValueError("--config-file is needed to run (only --report makes a report without it)")
    if len(set(args.seeds)) < 2 or len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds {' '.join(map(str, args.seeds))}: give two different seeds or more (integers >= 0); "
                         "paired differences need a spread")
    if len(args.opts) % 2:
        raise ValueError(f"the overrides for every run are KEY VALUE pairs; {len(args.opts)} were given: "
                         f"{' '.join(args.opts)}")
    base = load_config(args.config_file, args.opts)
    head = base.MODEL.ROI_HEADS.NAME
    if args.no_dynamic:
        variants = {REFERENCE: []}
    elif head in HEADS:
        variants = {REFERENCE: [], DYNAMIC: ["MODEL.ROI_HEADS.NAME", HEADS[head]]}
    elif head in HEADS.values():  # a Dynamic config: the reference is detectron2's head
        variants = {REFERENCE: ["MODEL.ROI_HEADS.NAME", {v: k for k, v in HEADS.items()}[head]], DYNAMIC: []}
    else:
        raise ValueError(f"MODEL.ROI_HEADS.NAME is {head!r} in {args.config_file}: compare switches StandardROIHeads or "
                         "CascadeROIHeads to Dynamic R-CNN. Give your variants with --variant NAME KEY VALUE ... and "
                         "--no-dynamic")
    for name, *overrides in args.variant:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name) or name in variants:
            raise ValueError(f"--variant {name}: a variant's name is letters, digits, '_', '.', '-', not one of "
                             f"{', '.join(variants)}")
        if not overrides or len(overrides) % 2:
            raise ValueError(f"--variant {name}: give KEY VALUE pairs after its name, got {' '.join(overrides) or 'none'} "
                             "(overrides for every run that follow a --variant go after --)")
        variants[name] = list(overrides)
    configs, seen = {}, {}
    for name, overrides in variants.items():
        cfg = load_config(args.config_file, args.opts + overrides)
        register_from_args(args, cfg)  # --train-json ...: the datasets and NUM_CLASSES, as train_net.py sets them
        check_datasets(cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
        check_datasets(cfg.DATASETS.TEST, "DATASETS.TEST")
        check_batch_size(cfg.SOLVER.IMS_PER_BATCH, args.num_gpus * args.num_machines, "SOLVER.IMS_PER_BATCH")
        if not cfg.DATASETS.TEST:
            raise ValueError("DATASETS.TEST is empty: the runs need a test set to compare on (or --test-json)")
        text = _config_text(cfg)
        if text in seen:
            raise ValueError(f"--variant {name} changes nothing: it trains the config of {seen[text]}")
        seen[text], configs[name] = name, hashlib.sha256(text.encode()).hexdigest()[:16]
    check_test_sets(cfg.DATASETS.TEST, "DATASETS.TEST")  # last: it loads them
    check_output_dir(args.out, "--out")
    return variants, configs, "+".join(cfg.DATASETS.TEST)


def _train_net() -> str:
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "train_net.py")
    if not os.path.isfile(script):
        raise FileNotFoundError(f"compare trains with the project's train_net.py, which is not at {script}: run it "
                                "from a checkout of the project (or an editable install)")
    return script


def _check_plan(args, variants, configs) -> None:
    """An OUT that holds another comparison's runs is refused: a variant's config must be the one recorded."""
    path = os.path.join(args.out, "plan.json")
    if os.path.isfile(path):
        with open(path) as f:
            recorded = json.load(f).get("configs", {})
        differ = [n for n in configs if n in recorded and recorded[n] != configs[n]]
        if differ:
            raise ValueError(f"--out {args.out} holds runs of another comparison: the config of {', '.join(differ)} "
                             "differs from what its runs were trained with. Give another --out, or delete the folder")
        configs = {**recorded, **configs}
    paired.write_json(path, {"config_file": os.path.abspath(args.config_file), "configs": configs,
                             "variants": variants, "opts": args.opts,
                             "data": {d: getattr(args, d) for d in DATA if getattr(args, d)}})


def _command(args, overrides, seed, folder) -> List[str]:
    launch = ["--num-gpus", str(args.num_gpus), "--num-machines", str(args.num_machines),
              "--machine-rank", str(args.machine_rank), "--dist-url", args.dist_url]
    data = [x for d in DATA if getattr(args, d) for x in ("--" + d.replace("_", "-"), getattr(args, d))]
    return [sys.executable, _train_net(), "--config-file", args.config_file, *launch, *data, *args.opts, *overrides,
            "SEED", str(seed), "OUTPUT_DIR", folder]


def _result(out):
    return lambda dataset, variant, seed, schedule=1: os.path.join(out, "results", variant, f"seed{seed}.json")


def make_report(out: str) -> str:
    """``OUT/report.md`` and the pictures beside it, from every result OUT has recorded; returns the report."""
    keys = []
    for path in sorted(glob.glob(os.path.join(out, "results", "*", "seed*.json"))):
        with open(path) as f:
            r = json.load(f)
        keys.append((r["dataset"], r["variant"], r["seed"], r.get("schedule", 1)))
    rows = paired.read_results(_result(out), keys)
    if not rows:
        return f"{out} has no recorded run yet."
    order = {REFERENCE: 0, DYNAMIC: 1}
    rows.sort(key=lambda kr: (order.get(kr[0][1], 2), kr[0][1], kr[0][2]))
    text = "## Paired runs\n\n" + paired.report(rows, REFERENCE, SAID, others=True)
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write(text + "\n")
    for picture in paired.plot_paired(rows, out, REFERENCE) + paired.plot_trajectories(rows, out):
        text += f"\n\nwrote {picture}"
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report:
        if not os.path.isdir(args.out):
            sys.exit(f"error: --out {args.out} does not exist: nothing recorded there")
        print(make_report(args.out))
        return 0
    try:
        variants, configs, test_set = plan(args)
        os.makedirs(args.out, exist_ok=True)
        _check_plan(args, variants, configs)
        runs = [paired.Run((test_set, name, seed, 1), _command(args, overrides, seed, folder), folder,
                           _result(args.out)(test_set, name, seed))
                for seed in args.seeds for name, overrides in variants.items()
                for folder in [os.path.join(args.out, "runs", name, f"seed{seed}")]]
    except (ValueError, KeyError, OSError) as e:
        sys.exit(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}")
    todo = [r for r in runs if not os.path.isfile(r.result)]
    print(f"compare: {len(runs)} runs ({len(variants)} variants x {len(args.seeds)} seeds), {len(runs) - len(todo)} "
          f"recorded, {len(todo)} to run; results in {os.path.join(args.out, 'results')}", flush=True)
    failed = None
    try:
        paired.run_all(todo, jobs=args.jobs, threads=args.threads, keep_checkpoints=args.keep_checkpoints,
                       say=lambda s: print(f"compare: {s}", flush=True), every=args.every)
    except RuntimeError as e:
        failed = e
    except KeyboardInterrupt:  # the runs got the Ctrl-C too: a cut run is started again, never half-counted
        done = sum(os.path.isfile(r.result) for r in runs)
        sys.exit(f"error: interrupted (Ctrl-C) with {done} of {len(runs)} runs recorded; the same command goes on "
                 f"with the others, and --report makes the report of those recorded")
    print(make_report(args.out))
    if failed:
        sys.exit(f"error: {failed}; the same command runs them again")
    return 0


if __name__ == "__main__":
    sys.exit(main())
