"""environment.yml and binder/ carry the same pins as pyproject.toml."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines):
    return {m.group(1).lower(): m.group(2) for m in (re.match(r"^\s*-?\s*([A-Za-z0-9_.\-]+)==([^\s#]+)", l)
                                                    for l in lines) if m}


def test_environment_files_agree_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = _pins(project["dependencies"] + project["optional-dependencies"]["notebooks"])
    for env in (ROOT / "environment.yml", ROOT / "binder" / "environment.yml"):
        assert _pins(env.read_text().splitlines()) == wanted, env
    post = (ROOT / "binder" / "postBuild").read_text()
    assert "set -e" in post and "pip install" in post
