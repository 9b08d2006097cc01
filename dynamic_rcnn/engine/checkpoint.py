"""
Loading checkpoints with failures that say what is wrong, with which file, and how to fix it, and
saving them so that a save cut short never leaves a cut file under a checkpoint's name.

detectron2's ``DetectionCheckpointer`` does the loading; this module only looks at what went
wrong: a corrupt file, an empty or dangling ``OUTPUT_DIR/last_checkpoint``, a resume into a model
of another architecture, or (for a strict load, :func:`load_model_weights`) weights that do not fit
the model, which detectron2 only logs.
"""
import contextlib
import logging
import os
import zipfile
from typing import Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer

try:
    # fvcore's own filter of the "missing" names that are aliases of loaded parameters (weights
    # shared under two names): the strict load must not call such a parameter missing either.
    from fvcore.common.checkpoint import _filter_reused_missing_keys
except ImportError:  # a private name: without it, no model of this project shares weights
    def _filter_reused_missing_keys(model, keys):
        return keys

__all__ = [
    "AtomicCheckpointer",
    "CheckpointError",
    "checkpoint_to_load",
    "dataset_classes",
    "describe_unreadable",
    "load_checkpoint",
    "load_model_weights",
]

logger = logging.getLogger("detectron2." + __name__)

LAST_CHECKPOINT = "last_checkpoint"  # the tag file fvcore's Checkpointer keeps in OUTPUT_DIR
MAX_LISTED = 10  # names listed in an error; the rest are counted
WEIGHTS_HINT = "Check the path given to MODEL.WEIGHTS, or copy the file again if it was cut short."


class CheckpointError(RuntimeError):
    """
    A checkpoint that cannot be used. ``path`` is the file at fault and ``reason`` says what is
    wrong with it and how to fix it; the message is ``"{prefix} {path}: {reason}"``.
    """

    def __init__(self, path: str, reason: str, prefix: str = "Cannot load the checkpoint"):
        super().__init__(f"{prefix} {path}: {reason}")
        self.path = path
        self.reason = reason


def _listed(names) -> str:
    """The first MAX_LISTED of ``names``, comma-separated, and how many more there are."""
    names = list(names)
    more = len(names) - MAX_LISTED
    return ", ".join(names[:MAX_LISTED]) + (f" (and {more} more)" if more > 0 else "")


def _shape(name: str, checkpoint_shape, model_shape) -> str:
    return f"{name} (checkpoint {tuple(checkpoint_shape)}, model {tuple(model_shape)})"


def _another_shape(shapes) -> str:
    return f"parameters of another shape ({len(shapes)}): {_listed(shapes)}"


def describe_unreadable(path: str, error: BaseException) -> Optional[str]:
    """
    What is wrong with the file ``path`` that ``torch.load`` (or ``pickle.load``) failed on with
    ``error``, read from its first bytes: missing, empty, a truncated zip archive, a truncated
    pickle, or neither a zip archive nor a pickle. ``None`` when the file looks like a sound
    checkpoint, so that the loader's own message is the one to show.

    torch's message for a file that is no pickle at all advises re-running with
    ``weights_only=False``, which cannot help a corrupt file: this replaces it.
    """
    if not os.path.isfile(path):
        return "the file does not exist"
    size = os.path.getsize(path)
    if size == 0:
        return "the file is empty (0 bytes): an interrupted save or copy?"
    with open(path, "rb") as f:
        head = f.read(4)
    if head == b"PK\x03\x04":  # torch.save's format since PyTorch 1.6: a zip archive
        if not zipfile.is_zipfile(path):
            return (
                f"the file is a truncated or damaged zip archive ({size} bytes; the archive's directory "
                "at its end is missing): an interrupted save or copy?"
            )
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            bad = str(e)
        if bad is not None:
            return f"the file is a damaged zip archive (its member {bad} is corrupt)"
        return None
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:  # a pickle (legacy torch.save, .pkl)
        if isinstance(error, EOFError) or "truncated" in str(error):
            return f"the file is a truncated pickle ({size} bytes): an interrupted save or copy?"
        return None
    return (
        f"the file is corrupt or not a checkpoint: it is neither a zip archive (torch.save) nor a pickle "
        f"({size} bytes, beginning with {head!r})"
    )


def _load_failure(path: str, error: BaseException, hint: str) -> CheckpointError:
    reason = describe_unreadable(path, error) if "://" not in path else None
    if reason is None:
        reason = f"{type(error).__name__}: {error}".rstrip(": ")
    return CheckpointError(path, f"{reason}. {hint}")


def _checkpoint_files(folder: str):
    """The names of the checkpoints (*.pth) in ``folder``, sorted (model_final.pth last)."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(f for f in names if f.endswith(".pth") and os.path.isfile(os.path.join(folder, f)))


def checkpoint_to_load(checkpointer: DetectionCheckpointer, weights: str, resume: bool) -> str:
    """
    The file ``checkpointer.resume_or_load(weights, resume=resume)`` loads: with ``resume`` and an
    ``OUTPUT_DIR/last_checkpoint`` file, the checkpoint that file names; otherwise ``weights``
    (possibly ``""``: nothing to load).

    Raises :class:`CheckpointError` when ``last_checkpoint`` is empty or names a file that does
    not exist (fvcore would fail with "Checkpoint OUTPUT_DIR/ not found!"): the message names the
    tag file, what it holds, the checkpoints (*.pth) beside it, and how to fix it.
    """
    if not (resume and checkpointer.has_checkpoint()):
        return weights
    path = checkpointer.get_checkpoint_file()
    name = os.path.basename(path)
    if name and os.path.isfile(path):
        return path
    tag = os.path.join(checkpointer.save_dir, LAST_CHECKPOINT)
    found = _checkpoint_files(checkpointer.save_dir)
    holds = f"it names {name}, which does not exist" if name else "it is empty"
    if found:
        there = f"the checkpoints in {checkpointer.save_dir} are {_listed(found)}"
        fix = (f"write one of their names into it (e.g. echo {found[-1]} > {tag}) to resume from it, "
               "or delete it")
    else:
        there = f"there is no checkpoint (*.pth) in {checkpointer.save_dir}"
        fix = "delete it"
    start = f"MODEL.WEIGHTS ({weights})" if weights else "MODEL.WEIGHTS (empty: a randomly initialized model)"
    raise CheckpointError(
        tag,
        f"--resume goes on from the checkpoint this file names, but {holds}; {there}. "
        f"To fix: {fix} to start from {start}.",
        prefix="Cannot resume from",
    )


def _peek(path: str) -> dict:
    """The checkpoint ``path`` read without loading its tensors (mmap); {} when it cannot be read so (its loading
    then says what is wrong with it)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception:
        return {}
    return checkpoint if isinstance(checkpoint, dict) else {}


def _shapes_differing(model, checkpoint: dict):
    """The parameters of ``checkpoint`` whose shape differs from ``model``'s, as ``_shape`` lists them."""
    weights = checkpoint.get("model")
    ours = model.state_dict()
    return [
        _shape(k, v.shape, ours[k].shape)
        for k, v in (weights.items() if isinstance(weights, dict) else ())
        if k in ours and hasattr(v, "shape") and tuple(v.shape) != tuple(ours[k].shape)
    ]


def load_checkpoint(checkpointer: DetectionCheckpointer, weights: str, resume: bool):
    """
    ``checkpointer.resume_or_load(weights, resume=resume)`` (detectron2's loading: missing and
    mismatched parameters are only logged), with failures that name the file: a missing, empty,
    truncated or foreign checkpoint, or an empty or dangling ``last_checkpoint`` with ``resume``,
    raises :class:`CheckpointError` (a ``RuntimeError``). So does a resume from the checkpoint
    ``last_checkpoint`` names whose parameters have other shapes than the model's (another
    architecture or number of classes: its optimizer state would crash the first step), listing
    them; loading ``weights`` to fine-tune stays lenient. With ``resume``, a ``*.pth.tmp`` left in
    the folder (a save cut off) is named in a warning. Returns what ``resume_or_load`` returns.
    """
    path = checkpoint_to_load(checkpointer, weights, resume)
    tag = os.path.join(checkpointer.save_dir, LAST_CHECKPOINT)
    resuming = resume and checkpointer.has_checkpoint()
    if resume and os.path.isdir(checkpointer.save_dir):
        goes_on = f"{path}, which {tag} names" if resuming else f"MODEL.WEIGHTS ({weights or 'empty'})"
        for name in sorted(n for n in os.listdir(checkpointer.save_dir) if n.endswith(".pth.tmp")):
            logger.warning("%s: a checkpoint whose save was cut off (the run was stopped while writing it), not "
                           "used: the run goes on from %s. Delete it to free the space",
                           os.path.join(checkpointer.save_dir, name), goes_on)
    if resuming:
        checkpoint = _peek(path)
        shapes = _shapes_differing(checkpointer.model, checkpoint)
        if shapes:
            raise CheckpointError(
                path,
                f"--resume goes on from this checkpoint ({tag} names it), but its weights do not fit the model "
                f"(another architecture or number of classes?): {_another_shape(shapes)}. Resume with the config "
                f"it was trained with, or start in another OUTPUT_DIR (MODEL.WEIGHTS {path} fine-tunes from it)",
                prefix="Cannot resume from",
            )
        trainer = checkpointer.checkpointables.get("trainer")
        if any(type(h).__name__ == "DynamicRCNNHook" for h in getattr(trainer, "_hooks", ())) and checkpoint and \
                "DynamicRCNNHook" not in checkpoint.get("trainer", {}).get("hooks", {}):
            logger.warning("%s has no Dynamic R-CNN state (a baseline run, or one without the hook): Dynamic R-CNN "
                           "starts from the warm-up values at iteration %s.", path, checkpoint.get("iteration", -1) + 1)
    try:
        return checkpointer.resume_or_load(weights, resume=resume)
    except Exception as e:
        if path != weights:
            hint = (f"The file is named by {tag} (--resume): write another checkpoint's name there, "
                    "or delete it to start from MODEL.WEIGHTS.")
        else:
            hint = WEIGHTS_HINT
        raise _load_failure(path, e, hint) from e


def dataset_classes(names) -> Optional[list]:
    """The class names (``thing_classes``) of the first of the datasets ``names``, which detectron2 requires all
    training sets to share; None when it has none."""
    from detectron2.data import MetadataCatalog

    classes = MetadataCatalog.get(names[0]).get("thing_classes") if len(names) else None
    return list(classes) if classes else None


class AtomicCheckpointer(DetectionCheckpointer):
    """
    ``DetectionCheckpointer`` whose saves never leave a cut file under a checkpoint's name (a run
    killed or out of disk space while saving): ``save`` writes ``NAME.pth.tmp``, then renames it to
    ``NAME.pth`` (``os.replace``: atomic), and ``last_checkpoint`` likewise; a failed save removes
    its temporary, and an OSError (a full disk) raises :class:`CheckpointError` naming the file and
    the cause. Built with ``DetectionCheckpointer``'s arguments; remote folders (``://``) are saved
    by detectron2's own code. ``thing_classes``, the class names of the training set
    (:func:`dataset_classes`), are saved in every checkpoint, for the tools that draw or report the
    model's classes (demo.py, a release).
    """

    def __init__(self, model, save_dir: str = "", *, thing_classes=None, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.thing_classes = list(thing_classes) if thing_classes else None

    def save(self, name: str, **kwargs) -> None:
        if self.thing_classes:
            kwargs.setdefault("thing_classes", self.thing_classes)
        if not self.save_dir or not self.save_to_disk or "://" in self.save_dir:
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        data.update({key: obj.state_dict() for key, obj in self.checkpointables.items()})
        data.update(kwargs)
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info("Saving checkpoint to %s", path)
        self._write(path, "wb", lambda f: torch.save(data, f))
        self.tag_last_checkpoint(os.path.basename(path))

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if "://" in self.save_dir:
            return super().tag_last_checkpoint(last_filename_basename)
        self._write(os.path.join(self.save_dir, LAST_CHECKPOINT), "w", lambda f: f.write(last_filename_basename))

    def _write(self, path: str, mode: str, write) -> None:
        tmp = f"{path}.tmp"
        try:
            with open(tmp, mode) as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())  # on disk before the rename: a power cut leaves no empty file either
            os.replace(tmp, path)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            if not isinstance(e, OSError):
                raise
            raise CheckpointError(
                path,
                f"{e}. Nothing was written under its name: make room in {self.save_dir} (or give another "
                "OUTPUT_DIR), then go on with --resume from the last checkpoint written",
                prefix="Cannot save",
            ) from e


class _RecordingCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` that keeps what ``_load_model`` found incompatible instead of
    logging it (detectron2 only logs it): the strict load raises with the list, or logs it."""

    incompatible = None

    def _log_incompatible_keys(self, incompatible):
        self.incompatible = incompatible

    def log_incompatible_keys(self):
        if self.incompatible is not None:
            super()._log_incompatible_keys(self.incompatible)


def load_model_weights(model, path: str):
    """
    Load the weights of the checkpoint ``path`` into ``model`` with detectron2's
    ``DetectionCheckpointer``, strictly: raises :class:`CheckpointError` naming the file when it
    cannot be read (see :func:`describe_unreadable`) or when a parameter of the model is not loaded,
    for a shape mismatch (weights of another architecture or number of classes) or because the
    checkpoint lacks it; the error lists the first names and counts them. An empty ``path`` is an
    error too (nothing would be loaded). Parameters of the checkpoint that the model lacks (e.g.
    extra buffers) stay a logged warning. Only the model is loaded; returns the checkpoint's other
    data (``iteration``, ...), as ``load`` does.

    For weights that are meant to fit the model exactly (evaluation, inference); training from an
    ImageNet backbone has heads missing by design and uses :func:`load_checkpoint`.
    """
    if not path:
        raise CheckpointError(
            "MODEL.WEIGHTS",
            "it is empty: add MODEL.WEIGHTS path/to/model_final.pth to the command",
            prefix="Cannot load",
        )
    checkpointer = _RecordingCheckpointer(model)
    try:
        extra = checkpointer.load(path, checkpointables=[])
    except Exception as e:
        raise _load_failure(path, e, WEIGHTS_HINT) from e
    incompatible = checkpointer.incompatible
    if incompatible is None:  # fvcore logs nothing when _load_model reports nothing: nothing to check
        return extra
    shapes = [_shape(k, c, m) for k, c, m in incompatible.incorrect_shapes]
    # fvcore drops a mismatched parameter from the checkpoint, so it comes back as missing too.
    mismatched = {k for k, _, _ in incompatible.incorrect_shapes}
    missing = _filter_reused_missing_keys(model, list(incompatible.missing_keys))
    missing = sorted(k for k in missing if k not in mismatched)
    problems = []
    if shapes:
        problems.append(_another_shape(shapes))
    if missing:
        problems.append(
            f"parameters of the model missing from the checkpoint ({len(missing)}): {_listed(missing)}"
        )
    if problems:
        raise CheckpointError(
            path,
            "the weights do not fit the model (another architecture or number of classes?): "
            + "; ".join(problems)
            + ". Use weights trained with this config, or the config they were trained with.",
        )
    checkpointer.log_incompatible_keys()  # what is left: keys of the checkpoint the model lacks
    return extra
