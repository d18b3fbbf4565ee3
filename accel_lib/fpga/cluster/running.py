"""A cluster's replicas in containers: the run command of one (no network, its socket folder mounted, labelled
with its cluster), and finding, killing and removing them by that label.

Every container this project starts carries the label ``LABEL=<cluster id>``, so that what a killed front end left
behind is found and removed (``remove_labelled``), and the labels in $ACCEL_LIB_CONTAINER_LABELS ("k=v,k2=v2": your
own bookkeeping; the tests mark their session's containers so). A replica's container has no network
(``--network none``): it answers on Unix sockets in a folder of its own that is mounted into it, so only the front
end can call it.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .containers import APP, CONTAINER_UID, _run, engine_name

LABEL = "accel_lib.cluster"
SOCKETS = "/run/accel"                                     # where a replica's socket folder is mounted


def cluster_id(run_dir) -> str:
    """The label value of a cluster's containers (from its folder, which is unique on this machine)."""
    return hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]


def _labels(cluster) -> list:
    """``--label`` arguments: the cluster's, and those of $ACCEL_LIB_CONTAINER_LABELS."""
    extra = [x.strip() for x in os.environ.get("ACCEL_LIB_CONTAINER_LABELS", "").split(",") if "=" in x]
    return [a for label in [f"{LABEL}={cluster}", *extra] for a in ("--label", label)]


def replica_run_command(engine, image, name, cluster, socket_dir, server_cmd) -> list:
    """``engine run`` for one replica: no network, its socket folder mounted at SOCKETS, labelled with its cluster,
    removed when it exits; the image's non-root user (root in the container never), or, for a user who is not root
    on the host, that user mapped in (rootless podman: ``--userns keep-id``)."""
    cmd = [engine, "run", "--rm", "--name", name, *_labels(cluster), "--network", "none",
           "--volume", f"{socket_dir}:{SOCKETS}", "--workdir", APP, "--env", "PYTHONUNBUFFERED=1",
           "--env", f"PYTHONPATH={APP}"]
    if os.geteuid() != 0 and engine_name(engine) == "podman":
        cmd += ["--userns", "keep-id", "--user", f"{os.getuid()}:{os.getgid()}"]
    return cmd + [image, *server_cmd]


def run_detached(engine, image, name, cmd, cluster="standalone") -> str:
    """Start ``cmd`` in a container of ``image`` in the background on the host's network, as ``docker run -d
    --network host`` would (a replica in TCP mode, checking keys itself); labelled, so that it is found and
    removed like a cluster's. Returns its name."""
    _run([engine, "run", "-d", "--rm", "--name", name, *_labels(cluster), "--network", "host", image, *cmd],
         timeout=120)
    return name


def prepare_socket_dir(path: Path) -> Path:
    """A replica container's socket folder: private (0700), owned by the container's user when we are root."""
    path.mkdir(mode=0o700)
    if os.geteuid() == 0:
        os.chown(path, CONTAINER_UID, CONTAINER_UID)
    return path


def kill(engine, name):
    """Kill one container (as a crash would: SIGKILL)."""
    _run([engine, "kill", name], check=False)


def remove(engine, name):
    """Remove one container, stopped or not (a no-op when it is gone)."""
    _run([engine, "rm", "-f", "-t", "2", name], check=False, timeout=120)


def labelled(engine, cluster=None, label=None) -> list[str]:
    """The names of the containers (running or not) of a cluster (of every cluster with ``cluster`` None), or
    those with the label ``label`` ("k=v")."""
    flt = f"label={label}" if label else (f"label={LABEL}={cluster}" if cluster else f"label={LABEL}")
    r = _run([engine, "ps", "-a", "--filter", flt, "--format", "{{.Names}}"], check=False)
    return [n for n in r.stdout.split() if n] if r.returncode == 0 else []


def run_once(engine, image, *cmd, timeout=180):
    """Run ``cmd`` in a fresh container of ``image`` without network, removed after; returns (exit code, stdout,
    stderr)."""
    r = _run([engine, "run", "--rm", "--network", "none", image, *cmd], timeout=timeout, check=False)
    return r.returncode, r.stdout, r.stderr


def remove_labelled(engine, cluster=None) -> list[str]:
    """Remove the containers of a cluster (every cluster's with ``cluster`` None); returns their names."""
    flt = f"label={LABEL}={cluster}" if cluster else f"label={LABEL}"
    r = _run([engine, "ps", "-aq", "--filter", flt], check=False)
    ids = r.stdout.split() if r.returncode == 0 else []
    if ids:
        _run([engine, "rm", "-f", "-t", "2", *ids], check=False, timeout=120)
    return ids
