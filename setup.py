"""
Build script: the metadata is in setup.cfg; this file only adds the model-zoo files to the package.

``dynamic_rcnn.model_zoo`` serves the configs (YAML, LazyConfig .py) and the release metadata
(``*.metrics.json``, ``*.inference.yaml``).
Their single source is the top-level ``configs/`` and ``releases/`` of the checkout, outside the
package, so an installed (non-editable) package would not have them. As detectron2's setup.py does
for ``detectron2/model_zoo/configs``, they are copied into the package at build time, here into the
build folder only (``dynamic_rcnn/configs``, ``dynamic_rcnn/releases``), so the checkout keeps one
copy. An editable install gets nothing copied: ``model_zoo`` then reads the checkout's folders.
"""
import glob
import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))

# Folder of the checkout -> globs of the files to ship, copied to dynamic_rcnn/<folder>/. The
# release folder also holds the checkpoints themselves (*.pth, not shipped: 45 MB each).
MODEL_ZOO_FILES = {"configs": ("**/*.yaml", "**/*.py"), "releases": ("*.metrics.json", "*.inference.yaml")}


class build_py_with_model_zoo(build_py):
    """``build_py`` that also copies the model-zoo files into the built package."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # the checkout's own folders are read (model_zoo falls back to them)
        for folder, patterns in MODEL_ZOO_FILES.items():
            src = os.path.join(ROOT, folder)
            files = sorted({f for p in patterns for f in glob.glob(os.path.join(src, p), recursive=True)})
            if not files:
                raise FileNotFoundError(
                    f"{src} has no {' or '.join(patterns)}: the model zoo would ship empty. Build from a "
                    "complete checkout (an sdist must carry them: see MANIFEST.in)."
                )
            dst = os.path.join(self.build_lib, "dynamic_rcnn", folder)
            # A file removed from the checkout must not survive from an earlier build.
            shutil.rmtree(dst, ignore_errors=True)
            for path in files:
                target = os.path.join(dst, os.path.relpath(path, src))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(path, target)


setup(cmdclass={"build_py": build_py_with_model_zoo})
