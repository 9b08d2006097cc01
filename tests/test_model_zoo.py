"""tools/publish_model.py -> dynamic_rcnn.model_zoo: names, hashes, embedded configs, refusals."""
import importlib.util
import json
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from dynamic_rcnn import model_zoo

from conftest import ROOT, tiny_cfg


def load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run_dir(tmp_path):
    """A finished run as train_net.py leaves it: checkpoint with trainer state, config, AP table, summary."""
    run = tmp_path / "run"
    cfg = tiny_cfg("OUTPUT_DIR", str(run))
    torch.manual_seed(0)
    model = build_model(cfg)
    os.makedirs(run / "inference" / "shapes_val")
    DetectionCheckpointer(model, save_dir=str(run)).save(
        "model_final", iteration=7, optimizer={"state": {}, "param_groups": []}, trainer={"iteration": 7})
    (run / "config.yaml").write_text(cfg.dump())
    (run / "inference" / "shapes_val" / "ap_table.json").write_text(json.dumps({"shapes_val": {"bbox": {"AP": 12.5, "AP90": 1.0}}}))
    (run / "train_summary.json").write_text(json.dumps({"iterations": 8, "s_per_iter": 0.5, "peak_memory_mb": 900.0}))
    return run, model


def test_publish_keeps_only_weights_and_embeds_config(run_dir, tmp_path, monkeypatch):
    run, model = run_dir
    releases = tmp_path / "releases"
    publish = load_tool("publish_model")
    assert publish.main([str(run), "--name", "tiny_model", "--out", str(releases)]) == 0
    files = sorted(os.listdir(releases))
    assert len(files) == 2 and files[0] == "tiny_model.metrics.json"
    ckpt_name = files[1]
    digest = model_zoo.sha256_of(str(releases / ckpt_name))
    assert ckpt_name == f"tiny_model_{digest[:8]}.pth"
    data = torch.load(str(releases / ckpt_name), map_location="cpu", weights_only=False)
    assert set(data) == {"model", "cfg", "__author__"}  # no optimizer, scheduler, trainer state
    assert data["model"].keys() == model.state_dict().keys()
    metrics = json.loads((releases / "tiny_model.metrics.json").read_text())
    assert metrics["sha256"] == digest and metrics["checkpoint"] == ckpt_name
    assert metrics["ap"]["shapes_val"]["bbox"]["AP"] == 12.5
    assert metrics["train"]["s_per_iter"] == 0.5
    assert metrics["schedule"]["max_iter"] == 8

    # get(): the embedded config and the released weights, hash checked.
    monkeypatch.setenv("DYNAMIC_RCNN_RELEASES", str(releases))
    loaded = model_zoo.get("tiny_model", trained=True)
    assert not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    cfg = model_zoo.get_config("tiny_model", trained=True)
    assert cfg.MODEL.FPN.OUT_CHANNELS == 16 and cfg.MODEL.WEIGHTS == str(releases / ckpt_name)


def test_a_file_whose_hash_does_not_match_its_name_is_refused(run_dir, tmp_path, monkeypatch):
    run, _ = run_dir
    releases = tmp_path / "releases"
    load_tool("publish_model").main([str(run), "--name", "tiny_model", "--out", str(releases)])
    ckpt = next(p for p in releases.iterdir() if p.suffix == ".pth")
    with open(ckpt, "ab") as f:
        f.write(b"tampered")
    monkeypatch.setenv("DYNAMIC_RCNN_RELEASES", str(releases))
    with pytest.raises(model_zoo.ChecksumError, match=f"{ckpt}: sha256 .* does not match"):
        model_zoo.get("tiny_model", trained=True)


def test_missing_release_and_config_say_what_exists(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNAMIC_RCNN_RELEASES", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="publish_model.py"):
        model_zoo.get("nothing_here", trained=True)
    with pytest.raises(FileNotFoundError, match="dynamic_rcnn_R_50_FPN_1x"):
        model_zoo.get_config_file("no_such_config")
    assert model_zoo.get_config_file("dynamic_rcnn_R_50_FPN_1x").endswith("configs/dynamic_rcnn_R_50_FPN_1x.yaml")
    model = model_zoo.get("shapes/dynamic_rcnn_R_18_FPN_shapes", trained=False, device="cpu")
    assert type(model.roi_heads).__name__ == "DynamicROIHeads"


def test_publish_refuses_a_run_without_checkpoint_or_a_corrupt_one(tmp_path, capsys):
    publish = load_tool("publish_model")
    assert publish.main([str(tmp_path), "--name", "x", "--out", str(tmp_path / "r")]) == 2
    assert f"{tmp_path / 'model_final.pth'} does not exist" in capsys.readouterr().err
    (tmp_path / "model_final.pth").write_bytes(b"junk")
    (tmp_path / "config.yaml").write_text("MODEL: {}\n")
    assert publish.main([str(tmp_path), "--name", "x", "--out", str(tmp_path / "r")]) == 2
    assert "is not a readable checkpoint" in capsys.readouterr().err


def test_publish_verify_evaluates_the_release_and_compares_its_ap(tmp_path, capsys):
    run = tmp_path / "run"
    cfg = tiny_cfg("OUTPUT_DIR", str(run), "DATASETS.TEST", ("shapes_tiny_train",), "TEST.DETECTIONS_PER_IMAGE", 20)
    os.makedirs(run / "inference" / "shapes_tiny_train")
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(cfg), save_dir=str(run)).save("model_final")
    (run / "config.yaml").write_text(cfg.dump())
    table = run / "inference" / "shapes_tiny_train" / "ap_table.json"
    table.write_text(json.dumps({"shapes_tiny_train": {"bbox": {"AP": 12.5}}}))  # not what it gives
    publish = load_tool("publish_model")
    releases = tmp_path / "releases"
    assert publish.main([str(run), "--name", "tiny_model", "--out", str(releases), "--verify"]) == 1
    assert "shapes_tiny_train bbox/AP: 12.5 published" in capsys.readouterr().err

    # With the AP the release really gives in its metrics file, the round trip holds.
    differ = publish.verify("tiny_model", str(releases), 0.05)
    measured = differ[0][3]
    metrics_file = releases / "tiny_model.metrics.json"
    metrics = json.loads(metrics_file.read_text())
    metrics["ap"]["shapes_tiny_train"]["bbox"]["AP"] = measured + 0.01
    metrics_file.write_text(json.dumps(metrics))
    assert publish.verify("tiny_model", str(releases), 0.05) == []


def test_the_release_its_metrics_name_is_used_among_several(run_dir, tmp_path):
    run, _ = run_dir
    releases = tmp_path / "releases"
    load_tool("publish_model").main([str(run), "--name", "tiny_model", "--out", str(releases)])
    listed = json.loads((releases / "tiny_model.metrics.json").read_text())["checkpoint"]
    (releases / "tiny_model_00000000.pth").write_bytes(b"an older release")  # sorts first
    (releases / "tiny_model_ffffffff.pth").write_bytes(b"another one")  # sorts last
    assert model_zoo.get_checkpoint_file("tiny_model", str(releases)) == str(releases / listed)
    os.remove(releases / "tiny_model.metrics.json")
    with pytest.raises(FileNotFoundError, match="holds 3 releases of tiny_model .* keep one"):
        model_zoo.get_checkpoint_file("tiny_model", str(releases))
