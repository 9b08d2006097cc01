"""
Draw a run's Dynamic R-CNN dynamics and losses from its ``metrics.json``::

    python -m dynamic_rcnn.tools.plot OUTPUT_DIR [--out DIR]

writes ``dynamics.png`` (IoU threshold and beta against iteration, with the statistics behind
them: the paper's Fig. 5 in spirit) and ``losses.png``. Works for any run whose hooks wrote
detectron2's ``metrics.json``, your own trainer's included.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Tuple

__all__ = ["read_metrics", "read_metrics_counted", "update_steps", "read_update_period", "plot_dynamics",
           "plot_losses", "main"]

Series = Dict[str, List[Tuple[int, float]]]


def read_metrics(path: str) -> Series:
    """
    ``{scalar name: [(iteration, value), ...]}`` from a ``metrics.json`` (one JSON object a line).
    A resumed run writes some iterations twice: the last value wins. Unreadable lines are skipped
    (:func:`read_metrics_counted` also says how many); a line that is JSON but not an object (no
    metrics.json of detectron2's) is a ValueError naming it.
    """
    return read_metrics_counted(path)[0]


def read_metrics_counted(path: str) -> Tuple[Series, int]:
    """:func:`read_metrics`'s series, and the number of lines it skipped as unreadable (not JSON)."""
    by_iter: Dict[str, Dict[int, float]] = {}
    skipped = 0
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if not isinstance(row, dict):
                raise ValueError(f"{path} line {number} is JSON but not an object ({line.strip()[:80]}): "
                                 "detectron2's metrics.json has one object a line; is it a training run's?")
            it = row.get("iteration")
            if not isinstance(it, int):
                continue
            for key, value in row.items():
                if key != "iteration" and isinstance(value, (int, float)):
                    by_iter.setdefault(key, {})[it] = float(value)
    return {k: sorted(v.items()) for k, v in by_iter.items()}, skipped


def read_update_period(run_dir: str):
    """
    ``MODEL.DYNAMIC_RCNN.UPDATE_PERIOD`` of the run's ``config.yaml`` (detectron2 writes it), or None
    (no file, or no such key: a baseline's). A file that is not YAML, or not of mappings down to the
    key, or a period that is not an integer >= 1, is a ValueError naming the file and what is wrong.
    """
    path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(path):
        return None
    import yaml

    with open(path) as f:
        try:
            node = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not YAML ({str(e).splitlines()[0]})") from None
    for depth, key in enumerate(("MODEL", "DYNAMIC_RCNN", "UPDATE_PERIOD")):
        if not isinstance(node, dict):
            where = ".".join(("MODEL", "DYNAMIC_RCNN")[:depth])
            raise ValueError(f"{path}: {f'{where} is' if where else 'the file holds'} {node!r}, not a mapping")
        if node.get(key) is None:
            return None
        node = node[key]
    if isinstance(node, bool) or not isinstance(node, int) or node < 1:
        raise ValueError(f"{path}: MODEL.DYNAMIC_RCNN.UPDATE_PERIOD is {node!r}, not an integer >= 1")
    return node


def update_steps(values: List[Tuple[int, float]], update_period=None) -> List[Tuple[int, float]]:
    """
    A value in force (threshold or beta) as step points at the iterations it changed. The rows of
    ``metrics.json`` are every 20 iterations or so, and an update happens before iteration
    ``k x update_period``: a change seen between two rows is put at the first multiple of
    ``update_period`` after the earlier row (where it happened, when one update lies in between);
    without ``update_period``, at the later row.
    """
    points = list(values[:1])
    for (i0, v0), (i1, v1) in zip(values, values[1:]):
        if v1 != v0:
            at = i1
            if update_period:
                first = (i0 // update_period + 1) * update_period
                at = first if first <= i1 else i1
            points.append((at, v1))
    if values and points[-1][0] != values[-1][0]:
        points.append(values[-1])
    return points


def _figure(rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, 1, figsize=(8, 3.2 * rows), sharex=True, squeeze=False)
    return plt, fig, axes[:, 0]


def _scopes(series: Series) -> List[str]:
    """``[""]`` for a single head's scalars, ``["stage0/", "stage1/", ...]`` for a cascade's, in stage order."""
    prefixes = {k[: -len("dynamic_rcnn/iou_threshold")] for k in series if k.endswith("dynamic_rcnn/iou_threshold")}
    return sorted(prefixes, key=lambda p: (len(p), p))


def plot_dynamics(series: Series, out_file: str, update_period=None) -> bool:
    """
    Draw ``dynamics.png``; False (nothing drawn) when the run has no Dynamic R-CNN scalars. Each
    change of the threshold or beta is drawn at its update iteration (see :func:`update_steps`); a
    cascade's stages each in their colour.
    """
    scopes = _scopes(series)
    if not scopes:
        return False
    panels = [("iou_threshold", "iou_stat", "IoU threshold", "IoU statistic (K_I-th IoU)"),
              ("beta", "error_stat", "SmoothL1 beta", "error statistic (K_E-th error)")]
    plt, fig, axes = _figure(2)
    for ax, (value, stat, value_label, stat_label) in zip(axes, panels):
        for i, scope in enumerate(scopes):
            name = f"{scope.rstrip('/')} " if scope else ""
            color = f"C{i}" if scope else "C3"
            if f"{scope}dynamic_rcnn/{stat}" in series:
                xs, ys = zip(*series[f"{scope}dynamic_rcnn/{stat}"])
                ax.plot(xs, ys, ".", color=color if scope else "0.6", markersize=3, alpha=0.5 if scope else 1,
                        label=name + stat_label)
            if f"{scope}dynamic_rcnn/{value}" in series:
                xs, ys = zip(*update_steps(series[f"{scope}dynamic_rcnn/{value}"], update_period))
                ax.step(xs, ys, where="post", color=color, linewidth=2, label=name + value_label)
        ax.set_ylabel(value_label)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=7 if len(scopes) > 1 else None)
    axes[0].set_title("Dynamic R-CNN: settings in force and the proposal statistics behind them")
    axes[-1].set_xlabel("iteration")
    fig.tight_layout()
    fig.savefig(out_file, dpi=110)
    plt.close(fig)
    return True


def plot_losses(series: Series, out_file: str) -> bool:
    """Draw ``losses.png`` (every ``loss_*`` and ``total_loss``); False when there is none."""
    keys = sorted(k for k in series if k.startswith("loss_") or k == "total_loss")
    if not keys:
        return False
    plt, fig, axes = _figure(1)
    for key in keys:
        xs, ys = zip(*series[key])
        axes[0].plot(xs, ys, label=key, linewidth=2 if key == "total_loss" else 1)
    axes[0].set_yscale("log")
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("loss")
    axes[0].grid(alpha=0.3)
    axes[0].legend(loc="best")
    fig.tight_layout()
    fig.savefig(out_file, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a training output folder holding metrics.json")
    parser.add_argument("--out", help="where to write the figures (default: run_dir)")
    parser.add_argument("--update-period", type=int,
                        help="MODEL.DYNAMIC_RCNN.UPDATE_PERIOD of the run (default: read from run_dir/config.yaml)")
    args = parser.parse_args(argv)
    metrics = os.path.join(args.run_dir, "metrics.json")
    if not os.path.isfile(metrics):
        print(f"error: {metrics} does not exist: give the OUTPUT_DIR of a training run", file=sys.stderr)
        return 2
    try:
        series, skipped = read_metrics_counted(metrics)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if skipped:
        print(f"note: skipped {skipped} unreadable line{'s' if skipped > 1 else ''} of {metrics} "
              "(a run cut off while writing?)")
    out = args.out or args.run_dir
    os.makedirs(out, exist_ok=True)
    try:
        period = args.update_period or read_update_period(args.run_dir)
    except ValueError as e:
        period = None
        print(f"note: {e}: each update is drawn at the first logged iteration after it (or give --update-period)")
    else:
        if period is None and any(k.endswith("dynamic_rcnn/iou_threshold") for k in series):
            print(f"note: no UPDATE_PERIOD (no {args.run_dir}/config.yaml, no --update-period): each update "
                  "is drawn at the first logged iteration after it")
    drawn = {
        "dynamics.png": lambda path: plot_dynamics(series, path, period),
        "losses.png": lambda path: plot_losses(series, path),
    }
    for name, draw in drawn.items():
        path = os.path.join(out, name)
        print(f"wrote {path}" if draw(path) else f"skipped {name}: no scalars for it in {metrics}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
