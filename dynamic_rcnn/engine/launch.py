"""What the project's scripts (train_net.py, lazy_train_net.py, demo.py) share: the command-line check,
the start-up check of the output folder, and detectron2's ``launch`` with the project's errors, and a
failed process of several, printed as one line."""
import logging
import os
import sys
from typing import Callable, Optional

from detectron2.engine import launch
from detectron2.utils import comm
from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

from ..config import ConfigError
from ..data import DatasetError
from .checkpoint import CheckpointError

__all__ = ["check_overrides", "check_output_dir", "launch_checked"]

logger = logging.getLogger("detectron2." + __name__)


def check_overrides(parser, args):
    """
    The config overrides (``KEY VALUE ...`` or ``key=value ...``, ``args.opts``) take the rest of the
    command line, so an option written after them, e.g. ``--resume``, would land there and fail in
    detectron2 as "Override list has odd length" or "Non-existent key: --resume". No config key
    starts with ``--``: refuse such an item with an argparse error (usage, one ``error:`` line, exit 2).
    """
    for item in args.opts:
        if item.startswith("--"):
            parser.error(f"option {item} is written after the config overrides (KEY VALUE ...), which take "
                         f"the rest of the command line: move it (with its value, if it takes one) before "
                         f"the first override, {args.opts[0]}")


def check_output_dir(path: str, key: str) -> None:
    """
    The output folder ``path`` (the config's ``key``) exists as a folder this user can write in, or
    can be created: else raise NotADirectoryError / PermissionError naming it and what is in the way.
    Nothing is created: a run refused later at start-up leaves nothing behind.
    """
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    verb = "written" if existing == os.path.abspath(path) else "created"
    if not os.path.isdir(existing):
        raise NotADirectoryError(f"{key} {path} cannot be {verb}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{key} {path} cannot be {verb}: this user cannot write in {existing} (its "
                              "permissions, or a read-only file system)")


def _main_logging_failure(main: Callable, args):
    # In a process of several, torch hands the parent only the error's text: its traceback goes to
    # the process's own log (detectron2's log.txt, log.txt.rankK), which the parent's line names.
    try:
        return main(args)
    except Exception:
        if comm.get_world_size() > 1:
            logger.exception("Process of rank %d failed:", comm.get_rank())
        raise


def _own_message(e: Exception) -> str:
    # One raised in a DataLoader worker comes back as "Caught X in DataLoader worker ... Original
    # Traceback ...", whose last line is "module.X: <its own message>".
    text = str(e)
    if not text.startswith("Caught "):
        return text
    return text.strip().splitlines()[-1].removeprefix(f"{type(e).__module__}.{type(e).__name__}: ")


def _log_file(output_dir: Optional[str], rank: int) -> str:
    """Where detectron2's ``setup_logger`` writes the log of process ``rank``."""
    name = "log.txt" + (f".rank{rank}" if rank else "")
    return os.path.join(output_dir, name) if output_dir else name


def launch_checked(main: Callable, args, checked_config: Callable, output_dir: Optional[Callable] = None) -> None:
    """
    ``checked_config(args)`` (a script's start-up checks) in this process, then detectron2's
    ``launch(main, ...)`` with the parallelism of ``args``. A problem those checks find ends the run
    here, before launch starts one process per GPU, as one ``error: ...`` line; so does a bad
    Dynamic R-CNN value, checkpoint or training set found later in a single process. Their
    messages say what is wrong, where and how to fix it: a traceback would add nothing. A process
    of several that fails ends the run as one line too: which process, the last line of its error,
    and its log (``output_dir(checked_config(args))``, the run's output folder), which holds the
    traceback.
    """
    try:
        checked = checked_config(args)
    except (ValueError, KeyError, OSError) as e:
        sys.exit(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}")
    try:
        launch(
            _main_logging_failure,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(main, args),
        )
    except (CheckpointError, ConfigError, DatasetError) as e:
        sys.exit(f"error: {_own_message(e)}")
    except (ProcessRaisedException, ProcessExitedException) as e:
        rank = args.machine_rank * args.num_gpus + e.error_index
        log = _log_file(output_dir(checked) if output_dir else None, rank)
        which = f"process {e.error_index} (rank {rank})"
        if isinstance(e, ProcessRaisedException):
            sys.exit(f"error: {which} failed: {e.msg.strip().splitlines()[-1]}; the traceback is in {log}")
        how = f"was killed by {e.signal_name} (out of memory?)" if e.signal_name else f"exited with code {e.exit_code}"
        sys.exit(f"error: {which} {how}; its log is {log}")
