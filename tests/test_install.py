"""Installing the project: without detectron2, and as a non-editable package used from elsewhere."""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT


def clean_env():
    """The environment of a subprocess that must import only what its interpreter installed."""
    drop = ("PYTHONPATH", "PYTHONHOME", "DYNAMIC_RCNN_RELEASES")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(PYTHONNOUSERSITE="1", PYTHONWARNINGS="ignore")
    return env


def test_import_without_detectron2_says_how_to_get_it(tmp_path):
    # None in sys.modules makes `import detectron2` fail as if it were not installed.
    code = (
        "import sys; sys.modules['detectron2'] = None\n"
        "try:\n"
        "    import dynamic_rcnn\n"
        "except ModuleNotFoundError as e:\n"
        "    print(e.name); print(e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    name, message = proc.stdout.split("\n", 1)
    assert name == "detectron2"  # still the ModuleNotFoundError code may test for
    assert "dynamic_rcnn needs detectron2" in message
    assert "not on PyPI under its own name" in message
    assert "tools/setup_env.sh" in message and "DETECTRON2_SRC=" in message


def copy_checkout(dst):
    """The working tree as git sees it (tracked and new files; not .venv, output/, build/)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
        ).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("needs a git checkout of the project to copy from")
    for rel in filter(None, listed):
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):  # a file deleted but not yet committed is listed too
            os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dst, rel))


CHECK = r"""
import json, os
import dynamic_rcnn
from dynamic_rcnn import model_zoo
out = {"package": os.path.dirname(dynamic_rcnn.__file__)}
out["config_file"] = model_zoo.get_config_file("shapes/dynamic_rcnn_R_18_FPN_shapes")
cfg = model_zoo.get_config("shapes/dynamic_rcnn_R_18_FPN_shapes")
out["roi_heads"], out["min_size"] = cfg.MODEL.ROI_HEADS.NAME, list(cfg.INPUT.MIN_SIZE_TRAIN)
out["release_dir"], out["released"] = model_zoo.release_dir(), model_zoo.released_names()
try:
    model_zoo.get_checkpoint_file("shapes/dynamic_rcnn_R_18_FPN_shapes")
except FileNotFoundError as e:
    out["missing"] = str(e)
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.parametrize("source", ["tree", "sdist"])
def test_a_non_editable_install_serves_configs_and_release_metadata(tmp_path, source):
    checkout = tmp_path / "checkout"
    copy_checkout(str(checkout))
    # A throw-away environment that reaches this one's packages (torch, detectron2, pip,
    # setuptools) through plain .pth lines: this interpreter's import path, the checkout left out.
    # Such lines do not run the .pth files of those folders, so this environment's editable
    # dynamic_rcnn (an import hook) stays out, while a detectron2 found through a path (a source
    # checkout, PYTHONPATH) comes along.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    outer = [p for p in sys.path if p and os.path.isdir(p) and os.path.realpath(p) != os.path.realpath(ROOT)]
    with open(os.path.join(site, "_outer_env.pth"), "w") as f:
        f.write("\n".join(dict.fromkeys(outer)) + "\n")

    target = str(checkout)
    if source == "sdist":  # what `python -m build` would publish: MANIFEST.in must carry the files
        target = subprocess.run(
            [py, "-c", "from setuptools import build_meta as b; print(b.build_sdist('dist'))"],
            cwd=checkout, env=clean_env(), capture_output=True, text=True, timeout=300,
        ).stdout.strip().splitlines()[-1]
        target = str(checkout / "dist" / target)
    proc = subprocess.run(
        [py, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "--ignore-installed",
         "--disable-pip-version-check", "--quiet", target],
        cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert not os.path.exists(checkout / "dynamic_rcnn" / "configs")  # the checkout keeps one copy

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.run(
        [py, "-c", CHECK], cwd=elsewhere, env=clean_env(), capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    package = os.path.join(site, "dynamic_rcnn")
    assert out["package"] == package  # the installed copy, not this environment's editable one
    assert out["config_file"] == os.path.join(package, "configs", "shapes", "dynamic_rcnn_R_18_FPN_shapes.yaml")
    # _BASE_ resolved inside the package: the base's values arrived.
    assert out["roi_heads"] == "DynamicROIHeads" and out["min_size"]
    assert out["release_dir"] == os.path.join(package, "releases")
    metadata = os.listdir(os.path.join(ROOT, "releases"))
    assert out["released"] == sorted(f[: -len(".metrics.json")] for f in metadata if f.endswith(".metrics.json"))
    assert "dynamic_rcnn_R_18_FPN_shapes was released as dynamic_rcnn_R_18_FPN_shapes_" in out["missing"]
    shipped = sorted(
        os.path.relpath(os.path.join(d, f), os.path.join(package, "configs"))
        for d, _, files in os.walk(os.path.join(package, "configs")) for f in files
        if "__pycache__" not in d  # pip byte-compiles the LazyConfig .py files it installs
    )
    assert shipped == sorted(
        os.path.relpath(os.path.join(d, f), os.path.join(checkout, "configs"))
        for d, _, files in os.walk(checkout / "configs") for f in files if f.endswith((".yaml", ".py"))
    )
