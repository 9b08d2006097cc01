"""The package's shape: ``import dynamic_rcnn`` loads the method only; the harness is where the docs say it is."""
import json
import os
import subprocess
import sys

from conftest import ROOT

METHOD = ["config", "statistics", "tracker", "roi_heads", "hook"]

IMPORT = r"""
import json, sys
import dynamic_rcnn
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "dynamic_rcnn")
lines = sum(sum(1 for _ in open(sys.modules[m].__file__)) for m in loaded)
from detectron2.data import DatasetCatalog
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY
print(json.dumps({"loaded": loaded, "lines": lines, "registered": sorted(ROI_HEADS_REGISTRY._obj_map),
                  "shapes": "shapes_train" in DatasetCatalog.list()}))
from dynamic_rcnn import Trainer, DynamicRCNNMetricPrinter, validate_dynamic_rcnn_config  # earlier versions' names
import dynamic_rcnn.engine as engine
assert Trainer is engine.Trainer and validate_dynamic_rcnn_config is engine.validate_dynamic_rcnn_config
"""


def test_import_registers_the_heads_and_loads_the_method_only():
    proc = subprocess.run([sys.executable, "-c", IMPORT], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["loaded"] == sorted(["dynamic_rcnn"] + [f"dynamic_rcnn.{m}" for m in METHOD])
    assert out["lines"] <= 1000, out
    assert {"DynamicROIHeads", "DynamicCascadeROIHeads"} <= set(out["registered"])
    assert not out["shapes"]  # the built-in datasets register when dynamic_rcnn.data is imported, as detectron2's


def test_the_method_stays_small():
    """The method's files: at most 700 lines (issue 26); new work goes into the harness."""
    total = sum(sum(1 for _ in open(os.path.join(ROOT, "dynamic_rcnn", f"{m}.py"))) for m in METHOD)
    assert total <= 700, total
    top = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "dynamic_rcnn")) if f.endswith(".py"))
    assert top == sorted(["__init__"] + METHOD), top  # the harness lives in sub-packages
