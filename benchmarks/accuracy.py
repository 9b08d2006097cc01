#!/usr/bin/env python
"""
Accuracy of Dynamic R-CNN against two baselines, the same schedule, seeds and data for every run:

- ``dynamic``: DynamicROIHeads, DLA and DSL;  ``dla_only``;  ``dsl_only`` (IoU kept at 0.5);
- ``baseline_authors``: StandardROIHeads, IoU 0.5, SmoothL1 beta 1.0, the same RPN (NMS 0.85);
- ``baseline_d2``: detectron2's stock Faster R-CNN head: L1 box loss (beta 0), RPN NMS 0.7;
- ``dynamic_no_gt_stats``: ``dynamic`` with the statistics taken over the RPN's proposals only
  (``STATS_INCLUDE_GT: False``; for images with many objects, see README).

    python benchmarks/accuracy.py --datasets shapes bccd --seeds 0 1 [--variants ...] [KEY VALUE ...]

Each run is ``train_net.py`` in its own process, written to ``--out/DATASET/VARIANT/seedN``; a run
whose ``train_summary.json`` and AP table exist is not run again, so the matrix can be completed over
several sittings. Prints (and writes to ``--out/accuracy.md``) one row per run (AP, AP50-AP90, final
IoU threshold and beta, wall time) and the mean of each (dataset, variant), then the IoU threshold
and beta of every run at six iterations; ``--plot-dir DIR`` draws them (``trajectories_DATASET.png``).
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ["AP", "AP50", "AP60", "AP70", "AP80", "AP90"]

DATASETS = {
    "shapes": "configs/shapes/dynamic_rcnn_R_18_FPN_shapes.yaml",
    "bccd": "configs/bccd/dynamic_rcnn_R_18_FPN_bccd.yaml",
}
VARIANTS = {
    "dynamic": [],
    "dla_only": ["MODEL.DYNAMIC_RCNN.ENABLE_DSL", "False"],
    "dsl_only": ["MODEL.DYNAMIC_RCNN.ENABLE_DLA", "False", "MODEL.DYNAMIC_RCNN.WARMUP_IOU", "0.5"],
    "baseline_authors": ["MODEL.ROI_HEADS.NAME", "StandardROIHeads", "MODEL.ROI_HEADS.IOU_THRESHOLDS", "[0.5]",
                         "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", "1.0"],
    "baseline_d2": ["MODEL.ROI_HEADS.NAME", "StandardROIHeads", "MODEL.ROI_HEADS.IOU_THRESHOLDS", "[0.5]",
                    "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", "0.0", "MODEL.RPN.NMS_THRESH", "0.7"],
    "dynamic_no_gt_stats": ["MODEL.DYNAMIC_RCNN.STATS_INCLUDE_GT", "False"],
}


def run_dir(out, dataset, variant, seed):
    return os.path.join(out, dataset, variant, f"seed{seed}")


def read_run(path):
    """The run's AP columns, final IoU threshold / beta and wall time; None if it is not complete."""
    tables = glob.glob(os.path.join(path, "inference", "*", "ap_table.json"))
    summary_file = os.path.join(path, "train_summary.json")
    if not tables or not os.path.isfile(summary_file):
        return None
    with open(tables[0]) as f:
        table = json.load(f)
    bbox = next(iter(table.values()))["bbox"]
    with open(summary_file) as f:
        summary = json.load(f)
    final, curves = {}, {}
    metrics = os.path.join(path, "metrics.json")
    if os.path.isfile(metrics):
        sys.path.insert(0, ROOT)
        from dynamic_rcnn.plot import read_metrics

        series = read_metrics(metrics)
        for key in ("iou_threshold", "beta"):
            values = series.get(f"dynamic_rcnn/{key}")
            final[key] = values[-1][1] if values else None
            if values:
                curves[key] = values
    return {**{c: bbox.get(c) for c in COLUMNS}, **final, "wall_min": summary["wall_seconds"] / 60,
            "iterations": summary["iterations"], "machine": summary["machine"], "curves": curves}


def fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def table(rows):
    lines = ["| dataset | variant | seed | " + " | ".join(COLUMNS) + " | final IoU thr. | final beta | wall min |",
             "|" + "---|" * (len(COLUMNS) + 6)]
    for (dataset, variant, seed), r in rows:
        lines.append(f"| {dataset} | {variant} | {seed} | " + " | ".join(fmt(r[c]) for c in COLUMNS)
                     + f" | {fmt(r.get('iou_threshold'), 3)} | {fmt(r.get('beta'), 3)} | {fmt(r['wall_min'])} |")
    groups = {}
    for (dataset, variant, _), r in rows:
        groups.setdefault((dataset, variant), []).append(r)
    for (dataset, variant), rs in groups.items():
        if len(rs) > 1:
            mean = {c: statistics.fmean(r[c] for r in rs) for c in COLUMNS}
            lines.append(f"| {dataset} | **{variant} mean** | {len(rs)} runs | "
                         + " | ".join(f"**{fmt(mean[c])}**" for c in COLUMNS) + " | | | |")
    return "\n".join(lines)


def trajectory_table(rows, points=6):
    """IoU threshold / beta of every run that logged them, at ``points`` iterations spread evenly."""
    lines = []
    for dataset in dict.fromkeys(d for (d, _, _), _ in rows):
        runs = [(v, s, r["curves"]) for (d, v, s), r in rows if d == dataset and "iou_threshold" in r["curves"]]
        if not runs:
            continue
        its = [it for it, _ in runs[0][2]["iou_threshold"]]
        picks = sorted({its[round(i * (len(its) - 1) / (points - 1))] for i in range(points)})
        lines += [f"**{dataset}**: IoU threshold / beta at iteration", "",
                  "| variant | seed | " + " | ".join(str(it + 1) for it in picks) + " |",
                  "|" + "---|" * (len(picks) + 2)]
        for variant, seed, curves in runs:
            t, b = dict(curves["iou_threshold"]), dict(curves.get("beta", []))
            lines.append(f"| {variant} | {seed} | "
                         + " | ".join(f"{fmt(t.get(it), 2)} / {fmt(b.get(it), 2)}" for it in picks) + " |")
        lines.append("")
    return "\n".join(lines)


def plot_trajectories(rows, out_dir):
    """``out_dir/trajectories_DATASET.png``: IoU threshold and beta of every run that logged them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for dataset in dict.fromkeys(d for (d, _, _), _ in rows):
        runs = [(v, s, r["curves"]) for (d, v, s), r in rows if d == dataset and r["curves"]]
        if not runs:
            continue
        fig, axes = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
        colors = {v: f"C{i}" for i, v in enumerate(dict.fromkeys(v for v, _, _ in runs))}
        seeds = sorted({s for _, s, _ in runs})
        for variant, seed, curves in runs:
            for ax, key in zip(axes, ("iou_threshold", "beta")):
                if key in curves:
                    ax.plot(*zip(*curves[key]), label=f"{variant} seed {seed}", color=colors[variant],
                            linestyle=["-", "--", ":", "-."][seeds.index(seed) % 4])
        axes[0].set_ylabel("IoU threshold")
        axes[1].set_ylabel("SmoothL1 beta")
        axes[1].set_xlabel("iteration")
        axes[0].legend(fontsize=8)
        axes[0].set_title(f"{dataset}: Dynamic R-CNN's IoU threshold and beta during training")
        path = os.path.join(out_dir, f"trajectories_{dataset}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--out", default=os.path.join(ROOT, "output", "benchmarks", "accuracy"))
    parser.add_argument("--report-only", action="store_true", help="print the table of the runs made so far")
    parser.add_argument("--plot-dir", help="also draw trajectories_DATASET.png (IoU threshold, beta) here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="overrides for every run")
    args = parser.parse_args(argv)

    rows = []
    for dataset in args.datasets:
        for variant in args.variants:
            for seed in args.seeds:
                path = run_dir(args.out, dataset, variant, seed)
                result = read_run(path)
                if result is None and not args.report_only:
                    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file",
                           os.path.join(ROOT, DATASETS[dataset]), *VARIANTS[variant], "SEED", str(seed),
                           *args.opts, "OUTPUT_DIR", path]
                    print(f"== {dataset} / {variant} / seed {seed}: {' '.join(cmd[1:])}", flush=True)
                    os.makedirs(path, exist_ok=True)
                    with open(os.path.join(path, "stdout.txt"), "w") as log:
                        subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, check=True)
                    result = read_run(path)
                if result is not None:
                    rows.append(((dataset, variant, seed), result))
    text = table(rows) + "\n\n" + trajectory_table(rows)
    print(text)
    if args.plot_dir:
        os.makedirs(args.plot_dir, exist_ok=True)
        for path in plot_trajectories(rows, args.plot_dir):
            print(f"wrote {path}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "accuracy.md"), "w") as f:
        f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
