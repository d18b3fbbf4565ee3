import json

import pytest

from accel_lib import UserError, Workspace


def test_create_writes_config_and_reopens(tmp_path):
    ws = Workspace.create("my-ws", subscription_id="sub", resource_group="rg", location="westus2",
                          path=tmp_path / "w")
    cfg = json.loads((tmp_path / "w" / "config.json").read_text())
    assert cfg["name"] == "my-ws" and cfg["subscription_id"] == "sub" and cfg["resource_group"] == "rg"
    assert cfg["location"] == "westus2" and (tmp_path / "w" / "state.sqlite").exists()
    again = Workspace.create("my-ws", path=tmp_path / "w")
    assert again.path == ws.path and again.location == "westus2"
    with pytest.raises(UserError, match="exist_ok"):
        Workspace.create("my-ws", path=tmp_path / "w", exist_ok=False)


def test_from_config_searches_parents_and_azureml_folder(tmp_path, monkeypatch):
    ws = Workspace.create("a", path=tmp_path / "w")
    deep = tmp_path / "w" / "x" / "y"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert Workspace.from_config().path == ws.path
    other = tmp_path / "project"
    ws.write_config(other / ".azureml")
    found = Workspace.from_config(other)
    assert found.name == "a" and found.path == ws.path        # the config points back to the workspace
    assert not (other / "state.sqlite").exists()


def test_from_config_without_config_says_how_to_fix(tmp_path):
    with pytest.raises(UserError, match="Workspace.create"):
        Workspace.from_config(tmp_path)


def test_unknown_location_is_refused_with_the_choices(tmp_path):
    with pytest.raises(UserError, match="eastus, southeastasia, westeurope, westus2"):
        Workspace.create("a", location="northpole", path=tmp_path / "w")
    assert not (tmp_path / "w" / "config.json").exists()


def test_blob_store_is_content_addressed(ws, tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"same bytes")
    b.write_bytes(b"same bytes")
    da, db = ws.put_blob(a), ws.put_blob(b)
    assert da == db and len(da) == 64
    assert ws.blob_path(da).read_bytes() == b"same bytes"
    assert ws.blob_path(da).parent.parent.name == "sha256"
