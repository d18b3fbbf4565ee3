"""`make lab`: JupyterLab on the tutorial's notebooks with the venv's kernel, offline, its address printed.

Ctrl-C (or SIGTERM) stops the server, its kernels and whatever a notebook left running in the workspace.
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
FIRST_PORT = 8888            # Jupyter's own default; the next free port above it otherwise
START_SECONDS = 120
# JupyterLab reaches the network for news, update checks and the extension manager's PyPI listing: off
OFFLINE = ["--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly"]


def free_port(first=FIRST_PORT, tries=50) -> int:
    """The first port from ``first`` that nothing on loopback listens on."""
    for port in range(first, first + tries):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"ports {first}-{first + tries - 1} are all taken on 127.0.0.1: pass --port with a free one")


def command(root, port, token, browser=False) -> list[str]:
    """The JupyterLab command line: loopback only, this token, no network calls of its own."""
    return [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={root}", "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
            f"--ServerApp.open_browser={browser}", *OFFLINE] + (["--allow-root"] if os.geteuid() == 0 else [])


def wait_ready(proc, port, token, seconds=START_SECONDS, log=None):
    """Wait (bounded, a dot every 2 s) until the server answers its status route; raise with its log if it ends."""
    deadline, shown = time.monotonic() + seconds, time.monotonic()
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            why = "ended" if proc.poll() is not None else f"did not answer within {seconds} s"
            tail = Path(log).read_text()[-3000:] if log and Path(log).exists() else ""
            raise RuntimeError(f"JupyterLab {why}; its log:\n{tail}")
        if time.monotonic() - shown > 2:
            print(".", end="", flush=True)
            shown = time.monotonic()
        time.sleep(0.3)


def stop(proc, under=(), workspace=None):
    """Stop the server and every process under it (``under``: those seen while it ran, in case it ended first),
    then what a notebook left in the workspace; a dot every 2 s while they end."""
    import psutil
    procs = {p.pid: p for p in under}
    try:
        root = psutil.Process(proc.pid)
        procs.update({p.pid: p for p in [root, *root.children(recursive=True)]})
    except psutil.NoSuchProcess:
        pass
    for p in procs.values():
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    alive, deadline = list(procs.values()), time.monotonic() + 15
    while alive and time.monotonic() < deadline:
        _, alive = psutil.wait_procs(alive, timeout=2)
        if alive:
            print(".", end="", flush=True)
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=5)
    if workspace is not None:
        from . import tutorial
        tutorial.stop_what_is_left(workspace)


def main(argv=None):
    import argparse

    import psutil
    p = argparse.ArgumentParser(prog="python -m accel_lib.lab", description=__doc__.splitlines()[0])
    p.add_argument("--root", default=str(NOTEBOOKS), help="the folder JupyterLab opens (default: notebooks/)")
    p.add_argument("--port", type=int, default=0, help=f"default: the first free port from {FIRST_PORT}")
    p.add_argument("--browser", action="store_true", help="also open a browser on this machine")
    p.add_argument("--log", default=str(ROOT / "build" / "lab" / "jupyterlab.log"), help="JupyterLab's own log")
    args = p.parse_args(argv)
    root = Path(args.root).resolve()
    if not root.is_dir():
        p.error(f"{root} is not a folder: pass --root with the folder of notebooks to open")
    port, token = args.port or free_port(), secrets.token_hex(24)
    log_path = Path(args.log).resolve()
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def on_signal(signum, frame):
        raise KeyboardInterrupt
    for sig in (signal.SIGTERM, signal.SIGHUP):          # a kill, or the terminal closed: stop as Ctrl-C does
        signal.signal(sig, on_signal)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command(root, port, token, args.browser), cwd=root, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ}, start_new_session=True)
    server, under = psutil.Process(proc.pid), {}

    def watch():                                         # the kernels it started, known even if it ends first
        try:
            under.update({c.pid: c for c in server.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    try:
        print(f"Starting JupyterLab on {root.name}/ (log: {log_path.name})", end="", flush=True)
        wait_ready(proc, port, token, log=log_path)
        print(f"\nJupyterLab: http://127.0.0.1:{port}/lab?token={token}\n"
              "Open that address in a browser. Stop with Ctrl-C: it stops the kernels and any service a notebook "
              "left running.", flush=True)
        while proc.poll() is None:
            watch()
            time.sleep(1)
        print(f"JupyterLab ended (exit {proc.returncode}); its log: {log_path}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopping JupyterLab ", end="", flush=True)
        return 0
    except RuntimeError as err:
        print(f"\n{err}", file=sys.stderr)
        return 1
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):     # a second Ctrl-C must not cut the stop short
            signal.signal(sig, signal.SIG_IGN)
        watch()
        stop(proc, under.values(), root / "workspace")
        print("\nJupyterLab stopped.", flush=True)


if __name__ == "__main__":
    sys.exit(main())
