"""dynamic_rcnn.checkpoint: failures that name the file, what is wrong and how to fix it."""
import logging
import os
import shutil

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from dynamic_rcnn.checkpoint import CheckpointError, load_checkpoint, load_model_weights

from conftest import save_tiny_checkpoint, tiny_cfg


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny model and the checkpoint it was saved to."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("saved"))


@pytest.mark.parametrize("kind, said", [
    ("random", "the file is corrupt or not a checkpoint: it is neither a zip archive (torch.save) nor a "
               "pickle"),
    ("truncated", "the file is a truncated or damaged zip archive"),
    ("empty", "the file is empty (0 bytes)"),
])
def test_an_unreadable_file_is_described_without_torchs_weights_only_advice(saved, tmp_path, kind, said):
    model, good = saved
    bad = tmp_path / "bad.pth"
    content = open(good, "rb").read()
    contents = {"random": os.urandom(3000), "truncated": content[: len(content) // 2], "empty": b""}
    bad.write_bytes(contents[kind])
    for load in (lambda: load_model_weights(model, str(bad)),
                 lambda: load_checkpoint(DetectionCheckpointer(model), str(bad), resume=False)):
        with pytest.raises(CheckpointError) as e:
            load()
        message = str(e.value)
        assert message.startswith(f"Cannot load the checkpoint {bad}: {said}")
        assert "Check the path given to MODEL.WEIGHTS" in message
        assert "weights_only" not in message


@pytest.mark.parametrize("tag, holds", [
    ("", "it is empty"),
    ("model_0000099.pth", "it names model_0000099.pth, which does not exist"),
])
def test_resume_with_an_empty_or_dangling_last_checkpoint_names_it_and_the_checkpoints(
        saved, tmp_path, tag, holds):
    model, good = saved
    for name in ("model_0000004.pth", "model_final.pth"):
        shutil.copy(good, tmp_path / name)
    (tmp_path / "last_checkpoint").write_text(tag)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(DetectionCheckpointer(model, save_dir=str(tmp_path)), "w.pth", resume=True)
    tag_file = tmp_path / "last_checkpoint"
    assert str(e.value) == (
        f"Cannot resume from {tag_file}: --resume goes on from the checkpoint this file names, but {holds}; "
        f"the checkpoints in {tmp_path} are model_0000004.pth, model_final.pth. To fix: write one of their "
        f"names into it (e.g. echo model_final.pth > {tag_file}) to resume from it, or delete it to start "
        "from MODEL.WEIGHTS (w.pth)."
    )
    assert "not found" not in str(e.value)


def test_resume_with_an_empty_last_checkpoint_and_no_checkpoint_says_to_delete_it(saved, tmp_path):
    model, _ = saved
    (tmp_path / "last_checkpoint").write_text("\n")
    with pytest.raises(CheckpointError, match=f"there is no checkpoint \\(\\*.pth\\) in {tmp_path}. To fix: "
                                              "delete it to start from MODEL.WEIGHTS \\(empty"):
        load_checkpoint(DetectionCheckpointer(model, save_dir=str(tmp_path)), "", resume=True)


def test_strict_load_of_fitting_weights_loads_them(saved):
    model, good = saved
    other = build_model(tiny_cfg())
    load_model_weights(other, good)
    for (name, want), got in zip(model.state_dict().items(), other.state_dict().values()):
        assert torch.equal(want, got), name


def test_strict_load_lists_parameters_of_another_shape_first_ten_and_the_count(saved):
    _, good = saved
    other = build_model(tiny_cfg("MODEL.FPN.OUT_CHANNELS", 8))  # every FPN, RPN and box-head input
    with pytest.raises(CheckpointError) as e:
        load_model_weights(other, good)
    message = str(e.value)
    assert message.startswith(f"Cannot load the checkpoint {good}: the weights do not fit the model")
    assert "backbone.fpn_lateral2.weight (checkpoint (16, 64, 1, 1), model (8, 64, 1, 1))" in message
    shapes = message.split("parameters of another shape (")[1]
    count = int(shapes.split(")")[0])
    assert count > 10 and f"(and {count - 10} more)" in shapes
    assert "missing from the checkpoint" not in message  # a mismatch is not also called missing


def test_strict_load_lists_parameters_missing_from_the_checkpoint(saved):
    _, good = saved
    with pytest.raises(CheckpointError, match="parameters of the model missing from the checkpoint \\(6\\): "
                                              "roi_heads.mask_head.deconv.bias, roi_heads.mask_head.deconv"):
        load_model_weights(build_model(tiny_cfg("MODEL.MASK_ON", True)), good)


def test_strict_load_only_warns_about_keys_the_model_lacks(saved, tmp_path, caplog):
    model, _ = saved
    path = tmp_path / "extra.pth"
    torch.save({"model": {**model.state_dict(), "extra_buffer": torch.zeros(3)}}, str(path))
    other = build_model(tiny_cfg())
    with caplog.at_level(logging.WARNING):
        load_model_weights(other, str(path))
    assert "extra_buffer" in caplog.text
    assert torch.equal(other.state_dict()["roi_heads.box_predictor.cls_score.weight"],
                       model.state_dict()["roi_heads.box_predictor.cls_score.weight"])
