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
# To use an environment you already have (conda, your own venv), pass its folder:
#   make test VENV=$CONDA_PREFIX
set -euo pipefail

VENV=${1:-.venv}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON_BIN=${PYTHON:-python3}
# torch's and detectron2's import-time FutureWarnings are noise in the checks below.
export PYTHONWARNINGS=ignore
say() { printf '[setup] %s\n' "$*"; }

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
want=$(cat "$ROOT/tools/setup_env.sh" "$ROOT/setup.cfg" | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] \
        && "$PY" -c "import torch, detectron2, dynamic_rcnn" 2>/dev/null; then
    say "environment $VENV is up to date"
    exit 0
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

if "$PY" -c "import detectron2" 2>/dev/null; then
    say "keeping detectron2 from $("$PY" -c 'import detectron2, os; print(os.path.dirname(detectron2.__file__))')"
else
    say "installing detectron2 from the sal-detectron2==0.7.2 wheel"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    pip_install --no-deps --only-binary=:all: --python-version 3.10 --target "$tmp" sal-detectron2==0.7.2
    site=$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
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
