"""The tutorial notebooks: committed clean, run in order under nbval and under papermill with other parameters."""
import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from accel_lib import Model, Workspace

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))


def test_notebooks_are_committed_clean():
    assert [p.name for p in NOTEBOOKS][:2] == ["01-define-model.ipynb", "02-convert-model.ipynb"]
    names = {}
    for p in NOTEBOOKS:
        nb = json.loads(p.read_text())
        assert nb["metadata"]["kernelspec"]["name"] == "python3", p.name
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and not c.get("execution_count") for c in code), f"{p.name} has outputs"
        params = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(params) == 1, p.name
        assert code.index(params[0]) == 0, f"{p.name}: the parameters cell should be the first code cell"
        for stmt in ast.parse("".join(params[0]["source"])).body:   # literals only
            assert isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant), ast.dump(stmt)
            name = stmt.targets[0].id
            assert names.setdefault(name, stmt.value.value) == stmt.value.value, f"{name} differs in {p.name}"


def _env():
    return {**os.environ, "ACCEL_LIB_OFFLINE": "1", "ACCEL_LIB_PROGRESS": "0"}


@pytest.mark.notebooks
def test_series_runs_under_nbval(tmp_path):
    copies = []
    for p in NOTEBOOKS:
        shutil.copy(p, tmp_path / p.name)
        copies.append(p.name)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                        "--nbval-lax", "--nbval-kernel-name", "python3", "--nbval-cell-timeout", "900",
                        "-o", "testpaths=.", *copies],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=3000)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    ws = Workspace.from_config(tmp_path / "workspace")
    assert Model(ws, "resnet50").version == 1 and Model(ws, "resnet50.1.accelonnx").version == 1
    parity = json.loads(Model(ws, "resnet50.1.accelonnx").read_file("manifest.json"))["parity"]
    assert parity["top1_agreement"] == 1.0 and parity["max_abs_diff"] < 1e-4, parity   # the bar, 224 px


@pytest.mark.notebooks
def test_series_runs_under_papermill_with_other_parameters(tmp_path):
    import papermill as pm
    params = {"workspace_dir": "other-ws", "model_name": "tiny-net", "featurizer": "Resnet50",
              "weights": "random", "image_size": 96, "numeric_format": "fp32"}
    for p in NOTEBOOKS:
        pm.execute_notebook(str(p), str(tmp_path / p.name), parameters=params, cwd=str(tmp_path),
                            kernel_name="python3", progress_bar=False, log_output=False)
    ws = Workspace.from_config(tmp_path / "other-ws")
    src, conv = Model(ws, "tiny-net"), Model(ws, "tiny-net.1.accelonnx")
    assert src.tags["featurizer"] == "Resnet50" and conv.properties["source_model"] == "tiny-net:1"
    manifest = json.loads(conv.read_file("manifest.json"))
    assert manifest["stages"][0]["params"]["output_height"] == 96
