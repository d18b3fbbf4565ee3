"""THE owner of the container engine's command lines (podman or docker): which engine answers, building an image
from a build context (a local Debian base made with mmdebstrap when no registry is reachable, the pinned wheels in
a wheelhouse inside the context) and the image store. Running a cluster's replicas in containers is ``running``'s.

An engine that answers ``info`` may still be unable to start a container (Debian's podman at its defaults on a
kernel like this one: "error setting rlimit type 7"), so ``cannot_run`` starts a throwaway container of the base
before anything is built on it, and says why and how to fix it (``containers_conf``: the lines ``.ci/run`` writes).
Every call to the engine is bounded in time. ``store`` makes a private image store (a storage.conf for
$CONTAINERS_STORAGE_CONF): the tests and CI use one under build/, so every run takes a new machine's path. Nothing
here is modeled: the engine builds and runs real containers.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

BASE_TAG = "localhost/accel-lib-debian-base:bookworm"      # made by ensure_base from Debian's packages
HUB_BASE = "python:3.11-slim"                              # for a machine that reaches Docker Hub
BASE_PYTHON = "3.11"                                       # the Python of both bases (the wheelhouse's target)
# The image's contract, read by the Dockerfile (image.py), the engine's command lines here and the manifests
# (kubernetes.py): who runs, where, with which interpreter, on which port.
CONTAINER_UID = 10001                                      # the Dockerfile's user ...
CONTAINER_USER = "accel"
CONTAINER_HOME = "/home/accel"                             # ... and its home (ONNX Runtime writes there at import)
APP = "/app"                                               # the build context's place in the image
PYTHON = "python3"                                         # the interpreter (both bases have it; Debian's no "python")
PORT = 50051                                               # a replica's gRPC port over TCP (Docker, Kubernetes)
REST_PORT = 8080                                           # its Open Inference Protocol over HTTP (KServe's port)
INFO_TIMEOUT = 20                                          # `engine info`: an engine slower than this hangs
RUN_TIMEOUT = 120                                          # the throwaway container of cannot_run
BASE_TIMEOUT = 900                                         # mmdebstrap (Debian's packages: about 20 s here)
BUILD_TIMEOUT = 1800
BASE_TAR = "debian-bookworm-python3.tar"                   # the base's cache entry (a tarball, checked)
RUNROOT_LIMIT = 50                                         # podman's longest --runroot (its exit command refuses more)
CONTAINERS_CONF = """[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
"""                                                        # what podman needs on this kind of kernel (see cannot_run)


class EngineError(RuntimeError):
    """The engine failed; the message says what it printed and how to look further."""


def _run(cmd, timeout=60, check=True):
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise EngineError(f"{' '.join(map(str, cmd[:3]))} ... did not answer within {timeout} s") from None
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
            except (OSError, EngineError) as e:
                _ANSWERS[path] = [str(e)]
        if _ANSWERS[path] is None:
            return path, None
        why.append(f"{name} does not answer ({' '.join(_ANSWERS[path])[:200]})")
    return None, "; ".join(why)


def engine_name(engine) -> str:
    return Path(engine).name


def engine_version(engine) -> str:
    """The engine's version ("" when it does not say)."""
    r = _run([engine, "--version"], timeout=INFO_TIMEOUT, check=False)
    return r.stdout.split()[-1] if r.returncode == 0 and r.stdout.split() else ""


def image_exists(engine, tag) -> bool:
    """Whether the engine holds an image tagged ``tag``."""
    return _run([engine, "image", "inspect", tag], check=False).returncode == 0


def remove_image(engine, tag):
    """Remove the image ``tag`` (a no-op when it is gone)."""
    _run([engine, "rmi", "-f", tag], check=False, timeout=120)


def cache_dir() -> Path:
    """Where the Debian base and the wheelhouses are kept between builds ($ACCEL_LIB_CACHE, else ~/.cache/accel_lib)."""
    return Path(os.environ.get("ACCEL_LIB_CACHE") or Path.home() / ".cache" / "accel_lib")


def base_tar_ok(tar: Path) -> bool:
    """Whether the base's cache entry is what ensure_base writes: a tar file that holds python3, whose size its
    marker file recorded when it was made (a directory, a truncated or foreign file is not)."""
    mark = tar.with_name(tar.name + ".ok")
    try:
        return tar.is_file() and not tar.is_symlink() and mark.read_text().strip() == str(tar.stat().st_size)
    except OSError:
        return False


def _discard(path: Path):
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def make_base_tar(tar: Path, log=print):
    """Write the Debian base (minbase with python3 and pip) to ``tar`` with mmdebstrap, as a tarball, checked, then
    marked good; a broken entry left there before is removed first."""
    import tarfile
    for old in (tar, tar.with_name(tar.name + ".ok")):
        if old.exists() or old.is_symlink():
            log(f"removing the broken cache entry {old.name} (not the tarball this project writes)")
            _discard(old)
    tar.parent.mkdir(parents=True, exist_ok=True)
    tmp = tar.with_name(f".{tar.stem}.tmp{os.getpid()}.tar")      # mmdebstrap picks its format by the name
    _discard(tmp)
    log("making a Debian base image from Debian's packages with mmdebstrap (once per machine; the slowest step "
        "of a first build)")
    t0 = time.monotonic()
    try:
        _run(["mmdebstrap", "--variant=minbase", "--format=tar", "--include=python3,python3-pip", "bookworm",
              str(tmp)], timeout=BASE_TIMEOUT)
        with tarfile.open(tmp) as t:
            names = set(t.getnames())
        if not names & {"./usr/bin/python3", "usr/bin/python3"}:
            raise EngineError(f"mmdebstrap wrote {tmp.name} without usr/bin/python3")
        os.replace(tmp, tar)
    except (OSError, tarfile.TarError) as e:
        raise EngineError(f"mmdebstrap's output is not a base tarball: {e}") from None
    finally:
        _discard(tmp)
    tar.with_name(tar.name + ".ok").write_text(f"{tar.stat().st_size}\n")
    log(f"made {tar.name} ({tar.stat().st_size / 2**20:.0f} MiB) in {time.monotonic() - t0:.0f} s")


def ensure_base(engine, log=print):
    """The base image to build from: the local Debian base if the engine has it, or imported from the cached
    tarball (made now with mmdebstrap from Debian's packages when the entry is missing or broken), else Docker
    Hub's python image (needs Docker Hub)."""
    if image_exists(engine, BASE_TAG):
        return BASE_TAG
    tar = cache_dir() / BASE_TAR
    if not base_tar_ok(tar):
        if shutil.which("mmdebstrap") is None:
            log(f"no local base image and no mmdebstrap: building FROM {HUB_BASE} (needs Docker Hub)")
            return HUB_BASE
        make_base_tar(tar, log=log)
    _run([engine, "import", str(tar), BASE_TAG], timeout=300)
    log(f"imported {tar.name} as {BASE_TAG}")
    return BASE_TAG


def containers_conf_hint() -> str:
    """The fix for podman that cannot start a container on a kernel like this one, in one line."""
    lines = "; ".join(x for x in CONTAINERS_CONF.splitlines() if x.strip())
    return ("put these lines in /etc/containers/containers.conf (or ~/.config/containers/containers.conf), as "
            f"`python3 accel_lib/fpga/cluster/containers.py conf` prints them: {lines}")


_RUNS = {}


def cannot_run(engine, image) -> str | None:
    """Why ``engine`` cannot start a container of ``image`` here, in one line with the fix, or None when a
    throwaway container (``true``, no network) ran; asked once per engine, image and store in a process."""
    key = (engine, image, os.environ.get("CONTAINERS_STORAGE_CONF"), os.environ.get("CONTAINERS_CONF"))
    if key not in _RUNS:
        name = engine_name(engine)
        try:
            r = _run([engine, "run", "--rm", "--network", "none", image, "true"], timeout=RUN_TIMEOUT, check=False)
            err = " ".join((r.stderr or r.stdout).split())
            _RUNS[key] = None if r.returncode == 0 else (
                f"{name} cannot start a container here (exit {r.returncode}: {err[-300:]})")
        except (OSError, EngineError) as e:
            _RUNS[key] = f"{name} cannot start a container here ({e})"
        if _RUNS[key] and name == "podman":
            _RUNS[key] += "; to fix it, " + containers_conf_hint()
        elif _RUNS[key]:
            _RUNS[key] += f"; see `{name} info` and the engine's own log"
    return _RUNS[key]


def ready(engine, log=print) -> tuple:
    """(base image, None) when ``engine`` can build and run containers here, else (None, why in one line): a run
    root podman can clean up in (runroot_too_long), the base made or found (ensure_base), then a throwaway
    container of it (cannot_run)."""
    try:
        why = runroot_too_long(engine)
    except EngineError as e:
        return None, f"{engine_name(engine)} does not say where its run root is ({e})"
    if why:
        return None, why
    try:
        base = ensure_base(engine, log=log)
    except EngineError as e:
        return None, f"no base image to build from ({e})"
    why = cannot_run(engine, base)
    return (None, why) if why else (base, None)


def store(folder) -> Path:
    """A private image store in ``folder``: writes its storage.conf (overlay, its graph root inside, its run root
    short: ``short_runroot``, linked as ``folder/run``) and returns its path, for $CONTAINERS_STORAGE_CONF (podman;
    docker has one store per daemon). ``remove_store`` removes both."""
    folder = Path(folder).resolve()
    runroot = short_runroot(folder)
    if len(str(runroot)) > RUNROOT_LIMIT:
        raise EngineError(f"the store's run root {runroot} is {len(str(runroot))} characters; podman refuses more "
                          f"than {RUNROOT_LIMIT} when a container exits. Set $XDG_RUNTIME_DIR to a shorter folder.")
    (folder / "storage").mkdir(parents=True, exist_ok=True)
    runroot.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = runroot.lstat()                                # a name in /tmp anyone could have taken first
    if runroot.is_symlink() or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise EngineError(f"the store's run root {runroot} is not a private folder of this user's (owner uid "
                          f"{st.st_uid}, mode {st.st_mode & 0o777:o}); remove it and make the store again.")
    link = folder / "run"
    if link.is_dir() and not link.is_symlink():        # a store made by an older release: its run root inside
        shutil.rmtree(link, ignore_errors=True)
    if link.is_symlink() and Path(os.readlink(link)) != runroot:    # made where $XDG_RUNTIME_DIR was another
        shutil.rmtree(Path(os.readlink(link)), ignore_errors=True)
        link.unlink()
    if not link.is_symlink():
        link.symlink_to(runroot)
    conf = folder / "storage.conf"
    conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{folder / "storage"}"\nrunroot = "{runroot}"\n')
    return conf


def short_runroot(folder) -> Path:
    """The run root of the store in ``folder``: a folder of its own named from the store's path, under
    $XDG_RUNTIME_DIR or /tmp, short wherever the store is (podman's limit is RUNROOT_LIMIT characters)."""
    tag = hashlib.sha256(str(Path(folder).resolve()).encode()).hexdigest()[:12]
    return Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp") / f"accel-run-{tag}"


def remove_store(folder):
    """Remove the store ``store`` made in ``folder``, its run root included (the one its link names; nothing when
    it is not there)."""
    folder = Path(folder).resolve()
    link = folder / "run"
    shutil.rmtree(Path(os.readlink(link)) if link.is_symlink() else short_runroot(folder), ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)


def runroot_too_long(engine) -> str | None:
    """Why podman cannot clean up or restart containers in its store here (a run root over RUNROOT_LIMIT
    characters, which its exit command refuses), or None."""
    if engine_name(engine) != "podman":
        return None
    r = _run([engine, "info", "--format", "{{.Store.RunRoot}}"], timeout=INFO_TIMEOUT, check=False)
    root = r.stdout.strip()
    if r.returncode or len(root) <= RUNROOT_LIMIT:
        return None
    return (f"podman's run root {root} is {len(root)} characters, and podman refuses more than {RUNROOT_LIMIT} when a "
            "container exits (its cleanup fails, so containers are neither restarted nor removed); set a shorter "
            "runroot in your storage.conf, or make a store with "
            "`python3 accel_lib/fpga/cluster/containers.py store FOLDER`")


def graph_root(engine) -> str:
    """Where the engine keeps its images ("" when it does not say)."""
    fmt = "{{.Store.GraphRoot}}" if engine_name(engine) == "podman" else "{{.DockerRootDir}}"
    r = _run([engine, "info", "--format", fmt], timeout=INFO_TIMEOUT, check=False)
    return r.stdout.strip() if r.returncode == 0 else ""


def image_created(engine, tag) -> float | None:
    """When the image ``tag`` was made (seconds since the epoch), None when the engine has no such image."""
    from datetime import datetime
    r = _run([engine, "image", "inspect", "--format", "{{.Created}}", tag], check=False)
    if r.returncode:
        return None
    text = r.stdout.strip().replace(" +0000 UTC", "Z").replace(" ", "T", 1)    # podman's form, then docker's ISO
    whole, _, rest = text.partition(".")
    frac = "".join(ch for ch in rest if ch.isdigit())
    return datetime.fromisoformat(whole.rstrip("Z") + "+00:00").timestamp() + float(f"0.{frac or 0}")


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


def main(argv=None):
    """``python3 accel_lib/fpga/cluster/containers.py base``: make the local Debian base image now; ``conf``: print the
    containers.conf that podman needs on this kind of kernel; ``store FOLDER``: make a private image store there and
    print its storage.conf's path (for $CONTAINERS_STORAGE_CONF); ``store --remove FOLDER``: remove it."""
    import argparse
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("what", choices=["base", "conf", "store"])
    p.add_argument("folder", nargs="?", help="the store's folder (store)")
    p.add_argument("--remove", action="store_true", help="store: remove the store in FOLDER and its run root")
    p.add_argument("--engine")
    args = p.parse_intermixed_args(argv)
    if args.what == "conf":
        print(CONTAINERS_CONF, end="")
        return 0
    if args.what == "store":
        if not args.folder:
            p.error("store needs a FOLDER")
        if args.remove:
            remove_store(args.folder)
        else:
            print(store(args.folder))
        return 0
    engine, why = find_engine(args.engine)
    if engine is None:
        print(f"no container engine: {why}", file=sys.stderr)
        return 3
    print(ensure_base(engine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
