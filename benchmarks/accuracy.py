#!/usr/bin/env python
"""
Accuracy of Dynamic R-CNN settings against detectron2's stock Faster R-CNN (and the authors' baseline),
with the same data, schedule and seeds for every variant (``--list`` prints them with their overrides):

    python benchmarks/accuracy.py --datasets shapes bccd --seeds 0 1 2 3 --variants baseline_d2 dynamic_no_gt_ke20 --jobs 2 --threads 1
    python benchmarks/accuracy.py --schedule 3 ...     # 3x the configs' iterations (steps scaled alike)
    python benchmarks/accuracy.py --report --datasets shapes --variants ... --seeds ... [--plot-dir docs]
    python benchmarks/accuracy.py --versus auto_nms70:baseline_d2 auto_cascade:baseline_cascade --datasets ... --seeds ...

Runs that survive a session's end: each run is ``train_net.py`` in its own process, trained in
``output/benchmarks/DATASET/VARIANT[_xN]/seedS``; when it ends, its numbers (every AP column, the
final IoU threshold and beta, positives an image, the curves, wall time, peak memory, threads,
commit, command) are written to ``benchmarks/results/accuracy/DATASET/VARIANT[_xN]/seedS.json`` and
its checkpoints deleted. A run whose file exists is not run again; a run cut off before its file is
written is started again from scratch, never half-counted. The report (``--report``, and the end of
every call) is made from those files only: per-seed AP, means, paired differences to ``--reference``
(same seeds) with standard errors and 95 % intervals, positives, trajectories; ``--plot-dir`` draws
the paired differences (``paired_DATASET.png``... one picture) and the trajectories.

``--jobs`` runs that many at a time, each with ``--threads`` CPU threads (the thread count changes
the floating-point sums, hence the trajectory: compare runs made with the same count; each record
keeps its own). Set ``DYNAMIC_RCNN_DATASETS`` to the folder holding ``BCCD/`` for the BCCD runs.
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from dynamic_rcnn.tools import paired  # noqa: E402  (the running, recording and reporting of paired runs)
from dynamic_rcnn.tools.paired import COLUMNS, Run, trajectory_grid, plot_trajectories  # noqa: E402,F401

RESULTS = os.path.join(ROOT, "benchmarks", "results", "accuracy")
RUNS = os.path.join(ROOT, "output", "benchmarks")

# dataset -> the configs a variant starts from: Dynamic R-CNN, detectron2's stock head, the authors' baseline.
# kangaroo, pear640 and cells are made by tools/prepare_datasets.py (BENCHMARKS.md names the repositories).
CONFIGS = {
    data: {kind: path for kind, path in {
        "dynamic": f"configs/{data}/dynamic_rcnn_R_18_FPN_{data}.yaml",
        "stock": f"configs/{data}/faster_rcnn_R_18_FPN_{data}.yaml",
        "authors": f"configs/{data}/faster_rcnn_R_18_FPN_{data}_authors.yaml",
        "cascade": f"configs/{data}/cascade_rcnn_R_18_FPN_{data}.yaml",
        "dynamic_cascade": f"configs/{data}/dynamic_cascade_rcnn_R_18_FPN_{data}.yaml",
    }.items() if os.path.isfile(os.path.join(ROOT, path))}
    for data in ("shapes", "bccd", "kangaroo", "pear640", "cells")
}
# Every Dynamic R-CNN variant states all its keys, so that it means the same whatever the configs
# become: PAPER is the paper's rule (appended ground truth counted, K_E 10) with K_I sized to the 300
# proposals of these configs (20), in the authors' recipe (RPN NMS 0.85).
_D = "MODEL.DYNAMIC_RCNN."
PAPER = ["MODEL.RPN.NMS_THRESH", "0.85", _D + "STATS_INCLUDE_GT", "True", _D + "IOU_TOPK", "20",
         _D + "BETA_TOPK", "10", _D + "UPDATE_PERIOD", "20", _D + "WARMUP_IOU", "0.4", _D + "WARMUP_BETA", "1.0",
         _D + "ENABLE_DLA", "True", _D + "ENABLE_DSL", "True"]
NO_GT_KE20 = [_D + "STATS_INCLUDE_GT", "False", _D + "BETA_TOPK", "20"]
NMS70 = ["MODEL.RPN.NMS_THRESH", "0.7"]
# The automatic rule of issue 28 (K from the counts, the RPN's boxes only); FLOOR50: the single head's floor at 0.5.
AUTO = [_D + "IOU_TOPK", "0", _D + "BETA_TOPK", "0", _D + "STATS_INCLUDE_GT", "False"]
FLOOR50 = [_D + "WARMUP_IOU", "0.5"]
# name -> (the config it starts from, overrides)
VARIANTS = {
    # detectron2's stock head (IoU 0.5, L1 box loss, RPN NMS 0.7): what a detectron2 user trains.
    "baseline_d2": ("stock", []),
    # ... with the authors' RPN NMS 0.85: the NMS's own effect.
    "baseline_d2_nms85": ("stock", ["MODEL.RPN.NMS_THRESH", "0.85"]),
    # The authors' baseline: IoU 0.5, SmoothL1 beta 1.0, RPN NMS 0.85.
    "baseline_authors": ("authors", []),
    "dynamic": ("dynamic", PAPER),
    "dla_only": ("dynamic", PAPER + [_D + "ENABLE_DSL", "False"]),
    "dsl_only": ("dynamic", PAPER + [_D + "ENABLE_DLA", "False", _D + "WARMUP_IOU", "0.5"]),
    "dynamic_no_gt_stats": ("dynamic", PAPER + [_D + "STATS_INCLUDE_GT", "False"]),
    "dynamic_ki40": ("dynamic", PAPER + [_D + "IOU_TOPK", "40"]),
    "dynamic_ki75": ("dynamic", PAPER + [_D + "IOU_TOPK", "75"]),
    "dynamic_ke20": ("dynamic", PAPER + [_D + "BETA_TOPK", "20"]),
    # The shapes and BCCD configs' setting: statistics over the RPN's proposals, K_E 20.
    "dynamic_no_gt_ke20": ("dynamic", PAPER + NO_GT_KE20),
    # ... with detectron2's RPN NMS 0.7: only the ROI head differs from baseline_d2 (the drop-in setting).
    "dynamic_no_gt_ke20_nms70": ("dynamic", PAPER + NO_GT_KE20 + NMS70),
    # ... with K_I 10: NMS 0.7 keeps fewer overlapping proposals an object, so the same K_I reads a lower
    # IoU (T ends near 0.58 instead of 0.65 at NMS 0.85); half the K_I reads a higher one.
    "dynamic_no_gt_ke20_nms70_ki10": ("dynamic", PAPER + NO_GT_KE20 + NMS70 + [_D + "IOU_TOPK", "10"]),
    # The package's defaults of version 0.3 (K_I 75, K_E 10, the appended ground truth counted) on the stock
    # model (NMS 0.7): what a user gets who switches MODEL.ROI_HEADS.NAME alone.
    "defaults_nms70": ("dynamic", PAPER + NMS70 + [_D + "IOU_TOPK", "75"]),
    # The rule of issue 28, the package's defaults since 0.4 (K automatic: max(3 x objects, 7.5 % / 1 % of the
    # proposals) an image, the RPN's boxes only) on the stock model (NMS 0.7), and with the authors' NMS 0.85.
    "auto_nms70": ("dynamic", PAPER + NMS70 + AUTO),
    # ... with its floor (and starting threshold) at the stock head's IoU 0.5 instead of the paper's 0.4: no
    # training below detectron2's threshold, as the cascade's floors are Cascade's IoUs (kangaroo's T ends 0.46-0.48).
    "auto_nms70_floor50": ("dynamic", PAPER + NMS70 + AUTO + FLOOR50),
    "auto_nms85_floor50": ("dynamic", PAPER + AUTO + FLOOR50),
    "auto_nms85": ("dynamic", PAPER + AUTO),
    # Dynamic Label Assignment alone on the stock model: its L1 box loss (beta 0) and NMS 0.7.
    "dla_l1_nms70": ("dynamic", PAPER + NO_GT_KE20 + NMS70 + [_D + "ENABLE_DSL", "False", _D + "WARMUP_BETA", "0.0"]),
}
# Dynamic Cascade R-CNN with the first defaults of docs/CASCADE.md sized to these configs (K_I 7.5 % of the
# 300 proposals, then of the 128 sampled boxes: 22 / 10 / 10; K_E 10; floors at Cascade's IoUs; beta from
# 1.0), every key stated. They lost 9 AP on shapes; 0.3's defaults were those of dynamic_cascade_ki22, 0.4's
# those of auto_cascade.
CASCADE_DEFAULTS = [_D + "UPDATE_PERIOD", "20", _D + "STATS_INCLUDE_GT", "True", _D + "CASCADE.IOU_TOPK", "[22, 10, 10]",
                    _D + "CASCADE.BETA_TOPK", "[10, 10, 10]", _D + "CASCADE.WARMUP_IOU", "[0.5, 0.6, 0.7]",
                    _D + "CASCADE.WARMUP_BETA", "[1.0, 1.0, 1.0]", _D + "CASCADE.ENABLE_DLA", "[True, True, True]",
                    _D + "CASCADE.ENABLE_DSL", "[True, True, True]"]
# The option groups the cascade's variants combine (each stated for all three stages).
def _ki(k):
    return [_D + "CASCADE.IOU_TOPK", f"[{k}, {k}, {k}]"]


DLA_L1 = [_D + "CASCADE.ENABLE_DSL", "[False, False, False]", _D + "CASCADE.WARMUP_BETA", "[0.0, 0.0, 0.0]"]
FLOOR456 = [_D + "CASCADE.WARMUP_IOU", "[0.4, 0.5, 0.6]"]
NO_GT_KE20_CASCADE = [_D + "STATS_INCLUDE_GT", "False", _D + "CASCADE.BETA_TOPK", "[20, 20, 20]"]
VARIANTS.update({
    # detectron2's stock Cascade R-CNN (L1 box loss, IoUs 0.5 / 0.6 / 0.7, RPN NMS 0.7).
    "baseline_cascade": ("cascade", []),
    "dynamic_cascade": ("dynamic_cascade", CASCADE_DEFAULTS),
    # DLA only, detectron2's L1 box loss kept.
    "dynamic_cascade_dla_l1": ("dynamic_cascade", CASCADE_DEFAULTS + DLA_L1),
    # Statistics without the appended ground truth and its descendants in later stages (as the single
    # head's configs): with 7 objects an image, they are most of stage 1's and 2's K_I 10 largest IoUs.
    "dynamic_cascade_no_gt": ("dynamic_cascade", CASCADE_DEFAULTS + [_D + "STATS_INCLUDE_GT", "False"]),
    # K_I 22 at every stage: the boxes stage 0's K_I reads are positives, all sampled, and go on to the
    # next stages; 7.5 % of the 128 sampled boxes (10) reads far better boxes than 7.5 % of the proposals.
    "dynamic_cascade_ki22": ("dynamic_cascade", CASCADE_DEFAULTS + _ki(22)),
    # The two choices of the issue, on the current defaults (K_I 22 at every stage): DLA alone with
    # detectron2's L1 loss, and floors a stage lower (the single head's warm-up below the fixed threshold).
    "dynamic_cascade_ki22_dla_l1": ("dynamic_cascade", CASCADE_DEFAULTS + _ki(22) + DLA_L1),
    "dynamic_cascade_ki22_floor456": ("dynamic_cascade", CASCADE_DEFAULTS + _ki(22) + FLOOR456),
    # Statistics over the RPN's proposals only and K_E 20, as the single head's BCCD config: with 14 cells an
    # image the appended ground truth is most of K_I 22's and all of K_E 10's boxes (T near 0.8, the error
    # statistic 0 and beta held at 1.0 at stage 0).
    "dynamic_cascade_ki22_no_gt_ke20": ("dynamic_cascade", CASCADE_DEFAULTS + _ki(22) + NO_GT_KE20_CASCADE),
    # ... with K_I 44 and 75 (15 % and 25 % of the 300 proposals): BCCD's 14 cells share 300 proposals, about 22
    # a cell, so K_I 22 reads each cell's one or two best (T 0.72 / 0.79 / 0.82 on seed 0, the stock
    # Cascade's last stage trains on 51 positives an image, this one on 38); a larger K_I reads lower.
    "dynamic_cascade_ki44_no_gt_ke20": ("dynamic_cascade", CASCADE_DEFAULTS + _ki(44) + NO_GT_KE20_CASCADE),
    "dynamic_cascade_ki75_no_gt_ke20": ("dynamic_cascade", CASCADE_DEFAULTS + _ki(75) + NO_GT_KE20_CASCADE),
    # The two choices of the issue on BCCD's setting (K_I 44, level with the stock Cascade: BENCHMARKS.md).
    "dynamic_cascade_ki44_no_gt_ke20_dla_l1": ("dynamic_cascade", CASCADE_DEFAULTS + _ki(44) + NO_GT_KE20_CASCADE + DLA_L1),
    "dynamic_cascade_ki44_no_gt_ke20_floor456": ("dynamic_cascade",
                                                 CASCADE_DEFAULTS + _ki(44) + NO_GT_KE20_CASCADE + FLOOR456),
    # The rule of issue 28 at every stage (each stage's K that of stage 0's proposals and objects): 0.4's defaults.
    "auto_cascade": ("dynamic_cascade", CASCADE_DEFAULTS + _ki(0) + [_D + "CASCADE.BETA_TOPK", "[0, 0, 0]",
                                                                     _D + "STATS_INCLUDE_GT", "False"]),
})
REFERENCE = "baseline_d2"


def result_file(results, dataset, variant, seed, schedule=1):
    return os.path.join(results, dataset, paired.name(variant, schedule), f"seed{seed}.json")


def run_dir(runs, dataset, variant, seed, schedule=1):
    return os.path.join(runs, dataset, paired.name(variant, schedule), f"seed{seed}")


def run_command(runs, key, opts):
    dataset, variant, seed, schedule = key
    kind, overrides = VARIANTS[variant]
    config = os.path.join(ROOT, CONFIGS[dataset][kind])
    return [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", config, *overrides,
            "SEED", str(seed), *schedule_opts(config, schedule), *opts, "OUTPUT_DIR", run_dir(runs, *key)]


def schedule_opts(config, factor):
    """Overrides that make the config's schedule ``factor`` times longer (steps scaled alike)."""
    if factor == 1:
        return []
    from dynamic_rcnn.engine import load_config

    solver = load_config(config).SOLVER
    return ["SOLVER.MAX_ITER", str(solver.MAX_ITER * factor), "SOLVER.STEPS", str(tuple(s * factor for s in solver.STEPS)),
            "SOLVER.CHECKPOINT_PERIOD", str(solver.CHECKPOINT_PERIOD * factor)]


def run_all(todo, jobs, threads, results, runs):
    """Run the (key, command) pairs with the paired-runs engine, ``jobs`` at a time; each one's result file is
    written when it ends well (paths relative to the checkout in the record, as before)."""
    def short(c):
        return os.path.relpath(c, ROOT) if c.startswith(ROOT) else c

    return paired.run_all([Run(key, [cmd[0]] + [short(c) for c in cmd[1:]], run_dir(runs, *key), result_file(results, *key))
                           for key, cmd in todo], jobs=jobs, threads=threads, cwd=ROOT, say=lambda s: print(s, flush=True))


def read_results(results, keys):
    return paired.read_results(lambda *key: result_file(results, *key), keys)


def paired_table(rows, reference=REFERENCE):
    return paired.paired_table(rows, reference)


def versus_table(rows, pairs) -> str:
    """
    One row a data set, one column a ``variant:reference`` pair: the paired AP difference (mean ± standard error over
    the seeds both have, their count in brackets; bold where the 95 % interval excludes 0). Data sets worst first, by
    the worse of the first two columns' means.
    """
    diffs = {}
    for pair in pairs:
        variant, reference = pair.split(":")
        for (dataset, v), cols in paired.paired_differences(rows, reference, columns=["AP"]).items():
            if v == variant:
                diffs[(dataset, pair)] = cols["AP"]

    def cell(d):
        if d is None:
            return "-"
        mean, se, n = d
        text = paired.signed(mean) + ("" if se is None else f" ± {se:.1f}") + f" ({n})"
        return f"**{text}**" if paired.resolved(mean, se, n) else text

    datasets = list(dict.fromkeys(d for d, _ in diffs))
    first = pairs[:2]
    datasets.sort(key=lambda d: min([diffs[(d, p)][0] for p in first if (d, p) in diffs] or [float("inf")]))
    head = ["data set"] + list(pairs)
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in datasets:
        row = [d] + [cell(diffs.get((d, p))) for p in pairs]
        lines.append("| " + " | ".join(row) + " |")
    left = [f"{d} {v}:{reference} seed {s}" for pair in pairs for reference in [pair.split(":")[1]]
            for d, v, s in paired.cross_machine(rows, reference) if v == pair.split(":")[0]]
    if left:
        lines += ["", "Not paired, the two runs on different machines (run both again on one): " + ", ".join(left) + "."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=["shapes", "bccd"], choices=list(CONFIGS))
    parser.add_argument("--variants", nargs="+", default=[REFERENCE, "dynamic_no_gt_ke20"], choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--schedule", nargs="+", type=int, default=[1],
                        help="train N times the configs' iterations (steps scaled alike); several: each")
    parser.add_argument("--results", default=RESULTS, help="the result files' folder (default: benchmarks/results/accuracy)")
    parser.add_argument("--runs", default=RUNS, help="the training folders (default: output/benchmarks)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads a run (0: torch's default)")
    parser.add_argument("--reference", default=REFERENCE, choices=list(VARIANTS), help="what the paired differences are to")
    parser.add_argument("--report", action="store_true", help="no run: the report of the recorded results")
    parser.add_argument("--report-file", help="also write the report there")
    parser.add_argument("--list", action="store_true", help="print the variants and their overrides")
    parser.add_argument("--versus", nargs="+", metavar="VARIANT:REFERENCE",
                        help="no run: one table of paired AP differences, a data set a row, a pair a column")
    parser.add_argument("--plot-dir", help="also draw paired_differences.png and trajectories_DATASET.png there")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="overrides for every run")
    args = parser.parse_args(argv)
    if args.list:
        for name, (kind, opts) in VARIANTS.items():
            print(f"{name}: {kind} config {' '.join(opts)}")
        return 0

    if args.versus:
        bad = [p for p in args.versus if len(p.split(":")) != 2 or not set(p.split(":")) <= set(VARIANTS)]
        if bad:
            parser.error(f"--versus {' '.join(bad)}: give VARIANT:REFERENCE, both among --list's variants")
        variants = list(dict.fromkeys(v for p in args.versus for v in p.split(":")))
        keys = [(d, v, s, x) for x in args.schedule for d in args.datasets for v in variants for s in args.seeds]
        print(versus_table(read_results(args.results, keys), args.versus))
        return 0
    keys = [(d, v, s, x) for x in args.schedule for d in args.datasets for v in args.variants for s in args.seeds]
    if not args.report:
        # Seeds outermost: a matrix stopped half-way still has every variant of the first seeds.
        order = sorted(keys, key=lambda k: (k[3], k[2], args.datasets.index(k[0]), args.variants.index(k[1])))
        todo = [(k, run_command(args.runs, k, args.opts)) for k in order if not os.path.isfile(result_file(args.results, *k))]
        run_all(todo, args.jobs, args.threads, args.results, args.runs)
    rows = read_results(args.results, keys)
    text = paired.report(rows, args.reference)
    print(text)
    if args.report_file:
        os.makedirs(os.path.dirname(os.path.abspath(args.report_file)), exist_ok=True)
        with open(args.report_file, "w") as f:
            f.write(text + "\n")
    if args.plot_dir:
        os.makedirs(args.plot_dir, exist_ok=True)
        for path in paired.plot_paired(rows, args.plot_dir, args.reference) + plot_trajectories(rows, args.plot_dir):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
