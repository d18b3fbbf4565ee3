"""binder/ as Binder's own tool reads it: repo2docker writes the image's Dockerfile without building (offline)."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _apt_packages():
    return [l.strip() for l in (ROOT / "binder" / "apt.txt").read_text().splitlines()
            if l.strip() and not l.lstrip().startswith("#")]


def test_repo2docker_reads_binder_and_its_dockerfile_names_our_environment(tmp_path):
    r2d = Path(sys.executable).parent / "repo2docker"
    assert r2d.exists(), "repo2docker is pinned in pyproject.toml's test extra: run make venv again"
    src = tmp_path / "repo"                 # what Binder clones: the tracked files, not this tree's build/ or venv
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=60)
    names = [n for n in files.stdout.decode().split("\0") if n] if files.returncode == 0 else []
    if names:
        for name in names:
            if (ROOT / name).is_file():
                (src / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, src / name)
    else:                                   # not a git checkout: binder/ and the files it names
        shutil.copytree(ROOT / "binder", src / "binder")
    r = subprocess.run([str(r2d), "--no-build", "--no-run", "--debug", str(src)], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    docker = out[out.index("FROM "):]
    py = re.search(r"^\s*- python=(\S+)", (ROOT / "binder" / "environment.yml").read_text(), re.M).group(1)
    assert f"conda environment for python={py}" in out, out[:2000]
    assert 'env update -p ${NB_PYTHON_PREFIX} --file "binder/environment.yml"' in docker
    assert "./binder/postBuild" in docker
    apt = re.search(r"apt-get install --yes --no-install-recommends ([^&]+)&&", docker)
    assert apt and set(_apt_packages()) <= set(apt.group(1).split()), docker[:3000]
    assert "perl" in _apt_packages()       # notebook 10's Verilator: its front end is a Perl script
