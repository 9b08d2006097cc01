"""dynamic_rcnn.checkpoint: failures that name the file, what is wrong and how to fix it."""
import logging
import os
import shutil

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from dynamic_rcnn.engine.checkpoint import CheckpointError, load_checkpoint, load_model_weights

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


def test_resume_into_another_architecture_is_refused_naming_the_checkpoint_and_the_parameters(tmp_path):
    # A run of 7 classes left in OUTPUT_DIR, resumed with the config's 3: fvcore would skip the head's
    # weights, then the optimizer's state of other shapes would crash the first step.
    DetectionCheckpointer(build_model(tiny_cfg("MODEL.ROI_HEADS.NUM_CLASSES", 7)), save_dir=str(tmp_path)).save(
        "model_0000004")
    checkpoint, tag = tmp_path / "model_0000004.pth", tmp_path / "last_checkpoint"
    model = build_model(tiny_cfg())
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(DetectionCheckpointer(model, save_dir=str(tmp_path)), "", resume=True)
    assert str(e.value) == (
        f"Cannot resume from {checkpoint}: --resume goes on from this checkpoint ({tag} names it), but its weights "
        "do not fit the model (another architecture or number of classes?): parameters of another shape (4): "
        "roi_heads.box_predictor.cls_score.weight (checkpoint (8, 32), model (4, 32)), "
        "roi_heads.box_predictor.cls_score.bias (checkpoint (8,), model (4,)), "
        "roi_heads.box_predictor.bbox_pred.weight (checkpoint (28, 32), model (12, 32)), "
        "roi_heads.box_predictor.bbox_pred.bias (checkpoint (28,), model (12,)). Resume with the config it was "
        f"trained with, or start in another OUTPUT_DIR (MODEL.WEIGHTS {checkpoint} fine-tunes from it)")
    # The same file as MODEL.WEIGHTS, to fine-tune from: detectron2's lenient load, the head left as built.
    head = model.roi_heads.box_predictor.cls_score.weight.detach().clone()
    load_checkpoint(DetectionCheckpointer(model, save_dir=str(tmp_path / "new")), str(checkpoint), resume=False)
    assert torch.equal(model.roi_heads.box_predictor.cls_score.weight, head)


def test_a_checkpoint_is_saved_whole_or_not_at_all(saved, tmp_path, monkeypatch):
    import errno

    from dynamic_rcnn.engine.checkpoint import AtomicCheckpointer

    model, _ = saved
    checkpointer = AtomicCheckpointer(model, save_dir=str(tmp_path))
    checkpointer.save("model_0000004", iteration=4)
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000004.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000004.pth"
    assert torch.load(str(tmp_path / "model_0000004.pth"), weights_only=False)["iteration"] == 4

    def full_disk(data, f, **kwargs):
        f.write(b"PK\x03\x04 the first part of a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError) as e:
        checkpointer.save("model_0000009")
    assert str(e.value) == (
        f"Cannot save {tmp_path / 'model_0000009.pth'}: [Errno 28] No space left on device. Nothing was written "
        f"under its name: make room in {tmp_path} (or give another OUTPUT_DIR), then go on with --resume from "
        "the last checkpoint written")
    # No cut file under any name; the last checkpoint is still the one --resume finds.
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000004.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000004.pth"


def test_resume_says_a_cut_save_left_in_the_output_dir_is_not_used(saved, tmp_path):
    from conftest import logged_warnings

    model, good = saved
    shutil.copy(good, tmp_path / "model_0000004.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000004.pth")
    (tmp_path / "model_0000009.pth.tmp").write_bytes(b"PK\x03\x04 cut off by SIGKILL")
    with logged_warnings("detectron2.dynamic_rcnn.engine.checkpoint") as messages:
        load_checkpoint(DetectionCheckpointer(model, save_dir=str(tmp_path)), "", resume=True)
    assert messages == [
        f"{tmp_path / 'model_0000009.pth.tmp'}: a checkpoint whose save was cut off (the run was stopped while "
        f"writing it), not used: the run goes on from {tmp_path / 'model_0000004.pth'}, which "
        f"{tmp_path / 'last_checkpoint'} names. Delete it to free the space"]


def test_the_trainer_saves_with_the_atomic_checkpointer(tmp_path):
    from detectron2.engine import hooks

    from dynamic_rcnn.engine import Trainer
    from dynamic_rcnn.engine.checkpoint import AtomicCheckpointer

    trainer = Trainer(tiny_cfg("OUTPUT_DIR", str(tmp_path)))
    assert type(trainer.checkpointer) is AtomicCheckpointer
    assert [h.checkpointer for h in trainer._hooks if isinstance(h, hooks.PeriodicCheckpointer)] == [
        trainer.checkpointer]
    # It saves what detectron2's would: the trainer's state (iteration, optimizer, scheduler, hooks).
    assert list(trainer.checkpointer.checkpointables) == ["trainer"]
    assert trainer.checkpointer.model is trainer.model and trainer.checkpointer.save_dir == str(tmp_path)


def test_a_full_disk_at_the_final_save_ends_in_its_error_without_an_evaluation(tmp_path, monkeypatch):
    # detectron2's EvalHook evaluates after a failure at the last iteration; an evaluation on that
    # full disk would replace the checkpoint's one-line error with its own traceback.
    from dynamic_rcnn.engine import Trainer
    from dynamic_rcnn.engine.checkpoint import CheckpointError

    trainer = Trainer(tiny_cfg("OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", 2))
    evaluated = []
    monkeypatch.setattr(Trainer, "test", classmethod(lambda cls, cfg, model, evaluators=None: evaluated.append(1)))

    def full_disk(data, f, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="Cannot save .*model_final.pth: .*No space left on device"):
        trainer.train()
    assert evaluated == [] and not (tmp_path / "model_final.pth").exists()


def test_a_finished_training_still_ends_in_its_evaluation(tmp_path, monkeypatch):
    from dynamic_rcnn.engine import Trainer

    trainer = Trainer(tiny_cfg("OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER", 2))
    evaluated = []
    monkeypatch.setattr(Trainer, "test", classmethod(lambda cls, cfg, model, evaluators=None: evaluated.append(1) or {}))
    trainer.train()
    assert evaluated == [1] and (tmp_path / "model_final.pth").exists()


def test_every_checkpoint_of_a_run_keeps_the_class_names_of_its_training_set(tmp_path):
    # demo.py and a release draw a run's detections with these names, whatever the config's test set says.
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from dynamic_rcnn.engine import Trainer
    from dynamic_rcnn.engine.checkpoint import AtomicCheckpointer

    if "rgb_tiny_train" not in DatasetCatalog:
        DatasetCatalog.register("rgb_tiny_train", lambda: DatasetCatalog.get("shapes_tiny_train"))
        MetadataCatalog.get("rgb_tiny_train").set(thing_classes=["red", "green", "blue"])
    trainer = Trainer(tiny_cfg("OUTPUT_DIR", str(tmp_path), "DATASETS.TRAIN", ("rgb_tiny_train",)))
    trainer.checkpointer.save("model_0000004", iteration=4)
    saved = torch.load(str(tmp_path / "model_0000004.pth"), weights_only=False)
    assert saved["thing_classes"] == ["red", "green", "blue"] and saved["iteration"] == 4
    # Given to the checkpointer (lazy_train_net.py); a checkpointer given none saves none.
    model = trainer.model
    os.makedirs(tmp_path / "a")
    os.makedirs(tmp_path / "b")
    AtomicCheckpointer(model, str(tmp_path / "a"), thing_classes=("x", "y", "z")).save("m")
    assert torch.load(str(tmp_path / "a" / "m.pth"), weights_only=False)["thing_classes"] == ["x", "y", "z"]
    AtomicCheckpointer(model, str(tmp_path / "b")).save("m")
    assert "thing_classes" not in torch.load(str(tmp_path / "b" / "m.pth"), weights_only=False)
