#!/usr/bin/env python
"""
Accuracy of Dynamic R-CNN variants against the authors' baseline, with the same schedule, seeds and
data for every variant (``VARIANTS`` below lists them; ``--list`` prints them with their overrides):

- ``baseline_authors``: StandardROIHeads, IoU 0.5, SmoothL1 beta 1.0, the same RPN (NMS 0.85);
  ``baseline_d2``: detectron2's stock Faster R-CNN head (L1 box loss, RPN NMS 0.7);
- ``dynamic``: the paper's rule; ``dla_only``, ``dsl_only``; the K_I / K_E sweep ``dynamic_ki*``,
  ``dynamic_ke*``; ``dynamic_no_gt_stats`` (``STATS_INCLUDE_GT: False``);
- ``scaled``, ``scaled_no_gt``, ``object``: the statistics of ``docs/STATISTICS.md``;
  ``dynamic_guard``: the positives guard (``MIN_POSITIVES_IOU: 0.5``); ``*_floor50``: a variant above with
  ``WARMUP_IOU: 0.5``, a threshold never below the baseline's.

    python benchmarks/accuracy.py --datasets shapes bccd --seeds 0 1 2 3 --jobs 2 --threads 1 [--variants ...]
    python benchmarks/accuracy.py --schedule 4 ...        # 4x the configs' iterations (a GPU's job)

Each run is ``train_net.py`` in its own process, written to ``--out/DATASET/VARIANT/seedN``; a run
whose ``train_summary.json`` and AP table exist is not run again, so the matrix can be completed over
several sittings. ``--jobs`` runs that many at a time, each with ``--threads`` CPU threads (the
thread count changes the floating-point sums, hence the trajectory: compare runs made with the same
count; each run's count is kept in its ``run_env.json``).

Prints (and writes to ``--out/accuracy.md``): one row per run (AP, AP50-AP90, final IoU threshold and
beta, mean positives an image, wall time), the mean of each (dataset, variant); for each variant the
paired differences to ``baseline_authors`` (same seeds) with their standard error and 95 % interval;
then the IoU threshold and beta of every run at six iterations. ``--plot-dir DIR`` draws them
(``trajectories_DATASET.png``).
"""
import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLUMNS = ["AP", "AP50", "AP60", "AP70", "AP80", "AP90"]

# dataset: (config, overrides). BCCD is evaluated on val + test pooled (159 images instead of 72):
# fewer AP points of evaluation noise; nothing is tuned on either split.
DATASETS = {
    "shapes": ("configs/shapes/dynamic_rcnn_R_18_FPN_shapes.yaml", []),
    "bccd": ("configs/bccd/dynamic_rcnn_R_18_FPN_bccd.yaml", ["DATASETS.TEST", "('bccd_valtest',)"]),
}
# Every Dynamic R-CNN variant states all its keys, so that it means the same whatever the configs'
# defaults become: PAPER is the paper's rule with the top-k values the shapes / BCCD configs had
# when this benchmark was made (K_I 20 for 300 proposals, K_E 10).
_D = "MODEL.DYNAMIC_RCNN."
PAPER = [_D + "STATISTIC", "image", _D + "STATS_INCLUDE_GT", "True", _D + "IOU_TOPK", "20", _D + "BETA_TOPK", "10",
         _D + "MIN_POSITIVES_IOU", "0.0", _D + "ENABLE_DLA", "True", _D + "ENABLE_DSL", "True"]
NO_GT = [_D + "STATS_INCLUDE_GT", "False"]
COCO_TOPK = [_D + "IOU_TOPK", "75", _D + "BETA_TOPK", "10", _D + "REFERENCE_OBJECTS", "7.0"]
VARIANTS = {
    "dynamic": PAPER,
    "dla_only": PAPER + [_D + "ENABLE_DSL", "False"],
    "dsl_only": PAPER + [_D + "ENABLE_DLA", "False", _D + "WARMUP_IOU", "0.5"],
    "baseline_authors": ["MODEL.ROI_HEADS.NAME", "StandardROIHeads", "MODEL.ROI_HEADS.IOU_THRESHOLDS", "[0.5]",
                         "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", "1.0"],
    "baseline_d2": ["MODEL.ROI_HEADS.NAME", "StandardROIHeads", "MODEL.ROI_HEADS.IOU_THRESHOLDS", "[0.5]",
                    "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", "0.0", "MODEL.RPN.NMS_THRESH", "0.7"],
    "dynamic_no_gt_stats": PAPER + NO_GT,
    # The paper's rule with other top-k values (the K_I / K_E sweep).
    "dynamic_ki40": PAPER + [_D + "IOU_TOPK", "40"],
    "dynamic_ki75": PAPER + [_D + "IOU_TOPK", "75"],
    "dynamic_ke20": PAPER + [_D + "BETA_TOPK", "20"],
    # Statistics whose meaning does not change with the number of objects (docs/STATISTICS.md),
    # with the paper's COCO top-k values for its ~7 objects an image.
    "scaled": PAPER + [_D + "STATISTIC", "scaled"] + COCO_TOPK,
    "scaled_no_gt": PAPER + [_D + "STATISTIC", "scaled"] + COCO_TOPK + NO_GT,
    "object": PAPER + [_D + "STATISTIC", "object"] + COCO_TOPK + NO_GT,
    # The positives guard: never fewer positives an image than IoU 0.5 gives (up to the quota).
    "dynamic_guard": PAPER + [_D + "MIN_POSITIVES_IOU", "0.5"],
    # The statistics above with the warm-up floor at the baseline's 0.5 instead of the paper's 0.4:
    # the threshold never goes below the baseline's, and rises where the proposals allow.
    "scaled_no_gt_floor50": PAPER + [_D + "STATISTIC", "scaled"] + COCO_TOPK + NO_GT + [_D + "WARMUP_IOU", "0.5"],
    "object_floor50": PAPER + [_D + "STATISTIC", "object"] + COCO_TOPK + NO_GT + [_D + "WARMUP_IOU", "0.5"],
    # The paper's rule over the RPN's proposals with K_E 20 (the sweep's best K_E on shapes).
    "dynamic_no_gt_ke20": PAPER + NO_GT + [_D + "BETA_TOPK", "20"],
}
REFERENCE = "baseline_authors"
# Two-sided 95 % Student t quantiles by degrees of freedom, for the paired differences.
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23}


def run_dir(out, dataset, variant, seed):
    return os.path.join(out, dataset, variant, f"seed{seed}")


def read_run(path):
    """
    The run's AP columns, final IoU threshold / beta, positives per image, wall time and curves;
    None if it is not complete.
    """
    tables = glob.glob(os.path.join(path, "inference", "*", "ap_table.json"))
    summary_file = os.path.join(path, "train_summary.json")
    if not tables or not os.path.isfile(summary_file):
        return None
    with open(tables[0]) as f:
        table = json.load(f)
    test_set, results = next(iter(table.items()))
    with open(summary_file) as f:
        summary = json.load(f)
    final, curves, fg = {}, {}, None
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
        # detectron2 logs the foreground samples an image (median of the last 20 iterations).
        if series.get("roi_head/num_fg_samples"):
            curves["num_fg"] = series["roi_head/num_fg_samples"]
            fg = statistics.fmean(v for _, v in curves["num_fg"])
    threads = None
    env_file = os.path.join(path, "run_env.json")
    if os.path.isfile(env_file):
        with open(env_file) as f:
            threads = json.load(f).get("threads")
    return {**{c: results["bbox"].get(c) for c in COLUMNS}, **final, "num_fg": fg, "test_set": test_set,
            "wall_min": summary["wall_seconds"] / 60, "iterations": summary["iterations"],
            "machine": summary["machine"], "threads": threads, "curves": curves}


def fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def table(rows):
    lines = ["| dataset | variant | seed | " + " | ".join(COLUMNS)
             + " | final IoU thr. | final beta | positives / image | wall min |",
             "|" + "---|" * (len(COLUMNS) + 7)]
    for (dataset, variant, seed), r in rows:
        lines.append(f"| {dataset} | {variant} | {seed} | " + " | ".join(fmt(r[c]) for c in COLUMNS)
                     + f" | {fmt(r.get('iou_threshold'), 3)} | {fmt(r.get('beta'), 3)} | {fmt(r.get('num_fg'))}"
                     + f" | {fmt(r['wall_min'])} |")
    for (dataset, variant), (by_seed, mean) in variant_means(rows).items():
        if len(by_seed) > 1:
            lines.append(f"| {dataset} | **{variant} mean** | {len(by_seed)} runs | "
                         + " | ".join(f"**{fmt(mean[c])}**" for c in COLUMNS)
                         + f" | | | {fmt(mean['num_fg'])} | |")
    return "\n".join(lines)


def variant_means(rows):
    """
    ``{(dataset, variant): ({seed: run}, means)}``: the means over the seeds of every AP column and
    of the positives an image (None where no run logged them).
    """
    groups = {}
    for (dataset, variant, seed), r in rows:
        groups.setdefault((dataset, variant), {})[seed] = r
    out = {}
    for key, by_seed in groups.items():
        rs = list(by_seed.values())
        mean = {c: statistics.fmean(r[c] for r in rs) for c in COLUMNS}
        fgs = [r["num_fg"] for r in rs if r.get("num_fg") is not None]
        mean["num_fg"] = statistics.fmean(fgs) if fgs else None
        out[key] = (by_seed, mean)
    return out


def seed_table(rows):
    """
    One row per (dataset, variant): the AP of each seed, then the means of AP, AP50, AP70, AP90 and
    of the positives an image (the short table of BENCHMARKS.md; ``table`` has every column of every run).
    """
    seeds = sorted(dict.fromkeys(s for (_, _, s), _ in rows))
    lines = ["| dataset | variant | " + " | ".join(f"AP seed {s}" for s in seeds)
             + " | **AP** | AP50 | AP70 | AP90 | positives / image |", "|" + "---|" * (len(seeds) + 7)]
    for (dataset, variant), (by_seed, mean) in variant_means(rows).items():
        lines.append(f"| {dataset} | {variant} | "
                     + " | ".join(fmt(by_seed[s]["AP"]) if s in by_seed else "-" for s in seeds)
                     + f" | **{fmt(mean['AP'])}** | {fmt(mean['AP50'])} | {fmt(mean['AP70'])} | {fmt(mean['AP90'])}"
                     + f" | {fmt(mean['num_fg'])} |")
    return "\n".join(lines)


def paired_differences(rows, reference=REFERENCE):
    """
    ``{(dataset, variant): {column: (mean, standard error, n)}}``: for every variant, the
    differences ``variant - reference`` over the seeds both have, per AP column.
    """
    by_key = {key: r for key, r in rows}
    out = {}
    for dataset, variant in dict.fromkeys((d, v) for (d, v, _), _ in rows):
        if variant == reference:
            continue
        seeds = [s for (d, v, s) in by_key if d == dataset and v == variant and (d, reference, s) in by_key]
        if not seeds:
            continue
        cols = {}
        for c in COLUMNS:
            diffs = [by_key[(dataset, variant, s)][c] - by_key[(dataset, reference, s)][c] for s in seeds]
            se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
            cols[c] = (statistics.fmean(diffs), se, len(diffs))
        out[(dataset, variant)] = cols
    return out


def paired_table(rows, reference=REFERENCE):
    """Markdown: each variant minus ``reference``, mean ± SE per column; bold where the 95 % interval excludes 0."""
    diffs = paired_differences(rows, reference)
    if not diffs:
        return ""
    lines = [f"Paired differences to `{reference}` (same seeds): mean ± standard error, AP points; "
             "**bold**: the 95 % interval (Student t) excludes 0.", "",
             "| dataset | variant | seeds | " + " | ".join(COLUMNS) + " |", "|" + "---|" * (len(COLUMNS) + 3)]
    for (dataset, variant), cols in diffs.items():
        cells = []
        for c in COLUMNS:
            mean, se, n = cols[c]
            if se is None:
                cells.append(f"{mean:+.1f}")
                continue
            text = f"{mean:+.1f} ± {se:.1f}"
            resolved = se > 0 and abs(mean) > T95.get(n - 1, 1.96) * se
            cells.append(f"**{text}**" if resolved else text)
        lines.append(f"| {dataset} | {variant} | {cols['AP'][2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


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


def _mean_curve(curves):
    """The mean of several runs' ``[(iteration, value)]`` at the iterations they all logged."""
    common = sorted(set.intersection(*(set(dict(c)) for c in curves)))
    values = [dict(c) for c in curves]
    return [(it, statistics.fmean(v[it] for v in values)) for it in common]


def positives_table(rows, points=6):
    """Foreground samples an image (detectron2's roi_head/num_fg_samples), mean over seeds, at ``points`` iterations."""
    lines = []
    for dataset in dict.fromkeys(d for (d, _, _), _ in rows):
        by_variant = {}
        for (d, v, _), r in rows:
            if d == dataset and "num_fg" in r["curves"]:
                by_variant.setdefault(v, []).append(r["curves"]["num_fg"])
        if not by_variant:
            continue
        means = {v: _mean_curve(c) for v, c in by_variant.items()}
        its = [it for it, _ in next(iter(means.values()))]
        picks = sorted({its[round(i * (len(its) - 1) / (points - 1))] for i in range(points)})
        lines += [f"**{dataset}**: positives an image (foreground samples the box head trains on), mean over seeds", "",
                  "| variant | seeds | " + " | ".join(str(it + 1) for it in picks) + " | mean over the run |",
                  "|" + "---|" * (len(picks) + 3)]
        for variant, curve in means.items():
            c = dict(curve)
            lines.append(f"| {variant} | {len(by_variant[variant])} | " + " | ".join(fmt(c.get(it)) for it in picks)
                         + f" | {fmt(statistics.fmean(c.values()))} |")
        lines.append("")
    return "\n".join(lines)


def plot_trajectories(rows, out_dir):
    """
    ``out_dir/trajectories_DATASET.png``: per variant, the IoU threshold, beta and positives an
    image during training (the mean over seeds, bold, and each seed, thin).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("iou_threshold", "IoU threshold"), ("beta", "SmoothL1 beta"), ("num_fg", "positives / image"))
    written = []
    for dataset in dict.fromkeys(d for (d, _, _), _ in rows):
        runs = [(v, r["curves"]) for (d, v, _), r in rows if d == dataset and r["curves"]]
        if not runs:
            continue
        fig, axes = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
        variants = list(dict.fromkeys(v for v, _ in runs))
        for i, variant in enumerate(variants):
            color = plt.cm.tab20(i % 20) if len(variants) > 10 else f"C{i}"
            for ax, (key, _) in zip(axes, panels):
                curves = [c[key] for v, c in runs if v == variant and key in c]
                if not curves:
                    continue
                for c in curves:
                    ax.plot(*zip(*c), color=color, linewidth=0.5, alpha=0.4)
                ax.plot(*zip(*_mean_curve(curves)), color=color, linewidth=2,
                        label=f"{variant} ({len(curves)} seeds)")
        for ax, (_, label) in zip(axes, panels):
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        axes[-1].set_xlabel("iteration")
        axes[-1].legend(fontsize=7, ncol=2)
        axes[0].set_title(f"{dataset}: IoU threshold, beta and positives an image during training")
        path = os.path.join(out_dir, f"trajectories_{dataset}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def schedule_opts(dataset, factor):
    """Overrides that make the dataset config's schedule ``factor`` times longer (steps scaled alike)."""
    if factor == 1:
        return []
    sys.path.insert(0, ROOT)
    from dynamic_rcnn.config import load_config

    solver = load_config(os.path.join(ROOT, DATASETS[dataset][0])).SOLVER
    return ["SOLVER.MAX_ITER", str(solver.MAX_ITER * factor),
            "SOLVER.STEPS", str(tuple(s * factor for s in solver.STEPS)),
            "SOLVER.CHECKPOINT_PERIOD", str(solver.CHECKPOINT_PERIOD * factor)]


def run_command(out, dataset, variant, seed, opts, schedule=1):
    config, dataset_opts = DATASETS[dataset]
    return [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", os.path.join(ROOT, config),
            *dataset_opts, *VARIANTS[variant], "SEED", str(seed), *schedule_opts(dataset, schedule), *opts,
            "OUTPUT_DIR", run_dir(out, dataset, variant, seed)]


def run_all(todo, jobs, threads):
    """Run the (path, command) pairs, ``jobs`` at a time; raise after all ended if one failed."""
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    running, failed = [], []
    todo = list(todo)
    while todo or running:
        while todo and len(running) < max(1, jobs):
            path, cmd = todo.pop(0)
            print(f"== {os.path.relpath(path)}: {' '.join(cmd[1:])}", flush=True)
            os.makedirs(path, exist_ok=True)
            with open(os.path.join(path, "run_env.json"), "w") as f:
                json.dump({"threads": threads or None, "command": cmd[1:]}, f)
            log = open(os.path.join(path, "stdout.txt"), "w")
            running.append((path, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env), log))
        for item in list(running):
            path, proc, log = item
            if proc.poll() is not None:
                log.close()
                running.remove(item)
                if proc.returncode != 0:
                    failed.append(path)
                    print(f"failed ({proc.returncode}): {path}/stdout.txt", flush=True)
        time.sleep(1)
    if failed:
        raise RuntimeError(f"{len(failed)} runs failed: {', '.join(failed)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--variants", nargs="+", default=["baseline_authors", "dynamic"], choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3])
    parser.add_argument("--out", default=None, help="default: output/benchmarks/accuracy[_xN]")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads a run (0: torch's default)")
    parser.add_argument("--schedule", type=int, default=1,
                        help="train N times the configs' iterations (steps scaled alike); default --out gets _xN")
    parser.add_argument("--report-only", action="store_true", help="print the table of the runs made so far")
    parser.add_argument("--list", action="store_true", help="print the variants and their overrides")
    parser.add_argument("--plot-dir", help="also draw trajectories_DATASET.png (IoU threshold, beta) here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="overrides for every run")
    args = parser.parse_args(argv)
    if args.out is None:
        suffix = f"_x{args.schedule}" if args.schedule != 1 else ""
        args.out = os.path.join(ROOT, "output", "benchmarks", "accuracy" + suffix)
    if args.list:
        for name, opts in VARIANTS.items():
            print(f"{name}: {' '.join(opts)}")
        return 0

    keys = [(d, v, s) for d in args.datasets for v in args.variants for s in args.seeds]
    if not args.report_only:
        # Seeds outermost: a matrix stopped half-way still has every variant of the first seeds.
        order = sorted(keys, key=lambda k: (k[2], args.datasets.index(k[0]), args.variants.index(k[1])))
        todo = [(run_dir(args.out, *k), run_command(args.out, *k, args.opts, args.schedule)) for k in order
                if read_run(run_dir(args.out, *k)) is None]
        run_all(todo, args.jobs, args.threads)
    rows = [(k, r) for k in keys if (r := read_run(run_dir(args.out, *k))) is not None]
    text = seed_table(rows) + "\n\n" + table(rows) + "\n\n" + paired_table(rows) + "\n" + positives_table(rows) + "\n" + trajectory_table(rows)
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
