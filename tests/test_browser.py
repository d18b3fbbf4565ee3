"""Notebook 05 in JupyterLab, in a real (headless) Chromium: every cell runs against a deployed service, and the
top-5 chart and the upload widget render. Needs Debian's chromium and chromium-driver (.ci/run installs them)."""
import json
import os
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from helpers import chromium

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
PARAMS = {"weights": "random", "image_size": 64}     # small; every name as 05 embeds it, so 05 runs as committed


@pytest.mark.notebooks
@pytest.mark.timeout(1200)
def test_notebook_05_runs_in_jupyterlab_in_headless_chromium(tmp_path):
    from selenium.webdriver.common.by import By

    from accel_lib import lab as jupyterlab
    from accel_lib import tutorial, webservice
    lab = None
    drv = chromium(tmp_path / "chromium-profile")      # skipped, with how to install it, where there is none
    try:
        for nb in NOTEBOOKS[:4]:                    # define, convert, containerize, deploy: what 05 needs
            tutorial.run(nb, tmp_path / ("ran-" + nb.name), tmp_path, PARAMS,
                         env={**os.environ, "ACCEL_LIB_PROGRESS": "0"})
        shutil.copy(NOTEBOOKS[4], tmp_path / "05-consume.ipynb")
        nb05 = json.loads(NOTEBOOKS[4].read_text())

        port, token = jupyterlab.free_port(18900), secrets.token_hex(16)
        log = open(tmp_path / "jupyterlab.log", "w")
        lab = subprocess.Popen(jupyterlab.command(tmp_path, port, token), cwd=tmp_path, stdout=log,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                               env={**os.environ, "ACCEL_LIB_PROGRESS": "0"})
        jupyterlab.wait_ready(lab, port, token, log=tmp_path / "jupyterlab.log")

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
            jupyterlab.stop(lab)
        if (tmp_path / "workspace" / "config.json").exists():
            webservice.stop_all(tmp_path / "workspace")
