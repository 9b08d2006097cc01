"""
Paired training runs and their statistics: the one implementation behind ``python -m dynamic_rcnn.tools.compare``
(your config and data) and the project's own benchmarks (``benchmarks/accuracy.py``).

A run is a key ``(dataset, variant, seed, schedule)``, a training command, its folder and its result file. Each run
trains in its own process and folder; when it ends well its numbers (every AP column, the final IoU threshold and
beta, positives an image, the curves, wall time, peak memory, machine, commit, command) are written to its result
file at once, and its checkpoints deleted unless asked. A run whose result file exists is never run again; one cut
off before its file is written starts again from scratch, never half-counted. Every report is made from the
result files only: per-seed AP, means, paired differences to a reference variant over the seeds both have, with
standard errors and 95 % intervals (Student t), what the runs resolve, pictures, trajectories.
"""
import glob
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

__all__ = ["COLUMNS", "Run", "T95", "cpu_model", "cross_machine", "machine_description", "paired_differences",
           "paired_table", "plot_paired", "plot_trajectories", "read_results", "record_run", "report", "resolved",
           "run_all", "same_machine", "seeds_to_resolve", "summary", "trajectory_grid", "write_json"]

COLUMNS = ["AP", "AP50", "AP60", "AP70", "AP80", "AP90"]
KEPT = COLUMNS + ["APs", "APm", "APl"]
# Two-sided 95 % Student t quantiles by degrees of freedom, for the paired differences.
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23,
       11: 2.20, 12: 2.18, 13: 2.16, 14: 2.14, 15: 2.13, 16: 2.12, 17: 2.11, 18: 2.10, 19: 2.09, 20: 2.09,
       25: 2.06, 30: 2.04}


def t95(df: int) -> float:
    """The two-sided 95 % Student t quantile for ``df`` degrees of freedom (1.96 past the table)."""
    return T95.get(df) or (next(v for k, v in sorted(T95.items()) if k >= df) if df <= 30 else 1.96)


def name(variant: str, schedule: int) -> str:
    """A variant's name in reports and folders: ``_xN`` for N times the configs' schedule."""
    return variant if schedule == 1 else f"{variant}_x{schedule}"


class Run(NamedTuple):
    key: Tuple[str, str, int, int]  # (dataset, variant, seed, schedule)
    command: List[str]
    folder: str  # the training's OUTPUT_DIR
    result: str  # the result file, written when the run ends well


# ------------------------------------------------------------------ the machine and the code a run ran on


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> Optional[str]:
    """The CPU's model name as ``cpuinfo`` gives it (Linux), or None where there is none."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return None


def machine_description(cpuinfo: str = "/proc/cpuinfo") -> str:
    """
    The GPU's name (and count) when one is visible, else the CPU's model, architecture and cores. The model is
    kept because two CPUs of the same architecture need not give the same floating-point sums: a run that does
    not reproduce an earlier one to the last digit may be on another CPU.
    """
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (x{torch.cuda.device_count()})"
    cpu = platform.processor() or platform.machine()
    model = cpu_model(cpuinfo)
    return f"CPU: {f'{model} ({cpu})' if model else cpu}, {os.cpu_count()} cores"


def _commit(folder: str) -> Optional[str]:
    """The git commit of ``folder``'s checkout, ``+uncommitted`` when it has changes; None outside a checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+uncommitted" if dirty else "")


def write_json(path: str, data) -> None:
    """Write ``data`` to ``path`` whole or not at all (a cut write never leaves a half file under its name)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)


# ------------------------------------------------------------------ running and recording


def record_run(path: str, key, command, threads, wall, peak_rss_mb, code_folder: Optional[str] = None) -> Optional[dict]:
    """The numbers of the finished run in ``path``, as its result file holds them; None when it is not complete
    (no evaluation table or no metrics.json)."""
    from .plot import read_metrics

    tables = glob.glob(os.path.join(path, "inference", "*", "ap_table.json"))
    metrics = os.path.join(path, "metrics.json")
    if not tables or not os.path.isfile(metrics):
        return None
    with open(sorted(tables)[0]) as f:
        test_set, results = next(iter(json.load(f).items()))
    series = read_metrics(metrics)
    # The values in force, their statistics and the positives an image (per stage where the head has stages).
    curves = {k: v for k, v in series.items() if "dynamic_rcnn/" in k or k.endswith("num_fg_samples")}
    final = {n: curves[f"dynamic_rcnn/{n}"][-1][1] for n in ("iou_threshold", "beta") if f"dynamic_rcnn/{n}" in curves}
    stages = {k: v[-1][1] for k, v in curves.items() if k.startswith("stage") and k.endswith(("/iou_threshold", "/beta"))}
    fg = curves.get("roi_head/num_fg_samples")
    dataset, variant, seed, schedule = key
    return {
        "dataset": dataset, "variant": variant, "seed": seed, "schedule": schedule, "test_set": test_set,
        **{c: results["bbox"].get(c) for c in KEPT}, "metrics": results,
        "iou_threshold": final.get("iou_threshold"), "beta": final.get("beta"), "stages_final": stages,
        "num_fg": statistics.fmean(v for _, v in fg) if fg else None,
        "iterations": max(it for it, _ in series["total_loss"]) + 1 if "total_loss" in series else None,
        "wall_seconds": round(wall, 1), "peak_rss_mb": round(peak_rss_mb, 1), "threads": threads,
        "machine": machine_description(), "commit": _commit(code_folder or os.getcwd()), "command": command,
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "curves": curves,
    }


_ETA = re.compile(r"eta: (\S+)\s+iter: (\d+)")


def _progress(log_file: str) -> Optional[str]:
    """``iteration N, eta H:MM:SS`` from the last console line detectron2 wrote into ``log_file``, if any."""
    try:
        with open(log_file, "rb") as f:
            f.seek(max(0, os.path.getsize(log_file) - 20000))
            found = _ETA.findall(f.read().decode(errors="replace"))
    except OSError:
        return None
    return f"iteration {int(found[-1][1]) + 1}, eta {found[-1][0]}" if found else None


def run_all(runs: Sequence[Run], jobs: int = 1, threads: int = 0, keep_checkpoints: bool = False,
            cwd: Optional[str] = None, say: Callable[[str], None] = print, every: float = 60.0) -> List[dict]:
    """
    Train ``runs``, ``jobs`` at a time (``threads`` CPU threads each, 0: torch's default), each in a fresh
    folder; write each one's result file when it ends well and delete its checkpoints (unless
    ``keep_checkpoints``). ``say`` gets a line when a run starts and ends, and, every ``every`` seconds, the
    iteration and ETA of those running. Returns the records written; raises RuntimeError naming the runs that
    failed (their output is in ``FOLDER/stdout.txt``) once the others have ended.
    """
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    todo, running, failed, written, total = list(runs), [], [], [], len(runs)
    last_said = time.perf_counter()
    while todo or running:
        while todo and len(running) < max(1, jobs):
            run = todo.pop(0)
            shutil.rmtree(run.folder, ignore_errors=True)  # what a cut-off run left: start from scratch
            os.makedirs(run.folder)
            k = total - len(todo)
            say(f"run {k} of {total}: {name(run.key[1], run.key[3])}, seed {run.key[2]}, {run.key[0]} ({run.folder})")
            log = open(os.path.join(run.folder, "stdout.txt"), "w")
            proc = subprocess.Popen(run.command, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env)
            running.append((run, k, proc, log, time.perf_counter()))
        for item in list(running):
            run, k, proc, log, start = item
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == 0:
                continue
            log.close()
            running.remove(item)
            record = None
            if os.waitstatus_to_exitcode(status) == 0:
                record = record_run(run.folder, run.key, run.command[1:], threads or None, time.perf_counter() - start,
                                    usage.ru_maxrss / 1024, code_folder=cwd)
            if record is None:
                failed.append(os.path.join(run.folder, "stdout.txt"))
                say(f"run {k} of {total} failed (exit {os.waitstatus_to_exitcode(status)}): see {failed[-1]}")
                continue
            write_json(run.result, record)
            written.append(record)
            if not keep_checkpoints:
                for checkpoint in glob.glob(os.path.join(run.folder, "*.pth")):
                    os.remove(checkpoint)
            say(f"run {k} of {total} recorded in {run.result}: AP {record['AP']:.2f}")
        if running and time.perf_counter() - last_said >= every:
            last_said = time.perf_counter()
            for run, k, _, _, _ in running:
                now = _progress(os.path.join(run.folder, "stdout.txt"))
                say(f"run {k} of {total}: {now or 'starting'}")
        time.sleep(0.5)
    if failed:
        raise RuntimeError(f"{len(failed)} runs failed: {', '.join(failed)}")
    return written


# ------------------------------------------------------------------ the numbers, from the result files


def read_results(result_file: Callable, keys) -> List[Tuple[tuple, dict]]:
    """``(key, record)`` of every key whose result file (``result_file(*key)``) exists."""
    rows = []
    for key in keys:
        path = result_file(*key)
        if os.path.isfile(path):
            with open(path) as f:
                rows.append((tuple(key), json.load(f)))
    return rows


def fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def signed(x):
    """``x`` to one decimal with its sign; a difference that rounds to zero is +0.0, never -0.0."""
    return f"{round(x, 1) + 0.0:+.1f}"


def variant_means(rows):
    """``{(dataset, variant name): ({seed: run}, means)}``: the mean over seeds of every AP column and of the positives."""
    groups = {}
    for (dataset, variant, seed, schedule), r in rows:
        groups.setdefault((dataset, name(variant, schedule)), {})[seed] = r
    out = {}
    for key, by_seed in groups.items():
        rs = list(by_seed.values())
        mean = {c: statistics.fmean(r[c] for r in rs) for c in COLUMNS}
        fgs = [r["num_fg"] for r in rs if r.get("num_fg") is not None]
        mean["num_fg"] = statistics.fmean(fgs) if fgs else None
        out[key] = (by_seed, mean)
    return out


def same_machine(a: dict, b: dict) -> bool:
    """
    Whether two runs' records name the same machine (or one does not say which: no record of it, or a CPU without
    its model, as the records made before the model was kept): only then is a seed a pair. On another CPU the same
    seed trains another model (BCCD's seed 0 of one config: 45.5 AP on an AMD EPYC, 45.1 on an Intel Xeon), so a
    difference across machines is two unpaired runs, with their whole seed-to-seed spread.
    """
    def known(m):
        return bool(m) and not re.fullmatch(r"CPU: [^()]*, \d+ cores", m)

    ma, mb = a.get("machine"), b.get("machine")
    return not (known(ma) and known(mb)) or ma == mb


def cross_machine(rows, reference) -> List[Tuple[str, str, int]]:
    """``(dataset, variant name, seed)`` of every seed that :func:`paired_differences` leaves out because the variant's
    run and ``reference``'s ran on different machines."""
    by_key = {key: r for key, r in rows}
    return [(d, name(v, x), s) for (d, v, s, x), r in rows
            if v != reference and (d, reference, s, x) in by_key and not same_machine(r, by_key[(d, reference, s, x)])]


def paired_differences(rows, reference, columns=COLUMNS):
    """
    ``{(dataset, variant name): {column: (mean, standard error, n)}}``: every variant minus ``reference`` over the
    seeds both have, at the same schedule, per column (a column is a key of the records, or ``task/metric`` of
    their evaluation, e.g. ``bbox/AP-cat``). A seed whose two runs ran on different machines is not a pair and
    is left out (:func:`cross_machine` lists them).
    """
    def value(r, c):
        task, _, metric = c.rpartition("/")
        return r.get("metrics", {}).get(task, {}).get(metric) if task else r.get(c)

    by_key = {key: r for key, r in rows}
    out = {}
    for dataset, variant, schedule in dict.fromkeys((d, v, x) for (d, v, _, x), _ in rows):
        if variant == reference:
            continue
        seeds = sorted(s for (d, v, s, x) in by_key if (d, v, x) == (dataset, variant, schedule)
                       and (d, reference, s, x) in by_key
                       and same_machine(by_key[(d, v, s, x)], by_key[(d, reference, s, x)]))
        cols = {}
        for c in columns:
            pairs = [(value(by_key[(dataset, variant, s, schedule)], c), value(by_key[(dataset, reference, s, schedule)], c))
                     for s in seeds]
            diffs = [a - b for a, b in pairs if isinstance(a, (int, float)) and isinstance(b, (int, float))
                     and a == a and b == b]  # NaN: a size with no object (APl of small objects)
            if diffs:
                se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None
                cols[c] = (statistics.fmean(diffs), se, len(diffs))
        if cols:
            out[(dataset, name(variant, schedule))] = cols
    return out


def resolved(mean, se, n):
    """Whether the 95 % interval (Student t) of a paired difference excludes 0 (the same difference on every seed:
    an interval of width 0)."""
    return se is not None and abs(mean) > t95(n - 1) * se


def seeds_to_resolve(sd: float, difference: float) -> Optional[int]:
    """The fewest paired seeds whose 95 % interval half-width, with the spread ``sd`` of the per-seed differences,
    is below ``difference`` (None past 200: not a useful number)."""
    if sd <= 0:
        return 2
    return next((n for n in range(2, 201) if t95(n - 1) * sd / n ** 0.5 < difference), None)


def summary(rows, reference, variants_said: Optional[Dict[str, str]] = None) -> List[str]:
    """
    One sentence a variant a user can act on: its AP difference to ``reference`` with its standard error and
    whether the seeds resolve it, the high-IoU columns they resolve; when AP is not resolved, what these seeds can
    resolve (the 95 % half-width) and about how many would resolve 0.5 AP. ``variants_said``: the names to use.
    """
    out = []
    for (dataset, variant), cols in paired_differences(rows, reference).items():
        if "AP" not in cols:
            continue
        mean, se, n = cols["AP"]
        said = (variants_said or {}).get(variant, variant)
        high = [f"{c} {signed(m)} ± {s:.1f}" for c, (m, s, k) in cols.items() if c != "AP" and resolved(m, s, k)]
        also = f"; resolved: {', '.join(high)}" if high else ""
        if se is None:
            out.append(f"{dataset}, {said}: {signed(mean)} AP against {reference} on 1 seed: no spread, nothing "
                       "resolved; run 2 seeds or more.")
        elif resolved(mean, se, n):
            out.append(f"{dataset}, {said}: {signed(mean)} ± {se:.1f} AP against {reference}, resolved ({n} seeds){also}.")
        else:
            sizes = [abs(mean)] if abs(mean) >= 1.0 else []
            need = [(d, seeds_to_resolve(se * n ** 0.5, d)) for d in sizes + [0.5]]
            out.append(f"{dataset}, {said}: {signed(mean)} ± {se:.1f} AP against {reference}, not resolved: under what "
                       f"{n} seeds resolve here (about {t95(n - 1) * se:.1f} AP); about "
                       + ", ".join(f"{k} seeds would resolve {d:.1f} AP" if k else f"{d:.1f} AP needs over 200 seeds"
                                   for d, k in need) + also + ".")
    note = cross_machine_note(rows, reference)
    return out + [note] if note else out


def cross_machine_note(rows, reference) -> str:
    """One sentence naming the seeds left out of the pairs because their two runs ran on different machines
    ("" when there are none)."""
    left = cross_machine(rows, reference)
    return (f"Not paired, their run and {reference}'s on different machines (run both again on one): "
            + ", ".join(f"{d} {v} seed {s}" for d, v, s in left) + ".") if left else ""


def table(rows):
    """Every run: its AP columns, final IoU threshold and beta, positives an image, wall time, threads."""
    lines = ["| dataset | variant | seed | " + " | ".join(COLUMNS) + " | final IoU thr. | final beta | positives / image "
             "| wall min | threads |", "|" + "---|" * (len(COLUMNS) + 8)]
    for (dataset, variant, seed, schedule), r in rows:
        lines.append(f"| {dataset} | {name(variant, schedule)} | {seed} | " + " | ".join(fmt(r[c]) for c in COLUMNS)
                     + f" | {_final(r, 'iou_threshold')} | {_final(r, 'beta')} | {fmt(r.get('num_fg'))}"
                     + f" | {fmt(r['wall_seconds'] / 60)} | {r.get('threads') or '-'} |")
    return "\n".join(lines)


def _stage_values(r, key):
    """A cascade run's final ``key`` of every stage, in stage order ([] for a single head)."""
    stages = r.get("stages_final") or {}
    return [v for _, v in sorted((int(k.split("/")[0][5:]), v) for k, v in stages.items() if k.endswith("/" + key))]


def _final(r, key):
    """The final value of a single head, ``a/b/c`` for a cascade's stages, ``-`` for a baseline."""
    if r.get(key) is not None:
        return fmt(r[key], 3)
    return "/".join(fmt(v, 2) for v in _stage_values(r, key)) or "-"


def stage_order(rows):
    """How many Dynamic Cascade runs end with a stage's threshold at or below the stage's before it (a finding)."""
    runs = [(k, _stage_values(r, "iou_threshold")) for k, r in rows]
    runs = [(k, t) for k, t in runs if len(t) > 1]
    if not runs:
        return ""
    below = [(k, t) for k, t in runs if any(b <= a for a, b in zip(t, t[1:]))]
    lines = [f"Dynamic Cascade runs that end with a stage's IoU threshold at or below the stage's before it: "
             f"{len(below)} of {len(runs)}."]
    lines += [f"- {d} {name(v, x)} seed {s}: " + " / ".join(f"{x:.3f}" for x in t) for (d, v, s, x), t in below]
    return "\n".join(lines)


def seed_table(rows):
    """One row per (dataset, variant): each seed's AP, then the means of AP, AP50, AP70, AP90 and the positives."""
    seeds = sorted(dict.fromkeys(k[2] for k, _ in rows))
    lines = ["| dataset | variant | " + " | ".join(f"AP seed {s}" for s in seeds)
             + " | **AP** | AP50 | AP70 | AP90 | positives / image |", "|" + "---|" * (len(seeds) + 7)]
    for (dataset, variant), (by_seed, mean) in variant_means(rows).items():
        lines.append(f"| {dataset} | {variant} | " + " | ".join(fmt(by_seed[s]["AP"]) if s in by_seed else "-" for s in seeds)
                     + f" | **{fmt(mean['AP'])}** | {fmt(mean['AP50'])} | {fmt(mean['AP70'])} | {fmt(mean['AP90'])}"
                     + f" | {fmt(mean['num_fg'])} |")
    return "\n".join(lines)


def paired_table(rows, reference, columns=COLUMNS):
    """Markdown: each variant minus ``reference``, mean ± SE per column; bold where the 95 % interval excludes 0."""
    diffs = paired_differences(rows, reference, columns)
    if not diffs:
        return ""
    lines = [f"Paired differences to `{reference}` (same seeds, same schedule): mean ± standard error, AP points; "
             "**bold**: the 95 % interval (Student t) excludes 0.", "",
             "| dataset | variant | seeds | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 3)]
    for (dataset, variant), cols in diffs.items():
        cells = []
        for c in columns:
            mean, se, n = cols.get(c, (None, None, 0))
            text = "-" if mean is None else signed(mean) if se is None else f"{signed(mean)} ± {se:.1f}"
            cells.append(f"**{text}**" if mean is not None and resolved(mean, se, n) else text)
        lines.append(f"| {dataset} | {variant} | {max(n for _, _, n in cols.values())} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def other_metrics(rows):
    """The evaluation's own other columns (APs/APm/APl, each class's AP, the masks' AP), as ``task/metric``."""
    seen = dict.fromkeys(f"{task}/{m}" for _, r in rows for task, ms in (r.get("metrics") or {}).items() for m in ms
                         if isinstance(ms, dict))
    return [c for c in seen if c.split("/", 1)[1] not in COLUMNS or not c.startswith("bbox/")]


def _picks(its, points):
    return sorted({its[round(i * (len(its) - 1) / (points - 1))] for i in range(points)})


def _threshold_keys(curves):
    """The curves of the threshold in force: ``dynamic_rcnn/iou_threshold``, or one a cascade stage."""
    return sorted(k for k in curves if k.endswith("dynamic_rcnn/iou_threshold"))


def trajectory_table(rows, points=6):
    """IoU threshold / beta of every run (every stage of a cascade) that logged them, at ``points`` iterations."""
    lines = []
    for dataset in dict.fromkeys(k[0] for k, _ in rows):
        runs = [(name(v, x), s, r["curves"]) for (d, v, s, x), r in rows if d == dataset and _threshold_keys(r["curves"])]
        if not runs:
            continue
        picks = _picks([it for it, _ in runs[0][2][_threshold_keys(runs[0][2])[0]]], points)
        lines += [f"**{dataset}**: IoU threshold / beta at iteration", "",
                  "| variant | seed | " + " | ".join(str(it + 1) for it in picks) + " |", "|" + "---|" * (len(picks) + 2)]
        for variant, seed, curves in runs:
            for key in _threshold_keys(curves):
                stage = key.split("/")[0] if key.startswith("stage") else ""
                t, b = dict(curves[key]), dict(curves.get(key.replace("iou_threshold", "beta"), []))
                lines.append(f"| {variant}{' ' + stage if stage else ''} | {seed} | "
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
    for dataset in dict.fromkeys(k[0] for k, _ in rows):
        by_variant = {}
        for (d, v, _, x), r in rows:
            if d == dataset and "roi_head/num_fg_samples" in r["curves"]:
                by_variant.setdefault(name(v, x), []).append(r["curves"]["roi_head/num_fg_samples"])
        if not by_variant:
            continue
        means = {v: _mean_curve(c) for v, c in by_variant.items()}
        picks = _picks([it for it, _ in next(iter(means.values()))], points)
        lines += [f"**{dataset}**: positives an image (foreground samples the box head trains on), mean over seeds", "",
                  "| variant | seeds | " + " | ".join(str(it + 1) for it in picks) + " | mean over the run |",
                  "|" + "---|" * (len(picks) + 3)]
        for variant, curve in means.items():
            c = dict(curve)
            lines.append(f"| {variant} | {len(by_variant[variant])} | " + " | ".join(fmt(c.get(it)) for it in picks)
                         + f" | {fmt(statistics.fmean(c.values()))} |")
        lines.append("")
    return "\n".join(lines)


def report(rows, reference, variants_said: Optional[Dict[str, str]] = None, others: bool = False) -> str:
    """Every table, one set per schedule (their iterations differ); ``others``: also the evaluation's other
    columns (sizes, classes, masks), paired."""
    parts = []
    for schedule in sorted({k[3] for k, _ in rows}):
        some = [(k, r) for k, r in rows if k[3] == schedule]
        sentences = summary(some, reference, variants_said)
        parts += [f"### Schedule x{schedule}"] + [part for part in (
            "\n".join(f"- {s}" for s in sentences), seed_table(some), paired_table(some, reference),
            paired_table(some, reference, other_metrics(some)) if others and other_metrics(some) else "",
            table(some), stage_order(some), positives_table(some), trajectory_table(some)) if part]
    return "\n\n".join(parts)


# ------------------------------------------------------------------ pictures


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_paired(rows, out_dir, reference):
    """
    ``out_dir/paired_differences.png``: one panel per dataset; for every variant and AP column, the mean paired
    difference to ``reference`` with its 95 % interval (filled where the interval excludes 0).
    """
    diffs = paired_differences(rows, reference)
    datasets = list(dict.fromkeys(d for d, _ in diffs))
    if not datasets:
        return []
    plt = _pyplot()
    fig, axes = plt.subplots(len(datasets), 1, figsize=(10, 4.4 * len(datasets)), squeeze=False)
    for ax, dataset in zip(axes[:, 0], datasets):
        variants = [v for d, v in diffs if d == dataset]
        width = 0.8 / len(variants)
        for i, variant in enumerate(variants):
            cols = diffs[(dataset, variant)]
            xs = [j + (i - (len(variants) - 1) / 2) * width for j in range(len(COLUMNS))]
            for x, c in zip(xs, COLUMNS):
                if c not in cols:
                    continue
                mean, se, n = cols[c]
                half = t95(n - 1) * se if se is not None else 0.0
                ax.errorbar([x], [mean], yerr=[half], fmt="o", color=f"C{i}", capsize=3,
                            markerfacecolor=f"C{i}" if resolved(mean, se, n) else "white",
                            label=f"{variant} ({n} seeds)" if c == COLUMNS[0] else None)
        ax.axhline(0, color="0.3", linewidth=1)
        ax.set_xticks(range(len(COLUMNS)), COLUMNS)
        ax.set_ylabel(f"minus {reference}, AP points")
        ax.set_title(f"{dataset}: paired difference to {reference}, mean and 95 % interval (filled: excludes 0)")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.1))  # below the axes: never over a point
    fig.tight_layout()
    path = os.path.join(out_dir, "paired_differences.png")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return [path]


PANELS = (("dynamic_rcnn/iou_threshold", "IoU threshold"), ("dynamic_rcnn/beta", "SmoothL1 beta"),
          ("roi_head/num_fg_samples", "positives / image"))


def _stage_key(key, stage, curves):
    """Where a run keeps ``key`` of ``stage``: ``stage{k}/key``; stage 0 of a single head (and detectron2's
    stage-0 positives) without the prefix."""
    scoped = f"stage{stage}/{key}"
    return scoped if scoped in curves or stage > 0 else key


def trajectory_grid(rows, dataset):
    """
    ``(stages, {(panel key, stage): {variant name: [curve of each seed]}})`` of ``dataset``'s runs: the IoU
    threshold, beta and positives an image of every stage (a single head is stage 0).
    """
    runs = [(name(v, x), r["curves"]) for (d, v, _, x), r in rows if d == dataset and r["curves"]]
    stages = max([1] + [int(k.split("/")[0][5:]) + 1 for _, c in runs for k in c if k.startswith("stage")])
    grid = {}
    for variant, curves in runs:
        for key, _ in PANELS:
            for stage in range(stages):
                curve = curves.get(_stage_key(key, stage, curves))
                if curve:
                    grid.setdefault((key, stage), {}).setdefault(variant, []).append(curve)
    return stages, grid


def plot_trajectories(rows, out_dir):
    """
    ``out_dir/trajectories_DATASET.png``: per variant, the IoU threshold, beta and positives an image (mean bold,
    seeds thin), a column a stage for the cascades.
    """
    written = []
    for dataset in dict.fromkeys(k[0] for k, _ in rows):
        stages, grid = trajectory_grid(rows, dataset)
        if not grid:
            continue
        plt = _pyplot()
        fig, axes = plt.subplots(3, stages, figsize=(6 + 3 * stages, 9), sharex=True, squeeze=False)
        variants = list(dict.fromkeys(v for by_variant in grid.values() for v in by_variant))
        colors = {v: plt.cm.tab20(i % 20) if len(variants) > 10 else f"C{i}" for i, v in enumerate(variants)}
        for (key, stage), by_variant in grid.items():
            ax = axes[[k for k, _ in PANELS].index(key), stage]
            for variant, curves in by_variant.items():
                for c in curves:
                    ax.plot(*zip(*c), color=colors[variant], linewidth=0.5, alpha=0.4)
                ax.plot(*zip(*_mean_curve(curves)), color=colors[variant], linewidth=2,
                        label=f"{variant} ({len(curves)} seeds)")
        for row, (_, label) in enumerate(PANELS):
            axes[row, 0].set_ylabel(label)
            for stage in range(stages):
                axes[row, stage].grid(alpha=0.3)
                if stages > 1 and row == 0:
                    axes[row, stage].set_title(f"stage {stage}")
        for stage in range(stages):
            axes[-1, stage].set_xlabel("iteration")
        axes[-1, 0].legend(fontsize=7, ncol=1 if stages > 1 else 2)
        fig.suptitle(f"{dataset}: IoU threshold, beta and positives an image during training")
        path = os.path.join(out_dir, f"trajectories_{re.sub(r'[^A-Za-z0-9_.-]', '_', dataset)}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


if __name__ == "__main__":
    sys.exit("dynamic_rcnn.tools.paired is a library: run python -m dynamic_rcnn.tools.compare")
