"""What the project's scripts (train_net.py, lazy_train_net.py, demo.py) share: the command-line check,
and detectron2's ``launch`` with the project's errors printed as one line."""
import sys
from typing import Callable

from detectron2.engine import launch

from .checkpoint import CheckpointError
from .config import ConfigError

__all__ = ["check_overrides", "launch_checked"]


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


def launch_checked(main: Callable, args, checked_config: Callable) -> None:
    """
    ``checked_config(args)`` (a script's start-up checks) in this process, then detectron2's
    ``launch(main, ...)`` with the parallelism of ``args``. A problem those checks find ends the run
    here, before launch starts one process per GPU, as one ``error: ...`` line; so does a bad
    Dynamic R-CNN value or checkpoint found later in a single process. Their messages say what is
    wrong, where and how to fix it: a traceback would add nothing.
    """
    try:
        checked_config(args)
    except (ValueError, KeyError, FileNotFoundError) as e:
        sys.exit(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}")
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except (CheckpointError, ConfigError) as e:
        sys.exit(f"error: {e}")
