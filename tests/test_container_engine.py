"""The container path on a new machine, on a scratch store and an empty cache: the Debian base made as a real
tarball (over a broken cache entry, as an older release left it), an engine that answers but cannot start a
container (the image stays a build context, said why with the fix), and engines that hang (bounded waits).

Where podman or mmdebstrap is missing, the tests that need them are skipped, saying how to install them.
"""
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from accel_lib import AccelContainerImage, Image
from accel_lib.fpga.cluster import containers

PODMAN = shutil.which("podman")
needs_podman = pytest.mark.skipif(PODMAN is None or shutil.which("mmdebstrap") is None,
                                  reason="needs podman and mmdebstrap (apt-get install podman runc mmdebstrap, as "
                                         ".ci/run does with CI=true)")
# podman refuses to raise a limit past the kernel's fs.nr_open (at most 2^20 by default) on any machine: the
# failure Debian's defaults meet on a kernel like this one ("error setting rlimit type 7"), made certain
TOO_MANY_FILES = 1 << 22


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """An empty cache and a private podman store, used by the environment of this module's tests only."""
    folder = tmp_path_factory.mktemp("scratch")
    env = {"ACCEL_LIB_CACHE": str(folder / "cache"),
           "CONTAINERS_STORAGE_CONF": str(containers.store(folder / "store"))}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield folder
    if PODMAN:
        subprocess.run([PODMAN, "rmi", "-af"], capture_output=True, timeout=300)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k)
        else:
            os.environ[k] = v
    shutil.rmtree(folder, ignore_errors=True)


@needs_podman
def test_a_broken_cache_entry_is_rebuilt_as_a_real_tarball_into_an_empty_store(scratch):
    engine = containers.find_engine("podman")[0]
    assert containers.graph_root(engine).startswith(str(scratch)), "the test's store is not the scratch one"
    assert not containers.image_exists(engine, containers.BASE_TAG)
    tar = containers.cache_dir() / containers.BASE_TAR
    (tar / "etc").mkdir(parents=True)                  # what the release before this one left: a directory
    assert not containers.base_tar_ok(tar)
    said = []
    assert containers.ensure_base(engine, log=said.append) == containers.BASE_TAG
    assert any("removing the broken cache entry" in s for s in said), said
    assert tar.is_file() and tarfile.is_tarfile(tar) and containers.base_tar_ok(tar)
    assert containers.image_exists(engine, containers.BASE_TAG)
    assert not list(tar.parent.glob(".*tmp*")), "a temporary file was left in the cache"
    with open(tar, "r+b") as f:                         # a truncated entry is not good either
        f.truncate(tar.stat().st_size // 2)
    assert not containers.base_tar_ok(tar)


@needs_podman
def test_an_engine_that_cannot_start_a_container_leaves_a_build_context(scratch, converted, monkeypatch):
    engine = containers.find_engine("podman")[0]
    base = containers.ensure_base(engine, log=lambda _: None)
    bad = scratch / "containers.conf"
    bad.write_text(containers.CONTAINERS_CONF.replace("default_ulimits = []",
                                                      f'default_ulimits = ["nofile={TOO_MANY_FILES}:{TOO_MANY_FILES}"]'))
    monkeypatch.setenv("CONTAINERS_CONF", str(bad))
    why = containers.cannot_run(engine, base)
    assert why and "rlimit" in why and "default_ulimits = []" in why and "\n" not in why, why
    ws, _, op = converted
    img = Image.create("no-engine", [op.result], AccelContainerImage.image_configuration(), ws)
    try:
        img.wait_for_creation()
        assert not img.container_image                  # a build context, so replicas will run as processes
        log = (img.context / "build.log").read_text()
        assert img.build_note.startswith("container build skipped: podman cannot start a container here")
        assert img.build_note in log and "replicas run as processes" in img.build_note
    finally:
        img.delete()


def _fake_engine(tmp_path, script):
    path = tmp_path / "hung-engine"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


def test_an_engine_that_hangs_is_not_waited_for(tmp_path, monkeypatch, converted):
    """An engine whose ``info`` never answers is no engine; one that answers but whose container never starts is
    one that cannot run containers; both within their bounds."""
    monkeypatch.setattr(containers, "INFO_TIMEOUT", 2)
    engine = _fake_engine(tmp_path, "exec sleep 600\n")
    found, why = containers.find_engine(engine)
    assert found is None and "did not answer within 2 s" in why, why
    ws, _, op = converted
    img = Image.create("hung-engine", [op.result], AccelContainerImage.image_configuration(), ws)
    try:
        img.wait_for_creation(engine=engine)
        # one readable line in the notebook; the engine's own words in the build log
        assert not img.container_image and "hung-engine does not answer. " in img.build_note
        assert img.build_note.startswith("container build skipped: ") and "\n" not in img.build_note
        assert "did not answer within 2 s" in (img.context / "build.log").read_text()
    finally:
        img.delete()

    monkeypatch.setattr(containers, "RUN_TIMEOUT", 2)
    engine = _fake_engine(tmp_path, 'case "$1" in run) exec sleep 600;; *) exit 0;; esac\n')
    why = containers.cannot_run(engine, "any-image")
    assert why.startswith("hung-engine cannot start a container here") and "within 2 s" in why, why


def test_containers_conf_is_printed_by_its_owner():
    r = subprocess.run(["python3", str(Path(containers.__file__)), "conf"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout == containers.CONTAINERS_CONF


def test_a_store_at_a_deep_path_keeps_a_short_run_root_of_its_own_removed_with_it(tmp_path):
    """podman's exit command refuses a run root over 50 characters (then no container is restarted or cleaned
    up): a store's run root stays short wherever the store is, is its own, and goes when the store does."""
    deep = tmp_path / ("a-checkout-at-a-long-path-" * 4) / "build" / "test" / "containers"
    conf = containers.store(deep)
    text = conf.read_text()
    runroot = containers.short_runroot(deep)
    assert len(str(deep)) > 100 and len(str(runroot)) <= containers.RUNROOT_LIMIT
    assert f'runroot = "{runroot}"' in text and f'graphroot = "{deep / "storage"}"' in text
    assert (deep / "run").resolve() == runroot and runroot.is_dir() and (runroot.stat().st_mode & 0o777) == 0o700
    assert containers.short_runroot(tmp_path / "another") != runroot
    assert containers.store(deep) == conf and (deep / "run").resolve() == runroot        # made again: the same
    r = subprocess.run(["python3", str(Path(containers.__file__)), "store", "--remove", str(deep)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not deep.exists() and not runroot.exists(), r.stderr


def test_a_run_root_is_private_and_found_again_by_its_link(tmp_path, monkeypatch):
    import tempfile
    elsewhere = Path(tempfile.mkdtemp(prefix="xdg", dir="/tmp"))      # short: a run root's path has 50 characters
    try:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(elsewhere))
        containers.store(tmp_path / "s1")
        runroot = containers.short_runroot(tmp_path / "s1")
        monkeypatch.delenv("XDG_RUNTIME_DIR")             # removed from another shell: the link says where it is
        containers.remove_store(tmp_path / "s1")
        assert not runroot.exists() and not (tmp_path / "s1").exists()
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(elsewhere))
        taken = containers.short_runroot(tmp_path / "s2")
        taken.mkdir()                                     # a name in a shared folder that someone made first
        taken.chmod(0o755)
        with pytest.raises(containers.EngineError, match=r"is not a private folder of this user's \(owner uid \d+, "
                                                          r"mode 755\)"):
            containers.store(tmp_path / "s2")
    finally:
        shutil.rmtree(elsewhere, ignore_errors=True)


def test_a_run_root_podman_cannot_clean_up_in_is_refused_with_the_limit_named(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / ("x" * 40)))
    with pytest.raises(containers.EngineError, match=r"podman refuses more than 50 when a container exits"):
        containers.store(tmp_path / "store")
    if PODMAN is None:
        return
    conf = tmp_path / "long.conf"                      # a user's own storage.conf, with a run root too long
    conf.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{tmp_path / "g"}"\n'
                    f'runroot = "{tmp_path / ("r" * 60)}"\n')
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(conf))
    base, why = containers.ready(PODMAN, log=lambda _: None)
    assert base is None and "refuses more than 50 when a container exits" in why
    assert "containers are neither restarted nor removed" in why and "\n" not in why, why


@needs_podman
def test_a_killed_container_is_restarted_in_a_store_at_a_deep_path(scratch, monkeypatch):
    """What failed from a clone at a longer path: with the run root in the store, podman's cleanup refused it and a
    killed container stayed stopped (restart policy or not)."""
    import signal
    import time
    deep = scratch / ("a-checkout-at-a-long-path-" * 3) / "build" / "test" / "containers"
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(containers.store(deep)))
    engine = containers.find_engine("podman")[0]
    assert containers.graph_root(engine).startswith(str(deep))
    base = containers.ensure_base(engine, log=lambda _: None)      # imported from the module's cache
    name = "restart-" + os.urandom(3).hex()
    labels = [a for kv in os.environ.get("ACCEL_LIB_CONTAINER_LABELS", "").split(",") if kv for a in ("--label", kv)]
    subprocess.run([PODMAN, "run", "-d", "--name", name, "--network", "none", "--restart", "always", *labels, base,
                    "sleep", "600"], check=True, capture_output=True, timeout=120)
    try:
        pid = int(subprocess.run([PODMAN, "inspect", "--format", "{{.State.Pid}}", name], capture_output=True,
                                 text=True, timeout=60, check=True).stdout)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            state = subprocess.run([PODMAN, "inspect", "--format", "{{.State.Status}} {{.RestartCount}}", name],
                                   capture_output=True, text=True, timeout=60).stdout.split()
            if state and state[0] == "running" and int(state[1]) >= 1:
                break
            assert time.monotonic() < deadline, f"the killed container was not restarted: {state}"
            time.sleep(0.5)
    finally:
        subprocess.run([PODMAN, "rm", "-f", "-t", "0", name], capture_output=True, timeout=120)
        subprocess.run([PODMAN, "rmi", "-af"], capture_output=True, timeout=300)
        monkeypatch.undo()
        containers.remove_store(deep)
