"""python -m dynamic_rcnn.tools.compare: paired runs on a user's config and data, resumable, refused when wrong."""
import json
import os
import subprocess
import sys

import pytest

from dynamic_rcnn.tools import compare, paired

from conftest import ROOT, SHAPES_CONFIG, TINY_OPTS

# A training that takes no time: writes what train_net.py writes (an AP table, metrics.json, a checkpoint), with an
# AP made from the variant's head and the seed, so that the paired differences are known: Dynamic R-CNN is
# 30 + seed + 1 (+ 2 more with NMS 0.85), the reference 30 + seed.
FAKE_TRAIN_NET = """
import json, os, sys
args = sys.argv[1:]
last = {k: args[len(args) - 1 - args[::-1].index(k) + 1] for k in ("OUTPUT_DIR", "SEED")}  # the last one wins
out, seed = last["OUTPUT_DIR"], int(last["SEED"])
ap = 30.0 + seed + ("DynamicROIHeads" in args) + 2 * ("0.85" in args)
if os.environ.get("FAIL_SEED") == str(seed):
    sys.exit("error: a run that fails")
os.makedirs(os.path.join(out, "inference", "shapes_tiny_train"), exist_ok=True)
with open(os.path.join(out, "inference", "shapes_tiny_train", "ap_table.json"), "w") as f:
    json.dump({"shapes_tiny_train": {"bbox": {c: ap for c in ("AP", "AP50", "AP60", "AP70", "AP80", "AP90")}}}, f)
with open(os.path.join(out, "metrics.json"), "w") as f:
    f.write(json.dumps({"iteration": 3, "dynamic_rcnn/iou_threshold": 0.5, "dynamic_rcnn/beta": 0.3,
                        "total_loss": 1.0, "roi_head/num_fg_samples": 9.0}) + "\\n")
open(os.path.join(out, "model_final.pth"), "w").write("weights")
"""
TINY = [str(o) for o in TINY_OPTS] + ["DATASETS.TEST", "('shapes_tiny_train',)"]
STOCK = os.path.join(ROOT, "configs", "shapes", "faster_rcnn_R_18_FPN_shapes.yaml")  # detectron2's head


@pytest.fixture
def fake(tmp_path, monkeypatch):
    script = tmp_path / "fake_train_net.py"
    script.write_text(FAKE_TRAIN_NET)
    monkeypatch.setattr(compare, "_train_net", lambda: str(script))
    return tmp_path / "compare"


def run(out, *extra, seeds=("0", "1", "2", "3"), config=STOCK):
    return compare.main(["--config-file", config, "--seeds", *seeds, "--out", str(out), "--every", "0.5",
                         *extra, "--", *TINY])


def results(out):
    return sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(os.path.join(out, "results"))
                  for f in fs)


def test_the_reference_against_dynamic_rcnn_paired_and_reported(fake, capsys):
    assert run(fake) == 0
    assert results(fake) == [f"results/{v}/seed{s}.json" for v in ("dynamic", "reference") for s in range(4)]
    out = capsys.readouterr().out
    assert "compare: 8 runs (2 variants x 4 seeds), 0 recorded, 8 to run" in out
    assert "compare: run 1 of 8: reference, seed 0" in out and "recorded in" in out
    # Dynamic R-CNN is 1 AP above the reference on every seed: +1.0 with no spread, resolved.
    report = (fake / "report.md").read_text()
    assert "- shapes_tiny_train, Dynamic R-CNN: +1.0 ± 0.0 AP against reference, resolved (4 seeds)" in report
    assert "| shapes_tiny_train | dynamic | 4 | **+1.0 ± 0.0** |" in report
    assert (fake / "paired_differences.png").is_file() and (fake / "trajectories_shapes_tiny_train.png").is_file()
    assert not list(fake.glob("runs/*/*/*.pth"))  # checkpoints dropped after evaluation
    # The same command again: everything recorded, nothing run.
    assert run(fake) == 0
    assert "8 recorded, 0 to run" in capsys.readouterr().out


def test_a_dynamic_config_is_compared_with_detectron2s_head(fake):
    assert run(fake, seeds=("0", "1"), config=SHAPES_CONFIG) == 0
    plan = json.loads((fake / "plan.json").read_text())
    assert plan["variants"] == {"reference": ["MODEL.ROI_HEADS.NAME", "StandardROIHeads"], "dynamic": []}


def test_a_cut_run_is_run_again_from_scratch_and_never_half_counted(fake, monkeypatch, capsys):
    monkeypatch.setenv("FAIL_SEED", "1")
    with pytest.raises(SystemExit, match="error: 2 runs failed: .*seed1/stdout.txt.*; the same command runs them again"):
        run(fake, seeds=("0", "1"))
    assert results(fake) == ["results/dynamic/seed0.json", "results/reference/seed0.json"]
    stale = fake / "runs" / "dynamic" / "seed1" / "left_over.txt"
    stale.write_text("what the cut run left")
    monkeypatch.delenv("FAIL_SEED")
    capsys.readouterr()
    assert run(fake, "--keep-checkpoints", seeds=("0", "1")) == 0
    assert "4 runs (2 variants x 2 seeds), 2 recorded, 2 to run" in capsys.readouterr().out
    assert not stale.exists() and (fake / "runs" / "dynamic" / "seed1" / "model_final.pth").is_file()
    assert len(results(fake)) == 4


def test_a_variant_of_the_users_and_overrides_for_every_run(fake):
    assert run(fake, "--variant", "nms85", "MODEL.ROI_HEADS.NAME", "DynamicROIHeads", "MODEL.RPN.NMS_THRESH", "0.85",
               seeds=("0", "1")) == 0
    plan = json.loads((fake / "plan.json").read_text())
    assert plan["variants"] == {"reference": [], "dynamic": ["MODEL.ROI_HEADS.NAME", "DynamicROIHeads"],
                                "nms85": ["MODEL.ROI_HEADS.NAME", "DynamicROIHeads", "MODEL.RPN.NMS_THRESH", "0.85"]}
    report = (fake / "report.md").read_text()
    assert "| shapes_tiny_train | nms85 | 2 | **+3.0 ± 0.0** |" in report
    record = json.loads((fake / "results" / "nms85" / "seed1.json").read_text())
    command = " ".join(record["command"])
    assert "MODEL.RPN.NMS_THRESH 0.85 SEED 1 OUTPUT_DIR" in command and "SOLVER.MAX_ITER 8" in command


@pytest.mark.parametrize("argv, said", [
    (["--config-file", "missing.yaml"], "error: --config-file missing.yaml does not exist"),
    (["--seeds", "0"], "error: --seeds 0: give two different seeds or more"),
    (["--seeds", "1", "1"], "error: --seeds 1 1: give two different seeds or more"),
    (["--variant", "same", "MODEL.ROI_HEADS.NAME", "DynamicROIHeads"],
     "error: --variant same changes nothing: it trains the config of dynamic"),
    (["--variant", "bad/name", "SOLVER.BASE_LR", "0.1"], "error: --variant bad/name: a variant's name is letters"),
    (["--variant", "odd", "SOLVER.BASE_LR"], "error: --variant odd: give KEY VALUE pairs after its name"),
    (["--variant", "typo", "MODEL.RPN.NMS_THRESHOLD", "0.8"],
     "error: the command line: Non-existent key: MODEL.RPN.NMS_THRESHOLD"),
    (["MODEL.ROI_HEADS.NAME", "Res5ROIHeads"], "error: MODEL.ROI_HEADS.NAME is 'Res5ROIHeads' in"),
    (["DATASETS.TEST", "('nowhere',)"], "error: DATASETS.TEST names the dataset 'nowhere', which is not registered"),
    (["DATASETS.TEST", "()"], "error: DATASETS.TEST is empty"),
    (["--test-json", "missing.json", "--test-images", "."], "error: missing.json (given to --test-json"),
])
def test_bad_input_is_refused_in_one_line_before_the_first_run(fake, argv, said):
    argv = list(argv)
    config = ["--config-file", STOCK] if "--config-file" not in argv else []
    seeds = ["--seeds", "0", "1"] if "--seeds" not in argv else []
    options = argv if any(a.startswith("--") for a in argv) else []
    trailing = [] if options else argv
    with pytest.raises(SystemExit) as e:
        compare.main([*config, *seeds, "--out", str(fake), *options, "--", *TINY, *trailing])
    assert str(e.value.code).startswith(said) and "\n" not in str(e.value.code), e.value.code
    assert not (fake / "runs").exists()


def test_another_comparison_in_the_same_folder_is_refused(fake):
    assert run(fake, seeds=("0", "1")) == 0
    with pytest.raises(SystemExit, match=r"error: --out .* holds runs of another comparison: the config of reference, "
                                         "dynamic differs"):
        run(fake, "MODEL.RPN.NMS_THRESH", "0.6", seeds=("0", "1"))
    assert run(fake, seeds=("2", "3")) == 0  # more seeds of the same comparison: fine
    assert len(results(fake)) == 8


def test_the_report_can_be_made_at_any_time_from_what_is_recorded(fake, capsys):
    with pytest.raises(SystemExit, match="nothing recorded there"):
        compare.main(["--out", str(fake), "--report"])
    os.makedirs(fake)
    assert compare.main(["--out", str(fake), "--report"]) == 0
    assert "has no recorded run yet" in capsys.readouterr().out
    run(fake, seeds=("0", "1"))
    (fake / "report.md").unlink()
    assert compare.main(["--out", str(fake), "--report"]) == 0
    assert "Dynamic R-CNN: +1.0 ± 0.0 AP" in (fake / "report.md").read_text()


def rows(differences, reference=30.0):
    """Records of a reference and a variant whose per-seed AP differences are ``differences``."""
    out = []
    for seed, d in enumerate(differences):
        base = {c: reference for c in paired.COLUMNS}
        out += [(("data", "reference", seed, 1), base), (("data", "dynamic", seed, 1), dict(base, AP=reference + d))]
    return out


def test_the_statistics_of_the_report_are_those_worked_out_by_hand():
    # Differences 1, 2, 3, 4: mean 2.5, standard deviation sqrt(5/3) = 1.291, standard error 0.645; t(3) = 3.18,
    # half-width 2.05 < 2.5: resolved.
    mean, se, n = paired.paired_differences(rows([1, 2, 3, 4]), "reference")[("data", "dynamic")]["AP"]
    assert (mean, n) == (2.5, 4) and se == pytest.approx((5 / 3) ** 0.5 / 2)
    assert paired.resolved(mean, se, n)
    assert paired.summary(rows([1, 2, 3, 4]), "reference", {"dynamic": "Dynamic R-CNN"}) == [
        "data, Dynamic R-CNN: +2.5 ± 0.6 AP against reference, resolved (4 seeds)."]
    # Differences 1, -1, 2, -2: mean 0, sd sqrt(10/3) = 1.826, se 0.913, half-width 3.18 x 0.913 = 2.9. To resolve
    # 0.5 AP: the fewest n with t(n - 1) x 1.826 / sqrt(n) < 0.5: past 30 degrees of freedom t = 1.96, n > 51.2.
    assert paired.seeds_to_resolve((10 / 3) ** 0.5, 0.5) == 52
    (sentence,) = paired.summary(rows([1, -1, 2, -2]), "reference", {"dynamic": "Dynamic R-CNN"})
    assert sentence == ("data, Dynamic R-CNN: +0.0 ± 0.9 AP against reference, not resolved: under what 4 seeds "
                        "resolve here (about 2.9 AP); about 52 seeds would resolve 0.5 AP.")
    # A resolved high-IoU column is said beside an unresolved AP.
    some = rows([1, -1, 2, -2])
    for key, r in some:
        if key[1] == "dynamic":
            r["AP90"] = 32.0 + key[2] * 0.2  # differences 2.0, 2.2, 2.4, 2.6: mean 2.3, se 0.129
    assert paired.summary(some, "reference")[0].endswith("resolved: AP90 +2.3 ± 0.1.")


def test_a_seed_whose_two_runs_ran_on_different_machines_is_not_a_pair():
    # Differences 1, 2, 3, 4, but seed 3's variant ran on another CPU: its +4 is not paired (same seed, another
    # model there), so the difference is over seeds 0-2 (mean 2.0), and the summary names the seed left out.
    some = [(key, dict(r, machine="CPU: B" if key[1:3] == ("dynamic", 3) else "CPU: A"))
            for key, r in rows([1, 2, 3, 4])]
    assert paired.paired_differences(some, "reference")[("data", "dynamic")]["AP"][::2] == (2.0, 3)
    assert paired.cross_machine(some, "reference") == [("data", "dynamic", 3)]
    assert paired.summary(some, "reference")[-1] == (
        "Not paired, their run and reference's on different machines (run both again on one): data dynamic seed 3.")
    # A record that does not say its machine (made before they did) pairs with any.
    older = [(key, {k: v for k, v in r.items() if k != "machine"} if key == ("data", "reference", 3, 1) else r)
             for key, r in some]
    assert paired.paired_differences(older, "reference")[("data", "dynamic")]["AP"][::2] == (2.5, 4)
    assert paired.cross_machine(older, "reference") == []
    # Nor does one that names the CPU's architecture without its model (the records before the model was kept).
    older = [(key, dict(r, machine="CPU: x86_64, 2 cores") if key == ("data", "reference", 3, 1) else r)
             for key, r in some]
    assert paired.paired_differences(older, "reference")[("data", "dynamic")]["AP"][::2] == (2.5, 4)


@pytest.mark.slow
def test_two_variants_two_seeds_end_to_end_with_train_net(tmp_path):
    """Real training (the tiny model, 4 iterations a run) through the command as a user runs it."""
    out = tmp_path / "compare"
    proc = subprocess.run(
        [sys.executable, "-m", "dynamic_rcnn.tools.compare", "--config-file", SHAPES_CONFIG, "--seeds", "0", "1",
         "--out", str(out), "--threads", "1", "--", *TINY, "SOLVER.MAX_ITER", "4", "MODEL.DYNAMIC_RCNN.UPDATE_PERIOD", "2"],
        cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert results(out) == [f"results/{v}/seed{s}.json" for v in ("dynamic", "reference") for s in (0, 1)]
    record = json.loads((out / "results" / "dynamic" / "seed1.json").read_text())
    assert record["iterations"] == 4 and "dynamic_rcnn/iou_threshold" in record["curves"]
    assert "Dynamic R-CNN: " in (out / "report.md").read_text() and "against reference" in proc.stdout


def test_ctrl_c_is_one_line_saying_what_is_recorded_and_how_to_go_on(fake, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(paired, "run_all", interrupted)
    with pytest.raises(SystemExit, match=r"^error: interrupted \(Ctrl-C\) with 0 of 4 runs recorded; the same command "
                                         "goes on"):
        run(fake, seeds=("0", "1"))
