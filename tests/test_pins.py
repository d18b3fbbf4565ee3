"""environment.yml and binder/ carry the same pins as pyproject.toml."""
import os
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    return {m.group(1).lower(): m.group(3) for m in (re.match(r"^\s*-?\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s#]+)",
                                                              l) for l in lines) if m}


def test_environment_files_agree_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _pins(project["dependencies"] + project["optional-dependencies"]["notebooks"])
    for env in (ROOT / "environment.yml", ROOT / "binder" / "environment.yml"):
        assert _pins(env.read_text().splitlines()) == wanted, env
    post = ROOT / "binder" / "postBuild"
    text = post.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "\nset -e\n" in text and "pip install" in text
    assert os.access(post, os.X_OK)                              # repo2docker runs postBuild only if executable
    assert "accel_lib.fpga.device.kernel build --optional" in text      # a failed build never fails the image


def test_the_installed_packages_are_the_pinned_ones():
    """No install step (a client library pulling in its own protobuf, say) may silently replace a pin."""
    from importlib import metadata
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins(project["dependencies"] + project["optional-dependencies"]["test"])
    assert "tritonclient" in pins and "protobuf" in pins
    wrong = {name: (want, metadata.version(name)) for name, want in pins.items() if metadata.version(name) != want}
    assert not wrong, f"installed versions differ from the pins (pin, installed): {wrong}; run make venv again"
