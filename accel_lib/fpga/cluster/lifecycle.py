"""The cluster process's lifecycle, given plain values (a cluster folder, its nodes and vCPUs, its TLS files):
prepare the folder, declare the spec under the spec lock, start, find and stop the process (``fpga.cluster.frontend``).

The workspace's ``ComputeTarget`` calls these; nothing here knows about records or workspaces.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from . import specs

START_TIMEOUT = 60          # s for a started cluster process to listen


class NotRunning(RuntimeError):
    """The cluster process is not running (or did not start in time)."""


def prepare(run_dir, cert=None, key=None, ca=None):
    """Make a fresh cluster folder (0700) and, for TLS, write its certificate chain ``cert``, its key (0600) and
    the ``ca`` clients trust (PEM bytes; ``ca`` None for a certificate of your own)."""
    run_dir = Path(run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    run_dir.mkdir(mode=0o700)
    if cert is not None:
        (run_dir / specs.TLS_CERT_FILE).parent.mkdir(mode=0o700)
        if ca is not None:
            (run_dir / specs.TLS_CA_FILE).write_bytes(ca)
        (run_dir / specs.TLS_CERT_FILE).write_bytes(cert)
        specs.write_private(run_dir / specs.TLS_KEY_FILE, key)


def tls_enabled(run_dir) -> bool:
    """Whether the cluster serves TLS (it has a certificate)."""
    return (Path(run_dir) / specs.TLS_CERT_FILE).is_file()


def trusted_certificate(run_dir):
    """The certificate clients trust for the cluster: the CA of a generated certificate, else the certificate
    itself; None without TLS."""
    for name in (specs.TLS_CA_FILE, specs.TLS_CERT_FILE):
        p = Path(run_dir) / name
        if p.is_file():
            return p
    return None


def declare(run_dir, name, nodes, vcpus_per_node, services) -> int:
    """Write the cluster's spec with ``services`` (ServiceSpecs) as its next revision, and return that revision.
    Call it under ``specs.spec_lock(run_dir)``, holding it since the services were read from the records."""
    try:
        before = specs.read_optional(specs.ClusterSpec, run_dir)
    except Exception:  # noqa: BLE001 - written by an older accel_lib: replaced now
        before = None
    revision = (before.revision if before else 0) + 1
    specs.write(specs.ClusterSpec(name=name, nodes=nodes, vcpus_per_node=vcpus_per_node, services=services,
                                      tls=tls_enabled(run_dir), revision=revision), run_dir)
    return revision


def wait_applied(run_dir, revision, timeout=30):
    """If the cluster's process runs, wait up to ``timeout`` s for its supervisor to take spec ``revision``
    (replicas of new services started, of removed ones stopped)."""
    deadline = time.monotonic() + timeout
    while running(run_dir) and time.monotonic() < deadline:
        st = status(run_dir)
        if st is not None and st.revision >= revision:
            break
        time.sleep(0.02)


def has_spec(run_dir) -> bool:
    """Whether the folder holds a spec this accel_lib reads."""
    try:
        specs.read(specs.ClusterSpec, run_dir)
        return True
    except Exception:  # noqa: BLE001 - missing, or written by an older accel_lib
        return False


def alive(pid, run_dir) -> bool:
    """Whether ``pid`` is the cluster process of ``run_dir``."""
    import psutil
    try:
        p = psutil.Process(pid)
        return p.status() != psutil.STATUS_ZOMBIE and str(run_dir) in " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def endpoints(run_dir, wait=0.0):
    """Where the cluster process listens (``specs.Endpoints``), waiting up to ``wait`` s for it; NotRunning if it
    does not run."""
    deadline = time.monotonic() + wait
    while True:
        ep = specs.read_optional(specs.Endpoints, run_dir)
        if ep is not None and alive(ep.pid, run_dir):
            return ep
        if time.monotonic() >= deadline:
            raise NotRunning(f"the cluster process of {run_dir} is not running "
                             f"(log: {Path(run_dir) / specs.LOG_FILE})")
        time.sleep(0.05)


def running(run_dir) -> bool:
    """Whether the cluster's process runs."""
    ep = specs.read_optional(specs.Endpoints, run_dir)
    return ep is not None and alive(ep.pid, run_dir)


def status(run_dir):
    """What the running cluster process reports (``specs.ClusterStatus``), or None: while nothing is reported,
    when no process runs, or when the report is another process's (one killed before it could remove it)."""
    ep = specs.read_optional(specs.Endpoints, run_dir)
    if ep is None or not alive(ep.pid, run_dir):
        return None
    st = specs.read_optional(specs.ClusterStatus, run_dir)
    return st if st is not None and st.pid == ep.pid else None


def start(run_dir, timeout=START_TIMEOUT):
    """Start the cluster process if it is not running (idempotent); returns its endpoints once it listens."""
    if running(run_dir):
        return endpoints(run_dir)
    from . import frontend
    run_dir = Path(run_dir)
    for stale in (specs.ENDPOINTS_FILE, specs.STATUS_FILE):     # what a killed process could not remove
        (run_dir / stale).unlink(missing_ok=True)
    with open(run_dir / specs.LOG_FILE, "ab") as log:
        subprocess.Popen(frontend.command(sys.executable, run_dir), stdin=subprocess.DEVNULL, stdout=log,
                         stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return endpoints(run_dir, wait=timeout)


def _engines(run_dir) -> set:
    """The container engines the spec's services run replicas with."""
    try:
        spec = specs.read_optional(specs.ClusterSpec, run_dir)
    except Exception:  # noqa: BLE001 - an older or broken spec: no containers of ours
        return set()
    return spec.engines() if spec else set()


def stop(run_dir, timeout=20, engines=None):
    """Stop the cluster process and its replicas (SIGTERM, then SIGKILL after ``timeout`` s), and remove any
    container of the cluster that is left; the spec stays."""
    import psutil

    from . import running
    engines = _engines(run_dir) if engines is None else engines
    ep = specs.read_optional(specs.Endpoints, run_dir)
    if ep is not None and alive(ep.pid, run_dir):
        p = psutil.Process(ep.pid)
        p.terminate()
        try:
            p.wait(timeout)
        except psutil.TimeoutExpired:
            p.kill()
            p.wait(5)
    for engine in engines:                      # what a process killed before it could clean up left behind
        running.remove_labelled(engine, running.cluster_id(run_dir))


def remove(run_dir):
    """Delete the cluster: its spec goes (the process stops when it sees that), the process is stopped, its
    containers and its folder removed."""
    engines = _engines(run_dir)
    (Path(run_dir) / specs.SPEC_FILE).unlink(missing_ok=True)
    stop(run_dir, engines=engines)
    shutil.rmtree(run_dir, ignore_errors=True)
