"""The tutorial notebooks: committed clean, run in order under nbval and under papermill with other parameters."""
import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from accel_lib import Model, Workspace, samples, tutorial
from accel_lib.conversion import checks
from accel_lib.fpga.device import formats

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9]*.ipynb"))


def test_notebooks_are_committed_clean():
    assert [p.name for p in NOTEBOOKS] == ["01-define-model.ipynb", "02-convert-model.ipynb", "03-containerize.ipynb",
                                           "04-deploy.ipynb", "05-consume.ipynb", "06-clean-up.ipynb",
                                           "07-object-detection.ipynb", "08-transfer-learning.ipynb",
                                           "09-numeric-formats.ipynb", "10-latency.ipynb"]
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
        for c in code:
            tags = c.get("metadata", {}).get("tags", [])
            assert set(tags) <= {"parameters", tutorial.SLOW_TAG}, (p.name, tags)


ARTICLE_WORDS = re.compile(r"\bthe seed\b|\bseed's\b|\bseed family\b|\bruns? unchanged\b", re.I)
# a duration written by hand ("takes 15 minutes", "1 s by default"): the run prints times, the README's tables hold them
DURATION = re.compile(r"\b\d+(?:\.\d+)?\s*(?:s|secs?|seconds?|min|mins|minutes?|ms|h|hours?)\b(?![-\w])", re.I)
MEASURED_WORDS = re.compile(r"\bmeasured:\s*\d|\d+(?:\.\d+)?\s*%|\bfar (?:lower|higher|less|more)\b", re.I)


def test_the_markdown_names_the_article_and_writes_no_number_the_run_does_not_show():
    found = []
    for p in NOTEBOOKS:
        for i, c in enumerate(json.loads(p.read_text())["cells"]):
            if c["cell_type"] != "markdown":
                continue
            text = "".join(c["source"])
            for rule in (ARTICLE_WORDS, DURATION, MEASURED_WORDS, tutorial.OUTPUT_NOISE):
                found += [f"{p.name} cell {i}: {m.group(0)!r}" for m in rule.finditer(text)]
    found += [f"README.md: {m.group(0)!r}" for m in ARTICLE_WORDS.finditer((ROOT / "README.md").read_text())]
    assert found == [], found


def test_01s_table_of_the_articles_imports_runs_each_of_ours():
    nb = json.loads(NOTEBOOKS[0].read_text())
    table = next("".join(c["source"]) for c in nb["cells"] if "The article's names and ours" in "".join(c["source"]))
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|$", table, re.M)
    assert len(rows) >= 10 and all(a.split()[1].startswith("azureml") for a, _ in rows), rows
    for article, ours in rows:
        assert article.split(" import ")[-1] == ours.split(" import ")[-1] or " as " in article, (article, ours)
        subprocess.run([sys.executable, "-c", ours], check=True, timeout=120, capture_output=True)


def _env():
    # PYTEST_ADDOPTS ("-k name" for this run) would deselect the inner nbval run's cells
    return {**os.environ, "ACCEL_LIB_OFFLINE": "1", "ACCEL_LIB_PROGRESS": "0", "PYTEST_ADDOPTS": ""}


@pytest.mark.notebooks
@pytest.mark.timeout(2400)          # the whole series at the tutorial's sizes (about 5 minutes on 2 cores)
def test_series_runs_under_nbval(tmp_path):
    """The article's flow (01-06) at its defaults, as `pytest --nbval-lax` runs it. The whole series runs at its
    defaults in `make binder-check` (CI runs both) and with other parameters below."""
    copies = []
    for p in NOTEBOOKS[:6]:
        shutil.copy(p, tmp_path / p.name)
        copies.append(p.name)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
                        "--nbval-lax", "--nbval-kernel-name", "python3",
                        "--nbval-cell-timeout", str(tutorial.SLOW_CELL_SECONDS), "-o", "testpaths=.", *copies],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=2300)
    tutorial.stop_what_is_left(tmp_path / "workspace")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    ws = Workspace.from_config(tmp_path / "workspace")
    assert Model.list(ws) == []                      # 06 cleaned up
    logs = list((ws.path / "operations").glob("*/log.txt"))
    line = next(l for l in logs[0].read_text().splitlines() if "parity (fp32)" in l)
    assert "top-1 agreement 100%" in line
    assert float(line.split("largest relative error ")[1].split()[0]) < checks.PARITY_TOLERANCE, line


def _run_series(tmp_path, params, again=None):
    """The series with papermill, as `make tutorial` runs it (each cell under its limit: a hang fails); the
    notebook named ``again`` runs five times in a row."""
    runs = []
    for p in NOTEBOOKS:
        for i in range(5 if p.name == again else 1):
            runs.append(tutorial.run_series([p], tmp_path, tmp_path, params, env=_env())[0])
    return runs


TIME_OF_DAY = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d|\b\d\d:\d\d:\d\d\b")
TF_LOG_LINE = re.compile(r"absl::|oneDNN|cuda|cuInit|^[IWEF]\d{4} \d\d:\d\d:\d\d", re.M)


def _tensorflow_log_lines(nb_path):
    """Lines TensorFlow's runtime (absl, oneDNN, CUDA) left in any output of an executed notebook."""
    nb = json.loads(Path(nb_path).read_text())
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                   for o in c.get("outputs", []))
    return [l for l in text.splitlines() if TF_LOG_LINE.search(l)]


def test_importing_tensorflow_through_accel_lib_prints_nothing():
    r = subprocess.run([sys.executable, "-c", "import accel_lib, keras, tensorflow as tf; print(tf.constant(2).numpy())"],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert r.returncode == 0 and r.stdout.strip() == "2", r.stderr[-2000:]
    assert not TF_LOG_LINE.search(r.stderr), r.stderr[-2000:]


def _stdout(nb_path):
    nb = json.loads(Path(nb_path).read_text())
    return "".join("".join(o.get("text", "")) for c in nb["cells"] if c["cell_type"] == "code"
                   for o in c.get("outputs", []) if o.get("name") == "stdout")


@pytest.fixture(scope="module")
def other_series(tmp_path_factory):
    """The series under papermill with other parameters than its defaults (05 five times): (folder, runs, params)."""
    tmp_path = tmp_path_factory.mktemp("series")
    params = {"workspace_dir": "other-ws", "model_name": "tiny-net", "featurizer": "Resnet50",
              "weights": "random", "image_size": 96, "numeric_format": "fp32", "location": "westeurope",
              "aks_name": "fpga-pool", "aks_service_name": "tiny-svc", "agent_count": 2, "num_replicas": 2,
              "auth_enabled": True, "ssl_enabled": True, "ssl_cert_pem_file": str(tmp_path / "my-cert.pem"),
              "ssl_key_pem_file": str(tmp_path / "my-key.pem"), "ssl_cname": "fpga.example.com",
              "edge_name": "box-1", "edge_service_name": "box-svc", "ssd_featurizer": "SsdVgg", "ssd_model_name": "tiny-ssd",
              "scenes_dir": "my-scenes", "ssd_test_scenes": 4, "ssd_epochs": 0, "ssd_head_epochs": 1, "min_map": 0.0,
              "images_per_class": 16, "test_per_class": 8, "epochs": 20, "min_accuracy_tl": 0.0, "tl_model_name": "tiny-shapes",
              "accuracy_gate": 1.01, "fine_tune_epochs": 1, "finetune_epochs": 1, "fine_tune_formats": "ms-fp9,mxfp4", "goal_points": 100.0, "other_goal_points": 100.0,
              "trained_model_name": "tiny-patterns", "train": True, "train_per_class": 30, "held_out_per_class": 5, "train_epochs": 2,
              "extra_blocks": "16", "min_accuracy": 0.0, "latency_model_name": "tiny-latency", "batches": "1,2",
              "runs": 2, "requests": 3}
    from accel_lib.fpga.cluster import certificates
    _, chain, key = certificates.generate("fpga.example.com")   # "your own" certificate for 04's TLS
    (tmp_path / "my-cert.pem").write_bytes(chain)
    (tmp_path / "my-key.pem").write_bytes(key)
    images, truths = samples.labelled_scenes(12, seed=9)      # 07 reads a Pascal VOC folder of "your own"
    samples.write_voc_folder(tmp_path / "my-scenes", images, truths, samples.SCENE_CLASSES)
    runs = _run_series(tmp_path, params, again="05-consume.ipynb")
    return tmp_path, runs, params


@pytest.mark.notebooks
@pytest.mark.timeout(3600)
def test_series_runs_under_papermill_with_other_parameters_and_05_five_times(other_series):
    tmp_path, runs, params = other_series
    assert [r.name for r in runs].count("05-consume.ipynb") == 5           # and none of them hung
    assert all(c.seconds < c.limit / 2 for r in runs for c in r.cells), "a cell took half its limit"
    out2, out4, out5, out7, out8, out9 = (_stdout(tmp_path / n) for n in (
        "02-convert-model.ipynb", "04-deploy.ipynb", "05-consume.ipynb", "07-object-detection.ipynb",
        "08-transfer-learning.ipynb", "09-numeric-formats.ipynb"))
    assert "tiny-net.1.accelonnx" in out2
    assert "'location': 'westeurope'" in out4 and "0/2 nodes are available: 2 Insufficient" in out4
    assert out5.count("confidence:") == 5 and "service vs in-process: 0.0" in out5
    assert "200 REST vs gRPC, max abs difference: 0.0" in out5
    assert re.search(r"clients trust: .*CN=fpga\.example\.com", out4) and "box-svc-v1 Replaced | box-svc Healthy Edge" in out4
    assert "TLS: True | refused without the root certificate: True" in out5 and "edge device vs AKS" in out5
    assert "ssd_300_vgg/block11_box/Reshape:0" in out7 and "RANDOM WEIGHTS" in out7
    assert "8 training scenes" in out7 and "measured on my-scenes" in out7 and "computed in fp32" in out7
    assert out8.count("CORRECT") + out8.count("WRONG ") == 24 and "computed in fp32" in out8 and "chance 33%" in out8
    assert "under the gate" in out8 and "fine-tuned in fp32" in out8            # the article's gate, forced
    rows = [l.split() for l in out9.splitlines() if l.split()[:1] and l.split()[0] in formats.NAMES
            and l.rstrip().endswith(("dB", "-"))]
    every = ([("fp32", "-"), ("ms-fp8", "128"), ("ms-fp9", "128"), ("msfp12", "16"), ("msfp16", "16")]
             + [(name, "32") for name in formats.MX_FORMATS] + [("ms-fp9", "16")])
    assert [(r[0], r[1]) for r in rows] == 2 * every                   # the trained and the pretrained network
    assert "models left: []" in out9 and "trained here (trained(seed=0, 300 generated images, 2 epochs))" in out9
    out10 = _stdout(tmp_path / "10-latency.ipynb")
    assert "one request, p50 of 3" in out10 and out10.count("(modeled)") >= 2 and "tiny-latency" in out10
    for p in NOTEBOOKS:
        assert _tensorflow_log_lines(tmp_path / p.name) == [], p.name
        assert tutorial.output_noise(tmp_path / p.name) == [], p.name
    for p in NOTEBOOKS[:6]:                        # the article's flow prints no time of day (logs leave it off)
        assert not TIME_OF_DAY.search(_stdout(tmp_path / p.name)), p.name
    ws = Workspace.from_config(tmp_path / "other-ws")
    assert Model.list(ws) == []
    tutorial.run(NOTEBOOKS[5], tmp_path / "06-again.ipynb", tmp_path, params, env=_env())   # cleaning up twice is harmless


@pytest.mark.notebooks
@pytest.mark.timeout(4500)             # the series fixture's own run counts here when this test runs alone
def test_make_book_builds_the_executed_series_offline_and_every_page_loads_in_chromium(other_series, tmp_path):
    import booksite
    from helpers import chromium

    from accel_lib import book
    ran = tmp_path / "executed"
    ran.mkdir()
    for p in NOTEBOOKS:
        shutil.copy(other_series[0] / p.name, ran / p.name)
    index = book.build(ran, tmp_path / "book", strict=True)          # strict: a Sphinx warning fails the build
    site = index.parent
    pages = {p.relative_to(site).as_posix() for p in booksite.pages(site)}
    assert {"index.html", "search.html"} | {f"notebooks/{p.stem}.html" for p in NOTEBOOKS} <= pages, pages
    assert "accel_lib" in index.read_text() and "make tutorial" in index.read_text()       # the README lands
    assert booksite.broken(site) == []          # every local link and image resolves; nothing loads from the network
    page05 = (site / "notebooks" / "05-consume.html").read_text()
    assert "confidence:" in page05 and page05.count("<img") >= 1      # outputs as they ran, not executed again
    with pytest.raises(SystemExit, match="has no outputs.*make tutorial"):
        book.build(ROOT / "notebooks", tmp_path / "unexecuted")          # the committed notebooks have no outputs

    from selenium.webdriver.common.by import By
    drv = chromium(tmp_path / "chromium-profile", size="1200,1600", console=True)
    try:
        with booksite.Served(site) as served:
            assert booksite.load_every_page(drv, site, served.url) == []
            drv.get(served.url + "search.html?q=quantizer")
            assert booksite.wait(drv, "return document.querySelectorAll('#search-results li').length > 0"), \
                "the search page found nothing for 'quantizer'"
            drv.get(served.url + "notebooks/05-consume.html")
            chart = next(e for e in drv.find_elements(By.CSS_SELECTOR, ".cell_output img") if e.size["width"] > 300)
            drv.execute_script("arguments[0].scrollIntoView({block: 'center'})", chart)
            shot = tmp_path / "book-05-chart.png"
            chart.screenshot(str(shot))
            drv.save_screenshot(str(tmp_path / "book-05.png"))
    finally:
        drv.quit()
    from PIL import Image
    import numpy as np
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.shape[1] > 300 and (pixels < 200).mean() > 0.02, "05's top-5 chart is blank on the page"
