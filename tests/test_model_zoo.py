"""tools/publish_model.py -> dynamic_rcnn.model_zoo: names, hashes, embedded configs, refusals."""
import glob
import importlib.util
import json
import logging
import os

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from dynamic_rcnn import model_zoo

from conftest import ROOT, SHAPES_CONFIG, TINY_OPTS, tiny_cfg


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
    (run / "run_summary.json").write_text(json.dumps({"iterations": 8, "s_per_iter": 0.5, "peak_memory_mb": 900.0}))
    return run, model


def test_publish_keeps_only_weights_and_embeds_config(run_dir, tmp_path, monkeypatch):
    run, model = run_dir
    releases = tmp_path / "releases"
    publish = load_tool("publish_model")
    assert publish.main([str(run), "--name", "tiny_model", "--out", str(releases)]) == 0
    files = sorted(os.listdir(releases))
    ckpt_name = next(f for f in files if f.endswith(".pth"))
    assert files == sorted([ckpt_name, "tiny_model.metrics.json", "tiny_model.inference.yaml"])
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

    # get(): the embedded config and the released weights, hash checked; in training mode, as
    # detectron2.model_zoo.get returns its models.
    monkeypatch.setenv("DYNAMIC_RCNN_RELEASES", str(releases))
    loaded = model_zoo.get("tiny_model", trained=True)
    assert loaded.training
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


def _zoo_warnings():
    """Collects the warnings of the dynamic_rcnn loggers (whatever setup_logger did to propagation)."""
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger("detectron2.dynamic_rcnn").addHandler(handler)
    return records, handler


def test_get_untrained_loads_the_configs_weights_in_training_mode_as_detectron2(tmp_path, monkeypatch):
    # A zoo whose config names initial weights, as the COCO configs name an ImageNet backbone.
    torch.manual_seed(1)
    cfg = tiny_cfg("OUTPUT_DIR", str(tmp_path))
    initial = build_model(cfg)
    DetectionCheckpointer(initial, save_dir=str(tmp_path)).save("init")
    zoo = tmp_path / "zoo"
    (zoo / "configs").mkdir(parents=True)
    cfg.MODEL.WEIGHTS = str(tmp_path / "init.pth")
    (zoo / "configs" / "tiny.yaml").write_text(cfg.dump())
    monkeypatch.setattr(model_zoo.model_zoo, "_PACKAGE_DIR", str(zoo))

    model = model_zoo.get("tiny", trained=False, device="cpu")
    assert model.training  # detectron2.model_zoo.get: "Will be in training mode"
    for k, v in initial.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_configs_are_read_inside_the_package_first_else_from_the_checkout(tmp_path, monkeypatch):
    checkout = os.path.join(ROOT, "configs", "shapes", "dynamic_rcnn_R_18_FPN_shapes.yaml")
    assert model_zoo.get_config_file("shapes/dynamic_rcnn_R_18_FPN_shapes") == checkout
    package = tmp_path / "dynamic_rcnn"
    (package / "configs" / "shapes").mkdir(parents=True)
    (package / "releases").mkdir()
    (package / "configs" / "shapes" / "only_installed.yaml").write_text(open(checkout).read())
    (package / "releases" / "only_installed.metrics.json").write_text("{}")
    monkeypatch.setattr(model_zoo.model_zoo, "_PACKAGE_DIR", str(package))
    monkeypatch.delenv("DYNAMIC_RCNN_RELEASES", raising=False)
    installed = package / "configs" / "shapes" / "only_installed.yaml"
    assert model_zoo.get_config_file("shapes/only_installed") == str(installed)
    with pytest.raises(FileNotFoundError, match=f"No config shapes/dynamic_rcnn_R_18_FPN_shapes.yaml in {package}"):
        model_zoo.get_config_file("shapes/dynamic_rcnn_R_18_FPN_shapes")
    assert model_zoo.release_dir() == str(package / "releases")
    assert model_zoo.released_names() == ["only_installed"]


def test_the_cpu_fallback_warns_for_every_config_the_zoo_loads(run_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    run, _ = run_dir
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("DEVICE: cpu", "DEVICE: cuda"))
    releases = tmp_path / "releases"
    load_tool("publish_model").main([str(run), "--name", "tiny_model", "--out", str(releases)])
    monkeypatch.setenv("DYNAMIC_RCNN_RELEASES", str(releases))
    records, handler = _zoo_warnings()
    try:
        for name, trained in (("shapes/dynamic_rcnn_R_18_FPN_shapes", False), ("tiny_model", True)):
            del records[:]
            cfg = model_zoo.get_config(name, trained=trained)  # both say MODEL.DEVICE cuda
            assert cfg.MODEL.DEVICE == "cpu", name
            assert any("no GPU is visible: using the CPU" in r.getMessage() for r in records), (name, records)
            del records[:]
            model = model_zoo.get(name, trained=trained)
            assert next(model.parameters()).device.type == "cpu"
            assert any("no GPU is visible" in r.getMessage() for r in records), (name, records)
        # A LazyConfig: train.device (detectron2's common/train.py says cuda).
        del records[:]
        lazy = model_zoo.get_config("lazy/dynamic_rcnn_R_50_FPN_1x.py")
        assert lazy.train.device == "cpu"
        assert any("train.device=cuda" in r.getMessage() for r in records), records
    finally:
        logging.getLogger("detectron2.dynamic_rcnn").removeHandler(handler)


def test_lazy_configs_are_served_as_detectron2_serves_its_own(tmp_path, monkeypatch):
    path = model_zoo.get_config_file("lazy/dynamic_rcnn_R_50_FPN_1x.py")
    assert path == os.path.join(ROOT, "configs", "lazy", "dynamic_rcnn_R_50_FPN_1x.py")
    cfg = model_zoo.get_config("lazy/dynamic_rcnn_R_50_FPN_1x.py")
    assert cfg.model.roi_heads.tracker.update_period == 100
    with pytest.raises(FileNotFoundError, match="available: .*lazy/dynamic_rcnn_R_50_FPN_1x.py"):
        model_zoo.get_config_file("lazy/no_such.py")
    monkeypatch.delenv("DYNAMIC_RCNN_RELEASES", raising=False)
    with pytest.raises(FileNotFoundError, match="released no checkpoint named dynamic_rcnn_R_50_FPN_1x"):
        model_zoo.get_config("lazy/dynamic_rcnn_R_50_FPN_1x.py", trained=True)

    # get(): the model of cfg.model with train.init_checkpoint loaded, in training mode.
    torch.manual_seed(2)
    initial = build_model(tiny_cfg())
    DetectionCheckpointer(initial, save_dir=str(tmp_path)).save("init")
    zoo = tmp_path / "zoo"
    (zoo / "configs").mkdir(parents=True)
    (zoo / "configs" / "tiny.py").write_text(
        "from detectron2.config import LazyCall as L, get_cfg\n"
        "from detectron2.modeling import build_model\n"
        "from dynamic_rcnn import add_dynamic_rcnn_config\n"
        "_cfg = get_cfg()\n"
        "add_dynamic_rcnn_config(_cfg)\n"
        f"_cfg.merge_from_file({SHAPES_CONFIG!r})\n"
        f"_cfg.merge_from_list({[str(v) for v in TINY_OPTS]!r})\n"
        "model = L(build_model)(cfg=_cfg)\n"
        f"train = dict(device='cpu', init_checkpoint={str(tmp_path / 'init.pth')!r})\n"
    )
    monkeypatch.setattr(model_zoo.model_zoo, "_PACKAGE_DIR", str(zoo))
    model = model_zoo.get("tiny.py")
    assert model.training
    for k, v in initial.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_a_checkpoint_this_project_never_released_is_named_so(tmp_path, monkeypatch):
    monkeypatch.delenv("DYNAMIC_RCNN_RELEASES", raising=False)
    monkeypatch.delenv("DYNAMIC_RCNN_RELEASE_URL", raising=False)
    released = "dynamic_cascade_rcnn_R_18_FPN_shapes, dynamic_rcnn_R_18_FPN_bccd, dynamic_rcnn_R_18_FPN_shapes"
    with pytest.raises(FileNotFoundError) as e:
        model_zoo.get_config("dynamic_rcnn_R_50_FPN_1x", trained=True)  # a COCO config: never trained here
    assert "released no checkpoint named dynamic_rcnn_R_50_FPN_1x (it was not trained here)" in str(e.value)
    assert f"released: {released}" in str(e.value)
    assert "Publish one" not in str(e.value)

    # A release whose file is not at hand: named as released, with where to get it.
    monkeypatch.setenv("DYNAMIC_RCNN_RELEASES", str(tmp_path))
    with open(os.path.join(ROOT, "releases", "dynamic_rcnn_R_18_FPN_shapes.metrics.json")) as f:
        listed = json.load(f)["checkpoint"]
    expected = f"dynamic_rcnn_R_18_FPN_shapes was released as {listed}, which is not in {tmp_path}.*DYNAMIC_RCNN_RELEASE_URL"
    with pytest.raises(FileNotFoundError, match=expected):
        model_zoo.get("shapes/dynamic_rcnn_R_18_FPN_shapes", trained=True)


def test_model_zoo_md_lists_every_release_with_its_sha256_and_ap():
    """Each releases/NAME.metrics.json (what `make releases` verified) has its MODEL_ZOO.md row, with its numbers."""
    with open(os.path.join(ROOT, "MODEL_ZOO.md")) as f:
        rows = {line.split("|")[1].strip(): line for line in f if line.startswith("| ") and "_R_" in line}
    for path in glob.glob(os.path.join(ROOT, "releases", "*.metrics.json")):
        with open(path) as f:
            m = json.load(f)
        row = rows.get(m["name"])
        assert row is not None, f"MODEL_ZOO.md has no row for {m['name']}"
        (ap,) = m["ap"].values()
        cells = [c.strip() for c in row.split("|")]
        assert m["sha256"] in row and m["checkpoint"] in row, m["name"]
        assert f"{ap['bbox']['AP']:.1f}" in cells and f"{ap['bbox']['AP90']:.1f}" in cells, m["name"]


def test_a_release_keeps_the_class_names_of_its_run_and_the_zoo_gives_them_back(run_dir, tmp_path, monkeypatch,
                                                                                capsys):
    run, model = run_dir
    releases = tmp_path / "releases"
    publish = load_tool("publish_model")
    monkeypatch.setenv("DYNAMIC_RCNN_RELEASES", str(releases))
    # A checkpoint of a run before class names were kept: the release has none, and says so.
    assert publish.main([str(run), "--name", "older", "--out", str(releases)]) == 0
    assert (f"note: {run / 'model_final.pth'} holds no class names (a checkpoint of an earlier version, or not saved "
            "by the project's trainers): the release has none, and demo.py draws those of the config's "
            "DATASETS.TEST[0]\n") in capsys.readouterr().out
    assert json.loads((releases / "older.metrics.json").read_text())["thing_classes"] is None
    assert model_zoo.get_thing_classes("older") is None

    # The project's trainers save them in every checkpoint (AtomicCheckpointer): the release and the zoo keep them.
    DetectionCheckpointer(model, save_dir=str(run)).save("model_final", thing_classes=["red", "green", "blue"])
    assert publish.main([str(run), "--name", "tiny_model", "--out", str(releases)]) == 0
    metrics = json.loads((releases / "tiny_model.metrics.json").read_text())
    assert metrics["thing_classes"] == ["red", "green", "blue"]
    data = torch.load(str(releases / metrics["checkpoint"]), weights_only=False)
    assert set(data) == {"model", "cfg", "thing_classes", "__author__"}
    assert data["thing_classes"] == metrics["thing_classes"]
    assert model_zoo.get_thing_classes("tiny_model") == ["red", "green", "blue"]
