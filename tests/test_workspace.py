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


# state.sqlite as accel_lib wrote it before records version 1 (no user_version; replicas with pid, port, log)
_VERSION_0 = """
CREATE TABLE models (name TEXT NOT NULL, version INTEGER NOT NULL, description TEXT, tags TEXT NOT NULL,
    properties TEXT NOT NULL, created_time TEXT NOT NULL, files TEXT NOT NULL, kind TEXT NOT NULL,
    PRIMARY KEY (name, version));
CREATE TABLE operations (id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, log TEXT NOT NULL,
    request TEXT NOT NULL, result TEXT, error TEXT, pid INTEGER, created_time TEXT NOT NULL);
CREATE TABLE images (name TEXT NOT NULL, version INTEGER NOT NULL, model_name TEXT NOT NULL,
    model_version INTEGER NOT NULL, description TEXT, tags TEXT NOT NULL, properties TEXT NOT NULL,
    creation_state TEXT NOT NULL, context TEXT NOT NULL, created_time TEXT NOT NULL, PRIMARY KEY (name, version));
CREATE TABLE computes (name TEXT PRIMARY KEY, vm_size TEXT NOT NULL, agent_count INTEGER NOT NULL,
    location TEXT NOT NULL, kind TEXT NOT NULL, provisioning_state TEXT NOT NULL, provisioning_errors TEXT,
    created_time TEXT NOT NULL);
CREATE TABLE services (name TEXT PRIMARY KEY, image_name TEXT NOT NULL, image_version INTEGER NOT NULL,
    compute TEXT NOT NULL, config TEXT NOT NULL, state TEXT NOT NULL, keys TEXT, error TEXT, created_time TEXT NOT NULL);
CREATE TABLE replicas (service TEXT NOT NULL, idx INTEGER NOT NULL, compute TEXT NOT NULL, fpga INTEGER NOT NULL,
    pid INTEGER, port INTEGER, log TEXT, PRIMARY KEY (service, idx), UNIQUE (compute, fpga));
INSERT INTO models VALUES ('m', 1, NULL, '{}', '{}', '2026-11-30T00:00:00+00:00', '{}', 'file');
INSERT INTO computes VALUES ('c', 'Standard_PB6s', 1, 'eastus', 'aks', 'Succeeded', NULL, '2026-11-30T00:00:00+00:00');
INSERT INTO services VALUES ('s', 'i', 1, 'c', '{"autoscale_enabled": false, "num_replicas": 1, "auth_enabled": false,
    "flash_seconds": 1.0, "max_message_mb": 8, "description": null, "tags": {}, "max_images": 64,
    "max_pixels": 40000000, "generation": 5}', 'Healthy', NULL, NULL, '2026-11-30T00:00:00+00:00');
INSERT INTO replicas VALUES ('s', 0, 'c', 0, NULL, NULL, NULL);
"""


def test_an_older_workspace_opens_and_is_migrated(tmp_path):
    import sqlite3

    from accel_lib import Model, UserError, Webservice, Workspace, records
    from accel_lib.fpga.cluster import specs
    old = Workspace.create("old", path=tmp_path / "old")
    (old.path / "state.sqlite").unlink()
    db = sqlite3.connect(old.path / "state.sqlite")
    db.executescript(_VERSION_0)
    db.close()
    ws = Workspace(old.path)
    db = sqlite3.connect(ws.path / "state.sqlite")
    assert db.execute("PRAGMA user_version").fetchone()[0] == records.SCHEMA_VERSION
    assert [r[1] for r in db.execute("PRAGMA table_info(replicas)")] == ["service", "idx", "compute", "fpga"]
    db.close()
    assert [m.id for m in Model.list(ws)] == ["m:1"]
    svc = Webservice(ws, "s")
    assert svc.deployment_config.limits.max_message_mb == 8 and svc.deployment_config.auth_enabled is False
    assert svc.settled == specs.Settled(generation=5, runtime="process")     # kept in the config up to version 2
    assert Workspace(ws.path).name == "old"                       # opening it again changes nothing
    db = sqlite3.connect(ws.path / "state.sqlite")
    db.execute("PRAGMA user_version = 99")
    db.commit()
    db.close()
    with pytest.raises(UserError, match="newer accel_lib"):
        Workspace(ws.path)
