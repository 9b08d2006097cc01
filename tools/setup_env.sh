#!/usr/bin/env bash
# Creates (or completes) the Python environment this project runs in.
#
#   tools/setup_env.sh [VENV]        default VENV: .venv
#
# Idempotent: every step checks first and skips what is already there, so a second run
# takes a few seconds. It keeps what the environment already has:
#   - torch >= 2.1 already importable            -> kept (else torch==2.14.1 torchvision==0.29.1)
#   - `import detectron2` already works          -> kept (e.g. your own CUDA build from git)
#     else detectron2 is taken from PyPI's sal-detectron2==0.7.2 wheel (upstream detectron2 at
#     commit a59f0563, pure Python here: its compiled _C is for Python 3.10 and is removed).
#   - DETECTRON2_SRC=/path/to/detectron2    -> that source checkout (the folder with setup.py and
#     detectron2/), used in place through a .pth file in site-packages: nothing is built, so it
#     runs as pure Python unless the folder holds a compiled _C of its own. The one change made
#     there: detectron2/model_zoo/configs is linked to configs/, as detectron2's setup.py does (the
#     LazyConfigs need it). Set it again later to point the environment at another checkout; a
#     detectron2 installed otherwise is never replaced (the script stops and says how to remove it).
# To use an environment you already have (conda, your own venv), pass its folder:
#   make test VENV=$CONDA_PREFIX
#   DETECTRON2_SRC=$HOME/detectron2 bash tools/setup_env.sh /tmp/venv-upstream
set -euo pipefail

VENV=${1:-.venv}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON_BIN=${PYTHON:-python3}
# torch's and detectron2's import-time FutureWarnings are noise in the checks below.
export PYTHONWARNINGS=ignore
say() { printf '[setup] %s\n' "$*"; }
fail() { printf '[setup] error: %s\n' "$*" >&2; exit 2; }

# A bad DETECTRON2_SRC fails here, before anything is installed.
D2_SRC=${DETECTRON2_SRC:-}
if [ -n "$D2_SRC" ]; then
    D2_SRC=$(cd "$D2_SRC" 2>/dev/null && pwd -P) \
        || fail "DETECTRON2_SRC=$DETECTRON2_SRC is not a folder: give the top folder of a detectron2 checkout"
    [ -f "$D2_SRC/detectron2/__init__.py" ] \
        || fail "DETECTRON2_SRC=$DETECTRON2_SRC has no detectron2/__init__.py: give the top folder of a detectron2 checkout (the one holding setup.py and detectron2/), e.g. a clone of https://github.com/facebookresearch/detectron2"
fi

if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtual environment $VENV"
    "$PYTHON_BIN" -m venv "$VENV"
fi
PY="$VENV/bin/python"
pip_install() {
    # This machine's pip configuration lists local mirror folders that may be absent; its
    # "Location ... is ignored" warnings are noise, everything else is shown.
    "$PY" -m pip --disable-pip-version-check --quiet install "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }
    return "${PIPESTATUS[0]}"
}

# The stamp records the inputs of the last complete set-up; when they have not changed the
# run ends here, which keeps `make test` fast on a set-up machine.
stamp="$VENV/.dynamic_rcnn_setup"
want=$( (cat "$ROOT/tools/setup_env.sh" "$ROOT/setup.cfg"; echo "DETECTRON2_SRC=$D2_SRC") | sha256sum | cut -c1-16)
# The folder holding the detectron2 package the environment finds, empty if none. Found without
# importing it, so that it works before torch is installed.
d2_home() {
    "$PY" -c "import importlib.util as u, os; s = u.find_spec('detectron2'); print(os.path.dirname(os.path.dirname(os.path.realpath(s.origin))) if s and s.origin else '')" 2>/dev/null || true
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
        && "$PY" -c "import torch, detectron2, dynamic_rcnn" 2>/dev/null \
        && { [ -z "$D2_SRC" ] || [ "$(d2_home)" = "$D2_SRC" ]; }; then
    say "environment $VENV is up to date"
    exit 0
fi

site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
# Written only by this script: the one detectron2 it may re-point (DETECTRON2_SRC).
d2_pth="$site/dynamic_rcnn_detectron2_src.pth"
if [ -n "$D2_SRC" ]; then
    current=$(d2_home)
    if [ -n "$current" ] && [ "$current" != "$D2_SRC" ] && [ "$current" != "$(cat "$d2_pth" 2>/dev/null)" ]; then
        fail "$VENV already has a detectron2 (in $current), which would hide DETECTRON2_SRC=$D2_SRC. It is kept: use another VENV, or remove it first ($PY -m pip uninstall detectron2, or delete $current/detectron2 if pip does not know it)."
    fi
fi

if "$PY" - <<'PYEOF' 2>/dev/null
import torch, torchvision
major, minor = (int(x) for x in torch.__version__.split(".")[:2])
assert (major, minor) >= (2, 1)
PYEOF
then
    say "keeping torch $("$PY" -c 'import torch; print(torch.__version__)')"
else
    say "installing torch==2.14.1 torchvision==0.29.1 (about a minute)"
    pip_install torch==2.14.1 torchvision==0.29.1
fi

# detectron2's runtime dependencies (those its setup.py names), plus the project's own.
# numpy<2 and setuptools<81 (pkg_resources) are what detectron2 of 2024-04 needs.
say "installing detectron2's runtime dependencies"
pip_install "numpy<2" "setuptools<81" wheel "fvcore>=0.1.5" "iopath>=0.1.7,<0.1.10" pycocotools \
    opencv-python "Pillow>=7.1" matplotlib "termcolor>=1.1" yacs tabulate cloudpickle tqdm tensorboard \
    "omegaconf>=2.1,<2.4" "hydra-core>=1.1" black packaging pytest

if [ -n "$D2_SRC" ]; then
    if [ "$(d2_home)" = "$D2_SRC" ]; then
        say "keeping detectron2 from $D2_SRC"
    else  # none yet, or the checkout an earlier DETECTRON2_SRC linked (checked above)
        say "using detectron2 from $D2_SRC (in place, via $d2_pth)"
        # A .pth line puts the checkout's top folder on sys.path (as `pip install -e` of detectron2
        # does), so its detectron2/ is imported as it is: nothing is copied or built.
        echo "$D2_SRC" > "$d2_pth"
    fi
    # detectron2.model_zoo reads its configs (the project's LazyConfigs take their models from
    # them) from detectron2/model_zoo/configs, which detectron2's setup.py links to the checkout's
    # configs/ at build time. Nothing is built here, so make the same link (a path detectron2's
    # .gitignore lists: the checkout stays clean).
    zoo="$D2_SRC/detectron2/model_zoo/configs"
    if [ ! -e "$zoo" ] && [ -d "$D2_SRC/configs" ]; then
        if ln -s ../../configs "$zoo" 2>/dev/null; then
            say "linked $zoo -> ../../configs (as detectron2's setup.py does)"
        else
            say "warning: cannot create $zoo: detectron2.model_zoo (and the LazyConfigs) will not find its configs; create it as a link to $D2_SRC/configs"
        fi
    fi
    "$PY" -c "import detectron2" \
        || fail "$PY cannot import detectron2 from DETECTRON2_SRC=$D2_SRC (the error is above)"
    if ls "$D2_SRC"/detectron2/_C*.so >/dev/null 2>&1; then
        say "detectron2 $("$PY" -c 'import detectron2; print(detectron2.__version__)') with the compiled _C of that folder"
    else
        say "detectron2 $("$PY" -c 'import detectron2; print(detectron2.__version__)') as pure Python (no compiled _C in that folder)"
    fi
elif "$PY" -c "import detectron2" 2>/dev/null; then
    say "keeping detectron2 from $("$PY" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))')"
else
    say "installing detectron2 from the sal-detectron2==0.7.2 wheel"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    pip_install --no-deps --only-binary=:all: --python-version 3.10 --target "$tmp" sal-detectron2==0.7.2
    # Only the detectron2 package: the wheel also carries a top-level `tools` folder.
    cp -r "$tmp/detectron2" "$site/"
    # Built for CPython 3.10; on any other Python it can never load, and detectron2 falls
    # back to its pure-Python ops without it.
    if ! "$PY" -c "import sys; sys.exit(sys.version_info[:2] != (3, 10))"; then
        rm -f "$site"/detectron2/_C.cpython-310-*.so
    fi
    "$PY" -c "import detectron2; print('[setup] detectron2', detectron2.__version__)"
fi

say "installing dynamic_rcnn (editable)"
pip_install --no-deps --no-build-isolation -e "$ROOT"
"$PY" -c "import dynamic_rcnn"
echo "$want" > "$stamp"
say "done: $VENV"
