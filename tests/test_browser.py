"""Notebook 05 in JupyterLab, in a real (headless) Chromium: every cell runs against a deployed service, and the
top-5 chart and the upload widget render. Needs Debian's chromium and chromium-driver (.ci/run installs them)."""
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
PARAMS = {"weights": "random", "image_size": 64}     # small; every name as 05 embeds it, so 05 runs as committed


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_tree(proc):
    try:
        parent = psutil.Process(proc.pid)
    except psutil.NoSuchProcess:
        return
    procs = [parent, *parent.children(recursive=True)]
    for p in procs:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        p.kill()


@pytest.mark.notebooks
@pytest.mark.timeout(1200)
def test_notebook_05_runs_in_jupyterlab_in_headless_chromium(tmp_path):
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.skip("headless Chromium is not installed: 'apt-get install chromium chromium-driver' enables this "
                    "test (.ci/run installs them when CI=true)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from accel_lib import tutorial, webservice
    lab = drv = None
    try:
        for nb in NOTEBOOKS[:4]:                    # define, convert, containerize, deploy: what 05 needs
            tutorial.run(nb, tmp_path / ("ran-" + nb.name), tmp_path, PARAMS,
                         env={**os.environ, "ACCEL_LIB_PROGRESS": "0"})
        shutil.copy(NOTEBOOKS[4], tmp_path / "05-consume.ipynb")
        nb05 = json.loads(NOTEBOOKS[4].read_text())

        port, token = _free_port(), secrets.token_hex(16)
        log = open(tmp_path / "jupyterlab.log", "w")
        lab = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
                                f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
                                f"--ServerApp.root_dir={tmp_path}", "--LabApp.news_url=",
                                "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
                               cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env={**os.environ, "ACCEL_LIB_PROGRESS": "0"})
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
                break
            except OSError:
                assert lab.poll() is None and time.monotonic() < deadline, (tmp_path / "jupyterlab.log").read_text()
                time.sleep(0.5)

        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                    "--no-first-run", "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1400,1800"):
            opts.add_argument(arg)
        drv = webdriver.Chrome(service=Service(driver_path), options=opts)
        drv.get(f"http://127.0.0.1:{port}/lab/tree/05-consume.ipynb?token={token}")

        def wait_for(what, check, seconds):
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    got = check()
                    if got:
                        return got
                except Exception:  # noqa: BLE001 - the page is still changing
                    pass
                time.sleep(0.5)
            drv.save_screenshot(str(tmp_path / "jupyterlab-05-timeout.png"))
            raise AssertionError(f"timed out waiting for {what}; screenshot in {tmp_path}")

        wait_for("the notebook", lambda: drv.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell"), 120)
        menu = wait_for("the Run menu", lambda: [e for e in drv.find_elements(
            By.CSS_SELECTOR, ".lm-MenuBar-itemLabel") if e.text == "Run"], 30)[0]
        menu.click()
        item = wait_for("Run All Cells", lambda: [e for e in drv.find_elements(
            By.CSS_SELECTOR, ".lm-Menu-itemLabel") if e.text == "Run All Cells"], 30)[0]
        item.click()

        code_cells = sum(1 for c in nb05["cells"] if c["cell_type"] == "code")

        def all_ran():
            prompts = [e.text for e in drv.find_elements(By.CSS_SELECTOR, ".jp-CodeCell .jp-InputPrompt")]
            return len(prompts) == code_cells and all(p.strip().startswith("[") and "*" not in p and p.strip() != "[ ]:"
                                                      for p in prompts)
        wait_for("every cell to run", all_ran, 600)
        errors = drv.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output[data-mime-type*='error']")
        assert not errors, errors[0].text[:2000]
        charts = drv.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output img")
        assert len(charts) >= 2                          # the top-5 chart, and the widget's chart of the sample
        upload = drv.find_elements(By.CSS_SELECTOR, ".jupyter-widgets .widget-upload, .jupyter-widgets button")
        assert any("Pick an image" in e.text for e in upload), [e.text for e in upload]
        drv.save_screenshot(str(tmp_path / "jupyterlab-05.png"))
        assert (tmp_path / "jupyterlab-05.png").stat().st_size > 10_000
    finally:
        if drv is not None:
            drv.quit()
        if lab is not None:
            _kill_tree(lab)
        if (tmp_path / "workspace" / "config.json").exists():
            webservice.stop_all(tmp_path / "workspace")
