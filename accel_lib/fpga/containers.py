"""THE owner of the container engine's command lines (podman or docker): which engine answers, building an image
from a build context (a local Debian base made with mmdebstrap when no registry is reachable, the pinned wheels in
a wheelhouse inside the context), running a replica in a container, and removing a cluster's containers.

Every container this project starts carries the label ``LABEL=<cluster id>``, so that what a killed front end left
behind is found and removed (``remove_labelled``), and the labels in $ACCEL_LIB_CONTAINER_LABELS ("k=v,k2=v2": your
own bookkeeping; the tests mark their session's containers so). A replica's container has no network
(``--network none``): it answers on Unix sockets in a folder of its own that is mounted into it, so only the front
end can call it.

This machine's kind of kernel needs podman to use runc and cgroupfs and no default ulimits; ``.ci/run`` writes that
into containers.conf (see the README). Nothing here is modeled: the engine builds and runs real containers.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

LABEL = "accel_lib.cluster"
BASE_TAG = "localhost/accel-lib-debian-base:bookworm"      # made by ensure_base from Debian's packages
HUB_BASE = "python:3.11-slim"                              # for a machine that reaches Docker Hub
BASE_PYTHON = "3.11"                                       # the Python of both bases (the wheelhouse's target)
CONTAINER_UID = 10001                                      # the Dockerfile's user
APP = "/app"                                               # the build context's place in the image
SOCKETS = "/run/accel"                                     # where a replica's socket folder is mounted
INFO_TIMEOUT = 20
BUILD_TIMEOUT = 1800


class EngineError(RuntimeError):
    """The engine failed; the message says what it printed and how to look further."""


def _run(cmd, timeout=60, check=True):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and r.returncode:
        raise EngineError(f"{' '.join(map(str, cmd[:3]))} ... failed (exit {r.returncode}): "
                          f"{(r.stderr or r.stdout).strip()[-1500:]}")
    return r


_ANSWERS = {}


def find_engine(prefer=None):
    """(path of an engine that answers, None) or (None, why none does): ``prefer`` ("podman", "docker" or a path),
    else $ACCEL_LIB_CONTAINER_ENGINE, else podman, then docker. An engine on PATH whose daemon is down does not
    answer."""
    names = [prefer] if prefer else ([os.environ["ACCEL_LIB_CONTAINER_ENGINE"]]
                                     if os.environ.get("ACCEL_LIB_CONTAINER_ENGINE") else ["podman", "docker"])
    why = []
    for name in names:
        path = shutil.which(name)
        if path is None:
            why.append(f"{name} is not installed")
            continue
        if path not in _ANSWERS:
            try:
                r = _run([path, "info"], timeout=INFO_TIMEOUT, check=False)
                _ANSWERS[path] = None if r.returncode == 0 else (r.stderr or r.stdout).strip().splitlines()[-1:]
            except (OSError, subprocess.TimeoutExpired) as e:
                _ANSWERS[path] = [str(e)]
        if _ANSWERS[path] is None:
            return path, None
        why.append(f"{name} does not answer ({' '.join(_ANSWERS[path])[:200]})")
    return None, "; ".join(why)


def engine_name(engine) -> str:
    return Path(engine).name


def image_exists(engine, tag) -> bool:
    """Whether the engine holds an image tagged ``tag``."""
    return _run([engine, "image", "inspect", tag], check=False).returncode == 0


def remove_image(engine, tag):
    """Remove the image ``tag`` (a no-op when it is gone)."""
    _run([engine, "rmi", "-f", tag], check=False, timeout=120)


def cache_dir() -> Path:
    """Where the Debian base and the wheelhouses are kept between builds ($ACCEL_LIB_CACHE, else ~/.cache/accel_lib)."""
    return Path(os.environ.get("ACCEL_LIB_CACHE") or Path.home() / ".cache" / "accel_lib")


def ensure_base(engine, log=print):
    """The base image to build from: the local Debian base if the engine has it, or made now with mmdebstrap
    (Debian's packages, about a minute once; the tarball cached), else Docker Hub's python image."""
    if image_exists(engine, BASE_TAG):
        return BASE_TAG
    tar = cache_dir() / "debian-bookworm-python3.tar"
    if not tar.is_file():
        if shutil.which("mmdebstrap") is None:
            log(f"no local base image and no mmdebstrap: building FROM {HUB_BASE} (needs Docker Hub)")
            return HUB_BASE
        tar.parent.mkdir(parents=True, exist_ok=True)
        log("making a Debian base image from Debian's packages with mmdebstrap (about a minute, once)")
        tmp = tar.with_suffix(f".tmp{os.getpid()}")
        _run(["mmdebstrap", "--variant=minbase", "--include=python3,python3-pip", "bookworm", str(tmp)],
             timeout=900)
        os.replace(tmp, tar)
    _run([engine, "import", str(tar), BASE_TAG], timeout=300)
    log(f"imported {tar.name} as {BASE_TAG}")
    return BASE_TAG


def wheelhouse(requirements: Path, dest: Path, log=print):
    """Copy into ``dest`` the wheels of ``requirements`` for the bases' Python (``pip download``, only binary
    wheels, for Linux x86-64 with glibc up to Debian bookworm's); kept in the cache per set of requirements, so a
    second build needs no network."""
    text = Path(requirements).read_text()
    cached = cache_dir() / f"wheels-{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    if not (cached / ".complete").is_file():
        log("downloading the server's pinned wheels (once per set of requirements)")
        tmp = cached.with_name(cached.name + f".tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        platforms = [f"manylinux_2_{v}_x86_64" for v in range(17, 37)] + ["manylinux2014_x86_64"]
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:", "--python-version",
              BASE_PYTHON, "--implementation", "cp", *[a for p in platforms for a in ("--platform", p)],
              "-r", str(requirements), "-d", str(tmp)], timeout=900)
        (tmp / ".complete").write_text(text)
        shutil.rmtree(cached, ignore_errors=True)
        os.replace(tmp, cached)
    dest.mkdir(parents=True, exist_ok=True)
    for w in cached.glob("*.whl"):
        shutil.copyfile(w, dest / w.name)


def build(engine, context, tag, base, log_file, on_step=None, pip_args=""):
    """Build ``context`` into the image ``tag`` FROM ``base`` (pip given ``pip_args``: "--no-index" offline), its
    output streamed to ``log_file``; ``on_step(n, of)`` on each Dockerfile step. EngineError (with the log's end)
    when it fails."""
    import re
    cmd = [engine, "build", "--build-arg", f"BASE={base}", "--build-arg", f"PIP_ARGS={pip_args}", "-t", tag,
           str(context)]
    if engine_name(engine) == "podman":
        cmd[2:2] = ["--network", "none"]                   # the wheelhouse is in the context: no network needed
    with open(log_file, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + BUILD_TIMEOUT
        tail = []
        try:
            for line in proc.stdout:
                log.write(line)
                tail = (tail + [line.rstrip()])[-20:]
                m = re.match(r"(?:STEP|Step) (\d+)/(\d+)", line)
                if m and on_step:
                    on_step(int(m.group(1)), int(m.group(2)))
                if time.monotonic() > deadline:
                    raise EngineError(f"the build took more than {BUILD_TIMEOUT} s")
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if code:
        raise EngineError(f"{engine_name(engine)} build failed (exit {code}):\n" + "\n".join(tail))


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


def main(argv=None):
    """``python -m accel_lib.fpga.containers base``: make the local Debian base image now (CI does it once)."""
    import argparse
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("what", choices=["base"])
    p.add_argument("--engine")
    args = p.parse_args(argv)
    engine, why = find_engine(args.engine)
    if engine is None:
        print(f"no container engine: {why}", file=sys.stderr)
        return 3
    print(ensure_base(engine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
