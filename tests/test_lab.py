"""`make lab`: JupyterLab starts on the notebooks with the venv's kernel, prints its address, and Ctrl-C stops it
and every process under it."""
import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil

from accel_lib import lab

ROOT = Path(__file__).resolve().parents[1]


def _lines(proc):
    q = queue.Queue()
    threading.Thread(target=lambda: [q.put(line) for line in proc.stdout], daemon=True).start()
    return q


def _read_until(q, what, seconds):
    got, end = [], time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            line = q.get(timeout=0.5)
        except queue.Empty:
            continue
        got.append(line)
        if what in line:
            return line, got
    raise AssertionError(f"no line with {what!r} within {seconds} s; got {''.join(got)!r}")


def test_make_lab_runs_the_lab_module():
    r = subprocess.run(["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "-m accel_lib.lab" in r.stdout, r.stdout + r.stderr


def test_lab_serves_the_notebooks_with_the_venv_kernel_and_ctrl_c_leaves_nothing(tmp_path):
    root = tmp_path / "notebooks"
    shutil.copytree(ROOT / "notebooks", root)
    proc = subprocess.Popen([sys.executable, "-m", "accel_lib.lab", "--root", str(root), "--port",
                             str(lab.free_port(18888)), "--log", str(tmp_path / "jupyterlab.log")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    under = []
    try:
        q = _lines(proc)
        line, _ = _read_until(q, "JupyterLab: http://127.0.0.1:", 180)
        url = line.split("JupyterLab: ", 1)[1].strip()
        base, token = url.split("/lab?token=")
        page = urllib.request.urlopen(url, timeout=30).read().decode()
        assert "JupyterLab" in page
        specs = json.load(urllib.request.urlopen(f"{base}/api/kernelspecs?token={token}", timeout=30))
        spec = specs["kernelspecs"][specs["default"]]["spec"]
        assert specs["default"] == "python3" and Path(spec["argv"][0]).parent == Path(sys.executable).parent, spec
        assert spec["display_name"] == "Python 3 (accel_lib)"          # the venv's kernelspec, not a built-in one
        names = {c["name"] for c in json.load(urllib.request.urlopen(f"{base}/api/contents?token={token}",
                                                                     timeout=30))["content"]}
        assert "05-consume.ipynb" in names, names
        req = urllib.request.Request(f"{base}/api/kernels?token={token}", data=b'{"name": "python3"}',
                                     method="POST", headers={"Content-Type": "application/json"})
        assert json.load(urllib.request.urlopen(req, timeout=60))["name"] == "python3"
        no_token = urllib.request.Request(f"{base}/api/kernels")
        try:
            urllib.request.urlopen(no_token, timeout=30)
            raise AssertionError("the server answered without its token")
        except urllib.error.HTTPError as e:
            assert e.code == 403
        end = time.monotonic() + 60
        while len(under := psutil.Process(proc.pid).children(recursive=True)) < 2 and time.monotonic() < end:
            time.sleep(0.5)                    # the server and the kernel it started
        assert len(under) >= 2, under
        proc.send_signal(signal.SIGINT)        # what Ctrl-C sends
        assert proc.wait(timeout=60) == 0
        _read_until(q, "JupyterLab stopped.", 10)
        gone, alive = psutil.wait_procs(under, timeout=5)
        assert alive == [], alive
    finally:
        for p in [proc, *under]:
            try:
                psutil.Process(p.pid).kill()
            except psutil.NoSuchProcess:
                pass
