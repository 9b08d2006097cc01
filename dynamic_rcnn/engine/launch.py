"""What the project's scripts (train_net.py, lazy_train_net.py, demo.py) share: the command-line check,
the start-up check of the output folder, the claim of a training's folder (no second training over a
finished or running one), and detectron2's ``launch`` with the project's errors, a failed process of
several, a taken ``--dist-url`` and Ctrl-C printed as one line."""
import contextlib
import errno
import fcntl
import logging
import multiprocessing
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import time
from typing import Callable, Optional

from detectron2.engine import TrainerBase, launch
from detectron2.utils import comm
from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

from ..config import ConfigError
from ..data import DatasetError
from .checkpoint import LAST_CHECKPOINT, CheckpointError

__all__ = ["add_restart_option", "check_dist_url", "check_overrides", "check_output_dir", "claim_output_dir",
           "launch_checked"]

logger = logging.getLogger("detectron2." + __name__)

LOCK = ".training.lock"  # held (fcntl.flock) by the launching process of the training in its folder
# What makes a folder a run's (a started or finished training), and what --restart moves aside.
RUN = re.compile(r"(model_(final|\d{7})\.pth|last_checkpoint|metrics\.json)$")
RUN_OUTPUTS = re.compile(r"(model_(final|\d{7})\.pth(\.tmp)?|last_checkpoint|metrics\.json|config\.yaml|"
                         r"log\.txt(\.rank\d+)?|events\.out\.tfevents\..*|inference(_TTA)?|run_summary\.json)$")
INTERRUPTED = 130  # the exit status of a command stopped by Ctrl-C (128 + SIGINT)


def add_restart_option(parser):
    """The scripts' ``--restart``: train over an earlier run of OUTPUT_DIR, its files moved aside."""
    parser.add_argument("--restart", action="store_true",
                        help="train into an OUTPUT_DIR that holds an earlier run: its files (checkpoints, "
                             "metrics.json, log, config) are moved into OUTPUT_DIR/earlier_run_N first")
    return parser


def check_overrides(parser, args):
    """
    The config overrides (``KEY VALUE ...`` or ``key=value ...``, ``args.opts``) take the rest of the
    command line, so an option written after them, e.g. ``--resume``, would land there and fail in
    detectron2 as "Override list has odd length" or "Non-existent key: --resume". No config key
    starts with ``--``: refuse such an item with an argparse error (usage, one ``error:`` line, exit 2);
    so is ``--restart`` with ``--resume`` or ``--eval-only``, which it contradicts.
    """
    for item in args.opts:
        if item.startswith("--"):
            parser.error(f"option {item} is written after the config overrides (KEY VALUE ...), which take "
                         f"the rest of the command line: move it (with its value, if it takes one) before "
                         f"the first override, {args.opts[0]}")
    for other, what in (("resume", "goes on from the last checkpoint"), ("eval_only", "trains nothing")):
        if getattr(args, "restart", False) and getattr(args, other, False):
            parser.error(f"--restart starts the training over: it has no use with --{other.replace('_', '-')} "
                         f"(which {what})")


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


def _listed(names, most: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:most]) + (f" (and {len(names) - most} more)" if len(names) > most else "")


def _earlier_run_dir(path: str) -> str:
    n = 1
    while os.path.exists(os.path.join(path, f"earlier_run_{n}")):
        n += 1
    return os.path.join(path, f"earlier_run_{n}")


@contextlib.contextmanager
def claim_output_dir(path: str, key: str, resume: bool, restart: bool):
    """
    Hold the output folder ``path`` (the config's ``key``) of a training while the block runs: an
    exclusive ``fcntl.flock`` on ``path/.training.lock``, released however the run ends (a killed
    process's goes with it: a file left behind blocks nothing). Refused, before anything is written:
    a folder another training holds (BlockingIOError), and one that holds a run's checkpoints or
    ``metrics.json`` (FileExistsError) unless ``resume`` (go on from it) or ``restart``, which first
    moves that run's files (checkpoints, ``metrics.json``, ``config.yaml``, logs, ``inference/``,
    ``run_summary.json``) into ``path/earlier_run_N``, and says so. Other files stay where they are.
    detectron2 itself checks none of this: its second run replaces ``model_final.pth`` and appends to
    ``metrics.json``, and two runs at once mix their files.
    """
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, LOCK), "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise BlockingIOError(
                f"{key} {path} is in use by another training ({lock.read().strip() or 'a running process'}): two "
                f"runs in one folder mix their checkpoints, config and metrics. Give another {key}, or wait until "
                "that run ends") from None
        found = [name for name in os.listdir(path) if RUN.match(name)]
        if found and not resume:
            earlier = _earlier_run_dir(path)
            if not restart:
                raise FileExistsError(
                    f"{key} {path} holds a training run ({_listed(found)}): a training into it would replace its "
                    f"checkpoints and add to its metrics.json. Go on from its last checkpoint with --resume, give "
                    f"another {key}, or start over with --restart (it moves the run's files into {earlier})")
            moved = sorted(name for name in os.listdir(path) if RUN_OUTPUTS.match(name))
            os.makedirs(earlier)
            for name in moved:
                os.replace(os.path.join(path, name), os.path.join(earlier, name))
            print(f"note: --restart: the earlier run's files in {path} ({_listed(moved)}) moved to {earlier}; "
                  "delete that folder to free the space", flush=True)
        lock.truncate(0)
        lock.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}")
        lock.flush()
        yield


def _port_taken(url: str) -> str:
    if not re.fullmatch(r"tcp://.+:\d+", url or ""):  # auto: the free port it chose was taken meanwhile
        return f"--dist-url {url}: the port it chose was taken meanwhile on this machine: run the command again"
    return (f"--dist-url {url}: its port {url.rsplit(':', 1)[1]} is taken on this machine (another multi-process "
            "run?): give another --dist-url tcp://127.0.0.1:PORT, or --dist-url auto for a free port (on one machine)")


def check_dist_url(args) -> None:
    """
    Before launch, on the machine whose process 0 listens at ``args.dist_url`` (``tcp://HOST:PORT``,
    several processes): that its port is free, else OSError naming ``--dist-url`` (torch would fail
    in that process with a bare EADDRINUSE). Another run's stopped connections (TIME_WAIT) do not count.
    """
    url = args.dist_url or ""
    if args.num_gpus * args.num_machines < 2 or args.machine_rank != 0 or not re.fullmatch(r"tcp://.+:\d+", url):
        return
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as torch's store: TIME_WAIT is no obstacle
        try:
            probe.bind(("", int(url.rsplit(":", 1)[1])))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise OSError(_port_taken(url)) from None


def _trainer_of(e: BaseException) -> Optional[TrainerBase]:
    """The training loop ``e`` came through (its outermost trainer: a DefaultTrainer's, not its inner one's)."""
    tb = e.__traceback__
    while tb is not None:
        trainer = tb.tb_frame.f_locals.get("self")
        if isinstance(trainer, TrainerBase) and hasattr(trainer, "max_iter"):
            return trainer
        tb = tb.tb_next
    return None


def _main_logging_failure(main: Callable, args, reached=None):
    # In a process of several, torch hands the parent only the error's text: its traceback goes to
    # the process's own log (detectron2's log.txt, log.txt.rankK), which the parent's line names.
    # At a Ctrl-C, the iteration reached goes to ``reached`` (shared with the launching process); an
    # error it caused on its way out (torch.save's, cut in the middle of a checkpoint) is that Ctrl-C.
    try:
        return main(args)
    except BaseException as e:
        cause = e
        while cause is not None and not isinstance(cause, KeyboardInterrupt):
            cause = cause.__context__
        if cause is None:
            if isinstance(e, Exception) and comm.get_world_size() > 1:
                logger.exception("Process of rank %d failed:", comm.get_rank())
            raise
        trainer = _trainer_of(e)
        if trainer is not None and reached is not None and comm.get_local_rank() == 0:
            reached[:] = [trainer.iter, trainer.max_iter]
        if cause is e:
            raise
        raise KeyboardInterrupt from e


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


def _stop_children(grace: float = 10.0) -> None:
    """
    After a Ctrl-C in the launching process: wait for the processes ``launch`` started (a terminal's
    Ctrl-C reached them too, and they end their training); those still running after ``grace`` seconds
    (the SIGINT was this process's only) get one, then SIGTERM.
    """
    children = [p for p in multiprocessing.active_children() if not p.daemon]  # not DataLoader workers
    if not children:
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the wait short
    try:
        for sig, wait in ((None, grace), (signal.SIGINT, 60.0), (signal.SIGTERM, 10.0)):
            for p in children:
                if sig and p.is_alive():
                    os.kill(p.pid, sig)
            deadline = time.time() + wait
            for p in children:
                p.join(max(0.0, deadline - time.time()))
            if not any(p.is_alive() for p in children):
                return
    finally:
        signal.signal(signal.SIGINT, previous)


def _resume_command(args) -> str:
    """The command line of this run with ``--resume`` (before the overrides) instead of ``--restart``."""
    argv = [a for a in sys.argv[1:] if a != "--restart"]
    at = len(argv) - len(getattr(args, "opts", []))
    if "--resume" not in argv[:at]:
        argv.insert(at, "--resume")
    python = "python" if shutil.which("python") == sys.executable else sys.executable
    return shlex.join([python, sys.argv[0], *argv])


def _interrupted(args, out: Optional[str], reached) -> str:
    """The line of a Ctrl-C: the iteration reached, the last checkpoint (whole: saves are atomic), how to go on."""
    if getattr(args, "eval_only", False):
        return "error: evaluation interrupted (Ctrl-C)"
    it, max_iter = reached
    line = "error: training interrupted (Ctrl-C) " + (f"at iteration {it} of {max_iter}" if it >= 0
                                                      else "before training started")
    if not out:
        return line
    tag = os.path.join(out, LAST_CHECKPOINT)
    with contextlib.suppress(OSError), open(tag) as f:
        last = os.path.join(out, f.read().strip())
        if os.path.isfile(last):
            return f"{line}; the last checkpoint, {last}, is intact; go on from it with: {_resume_command(args)}"
    return f"{line}; no checkpoint was saved yet; start again (from iteration 0) with: {_resume_command(args)}"


def launch_checked(main: Callable, args, checked_config: Callable, output_dir: Optional[Callable] = None,
                   output_key: str = "OUTPUT_DIR") -> None:
    """
    ``checked_config(args)`` (a script's start-up checks) in this process, then detectron2's
    ``launch(main, ...)`` with the parallelism of ``args``. A problem those checks find ends the run
    here, before launch starts one process per GPU, as one ``error: ...`` line; so does a bad
    Dynamic R-CNN value, checkpoint or training set found later in a single process. Their
    messages say what is wrong, where and how to fix it: a traceback would add nothing. A process
    of several that fails ends the run as one line too: which process, the last line of its error,
    and its log (``output_dir(checked_config(args))``, the run's output folder, the config's
    ``output_key``), which holds the traceback.

    Before launch, in this process: a ``--dist-url`` port that is taken is refused, and a training
    (not ``--eval-only``; on the first machine; a local folder) holds its output folder for the
    whole run, refused over a finished or running one (:func:`claim_output_dir`; ``args.resume``,
    ``args.restart``). A Ctrl-C (in one process or several) ends the run with one line: the
    iteration reached, the last checkpoint and the ``--resume`` command (exit status 130).
    """
    out, reached = None, multiprocessing.get_context("spawn").RawArray("q", [-1, -1])
    try:
        with contextlib.ExitStack() as held:
            try:
                checked = checked_config(args)
                check_dist_url(args)
                out = output_dir(checked) if output_dir else None
                if out and "://" not in out and not getattr(args, "eval_only", False) and args.machine_rank == 0:
                    held.enter_context(claim_output_dir(out, output_key, getattr(args, "resume", False),
                                                        getattr(args, "restart", False)))
            except (ValueError, KeyError, OSError) as e:
                sys.exit(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}")
            try:
                launch(
                    _main_logging_failure,
                    args.num_gpus,
                    num_machines=args.num_machines,
                    machine_rank=args.machine_rank,
                    dist_url=args.dist_url,
                    args=(main, args, reached),
                )
            except KeyboardInterrupt:
                _stop_children()  # the folder stays held until they have ended
                raise
    except KeyboardInterrupt:
        print(_interrupted(args, out, reached), file=sys.stderr)
        sys.exit(INTERRUPTED)
    except (CheckpointError, ConfigError, DatasetError) as e:
        sys.exit(f"error: {_own_message(e)}")
    except (ProcessRaisedException, ProcessExitedException) as e:
        if isinstance(e, ProcessRaisedException) and "EADDRINUSE" in e.msg:
            sys.exit(f"error: {_port_taken(args.dist_url)}")
        rank = args.machine_rank * args.num_gpus + e.error_index
        log = _log_file(out, rank)
        which = f"process {e.error_index} (rank {rank})"
        if isinstance(e, ProcessRaisedException):
            sys.exit(f"error: {which} failed: {e.msg.strip().splitlines()[-1]}; the traceback is in {log}")
        how = f"was killed by {e.signal_name} (out of memory?)" if e.signal_name else f"exited with code {e.exit_code}"
        sys.exit(f"error: {which} {how}; its log is {log}")
