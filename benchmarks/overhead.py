#!/usr/bin/env python
"""
Training overhead of Dynamic R-CNN against the standard ROI head: same model, same initial weights,
same batches. ``DynamicROIHeads`` (DLA and DSL on, updates every ``--period`` iterations, driven by
``DynamicRCNNHook``) and ``StandardROIHeads`` take training steps in turn (A B A B ...) in one
process after warm-up; the script prints the median step time of each and their ratio, and the
peak memory of each and their ratio.

    python benchmarks/overhead.py --preset tiny  [--steps 20]        # shapes R-18-FPN, 192 px, 4 images
    python benchmarks/overhead.py --preset tiny-cascade --count-ops  # Dynamic Cascade vs CascadeROIHeads
    python benchmarks/overhead.py --preset r50-coco --steps 3        # R-50-FPN, 800 x 1216, 2 images
    python benchmarks/overhead.py --count-ops [--opts MODEL.DYNAMIC_RCNN.STATS_INCLUDE_GT False]

``--opts KEY VALUE ...`` changes the dynamic head only (other statistics settings).
``--count-ops`` profiles one training step of each head on the same batch and prints the number of
aten operations each called (those called from Python, not those they call inside): a count that the machine's load does not change, for where a timing is
noise (the CPU).

Peak memory: on a GPU ``torch.cuda.max_memory_allocated`` per step; on the CPU, where torch keeps no
allocator statistics, the peak resident set size of a separate process per variant running the
same steps (``--memory-steps``).
"""
import argparse
import collections
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import warnings

warnings.filterwarnings("ignore", category=FutureWarning, module="torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dynamic_rcnn.hook import find_trackers  # noqa: E402

PRESETS = {
    "tiny": {
        "config": "configs/shapes/dynamic_rcnn_R_18_FPN_shapes.yaml",
        "image_size": (192, 192),
        # The paper's rule, as on COCO: the appended ground truth counts, K_E 10 (the shapes config's
        # setting leaves it out and takes K_E 20; --opts measures it).
        "opts": ["MODEL.DYNAMIC_RCNN.STATS_INCLUDE_GT", True, "MODEL.DYNAMIC_RCNN.BETA_TOPK", 10],
    },
    "tiny-cascade": {
        "config": "configs/shapes/dynamic_cascade_rcnn_R_18_FPN_shapes.yaml",
        "image_size": (192, 192),
        # The setting its figures were measured with (the shapes cascade config's before 0.5.2, 0.3's defaults:
        # K_I 22 at every stage, K_E 10, the ground truth counted); the baseline is detectron2's CascadeROIHeads
        # at the floors and ceilings the dynamic stages start from.
        "opts": ["MODEL.DYNAMIC_RCNN.STATS_INCLUDE_GT", True, "MODEL.DYNAMIC_RCNN.BETA_TOPK", 10,
                 "MODEL.DYNAMIC_RCNN.CASCADE.IOU_TOPK", [22, 22, 22]],
        "baseline_opts": ["MODEL.ROI_HEADS.NAME", "CascadeROIHeads", "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", 1.0],
    },
    "r50-coco": {
        "config": "configs/dynamic_rcnn_R_50_FPN_1x.yaml",
        "image_size": (800, 1216),
        # No ImageNet weights here: from random weights FrozenBN blows up at once, so the backbone
        # normalises with BN in training mode (the time of the ROI head, which is compared, is unchanged).
        "opts": ["MODEL.WEIGHTS", "", "SOLVER.IMS_PER_BATCH", 2, "MODEL.ROI_HEADS.NUM_CLASSES", 80,
                 "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", 0, "SOLVER.BASE_LR", 0.002],
    },
}


def build(preset, head, device, period, dynamic_opts=()):
    import torch
    from detectron2.modeling import build_model
    from detectron2.solver import build_optimizer

    from dynamic_rcnn.engine import load_config

    p = PRESETS[preset]
    opts = list(p["opts"]) + ["MODEL.DEVICE", device, "MODEL.DYNAMIC_RCNN.UPDATE_PERIOD", period]
    if head == "standard":
        # The baseline the dynamic head starts from: IoU 0.4 (warm-up), SmoothL1 beta 1.0.
        opts += p.get("baseline_opts", ["MODEL.ROI_HEADS.NAME", "StandardROIHeads", "MODEL.ROI_HEADS.IOU_THRESHOLDS",
                                        [0.4], "MODEL.ROI_BOX_HEAD.SMOOTH_L1_BETA", 1.0])
    else:
        opts += list(dynamic_opts)
    cfg = load_config(os.path.join(ROOT, p["config"]), opts)
    torch.manual_seed(0)
    model = build_model(cfg)  # same seed: the same initial weights for both heads
    return cfg, model, build_optimizer(cfg, model)


def make_batches(preset, n, ims_per_batch):
    """Synthetic `shapes` images at the preset's input size, with their boxes and classes."""
    import torch
    from detectron2.data.detection_utils import annotations_to_instances

    from dynamic_rcnn.data import generate_shapes_image

    size = PRESETS[preset]["image_size"]
    batches = []
    for b in range(n):
        batch = []
        for i in range(ims_per_batch):
            img, annos = generate_shapes_image(seed=123, index=b * ims_per_batch + i, image_size=size)
            inst = annotations_to_instances(annos, size)
            batch.append({"image": torch.as_tensor(img.transpose(2, 0, 1).copy()), "instances": inst})
        batches.append(batch)
    return batches


class Runner:
    """One model trained step by step as detectron2's SimpleTrainer does, with its hooks."""

    def __init__(self, cfg, model, optimizer, batches):
        from detectron2.engine import SimpleTrainer
        from detectron2.utils.events import EventStorage

        from dynamic_rcnn import DynamicRCNNHook
        model.train()
        self.trainer = SimpleTrainer(model, batches, optimizer)
        if find_trackers(model):
            self.trainer.register_hooks([DynamicRCNNHook()])
        self.storage = EventStorage(0)
        self.trainer.storage = self.storage
        self.trainer.iter = 0
        with self.storage:
            self.trainer.before_train()
        self.device = cfg.MODEL.DEVICE

    def step(self):
        import torch

        t = self.trainer
        with self.storage:
            self.storage.iter = t.iter
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            t.before_step()
            t.run_step()
            t.after_step()
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            t.iter += 1
        memory = torch.cuda.max_memory_allocated() / 2**20 if self.device.startswith("cuda") else None
        return elapsed, memory


def timing(args):
    import torch

    torch.set_num_threads(args.threads) if args.threads else None
    # --control: the standard head against a second copy of itself, the noise floor of the method.
    heads = ("standard", "standard (copy)") if args.control else ("dynamic", "standard")
    runners = {}
    for head in heads:
        cfg, model, opt = build(args.preset, head.split()[0], args.device, args.period, args.opts)
        batches = make_batches(args.preset, args.steps + args.warmup, cfg.SOLVER.IMS_PER_BATCH)
        runners[head] = Runner(cfg, model, opt, iter(batches * 2))
    times = {h: [] for h in heads}
    memory = {h: [] for h in heads}
    for i in range(args.warmup + args.steps):
        # A B, then B A: neither head always takes the first step of a pair.
        for head in heads if i % 2 == 0 else heads[::-1]:
            elapsed, mem = runners[head].step()
            if i >= args.warmup:
                times[head].append(elapsed)
                if mem is not None:
                    memory[head].append(mem)
        print(f"step {i + 1}/{args.warmup + args.steps}: " + ", ".join(f"{h} {times[h][-1] if times[h] else 0:.4f} s" for h in heads), file=sys.stderr)
    trackers = find_trackers(runners[heads[0]].trainer.model)
    return heads, times, memory, trackers


def count_ops(args):
    """aten operations of one training step of each head, on the same batch after ``--warmup`` steps."""
    from torch.profiler import ProfilerActivity, profile

    counts, names = {}, {}
    for head in ("dynamic", "standard"):
        cfg, model, opt = build(args.preset, head, args.device, args.period, args.opts)
        batches = make_batches(args.preset, args.warmup + 1, cfg.SOLVER.IMS_PER_BATCH)
        runner = Runner(cfg, model, opt, iter(batches))
        for _ in range(args.warmup):
            runner.step()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
        with profile(activities=activities) as prof:
            runner.step()
        # Operations called from Python (not those an operation calls inside): what a step launches.
        top = [e.name for e in prof.events() if e.name.startswith("aten::")
               and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))]
        counts[head], names[head] = len(top), collections.Counter(top)
    return counts, names


def memory_child(args):
    """--memory-child HEAD: run the steps for one head, print this process's peak RSS in MiB."""
    cfg, model, opt = build(args.preset, args.memory_child, args.device, args.period, args.opts)
    batches = make_batches(args.preset, args.memory_steps, cfg.SOLVER.IMS_PER_BATCH)
    runner = Runner(cfg, model, opt, iter(batches))
    for _ in range(args.memory_steps):
        runner.step()
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def cpu_memory(args, heads):
    peaks = {}
    for head in heads:
        cmd = [sys.executable, os.path.abspath(__file__), "--preset", args.preset, "--device", args.device,
               "--period", str(args.period), "--memory-steps", str(args.memory_steps),
               "--memory-child", head.split()[0], "--opts", *args.opts]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        peaks[head] = json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]
    return peaks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument("--steps", type=int, default=20, help="measured steps of each head")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured steps of each head first")
    parser.add_argument("--period", type=int, default=5, help="UPDATE_PERIOD: updates happen while measuring")
    parser.add_argument("--memory-steps", type=int, default=5, help="CPU: steps of each memory process")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--control", action="store_true",
                        help="time the standard head against a copy of itself (the noise floor)")
    parser.add_argument("--count-ops", action="store_true", help="count the aten operations of one step of each head")
    parser.add_argument("--memory-child", choices=("dynamic", "standard"), help=argparse.SUPPRESS)
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE ... for the dynamic head")
    args = parser.parse_args(argv)
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.memory_child:
        memory_child(args)
        return 0
    if args.count_ops:
        counts, names = count_ops(args)
        print(f"preset {args.preset}, one training step after {args.warmup} warm-up, dynamic opts {' '.join(args.opts) or '-'}")
        print(f"  aten operations   dynamic {counts['dynamic']}   standard {counts['standard']}   "
              f"difference {counts['dynamic'] - counts['standard']:+d}")
        more = (names["dynamic"] - names["standard"]).most_common()
        print("  the dynamic head's extra operations:", ", ".join(f"{n} {c}" for n, c in more) or "-")
        print(json.dumps({"preset": args.preset, "opts": args.opts, "aten_ops": counts}))
        return 0

    heads, times, memory, trackers = timing(args)
    a, b = heads
    med = {h: statistics.median(v) for h, v in times.items()}
    paired = statistics.median(x / y for x, y in zip(times[a], times[b]))
    if args.device.startswith("cuda"):
        peak = {h: max(v) for h, v in memory.items()}
        memory_kind = "torch.cuda.max_memory_allocated"
        machine = torch.cuda.get_device_name()
    else:
        peak = cpu_memory(args, heads)
        memory_kind = f"peak RSS of a process running {args.memory_steps} steps"
        machine = f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    result = {
        "preset": args.preset,
        "heads": list(heads),
        "machine": machine,
        "steps_each": args.steps,
        "median_step_s": med,
        "time_ratio": med[a] / med[b],
        "median_paired_ratio": paired,
        "peak_memory_mb": peak,
        "memory_ratio": peak[a] / peak[b],
        "memory_kind": memory_kind,
        "dynamic_state_after": [{"iou_threshold": t.iou_threshold, "beta": t.beta} for t in trackers],
    }
    print(f"preset {args.preset} on {machine}, {args.steps} steps each, A B / B A alternating after {args.warmup} warm-up")
    print(f"  median step   {a} {med[a]:.4f} s   {b} {med[b]:.4f} s   ratio {result['time_ratio']:.4f}"
          f"   (median of paired ratios {paired:.4f})")
    print(f"  peak memory   {a} {peak[a]:.1f} MiB  {b} {peak[b]:.1f} MiB  ratio {result['memory_ratio']:.4f}  ({memory_kind})")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
